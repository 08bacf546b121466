"""The GAN LightningModule: manual optimization, n_critic critic steps per generator step."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import get_method
from torch import Tensor, nn

from lit_gp import penalties
from lit_gp.config import Spec, build, is_spec, plain
from lit_gp.errors import ConfigError
from lit_gp.losses import get_loss
from lit_gp.metrics import ModeCoverage, WassersteinEstimate

# ModelCheckpoint(every_n_train_steps) warns under manual optimization that it saves the state
# after the optimizer step; for a GAN that is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

DEFAULT_OPTIMIZER: dict[str, Any] = {
    "_target_": "torch.optim.Adam",
    "lr": 1e-4,
    "betas": [0.5, 0.9],
}


def _penalty_method(spec: Spec) -> Callable[..., penalties.PenaltyResult]:
    target = spec.get("_target_", "")
    try:
        method = get_method(target)
    except Exception:
        method = None
    if method not in penalties.METHODS.values():
        names = ", ".join(f"lit_gp.penalties.{name}" for name in penalties.METHODS)
        raise ConfigError("_target_", f"must be one of {names}, got {target!r}")
    return method


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
            :mod:`lit_gp.penalties`, or None for no penalty.
        loss: ``"wasserstein"``, ``"non_saturating"`` or ``"hinge"``.
        n_critic: critic steps per generator step.
        critic_optimizer, generator_optimizer: ``params -> Optimizer`` (default Adam,
            lr 1e-4, betas (0.5, 0.9), the WGAN-GP paper's).
        critic_scheduler, generator_scheduler: ``optimizer -> LRScheduler``, stepped once per
            generator step; None for a constant learning rate.
        num_eval_samples: generated samples scored by the toy metrics in validation (2,500 in
            the VEEGAN/PacGAN protocol).
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
        )
        # Only data goes into the hyperparameters: objects would need weights_only=False to load.
        self.save_hyperparameters(
            {
                name: plain(value)
                for name, value in arguments.items()
                if value is None or is_spec(value) or isinstance(value, (str, int, float))
            }
        )

        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ConfigError("n_critic", f"must be an integer >= 1, got {n_critic!r}")
        if (
            isinstance(num_eval_samples, bool)
            or not isinstance(num_eval_samples, int)
            or num_eval_samples < 1
        ):
            raise ConfigError(
                "num_eval_samples", f"must be a positive integer, got {num_eval_samples!r}"
            )
        self.adversarial_loss = get_loss(loss)
        self.n_critic = n_critic
        self.num_eval_samples = num_eval_samples

        self.generator = build(generator, "generator")
        self.critic = build(critic, "critic")
        if not hasattr(self.generator, "latent_dim"):
            raise ConfigError("generator", "must have a latent_dim attribute (the noise size)")

        allow_batch_norm = False
        if is_spec(penalty):
            options = {k: v for k, v in penalty.items() if k not in ("_target_", "_partial_")}
            try:
                penalties.check_options(_penalty_method(penalty), options)
            except ConfigError as error:
                raise error.with_prefix("penalty") from None
            allow_batch_norm = bool(options.get("allow_batch_norm", False))
        elif penalty is not None:
            allow_batch_norm = bool(getattr(penalty, "keywords", {}).get("allow_batch_norm"))
        if penalty is not None:
            # Refuse before training, not at the first critic step.
            penalties.check_critic(self.critic, allow_batch_norm)
        self.penalty = build(penalty, "penalty", partial=True)

        self._optimizer_specs = {
            "critic_optimizer": critic_optimizer or DEFAULT_OPTIMIZER,
            "generator_optimizer": generator_optimizer or DEFAULT_OPTIMIZER,
        }
        self._scheduler_specs = {
            "critic_scheduler": critic_scheduler,
            "generator_scheduler": generator_scheduler,
        }
        self.automatic_optimization = False

        # Training phase; saved in checkpoints so a resumed run continues the same cycle.
        self.generator_step = 0
        self.critic_steps_in_cycle = 0

        self.wasserstein_estimate = WassersteinEstimate()
        self.mode_coverage: ModeCoverage | None = None

    # --- public helpers ------------------------------------------------------------------------

    def noise(self, n: int) -> Tensor:
        """n latent vectors from the generator's prior N(0, I)."""
        return torch.randn(n, self.generator.latent_dim, device=self.device)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n generator samples (no gradient), on the module's device."""
        return self.generator(self.noise(n))

    # --- optimization --------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizers = [
            build(spec, name, partial=True)(net.parameters())
            for (name, spec), net in zip(
                self._optimizer_specs.items(), (self.critic, self.generator), strict=True
            )
        ]
        schedulers = []
        for name, optimizer in zip(self._scheduler_specs, optimizers, strict=True):
            spec = self._scheduler_specs[name]
            if spec is not None:
                schedulers.append(build(spec, name, partial=True)(optimizer))
        return optimizers, schedulers

    def _real_batch(self, batch: Any) -> Tensor:
        # Image data sets yield (image, label); toy sets yield the points alone.
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def critic_step(self, real: Tensor) -> dict[str, Tensor]:
        """One critic update on a real batch; returns the detached quantities to log."""
        optimizer = self.optimizers()[0]
        self.toggle_optimizer(optimizer)
        with torch.no_grad():
            fake = self.generator(self.noise(real.shape[0]))
        real_scores = self.critic(real)
        fake_scores = self.critic(fake)
        adversarial = self.adversarial_loss.critic(real_scores, fake_scores)
        logs = {
            "train/critic_loss": adversarial.detach(),
            "train/wasserstein_estimate": (real_scores.mean() - fake_scores.mean()).detach(),
        }
        total = adversarial
        if self.penalty is not None:
            result = self.penalty(self.critic, real, fake)
            total = total + result.loss
            logs["train/penalty"] = result.loss.detach()
            logs["train/grad_norm_mean"] = result.grad_norm.mean()
            logs["train/grad_norm_max"] = result.grad_norm.max()
            logs["train/grad_norm_fraction_above_1"] = (result.grad_norm > 1).float().mean()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(total)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        return logs

    def generator_update(self, batch_size: int) -> dict[str, Tensor]:
        """One generator update; returns the detached loss to log."""
        optimizer = self.optimizers()[1]
        self.toggle_optimizer(optimizer)
        fake = self.generator(self.noise(batch_size))
        loss = self.adversarial_loss.generator(self.critic(fake))
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        for scheduler in self._schedulers():
            scheduler.step()
        return {"train/generator_loss": loss.detach()}

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_batch(batch)
        logs = self.critic_step(real)
        self.critic_steps_in_cycle += 1
        if self.critic_steps_in_cycle < self.n_critic:
            return
        logs.update(self.generator_update(real.shape[0]))
        self.generator_step += 1
        self.critic_steps_in_cycle = 0
        # Logged once per generator step (the cycle's last critic step): self.log costs ~0.1 ms
        # per key, 17% of a toy step when done on every critic step. Lightning keeps the last
        # value for the logger's cadence.
        logs["train/generator_step"] = torch.tensor(float(self.generator_step))
        self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("generator_step", float(self.generator_step), prog_bar=True, logger=False)

    # --- validation ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        modes = getattr(datamodule, "modes", None)
        if modes is not None and self.mode_coverage is None:
            self.mode_coverage = ModeCoverage(modes, datamodule.mode_std).to(self.device)

    def on_validation_epoch_start(self) -> None:
        self.wasserstein_estimate.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_batch(batch)
        fake = self.sample(real.shape[0])
        self.wasserstein_estimate.update(self.critic(real), self.critic(fake))

    def on_validation_epoch_end(self) -> None:
        logs = {
            "val/wasserstein_estimate": self.wasserstein_estimate.compute(),
            "train/generator_step": float(self.generator_step),
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
            "critic_steps_in_cycle": self.critic_steps_in_cycle,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_gp", {})
        self.generator_step = int(state.get("generator_step", 0))
        self.critic_steps_in_cycle = int(state.get("critic_steps_in_cycle", 0))
