"""Bound a run by generator steps rather than Lightning's optimizer-step count."""

from __future__ import annotations

from typing import Any

import lightning as L

from lit_gp.errors import check_int


class GeneratorStepLimit(L.Callback):
    """Stop training once ``pl_module.generator_step`` reaches ``max_generator_steps``.

    ``trainer.max_steps`` counts every optimizer step (n_critic + 1 per generator step), so it
    cannot express "train the generator N times".
    """

    def __init__(self, max_generator_steps: int) -> None:
        check_int("max_generator_steps", max_generator_steps)
        self.max_generator_steps = max_generator_steps

    def _reached(self, pl_module: L.LightningModule) -> bool:
        return getattr(pl_module, "generator_step", 0) >= self.max_generator_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run that already reached the limit should not take another step.
        if self._reached(pl_module):
            trainer.should_stop = True

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._reached(pl_module):
            trainer.should_stop = True
