"""Checkpoints whose ``last.ckpt`` is always the final state of the run."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

# Under manual optimization ModelCheckpoint(every_n_train_steps) warns that it saves the state
# after the optimizer step; for a GAN that is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


class GANCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends.

    Lightning's only writes ``last.ckpt`` together with a periodic save, so a run that stops
    between two saves (the generator-step limit rarely falls on one) would leave a stale
    ``last.ckpt``. The save happens inside the fit, on every rank, so under ``ddp_spawn`` it holds
    the counters and optimizer states that the launching process never sees.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.save_last or self.dirpath is None:
            super().on_train_end(trainer, pl_module)
            return
        trainer.save_checkpoint(
            Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        )
