"""Shared machinery of the picture callbacks: run every N generator steps and at the end,
without disturbing training's random streams, and put images on the W&B generator-step axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image

from lit_gp.errors import check_int
from lit_gp.wandb_utils import GENERATOR_STEP_KEY


class EveryGeneratorSteps(pl.Callback):
    """Calls :meth:`draw` every ``every_n_generator_steps`` generator updates and once when
    training ends, on global rank zero only, with the torch and numpy RNGs forked so that drawing
    never changes the training trajectory. ``last_drawn_step`` is saved in checkpoints, so a
    resumed run does not draw the same step twice."""

    def __init__(self, every_n_generator_steps: int = 500) -> None:
        check_int("every_n_generator_steps", every_n_generator_steps)
        self.every_n_generator_steps = every_n_generator_steps
        self.last_drawn_step: int | None = None

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        raise NotImplementedError

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = int(pl_module.generator_step)
        # With n_critic > 1 the generator step stays put for several batches: draw it once.
        if step > 0 and step % self.every_n_generator_steps == 0 and step != self.last_drawn_step:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if int(pl_module.generator_step) != self.last_drawn_step:
            self._run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_drawn_step": self.last_drawn_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_drawn_step = state_dict.get("last_drawn_step")

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(pl_module.generator_step)
        self.last_drawn_step = step
        if not trainer.is_global_zero:
            return
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=devices):
                self.draw(trainer, pl_module, step)
        finally:
            np.random.set_state(numpy_state)


def save_image(trainer: pl.Trainer, image: Image.Image, step: int, prefix: str = "step") -> Path:
    """Save ``image`` as ``<default_root_dir>/samples/<prefix>_<step:06d>.png``."""
    path = Path(trainer.default_root_dir) / "samples" / f"{prefix}_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def log_wandb_image(
    trainer: pl.Trainer, key: str, image: Image.Image, caption: str, step: int
) -> None:
    """Log ``image`` under ``key`` to every W&B logger of the trainer, at generator step
    ``step``."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            # One row holding both the image and the generator step (what log_image does plus
            # the step), so the image sits on the generator-step axis even when
            # define_generator_step_axis was not called.
            logger.log_metrics(
                {key: [wandb.Image(image, caption=caption)], GENERATOR_STEP_KEY: step},
                step=lightning_log_step(trainer),
            )


def lightning_log_step(trainer: pl.Trainer) -> int | None:
    """The step Lightning gives the rows it logs at this point (``WandbLogger`` writes it as
    ``trainer/global_step``): its count of training batches, as for ``self.log`` rows and
    Lightning's ``LearningRateMonitor``, not ``trainer.global_step`` (every optimizer step,
    n_critic + 1 per generator step). During a batch's hooks that is the batch's index in the
    run; after the batch (``on_train_end``, an epoch's end) the count has moved on, and Lightning
    writes such rows with the last batch's, so that one is returned. None (no step in the row)
    if this Lightning keeps the count elsewhere."""
    loop = trainer.fit_loop.epoch_loop
    batches = getattr(loop, "_batches_that_stepped", None)
    progress = getattr(getattr(loop, "batch_progress", None), "current", None)
    if batches is None or progress is None:
        return None
    in_batch = progress.processed > progress.completed
    return batches if in_batch or batches == 0 else batches - 1
