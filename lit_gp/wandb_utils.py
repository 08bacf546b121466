"""W&B helpers: pick a mode without prompting, close runs, plot against generator steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import wandb
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lit_gp.errors import first_line

GENERATOR_STEP_KEY = "train/generator_step"


def _has_stored_credentials() -> bool:
    """Whether wandb would find credentials (env, netrc, settings files) without prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        from wandb.errors import AuthenticationError
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # older wandb: its own non-prompting lookup lives on wandb.api
        return bool(wandb.api.api_key)

    try:
        host = wandb_setup.singleton().settings.base_url
        # The same lookup wandb.init does (session, WANDB_API_KEY / identity token file, netrc,
        # settings files), minus the prompt and without storing the result in the session.
        auth = wbauth.authenticate_session(
            host=host, source="lit_gp", prompt=False, update_session=False
        )
    except AuthenticationError:
        # A key exists but is malformed: go online so wandb.init reports the real problem
        # instead of us silently logging offline.
        return True
    except Exception:
        # A private wandb API that changed shape: logging offline is the safe answer.
        return False
    return auth is not None


def choose_wandb_mode(save_dir: str | os.PathLike[str]) -> str:
    """Return the mode a ``WandbLogger`` should run in, never prompting for a login.

    ``WANDB_MODE`` wins if set. Otherwise ``"online"`` when wandb finds stored credentials, else
    ``"offline"`` with one printed line explaining how to upload the run later.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if _has_stored_credentials():
        return "online"
    print(f"W&B: no login found, {offline_hint(save_dir)}")
    return "offline"


def offline_hint(save_dir: str | os.PathLike[str]) -> str:
    """Where an offline run goes and how to upload it."""
    wandb_dir = Path(save_dir) / "wandb"
    return (
        f"logging offline to {wandb_dir}; upload later with: wandb sync {wandb_dir}/offline-run-*"
    )


class ResilientWandbLogger(WandbLogger):
    """A ``WandbLogger`` whose failures never stop training.

    While the network is down wandb itself keeps everything: its service process buffers and
    retries, and every row is also in the run's local ``.wandb`` file (``wandb sync`` uploads
    it later). What it cannot survive is its service process dying (killed, out of memory):
    every later ``log`` raises, and the rows it had not yet written to the ``.wandb`` file are
    lost with it (measured: a run's first seconds). So this logger also keeps the numeric rows
    in memory (a few floats per logged step); on the first failure it prints one line, writes
    them all with Lightning's ``CSVLogger`` to ``<save_dir>/wandb_fallback/metrics.csv`` and
    sends every later row there.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fallback: CSVLogger | None = None
        self._rows: list[tuple[dict[str, float], int | None]] = []

    def _failed(self, error: BaseException) -> CSVLogger:
        if self.fallback is None:
            save_dir = Path(self.save_dir or ".")
            self.fallback = CSVLogger(save_dir, name="wandb_fallback", version="")
            print(
                f"W&B: logging failed ({type(error).__name__}: {first_line(error)}); training "
                f"goes on, all metrics go to {Path(self.fallback.log_dir) / 'metrics.csv'}",
                flush=True,
            )
            for numbers, step in self._rows:
                self.fallback.log_metrics(numbers, step)
            self._rows = []
        return self.fallback

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numbers = {key: float(value) for key, value in metrics.items() if _is_number(value)}
        if self.fallback is None:
            try:
                super().log_metrics(metrics, step)
                if numbers:
                    self._rows.append((numbers, step))
                return
            except Exception as error:
                self._failed(error)
        if numbers:
            self.fallback.log_metrics(numbers, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if self.fallback is None:
            try:
                super().log_hyperparams(params, *args, **kwargs)
                return
            except Exception as error:
                self._failed(error)
        self.fallback.log_hyperparams(params)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self.fallback is None:
            try:
                super().after_save_checkpoint(checkpoint_callback)
            except Exception as error:
                self._failed(error)

    def save(self) -> None:
        if self.fallback is not None:
            self.fallback.save()

    def finalize(self, status: str) -> None:
        if self.fallback is not None:
            self.fallback.finalize(status)
            return
        try:
            super().finalize(status)
        except Exception as error:
            self._failed(error).finalize(status)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return hasattr(value, "numel") and value.numel() == 1


def finish_wandb(exit_code: int | None = None) -> None:
    """Finish the active W&B run, if any (a dead W&B service only prints a line).

    ``WandbLogger`` reuses an open run and never finishes it, so without this consecutive jobs of
    a Hydra multirun in one process would all log into the first job's run.
    """
    if wandb.run is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as error:
        print(f"W&B: could not finish the run ({first_line(error)}); its local files are kept")
        # Drop the dead service (and its exit hook, which would print a traceback at exit), so
        # the next job of a multirun starts a fresh one.
        try:
            wandb.teardown()
        except Exception:
            pass
        wandb.run = None


class RememberWandbRun(L.Callback):
    """Store the W&B run id in every checkpoint (``checkpoint["wandb_run_id"]``), so a resumed
    run continues the same W&B run instead of starting a new one."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        run_id = self.logger.version
        if run_id:
            checkpoint["wandb_run_id"] = str(run_id)


def mark_wandb_preempting() -> None:
    """Tell W&B the active run was preempted (it shows as such, not as crashed)."""
    if wandb.run is not None:
        wandb.mark_preempting()


def define_generator_step_axis(logger: Any) -> None:
    """Make W&B plot every metric (``train/*``, ``val/*`` and the rest) against the generator step.

    Lightning's ``global_step`` counts every optimizer step (critic and generator), so with
    ``n_critic`` critic updates it runs ``n_critic + 1`` times faster than training progresses.
    ``trainer/global_step`` is still logged on every row. No-op for loggers other than
    ``WandbLogger``.
    """
    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    run.define_metric(GENERATOR_STEP_KEY)
    # "*" is redefined too: WandbLogger already mapped "*" to trainer/global_step, and wandb-core
    # picks among overlapping globs in random (Go map) order, so without it a val/* key would land
    # on either axis (measured: 1-2 of 8 keys got the generator step).
    for pattern in ("train/*", "val/*", "*"):
        # step_sync fills in the last generator step on rows that lack it (e.g. an image row).
        run.define_metric(pattern, step_metric=GENERATOR_STEP_KEY, step_sync=True)
