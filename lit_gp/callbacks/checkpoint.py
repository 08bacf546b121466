"""Checkpoints whose ``last.ckpt`` is always the final state of the run, also when it is
interrupted by SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_gp.errors import TrainingInterrupted

# Under manual optimization ModelCheckpoint(every_n_train_steps) warns that it saves the state
# after the optimizer step; for a GAN that is the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GANCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends or is stopped.

    Lightning's only writes ``last.ckpt`` together with a periodic save, so a run that stops
    between two saves (the generator-step limit rarely falls on one) would leave a stale
    ``last.ckpt``. The save happens inside the fit, on every rank, so under ``ddp_spawn`` it holds
    the counters and optimizer states that the launching process never sees.

    With ``save_on_signal`` (default) SIGTERM (preemption, ``kill``, SLURM's time limit) and
    SIGINT (Ctrl+C) let the current batch finish, write ``last.ckpt`` at the same point a periodic
    save would, and raise :class:`~lit_gp.errors.TrainingInterrupted` (``train.py`` turns it into
    one line and exit status 128 + the signal number). A second signal stops at once, as
    without the handler. lit_gp's trainer configs write checkpoint files through
    :class:`lit_gp.checkpoint_io.AtomicCheckpointIO`, so a crash while writing leaves the previous
    ``last.ckpt`` intact.
    """

    def __init__(self, *args: Any, save_on_signal: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_on_signal = save_on_signal
        self.received_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    @property
    def last_path(self) -> Path | None:
        if self.dirpath is None:
            return None
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    # --- signals --------------------------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received_signal is not None:
            # A second signal: stop now, as Python would without this handler.
            self._restore_handlers()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.received_signal = signum
        print(
            f"{signal.Signals(signum).name} received: finishing this batch and writing "
            f"{self.last_path} (send it again to stop at once)",
            flush=True,
        )

    def _install_handlers(self) -> None:
        # Python only lets the main thread install handlers (tests may fit in a thread).
        if not self.save_on_signal or threading.current_thread() is not threading.main_thread():
            return
        self.received_signal = None
        for signum in HANDLED_SIGNALS:
            # Replaces Lightning's SIGTERM notifier: its SIGTERMException would stop after
            # validation instead of at a batch end, where a checkpoint resumes exactly.
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._install_handlers()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.received_signal is None:
            return
        signum, self.received_signal = self.received_signal, None
        path = self.last_path or Path(trainer.default_root_dir) / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self._restore_handlers()
        raise TrainingInterrupted(
            signal.Signals(signum).name, getattr(pl_module, "generator_step", None), path
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
        super().teardown(trainer, pl_module, stage)

    # --- end of training ------------------------------------------------------------------------

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if not self.save_last or self.last_path is None:
            super().on_train_end(trainer, pl_module)
            return
        trainer.save_checkpoint(self.last_path, weights_only=False)
