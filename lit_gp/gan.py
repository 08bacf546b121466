"""The GAN LightningModule: manual optimization, n_critic critic steps per generator step.

The math of a step (adversarial loss, penalty terms, weight controllers) is in
:mod:`lit_gp.objective`; this module is the loop that applies it: it samples, hands the nets and
batches to the objective, and runs the optimizers, schedulers, EMA and counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from omegaconf import ListConfig
from torch import Tensor, nn

from lit_gp import random_state
from lit_gp.config import Spec, build, call_factory
from lit_gp.distributed import check_strategy, seed_per_rank
from lit_gp.ema import averaged_generator
from lit_gp.errors import ConfigError, check_int, first_line
from lit_gp.losses import AdversarialLoss, get_loss
from lit_gp.metrics import ModeCoverage, WassersteinEstimate
from lit_gp.metrics.toy import wasserstein_1
from lit_gp.module import LitGPModule
from lit_gp.objective import GANObjective, PenaltyTerm, build_penalty_terms
from lit_gp.penalties import PenaltyResult, check_critic, find_batch_norm
from lit_gp.penalty_weights import WeightController
from lit_gp.wandb_utils import GENERATOR_STEP_KEY

DEFAULT_OPTIMIZER: dict[str, Any] = {
    "_target_": "torch.optim.Adam",
    "lr": 1e-4,
    "betas": [0.5, 0.9],
}


# Pure fp16 has no loss scaler to protect the input gradient (16-mixed has one, and the penalty
# uses it); measured on this project's machine, 16-true gave NaN losses.
_UNSUPPORTED_PRECISION = ("16-true",)


def _listed(spec: Any, key: str) -> list[tuple[str, Any]]:
    """``[(key, spec)]`` for one spec, ``[(key[i], spec_i), ...]`` for a list of them."""
    if isinstance(spec, (list, tuple, ListConfig)):
        return [(f"{key}[{index}]", item) for index, item in enumerate(spec)]
    return [(key, spec)]


class GANModule(LitGPModule):
    """A GAN trained with manual optimization and a gradient penalty on the critic.

    Each training batch is one critic step (so every critic step sees a fresh real batch, as in
    the WGAN-GP paper); every ``n_critic``-th batch is followed by one generator step.
    ``generator_step`` counts generator updates: Lightning's ``global_step`` counts every
    optimizer step (``n_critic + 1`` per generator step).

    ``generator``, ``critic``, ``penalty``, the optimizers and schedulers are either objects or
    Hydra-style specs (mappings with ``_target_``). Specs are saved as hyperparameters, so
    ``GANModule.load_from_checkpoint(path)`` rebuilds the module without the Hydra config;
    objects must be passed again to ``load_from_checkpoint``.

    Args:
        generator: maps noise of shape (B, generator.latent_dim) to samples.
        critic: maps samples to scores of shape (B,).
        penalty: a function ``penalty(critic, real, fake) -> PenaltyResult`` (for example
            ``functools.partial(lit_gp.penalties.wgan_gp, weight=10)``), a spec naming a
            registered penalty (:func:`lit_gp.penalties.register_penalty`), several such specs
            by name (``{r1: {...}, r2: {...}}``, each logged under its name), or None for no
            penalty. A spec may add ``every: k`` for lazy regularization (StyleGAN2: the
            penalty on every k-th critic step only, its loss multiplied by k), ``schedule`` (a
            :mod:`lit_gp.schedules` factor on its weight over generator steps) and its own
            ``weight_controller``. Each becomes a :class:`lit_gp.objective.PenaltyTerm`.
        loss: ``"wasserstein"``, ``"non_saturating"``, ``"hinge"``, another registered loss or
            the dotted path of a :class:`lit_gp.losses.AdversarialLoss`.
        n_critic: critic steps per generator step.
        critic_optimizer, generator_optimizer: ``params -> Optimizer`` (default Adam,
            lr 1e-4, betas (0.5, 0.9), the WGAN-GP paper's).
        critic_scheduler, generator_scheduler: ``optimizer -> LRScheduler`` or a list of them
            (a learning-rate schedule and :class:`lit_gp.schedules.Beta2Schedule`, say), stepped
            once per generator step; None for a constant learning rate.
        num_eval_samples: generated samples scored by the toy metrics in validation (2,500 in
            the VEEGAN/PacGAN protocol).
        fused_critic_pass: score real and fake samples in one critic call on their
            concatenation (fewer calls, same numbers for a critic that scores each sample on its
            own). Turned off automatically for a critic with BatchNorm; set it to False for
            other batch-coupled critics (minibatch standard deviation, custom batch statistics)
            or to keep dropout masks drawn separately.
        ema_decay: decay of an exponential moving average of the generator used for sampling
            and metrics; None for none.
        generator_batch_size: noise vectors per generator step; None: the real batch's size.
        weight_controller: an adaptive penalty weight (:mod:`lit_gp.penalty_weights`) for
            every penalty whose spec names none; None keeps the configured weights.
        compile: run the critic and generator of the training steps through
            ``torch.compile`` (default backend). Only for penalties without a double backward
            (finite-difference estimators, no penalty): torch.compile does not support it.
    """

    def __init__(
        self,
        generator: nn.Module | Spec,
        critic: nn.Module | Spec,
        penalty: Callable[..., PenaltyResult] | Spec | None = None,
        loss: str = "wasserstein",
        n_critic: int = 5,
        critic_optimizer: Callable[..., torch.optim.Optimizer] | Spec | None = None,
        generator_optimizer: Callable[..., torch.optim.Optimizer] | Spec | None = None,
        critic_scheduler: Callable[..., Any] | Spec | None = None,
        generator_scheduler: Callable[..., Any] | Spec | None = None,
        num_eval_samples: int = 2500,
        fused_critic_pass: bool = True,
        ema_decay: float | None = None,
        generator_batch_size: int | None = None,
        weight_controller: WeightController | Spec | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.store_hyperparameters(
            dict(
                generator=generator,
                critic=critic,
                penalty=penalty,
                loss=loss,
                n_critic=n_critic,
                critic_optimizer=critic_optimizer,
                generator_optimizer=generator_optimizer,
                critic_scheduler=critic_scheduler,
                generator_scheduler=generator_scheduler,
                num_eval_samples=num_eval_samples,
                fused_critic_pass=fused_critic_pass,
                ema_decay=ema_decay,
                generator_batch_size=generator_batch_size,
                weight_controller=weight_controller,
                compile=compile,
            )
        )
        check_int("n_critic", n_critic)
        check_int("num_eval_samples", num_eval_samples)
        if generator_batch_size is not None:
            check_int("generator_batch_size", generator_batch_size)
        if not isinstance(fused_critic_pass, bool):
            raise ConfigError(
                "fused_critic_pass", f"must be true or false, got {fused_critic_pass!r}"
            )
        self.n_critic = n_critic
        self.num_eval_samples = num_eval_samples
        self.generator_batch_size = generator_batch_size

        self.generator = build(generator, "generator")
        self.critic = build(critic, "critic")
        if not hasattr(self.generator, "latent_dim"):
            raise ConfigError("generator", "must have a latent_dim attribute (the noise size)")
        self.generator_ema = averaged_generator(self.generator, ema_decay)

        terms = build_penalty_terms(penalty, weight_controller)
        for term in terms:
            # Refuse a BatchNorm critic before training, not at the first critic step.
            check_critic(self.critic, term.allows_batch_norm)
        adversarial_loss = get_loss(loss)
        if adversarial_loss.paired and generator_batch_size is not None:
            raise ConfigError(
                "generator_batch_size",
                f"must be null with the {adversarial_loss.name} loss, which pairs each generated "
                "sample with a real one of the data batch",
            )
        # Concatenating real and fake changes BatchNorm's batch statistics: keep them apart.
        self.objective = GANObjective(
            adversarial_loss,
            terms,
            fused_critic_pass=fused_critic_pass and find_batch_norm(self.critic) is None,
        )
        self._step_nets = self._compiled_nets(compile)

        self._optimizer_factories = {
            "critic_optimizer": self.optimizer_factory(
                critic_optimizer, "critic_optimizer", DEFAULT_OPTIMIZER
            ),
            "generator_optimizer": self.optimizer_factory(
                generator_optimizer, "generator_optimizer", DEFAULT_OPTIMIZER
            ),
        }
        self._scheduler_factories = {
            name: [
                (key, self.optimizer_factory(item, key))
                for key, item in _listed(spec, name)
                if item is not None
            ]
            for name, spec in (
                ("critic_scheduler", critic_scheduler),
                ("generator_scheduler", generator_scheduler),
            )
        }
        # Build them once now, so a bad learning rate stops before training starts.
        self._optimizers_and_schedulers()
        self.automatic_optimization = False

        # Training phase; saved in checkpoints so a resumed run continues the same cycles
        # (n_critic and the lazy penalty's interval).
        self.generator_step = 0
        self.critic_step = 0
        self.critic_steps_in_cycle = 0
        self._random_state_to_restore: dict[str, Any] | None = None
        # The current update's loss terms (detached), for lit_gp.callbacks.NonFiniteGuard.
        self.loss_terms: dict[str, Tensor] = {}

        self.score_gap = WassersteinEstimate()
        self.mode_coverage: ModeCoverage | None = None
        # Real points for val/w1_distance on point data (set in setup).
        self.distance_reference: Tensor | None = None

    def _compiled_nets(self, compile: bool) -> dict[str, Any]:
        """The critic and generator the training steps call: ``torch.compile``d ones when
        ``compile``, else the nets themselves. Kept in a plain dict, so the compiled wrappers are
        not submodules and checkpoints keep the nets' own parameter names."""
        if not isinstance(compile, bool):
            raise ConfigError("compile", f"must be true or false, got {compile!r}")
        if not compile:
            return {"critic": self.critic, "generator": self.generator}
        for term in self.penalty_terms:
            if term.needs_double_backward:
                estimator_key = f"model.penalty.{term.name + '.' if term.named else ''}estimator"
                raise ConfigError(
                    "compile",
                    f"torch.compile does not support the double backward of the exact "
                    f"{term.name} penalty; use a finite-difference estimator "
                    f"({estimator_key}=finite_difference, for r1 and r2) or "
                    "compile=false",
                )
        return {"critic": torch.compile(self.critic), "generator": torch.compile(self.generator)}

    # --- the objective's parts -----------------------------------------------------------------

    @property
    def adversarial_loss(self) -> AdversarialLoss:
        return self.objective.adversarial_loss

    @property
    def penalty_terms(self) -> list[PenaltyTerm]:
        return self.objective.terms

    @property
    def penalty(self) -> Callable[..., PenaltyResult] | None:
        """The penalty function (the first term's), or None."""
        return self.penalty_terms[0].function if self.penalty_terms else None

    @property
    def weight_controller(self) -> WeightController:
        """The penalty's weight controller (a fixed weight without a penalty)."""
        return self.penalty_terms[0].controller if self.penalty_terms else WeightController()

    @property
    def fused_critic_pass(self) -> bool:
        return self.objective.fused_critic_pass

    # --- public helpers ------------------------------------------------------------------------

    def noise(self, n: int) -> Tensor:
        """n latent vectors from the generator's prior N(0, I)."""
        return torch.randn(n, self.generator.latent_dim, device=self.device)

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator that :meth:`sample` uses: the moving average when ``ema_decay`` is set."""
        return self.generator if self.generator_ema is None else self.generator_ema.module

    @torch.no_grad()
    def sample(self, n: int | None = None, noise: Tensor | None = None) -> Tensor:
        """Generator samples (no gradient) for ``n`` fresh latent vectors or the given ``noise``,
        on the module's device, from :attr:`sampling_generator` in eval mode (BatchNorm uses its
        running statistics, so a sample does not depend on the others in its batch)."""
        if noise is None:
            if n is None:
                raise ValueError("sample needs n or noise")
            noise = self.noise(n)
        generator = self.sampling_generator
        was_training = generator.training
        generator.eval()
        try:
            return generator(noise.to(self.device))
        finally:
            generator.train(was_training)

    # --- optimization --------------------------------------------------------------------------

    # What the optimizers of configure_optimizers update, in order (for messages).
    optimizer_names = ("critic", "generator")

    def _optimizers_and_schedulers(self) -> tuple[list[Any], list[Any]]:
        optimizers = [
            call_factory(self._optimizer_factories[name], name, net.parameters())
            for name, net in (
                ("critic_optimizer", self.critic),
                ("generator_optimizer", self.generator),
            )
        ]
        schedulers = [
            call_factory(factory, key, optimizer)
            for factories, optimizer in zip(
                self._scheduler_factories.values(), optimizers, strict=True
            )
            for key, factory in factories
        ]
        return optimizers, schedulers

    def configure_optimizers(self) -> Any:
        return self._optimizers_and_schedulers()

    def probe_data_shape(self, data_shape: Sequence[int]) -> None:
        """The generator must produce samples of ``data_shape`` and the critic must give one
        score per sample."""
        fake = self.generator(self.noise(2))
        if tuple(fake.shape[1:]) != tuple(data_shape):
            raise ConfigError(
                "generator",
                f"makes samples of shape {tuple(fake.shape[1:])}, the data has shape "
                f"{tuple(data_shape)}",
            )
        try:
            scores = self.critic(fake)
        except RuntimeError as error:
            message = f"cannot score data of shape {tuple(data_shape)}: {first_line(error)}"
            raise ConfigError("critic", message) from None
        if scores.numel() != 2:
            raise ConfigError("critic", f"must give one score per sample, gave {scores.shape}")

    def _real_batch(self, batch: Any) -> Tensor:
        # Image data sets yield (image, label); toy sets yield the points alone.
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def _optimize(self, index: int, loss: Tensor) -> None:
        """One step of optimizer ``index`` (0 critic, 1 generator) on ``loss``, with only that
        net's parameters requiring gradients."""
        optimizer = self.optimizers()[index]
        self.toggle_optimizer(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.untoggle_optimizer(optimizer)

    def critic_update(self, real: Tensor) -> dict[str, Tensor]:
        """One critic update on a real batch; returns the detached quantities to log."""
        with torch.no_grad():
            fake = self._step_nets["generator"](self.noise(real.shape[0]))
        step = self.objective.critic_loss(
            self._step_nets["critic"],
            real,
            fake,
            self.critic_step,
            self._loss_scale(),
            generator_step=self.generator_step,
        )
        self.loss_terms = step.terms
        self._optimize(0, step.loss)
        self.objective.after_critic_step(self._reduce_mean)
        self.critic_step += 1
        return {f"train/{key}": value for key, value in step.logs.items()}

    def generator_update(self, real: Tensor, batch_size: int | None = None) -> dict[str, Tensor]:
        """One generator update on ``batch_size`` noise vectors (default: the real batch's
        size); ``real`` is the latest critic step's real batch, for losses that compare with
        real samples (the relativistic losses).

        Reusing that batch, as R3GAN's loop hands both phases the same fetched images, means the
        generator step draws nothing from the data loader: the data stream, and therefore a
        bitwise resume, is the same whatever the loss. Returns the detached quantities to log."""
        fake = self._step_nets["generator"](self.noise(batch_size or real.shape[0]))
        loss, logs = self.objective.generator_loss(self._step_nets["critic"], fake, real)
        self.loss_terms = {"generator_loss": logs["generator_loss"]}
        self._optimize(1, loss)
        for scheduler in self._schedulers():
            scheduler.step()
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        return {f"train/{key}": value for key, value in logs.items()}

    def _loss_scale(self) -> float | None:
        """The GradScaler's scale under 16-mixed precision (Lightning keeps one for all
        optimizers), else None."""
        # _trainer, not trainer: the property raises when the module runs outside a Trainer.
        plugin = getattr(self._trainer, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

    def _reduce_mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over data-parallel ranks (itself in one process)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return value
        return trainer.strategy.reduce(value.to(self.device), reduce_op="mean")

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_batch(batch)
        logs = self.critic_update(real)
        self.critic_steps_in_cycle += 1
        if self.critic_steps_in_cycle < self.n_critic:
            return
        logs.update(self.generator_update(real, self.generator_batch_size))
        self.generator_step += 1
        self.critic_steps_in_cycle = 0
        logs[GENERATOR_STEP_KEY] = torch.tensor(float(self.generator_step))
        self.pending_step_metrics = logs
        # The progress bar (lit_gp.callbacks.GeneratorStepProgressBar) reads generator_step.

    # --- validation ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer)
        precision = str(self.trainer.precision)
        if self.penalty is not None and precision in _UNSUPPORTED_PRECISION:
            raise ConfigError(
                "trainer.precision",
                f"{precision} is not supported with a gradient penalty (no loss scaling for the "
                "input gradient); use 16-mixed, bf16-mixed or 32-true",
            )
        for term in self.penalty_terms:
            term.check_loss_scaling(self._loss_scale() is not None)
        datamodule = self.trainer.datamodule
        data_shape = getattr(datamodule, "data_shape", None)
        if data_shape is not None:
            self.check_data_shape(data_shape)
        modes = getattr(datamodule, "modes", None)
        if modes is not None and self.mode_coverage is None:
            self.mode_coverage = ModeCoverage(modes, datamodule.mode_std).to(self.device)
        reference_samples = getattr(datamodule, "reference_samples", None)
        if data_shape is not None and len(data_shape) == 1 and reference_samples is not None:
            # Point data (the toy sets): the exact W1 distance to as many real points.
            self.distance_reference = torch.as_tensor(reference_samples(self.num_eval_samples))

    def on_fit_start(self) -> None:
        # seed_everything (and the spawn launcher) give every rank the same random state:
        # without this all ranks would draw the same noise and penalty points.
        seed_per_rank(self.trainer)

    def on_validation_start(self) -> None:
        # Validation draws noise; keep the training trajectory independent of how often it runs.
        self._rng_state = torch.get_rng_state()
        self._cuda_rng_state = (
            torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        )

    def on_validation_end(self) -> None:
        torch.set_rng_state(self._rng_state)
        if self._cuda_rng_state is not None:
            torch.cuda.set_rng_state(self._cuda_rng_state, self.device)

    def on_validation_epoch_start(self) -> None:
        self.score_gap.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_batch(batch)
        fake = self.sample(real.shape[0])
        self.score_gap.update(self.critic(real), self.critic(fake))

    def on_validation_epoch_end(self) -> None:
        # E[D(real)] - E[D(fake)] on held-out data: a Wasserstein estimate for the Wasserstein
        # loss (val/wasserstein_estimate), a critic gap for the others (val/critic_gap).
        logs = {
            f"val/{self.adversarial_loss.gap_name}": self.score_gap.compute(),
            GENERATOR_STEP_KEY: float(self.generator_step),
        }
        if self.mode_coverage is not None or self.distance_reference is not None:
            samples = self.sample(self.num_eval_samples)
        if self.mode_coverage is not None:
            self.mode_coverage.reset()
            self.mode_coverage.update(samples)
            coverage = self.mode_coverage.compute()
            logs["val/modes_covered"] = coverage["modes_covered"]
            logs["val/high_quality_fraction"] = coverage["high_quality_fraction"]
        if self.distance_reference is not None:
            logs["val/w1_distance"] = wasserstein_1(samples, self.distance_reference)
        self.log_dict(logs, on_step=False, on_epoch=True)

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "generator_step": self.generator_step,
            "critic_step": self.critic_step,
            "critic_steps_in_cycle": self.critic_steps_in_cycle,
            "penalty_terms": {term.name: term.state_dict() for term in self.penalty_terms},
            # Checkpoints are written after a batch (on_train_batch_end), and nothing between
            # that point and the next batch draws from these RNGs (validation and the sample
            # callbacks restore what they draw), so a resume continues the same noise.
            "random_state": random_state.capture(),
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.generator_step = int(state.get("generator_step", 0))
        # Checkpoints written before critic_step existed: it follows from the other counters.
        default_critic_step = self.generator_step * self.n_critic + int(
            state.get("critic_steps_in_cycle", 0)
        )
        self.critic_step = int(state.get("critic_step", default_critic_step))
        self.critic_steps_in_cycle = int(state.get("critic_steps_in_cycle", 0))
        saved_terms = dict(state.get("penalty_terms", {}))
        for term in self.penalty_terms:
            if term.name in saved_terms:
                term.load_state_dict(saved_terms[term.name])
            elif "weight_controller" in state:
                # Checkpoints from before penalty terms: one controller state, no type.
                term.controller.load_state_dict(state["weight_controller"])
        self._random_state_to_restore = state.get("random_state")

    def on_train_start(self) -> None:
        # Restored here, not in on_load_checkpoint: Lightning calls on_fit_start (which seeds
        # DDP ranks) and builds the data iterators after loading the checkpoint.
        if self._random_state_to_restore is None:
            return
        if self.trainer.world_size == 1 or self.trainer.global_rank == 0:
            random_state.restore(self._random_state_to_restore)
        else:
            # The checkpoint holds rank 0's random state only: restoring it on every rank would
            # make all ranks draw the same noise. Other ranks take fresh streams instead.
            seed_per_rank(self.trainer, step=self.critic_step)
        self._random_state_to_restore = None
