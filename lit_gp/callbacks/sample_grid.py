"""A grid of generated images from fixed noise, so successive grids show training progress."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from lit_gp.callbacks.periodic import EveryGeneratorSteps, log_wandb_image, save_image
from lit_gp.errors import check_int

# Tiny images (8x8 digits) are enlarged to at least this many pixels, so a grid is legible.
_MIN_DISPLAY_SIZE = 32


def image_grid(images: Tensor, nrow: int) -> Image.Image:
    """A PIL image of ``images`` (B, C, H, W) in [-1, 1], ``nrow`` per row, small images
    enlarged by an integer factor with nearest-neighbour pixels."""
    images = images.detach().float().cpu().clamp(-1, 1)
    factor = max(1, -(-_MIN_DISPLAY_SIZE // min(images.shape[-2:])))
    if factor > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


class SampleGrid(EveryGeneratorSteps):
    """Generated images from the same ``num_samples`` latent vectors every
    ``every_n_generator_steps`` generator steps and at the end of training, and one grid of real
    images at the start.

    Works with a LightningModule exposing ``sample(noise=...)``, ``generator.latent_dim`` and
    ``generator_step`` (:class:`lit_gp.GANModule`), for image data (samples of shape (C, H, W));
    for other data it does nothing. Grids go to
    ``<default_root_dir>/samples/step_{generator_step:06d}.png`` (real images:
    ``real_000000.png``) and, for a ``WandbLogger``, to ``val/samples`` and ``val/real_samples``.
    The noise comes from its own generator seeded with ``seed`` and is saved in checkpoints, so a
    resumed run continues the same sequence of pictures.
    """

    def __init__(
        self,
        every_n_generator_steps: int = 500,
        num_samples: int = 64,
        nrow: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_generator_steps)
        check_int("num_samples", num_samples)
        check_int("nrow", nrow)
        check_int("seed", seed, 0)
        self.num_samples = num_samples
        self.nrow = nrow
        self.seed = seed
        self.noise: Tensor | None = None
        self._real_logged = False

    def _fixed_noise(self, pl_module: pl.LightningModule) -> Tensor:
        if self.noise is None:
            generator = torch.Generator().manual_seed(self.seed)
            latent_dim = pl_module.generator.latent_dim
            self.noise = torch.randn(self.num_samples, latent_dim, generator=generator)
        return self.noise

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self._real_logged:
            return
        reference_samples = getattr(trainer.datamodule, "reference_samples", None)
        if reference_samples is None:
            return
        real = torch.as_tensor(reference_samples(self.num_samples))
        if real.ndim != 4:
            return
        image = image_grid(real, self.nrow)
        save_image(trainer, image, 0, prefix="real")
        log_wandb_image(trainer, "val/real_samples", image, "real images", 0)
        self._real_logged = True

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        samples = pl_module.sample(noise=self._fixed_noise(pl_module))
        if samples.ndim != 4:
            return
        image = image_grid(samples, self.nrow)
        save_image(trainer, image, step)
        log_wandb_image(trainer, "val/samples", image, f"generator step {step}", step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "noise": self.noise, "real_logged": self._real_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.noise = state_dict.get("noise")
        self._real_logged = bool(state_dict.get("real_logged", False))
