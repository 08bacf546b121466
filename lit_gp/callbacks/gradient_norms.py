"""||grad D(x)|| at validation: where the critic keeps, and where it breaks, the Lipschitz
constraint the penalties are about."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lit_gp.errors import ConfigError, check_int
from lit_gp.penalties import POINTS
from lit_gp.wandb_utils import GENERATOR_STEP_KEY

HISTOGRAM_PREFIX = "val/grad_norm"
MEAN_PREFIX = "val/grad_norm_mean"
# Points every run gets; a penalty evaluated at these (R1, R2, WGAN-div) adds no key of its own.
_ALWAYS = ("real", "fake", "real_and_fake")


def input_gradient_norms(critic: nn.Module, points: Tensor, chunk_size: int = 4096) -> Tensor:
    """Per-sample ||dD/dx|| (L2 over every non-batch dimension) at ``points``, detached.

    Only the input gradient is taken (``torch.autograd.grad`` with respect to the points), so the
    critic's parameters get no ``.grad``; the critic's mode (train / eval) is left as it is.
    Works inside ``torch.no_grad`` and ``torch.inference_mode`` (Lightning's validation)."""
    norms = []
    with torch.inference_mode(False), torch.enable_grad():
        for chunk in points.detach().split(chunk_size):
            # clone: a tensor made under inference mode cannot be recorded by autograd.
            x = chunk.clone().float().requires_grad_(True)
            (gradient,) = torch.autograd.grad(critic(x).sum(), x)
            norms.append(torch.linalg.vector_norm(gradient.flatten(1), dim=1).detach())
    return torch.cat(norms)


class GradientNormHistograms(pl.Callback):
    """At every validation, ||grad D(x)|| per sample at real validation data, at generated samples
    and at each penalty term's points (interpolates for WGAN-GP, LP and zero-GP, perturbed real
    data for DRAGAN), drawn as the penalty draws them from the same real and fake batches.

    Logs, for every logger, the means as ``val/grad_norm_mean/<points>`` (``real``, ``fake``,
    ``interpolates``, ...), and for a ``WandbLogger`` the distributions as histograms
    ``val/grad_norm/<points>`` on the generator-step axis. A 1-Lipschitz critic, which the
    WGAN-GP family aims at, has every norm at most 1 (WGAN-GP pulls the interpolates' norms to 1
    itself); the zero-centred penalties (R1, R2) pull the norms at their points towards 0.

    Works with a LightningModule exposing ``critic``, ``generator_step`` and a generator
    (``generator`` with ``noise(n)``, as :class:`lit_gp.GANModule`, else ``sample(n)``); its
    ``penalty_terms`` (if any) give the penalty points. The draws run with the RNGs forked, so
    training continues exactly as without this callback.

    Args:
        num_samples: at most this many real validation samples (taken from the first validation
            batches), and as many generated ones.
        bins: histogram bins on W&B (at most 512).
    """

    def __init__(self, num_samples: int = 512, bins: int = 64) -> None:
        check_int("num_samples", num_samples)
        check_int("bins", bins, 1)
        if bins > 512:  # wandb.Histogram's limit
            raise ConfigError("bins", f"must be at most 512 (W&B's limit), got {bins}")
        self.num_samples = num_samples
        self.bins = bins
        self._real: list[Tensor] = []
        self._collected = 0

    # --- collecting real validation data ---------------------------------------------------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._real, self._collected = [], 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._collected >= self.num_samples or dataloader_idx != 0:
            return
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(real, Tensor):
            return
        take = real[: self.num_samples - self._collected].detach()
        self._real.append(take)
        self._collected += take.shape[0]

    # --- measuring ----------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._real or not hasattr(pl_module, "critic"):
            return
        real = torch.cat(self._real).to(pl_module.device)
        self._real, self._collected = [], 0
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        # The generated samples and the penalty points draw noise: never from training's stream.
        with torch.random.fork_rng(devices=devices):
            norms = self.measure(pl_module, real)
        pl_module.log_dict(
            {f"{MEAN_PREFIX}/{name}": values.mean() for name, values in norms.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        if trainer.is_global_zero:
            self._log_histograms(trainer, pl_module, norms)

    def measure(self, pl_module: pl.LightningModule, real: Tensor) -> dict[str, Tensor]:
        """Per-sample ||grad D|| by kind of point: ``real``, ``fake`` and each penalty term's
        points."""
        fake = _generate(pl_module, real.shape[0]).to(real.dtype)
        critic = pl_module.critic
        norms = {
            "real": input_gradient_norms(critic, real),
            "fake": input_gradient_norms(critic, fake),
        }
        for name, points in penalty_points(pl_module, real, fake).items():
            norms[name] = input_gradient_norms(critic, points)
        return norms

    def _log_histograms(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, norms: dict[str, Tensor]
    ) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        import wandb

        row: dict[str, Any] = {
            f"{HISTOGRAM_PREFIX}/{name}": wandb.Histogram(
                values.float().cpu().numpy(), num_bins=self.bins
            )
            for name, values in norms.items()
        }
        row[GENERATOR_STEP_KEY] = int(getattr(pl_module, "generator_step", 0))
        for logger in loggers:
            logger.log_metrics(row, step=_validation_log_step(trainer))


def penalty_points(pl_module: pl.LightningModule, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
    """The points each registered penalty term of ``pl_module.penalty_terms`` evaluates its
    gradient at, drawn from ``real`` and ``fake`` with the term's own point options (DRAGAN's
    ``c``), by the name of the points (``interpolates``, ``perturbed_real``). Terms at real or
    generated data, or at both, are left out (those norms are measured anyway), as are plain
    callables, whose points are unknown."""
    points: dict[str, Tensor] = {}
    for term in getattr(pl_module, "penalty_terms", None) or []:
        method = getattr(term, "method", None)
        if method is None or method.points in _ALWAYS or method.points in points:
            continue
        sampler = POINTS[method.points]
        accepted = inspect.signature(sampler).parameters
        options = {
            key: value
            for key, value in (getattr(term, "options", None) or {}).items()
            if key in accepted and accepted[key].kind is inspect.Parameter.KEYWORD_ONLY
        }
        points[method.points] = sampler(real, fake, **options)
    return points


def _generate(pl_module: pl.LightningModule, n: int) -> Tensor:
    """``n`` samples of the generator the critic is trained against (not its moving average)."""
    generator = getattr(pl_module, "generator", None)
    noise = getattr(pl_module, "noise", None)
    with torch.no_grad():
        if generator is not None and noise is not None:
            return generator(noise(n)).detach()
        return pl_module.sample(n).detach()


def _validation_log_step(trainer: pl.Trainer) -> int | None:
    """The step Lightning writes validation rows with (``trainer/global_step`` on W&B): its count
    of training batches so far, so the histograms share the row step of ``val/*`` metrics."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    return getattr(loop, "_batches_that_stepped", None)
