"""A progress bar in generator steps, with the time left:

generator step:  42%|████▏     | 1260/3000 [00:31<00:43, 40.12step/s, modes_covered=8, ...]
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lit_gp.callbacks.step_limit import GeneratorStepLimit
from lit_gp.errors import check_int

# The validation figures the bar shows after each validation, in this order, when they exist
# (the same curated list as the run summary: lit_gp.training.QUALITY_KEYS).
_SHOWN_PREFIXES = ("val/modes_covered", "val/high_quality_fraction", "val/mode_kl", "val/fid_")


class GeneratorStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting generator steps out of the run's total, with an ETA.

    Lightning's bar counts training batches per epoch (``n_critic`` per generator step, and the
    epoch length is an accident of the data set's size); this one runs once from the first to the
    last generator step of the run: ``n`` is ``pl_module.generator_step`` (so a resumed run starts
    where it stopped and its rate and ETA count only this session's steps), ``total`` is
    ``total_generator_steps`` or, when that is None, the ``GeneratorStepLimit``'s bound (no total
    without either). The postfix holds the latest validation's quality figures (integers as
    integers: ``val/modes_covered=8``) and any metric logged with ``prog_bar=True``; not the
    logger's version number.

    Args:
        total_generator_steps: the run's length in generator steps (``${generator_steps}``).
        refresh_rate: redraw every this many generator steps (0: no bar).
        process_position, leave: as for Lightning's ``TQDMProgressBar``.
    """

    def __init__(
        self,
        total_generator_steps: int | None = None,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
    ) -> None:
        if total_generator_steps is not None:
            check_int("total_generator_steps", total_generator_steps)
        check_int("refresh_rate", refresh_rate, 0)
        super().__init__(refresh_rate, process_position, leave)
        self.total_generator_steps = total_generator_steps

    @property
    def train_description(self) -> str:
        return "generator step"

    def total_steps(self, trainer: pl.Trainer) -> int | None:
        """The generator steps the run trains to, or None if nothing bounds them."""
        if self.total_generator_steps is not None:
            return self.total_generator_steps
        limits = [c for c in trainer.callbacks if isinstance(c, GeneratorStepLimit)]
        return min(limit.max_generator_steps for limit in limits) if limits else None

    def init_train_tqdm(self, total: int | None = None, initial: int = 0) -> Tqdm:
        """The training bar over ``total`` generator steps, starting at step ``initial`` (tqdm's
        rate, and so the ETA, then counts the steps of this session only)."""
        return Tqdm(
            desc=self.train_description,
            total=total,
            initial=initial,
            unit="step",
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm(
            self.total_steps(trainer), _generator_step(pl_module)
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        # One bar for the whole run: epochs mean nothing to a run bounded by generator steps.
        pass

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bar = self._train_progress_bar
        step = _generator_step(pl_module)
        if bar is None or bar.disable or step == bar.n:
            return  # a critic step: the generator step did not move
        if self.is_enabled and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self._train_progress_bar
        if bar is not None and not bar.disable:
            # The last step, whatever the refresh rate.
            bar.n = _generator_step(pl_module)
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
        super().on_train_end(trainer, pl_module)

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """The latest validation's quality figures and the ``prog_bar`` metrics, formatted
        (integer values without a decimal point, others to 3 significant digits)."""
        shown: dict[str, Any] = {}
        for prefix in _SHOWN_PREFIXES:
            for key, value in trainer.callback_metrics.items():
                if key.startswith(prefix):
                    shown[key.removeprefix("val/")] = value
        shown.update(trainer.progress_bar_metrics)
        return {key: format_value(value) for key, value in shown.items()}


def _generator_step(pl_module: pl.LightningModule) -> int:
    return int(getattr(pl_module, "generator_step", 0))


def format_value(value: Any) -> str:
    """A metric for people: ``8`` for an integer value (``8.0`` or a tensor of it), 3 significant
    digits otherwise."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    value = float(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3g}"
