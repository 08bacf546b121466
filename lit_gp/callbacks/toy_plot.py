"""The WGAN-GP paper's toy figure (critic contours with real and generated samples on top) beside
the critic's gradient-norm field ||grad D(x)|| with its norm-1 contour."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from lit_gp.callbacks.gradient_norms import input_gradient_norms
from lit_gp.callbacks.periodic import EveryGeneratorSteps, log_wandb_image, save_image
from lit_gp.errors import check_int

_GRID_CHUNK = 8192  # critic evaluations per forward pass; bounds memory for wide critics


class ToyPlot(EveryGeneratorSteps):
    """Draw the critic's contours, real samples (orange) and generated samples (green), and beside
    them ||grad D(x)|| over the same grid with the contour ||grad D|| = 1 in red: where the field
    is above 1 the critic is steeper than 1-Lipschitz (what WGAN-GP and LP penalise), where it
    is near 0 it is flat (what R1 and R2 pull it to at their points).

    Works with a LightningModule exposing ``critic`` (``(N, 2) -> (N,)`` or ``(N, 1)``),
    ``sample(n)`` and ``generator_step``, and a datamodule exposing ``reference_samples(n)``.
    Without ``reference_samples`` or for data that is not 2-D it does nothing.

    Draws every ``every_n_generator_steps`` generator updates and once when training ends, into
    ``<default_root_dir>/samples/step_{generator_step:06d}.png`` and, for a ``WandbLogger``, as
    ``val/samples``.
    """

    def __init__(
        self, every_n_generator_steps: int = 500, num_samples: int = 1000, grid_size: int = 100
    ) -> None:
        super().__init__(every_n_generator_steps)
        check_int("num_samples", num_samples)
        check_int("grid_size", grid_size, 2)
        self.num_samples = num_samples
        self.grid_size = grid_size
        # Fixed per fit so that successive frames share axes and the same real points.
        self._reference: np.ndarray | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reference = None

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        arrays = self._evaluate(trainer, pl_module)
        if arrays is None:
            return
        image = _render(*arrays, step=step)
        save_image(trainer, image, step)
        log_wandb_image(trainer, "val/samples", image, f"generator step {step}", step)

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[np.ndarray, ...] | None:
        """The grid, the critic and ||grad D|| on it, real and fake points, or None if there is
        nothing to draw."""
        if self._reference is None:
            datamodule = getattr(trainer, "datamodule", None)
            reference_samples = getattr(datamodule, "reference_samples", None)
            if reference_samples is None:
                return None
            reference = torch.as_tensor(reference_samples(self.num_samples))
            if reference.ndim != 2 or reference.shape[1] != 2:
                return None
            self._reference = reference.detach().float().cpu().numpy()
        real = self._reference

        low, high = real.min(axis=0) - 0.5, real.max(axis=0) + 0.5
        xs = np.linspace(low[0], high[0], self.grid_size, dtype=np.float32)
        ys = np.linspace(low[1], high[1], self.grid_size, dtype=np.float32)
        xx, yy = np.meshgrid(xs, ys)
        grid = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], axis=1)).to(pl_module.device)

        critic = pl_module.critic
        was_training = critic.training
        critic.eval()
        try:
            with torch.no_grad():
                values = torch.cat([critic(chunk).reshape(-1) for chunk in grid.split(_GRID_CHUNK)])
                fake = pl_module.sample(self.num_samples)
            norms = input_gradient_norms(critic, grid, _GRID_CHUNK)
        finally:
            critic.train(was_training)
        zz = values.float().cpu().numpy().reshape(xx.shape)
        gg = norms.float().cpu().numpy().reshape(xx.shape)
        return xx, yy, zz, gg, real, fake.detach().float().cpu().numpy()


def _render(
    xx: np.ndarray,
    yy: np.ndarray,
    zz: np.ndarray,
    gg: np.ndarray,
    real: np.ndarray,
    fake: np.ndarray,
    step: int,
) -> Image.Image:
    # Figure + FigureCanvasAgg instead of pyplot: no global figure registry, no backend switch.
    fig = Figure(figsize=(10, 5), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax, grad_ax = fig.subplots(1, 2)
    title = f"generator step {step}"
    finite = np.isfinite(zz).all()
    if finite and np.ptp(zz) > 0:
        filled = ax.contourf(xx, yy, zz, levels=20, cmap="Blues", alpha=0.6)
        ax.contour(xx, yy, zz, levels=20, colors="k", linewidths=0.3, alpha=0.4)
        fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.04, label="critic(x)")
    elif not finite:
        title += " (critic not finite)"
    ax.scatter(real[:, 0], real[:, 1], s=4, c="tab:orange", alpha=0.6, label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:green", alpha=0.6, label="generated")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=3, fontsize="small")
    _draw_gradient_norms(fig, grad_ax, xx, yy, gg, real)
    for axis in (ax, grad_ax):
        axis.set_xlim(xx.min(), xx.max())
        axis.set_ylim(yy.min(), yy.max())
        axis.set_aspect("equal")
    fig.tight_layout()
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    fig.clear()
    return image


def _draw_gradient_norms(
    fig: Figure, ax: Any, xx: np.ndarray, yy: np.ndarray, gg: np.ndarray, real: np.ndarray
) -> None:
    """||grad D|| as a filled field with its norm-1 contour (red), real samples as dots."""
    title = "||grad D(x)||"
    if np.isfinite(gg).all():
        low, high = float(gg.min()), float(gg.max())
        # A constant field (a linear critic) still gets one colour: a level range around it.
        levels = np.linspace(low, high, 21) if high > low else np.array([low - 0.5, low + 0.5])
        filled = ax.contourf(xx, yy, gg, levels=levels, cmap="viridis")
        fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.04, label="||grad D(x)||")
        if low < 1.0 < high:
            ax.contour(xx, yy, gg, levels=[1.0], colors="red", linewidths=1.5)
            title += ", red: = 1"
        else:
            title += f", all {'above' if low >= 1.0 else 'below'} 1"
        title += f" (max {high:.3g})"
    else:
        title += " (not finite)"
    ax.scatter(real[:, 0], real[:, 1], s=2, c="white", alpha=0.5)
    ax.set_title(title, fontsize="medium")
