"""The GAN LightningModule: manual optimization, n_critic critic steps per generator step."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import get_method
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lit_gp import penalties, random_state
from lit_gp.config import Spec, build, call_factory, is_spec, plain, storable_hyperparameters
from lit_gp.distributed import check_strategy, seed_per_rank
from lit_gp.errors import ConfigError, check_int, first_line
from lit_gp.losses import get_loss
from lit_gp.metrics import ModeCoverage, WassersteinEstimate
from lit_gp.penalty_weights import WeightController
from lit_gp.step_logs import log_pending_step_metrics
from lit_gp.wandb_utils import GENERATOR_STEP_KEY

DEFAULT_OPTIMIZER: dict[str, Any] = {
    "_target_": "torch.optim.Adam",
    "lr": 1e-4,
    "betas": [0.5, 0.9],
}


def _penalty_from_spec(spec: Spec) -> tuple[Callable[..., penalties.PenaltyResult], int]:
    """The named penalty of a ``{_target_: lit_gp.penalties.<name>, every: k, **options}`` spec
    with its options bound, and its interval k, after checking the name and every option."""
    target = spec.get("_target_", "")
    try:
        method = get_method(target)
    except Exception:
        method = None
    if method not in penalties.METHODS.values():
        names = ", ".join(f"lit_gp.penalties.{name}" for name in penalties.METHODS)
        raise ConfigError("penalty._target_", f"must be one of {names}, got {target!r}")
    options = {key: value for key, value in plain(spec).items() if not key.startswith("_")}
    every = options.pop("every", 1)
    check_int("penalty.every", every)
    try:
        penalties.check_options(method, options)
    except ConfigError as error:
        raise error.with_prefix("penalty") from None
    return functools.partial(method, **options), every


# Pure fp16 has no loss scaler to protect the input gradient (16-mixed has one, and the penalty
# uses it); measured on this project's machine, 16-true gave NaN losses.
_UNSUPPORTED_PRECISION = ("16-true",)


# The option that scales each named penalty, and its default when the config leaves it out.
_WEIGHT_OPTIONS = ("weight", "gamma", "k")


def _initial_weight(penalty: Any, keywords: dict[str, Any]) -> float:
    """The configured weight of a penalty (``weight``, ``gamma`` or ``k``), or 1.0."""
    for name in _WEIGHT_OPTIONS:
        if name in keywords:
            return float(keywords[name])
    function = getattr(penalty, "func", penalty)
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return 1.0
    for name in _WEIGHT_OPTIONS:
        if name in parameters and parameters[name].default is not inspect.Parameter.empty:
            return float(parameters[name].default)
    return 1.0


def _averaged_generator(generator: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``generator`` (parameters and buffers), or None."""
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ConfigError("ema_decay", f"must be null or a number in [0, 1), got {decay!r}")
    # use_buffers: BatchNorm running statistics are averaged too, so the averaged generator's
    # eval mode matches its averaged weights.
    averaged = AveragedModel(
        generator, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True
    )
    averaged.requires_grad_(False)
    return averaged


class GANModule(L.LightningModule):
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
            ``functools.partial(lit_gp.penalties.wgan_gp, weight=10)``), a spec naming one of
            :mod:`lit_gp.penalties`, or None for no penalty. A spec may add ``every: k`` for lazy
            regularization (StyleGAN2): the penalty is computed on every k-th critic step only,
            with its loss multiplied by k.
        loss: ``"wasserstein"``, ``"non_saturating"`` or ``"hinge"``.
        n_critic: critic steps per generator step.
        critic_optimizer, generator_optimizer: ``params -> Optimizer`` (default Adam,
            lr 1e-4, betas (0.5, 0.9), the WGAN-GP paper's).
        critic_scheduler, generator_scheduler: ``optimizer -> LRScheduler``, stepped once per
            generator step; None for a constant learning rate.
        num_eval_samples: generated samples scored by the toy metrics in validation (2,500 in
            the VEEGAN/PacGAN protocol).
        fused_critic_pass: score real and fake samples in one critic call on their
            concatenation (fewer calls, same numbers for a critic that scores each sample on its
            own). Turned off automatically for a critic with BatchNorm; set it to False for
            other batch-coupled critics (minibatch standard deviation, custom batch statistics)
            or to keep dropout masks drawn separately.
    """

    def __init__(
        self,
        generator: nn.Module | Spec,
        critic: nn.Module | Spec,
        penalty: Callable[..., penalties.PenaltyResult] | Spec | None = None,
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
    ) -> None:
        super().__init__()
        arguments = dict(
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
        )
        self.save_hyperparameters(storable_hyperparameters(arguments))

        check_int("n_critic", n_critic)
        check_int("num_eval_samples", num_eval_samples)
        if generator_batch_size is not None:
            check_int("generator_batch_size", generator_batch_size)
        self.generator_batch_size = generator_batch_size
        self.adversarial_loss = get_loss(loss)
        self.n_critic = n_critic
        self.num_eval_samples = num_eval_samples

        self.generator = build(generator, "generator")
        self.critic = build(critic, "critic")
        if not hasattr(self.generator, "latent_dim"):
            raise ConfigError("generator", "must have a latent_dim attribute (the noise size)")

        self.penalty_every = 1
        if is_spec(penalty):
            penalty, self.penalty_every = _penalty_from_spec(penalty)
        self.penalty = penalty
        keywords = getattr(penalty, "keywords", {})
        if penalty is not None:
            # Refuse a BatchNorm critic before training, not at the first critic step.
            penalties.check_critic(self.critic, keywords.get("allow_batch_norm", False))
        controller = build(weight_controller, "weight_controller")
        self.weight_controller: WeightController = (
            WeightController() if controller is None else controller
        )
        if not isinstance(self.weight_controller, WeightController):
            raise ConfigError(
                "weight_controller", "must be a lit_gp.penalty_weights.WeightController"
            )
        self.weight_controller.bind(_initial_weight(penalty, keywords))
        if not isinstance(fused_critic_pass, bool):
            raise ConfigError(
                "fused_critic_pass", f"must be true or false, got {fused_critic_pass!r}"
            )
        # Concatenating real and fake changes BatchNorm's batch statistics: keep them apart.
        self.fused_critic_pass = (
            fused_critic_pass and penalties.find_batch_norm(self.critic) is None
        )

        self.generator_ema = _averaged_generator(self.generator, ema_decay)

        self._optimizer_factories = {
            "critic_optimizer": build(
                critic_optimizer or DEFAULT_OPTIMIZER, "critic_optimizer", partial=True
            ),
            "generator_optimizer": build(
                generator_optimizer or DEFAULT_OPTIMIZER, "generator_optimizer", partial=True
            ),
        }
        self._scheduler_factories = {
            "critic_scheduler": build(critic_scheduler, "critic_scheduler", partial=True),
            "generator_scheduler": build(generator_scheduler, "generator_scheduler", partial=True),
        }
        # Build them once now, so a bad learning rate stops before training starts.
        self._optimizers_and_schedulers()
        self.automatic_optimization = False

        # Training phase; saved in checkpoints so a resumed run continues the same cycles
        # (n_critic and the lazy penalty's interval).
        self.generator_step = 0
        self.critic_step = 0
        self.critic_steps_in_cycle = 0
        self._penalty_logs: dict[str, Tensor] = {}
        # The latest generator step's training metrics, until a batch the loggers write.
        self._pending_step_metrics: dict[str, Tensor] | None = None
        self._random_state_to_restore: dict[str, Any] | None = None
        # The current update's loss terms (detached), for lit_gp.callbacks.NonFiniteGuard.
        self.loss_terms: dict[str, Tensor] = {}

        self.wasserstein_estimate = WassersteinEstimate()
        self.mode_coverage: ModeCoverage | None = None

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
            call_factory(factory, name, optimizer)
            for (name, factory), optimizer in zip(
                self._scheduler_factories.items(), optimizers, strict=True
            )
            if factory is not None
        ]
        return optimizers, schedulers

    def configure_optimizers(self) -> Any:
        return self._optimizers_and_schedulers()

    def check_data_shape(self, data_shape: Sequence[int]) -> None:
        """Refuse nets that do not fit the data: the generator must produce samples of
        ``data_shape`` and the critic must give one score per sample."""
        with torch.no_grad():
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

    def critic_update(self, real: Tensor) -> dict[str, Tensor]:
        """One critic update on a real batch; returns the detached quantities to log."""
        optimizer = self.optimizers()[0]
        self.toggle_optimizer(optimizer)
        with torch.no_grad():
            fake = self.generator(self.noise(real.shape[0]))
        real_scores, fake_scores = self.score(real, fake)
        adversarial = self.adversarial_loss.critic(real_scores, fake_scores)
        logs = {
            "train/critic_loss": adversarial.detach(),
            "train/wasserstein_estimate": (real_scores.mean() - fake_scores.mean()).detach(),
        }
        total = adversarial
        result = None
        if self.penalty is not None and self.critic_step % self.penalty_every == 0:
            scaler = self._grad_scaler()
            if scaler is None:
                result = self.penalty(self.critic, real, fake)
            else:
                result = self.penalty(self.critic, real, fake, loss_scale=scaler.get_scale())
            penalty_loss = self.weight_controller.loss(result)
            # Lazy regularization: k times the weight every k-th step keeps the same average.
            total = total + self.penalty_every * penalty_loss
            self._penalty_logs = {
                "train/penalty": penalty_loss.detach(),
                "train/penalty_weight": torch.tensor(float(self.weight_controller.weight)),
                "train/grad_norm_mean": result.grad_norm.mean(),
                "train/grad_norm_max": result.grad_norm.max(),
                "train/grad_norm_fraction_above_1": (result.grad_norm > 1).float().mean(),
                # Distance from the 1-Lipschitz ideal, whatever the penalty's own target.
                "train/grad_norm_deviation": (result.grad_norm - 1).abs().mean(),
            }
        self.loss_terms = {"critic_loss": logs["train/critic_loss"]}
        if result is not None:
            self.loss_terms["penalty"] = self._penalty_logs["train/penalty"]
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(total)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        if result is not None:
            self.weight_controller.update(result)
        self.critic_step += 1
        # The latest penalty statistics, also on steps that skipped a lazy penalty.
        return {**logs, **self._penalty_logs}

    def _grad_scaler(self) -> Any:
        """Lightning's GradScaler under 16-mixed precision (one for all optimizers), else None."""
        # _trainer, not trainer: the property raises when the module runs outside a Trainer.
        plugin = getattr(self._trainer, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def score(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """Critic scores of a real and a fake batch, in one call when ``fused_critic_pass``."""
        if not self.fused_critic_pass:
            return self.critic(real), self.critic(fake)
        scores = self.critic(torch.cat([real, fake.to(real.dtype)]))
        return scores[: real.shape[0]], scores[real.shape[0] :]

    def generator_update(self, batch_size: int) -> dict[str, Tensor]:
        """One generator update; returns the detached loss to log."""
        optimizer = self.optimizers()[1]
        self.toggle_optimizer(optimizer)
        fake = self.generator(self.noise(batch_size))
        loss = self.adversarial_loss.generator(self.critic(fake))
        self.loss_terms = {"generator_loss": loss.detach()}
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        for scheduler in self._schedulers():
            scheduler.step()
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        return {"train/generator_loss": loss.detach()}

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
        logs.update(self.generator_update(self.generator_batch_size or real.shape[0]))
        self.generator_step += 1
        self.critic_steps_in_cycle = 0
        logs[GENERATOR_STEP_KEY] = torch.tensor(float(self.generator_step))
        self._pending_step_metrics = logs
        self.log("generator_step", float(self.generator_step), prog_bar=True, logger=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # self.log is costly: only on the batches the loggers write, and the last (step_logs).
        self._pending_step_metrics = log_pending_step_metrics(
            self, self._pending_step_metrics, batch_idx
        )

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
        datamodule = self.trainer.datamodule
        data_shape = getattr(datamodule, "data_shape", None)
        if data_shape is not None:
            self.check_data_shape(data_shape)
        modes = getattr(datamodule, "modes", None)
        if modes is not None and self.mode_coverage is None:
            self.mode_coverage = ModeCoverage(modes, datamodule.mode_std).to(self.device)

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
        self.wasserstein_estimate.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_batch(batch)
        fake = self.sample(real.shape[0])
        self.wasserstein_estimate.update(self.critic(real), self.critic(fake))

    def on_validation_epoch_end(self) -> None:
        logs = {
            "val/wasserstein_estimate": self.wasserstein_estimate.compute(),
            GENERATOR_STEP_KEY: float(self.generator_step),
        }
        if self.mode_coverage is not None:
            self.mode_coverage.reset()
            self.mode_coverage.update(self.sample(self.num_eval_samples))
            coverage = self.mode_coverage.compute()
            logs["val/modes_covered"] = coverage["modes_covered"]
            logs["val/high_quality_fraction"] = coverage["high_quality_fraction"]
        self.log_dict(logs, on_step=False, on_epoch=True)

    # --- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_gp"] = {
            "generator_step": self.generator_step,
            "critic_step": self.critic_step,
            "critic_steps_in_cycle": self.critic_steps_in_cycle,
            "weight_controller": self.weight_controller.state_dict(),
            # Checkpoints are written after a batch (on_train_batch_end), and nothing between
            # that point and the next batch draws from these RNGs (validation and the sample
            # callbacks restore what they draw), so a resume continues the same noise.
            "random_state": random_state.capture(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_gp", {})
        self.generator_step = int(state.get("generator_step", 0))
        # Checkpoints written before critic_step existed: it follows from the other counters.
        default_critic_step = self.generator_step * self.n_critic + int(
            state.get("critic_steps_in_cycle", 0)
        )
        self.critic_step = int(state.get("critic_step", default_critic_step))
        self.critic_steps_in_cycle = int(state.get("critic_steps_in_cycle", 0))
        self.weight_controller.load_state_dict(state.get("weight_controller", {}))
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
