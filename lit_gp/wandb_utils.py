"""Loggers and W&B helpers: the logger factory, a W&B mode chosen without prompting, runs
finished (and marked failed) at the end of every job, metrics plotted against generator steps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig

from lit_gp.config import build
from lit_gp.errors import TrainingInterrupted, first_line

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
        # Lightning passes anonymous=None to wandb.init, which then warns that the setting has no
        # effect on every run.
        if getattr(self, "_wandb_init", {}).get("anonymous", "unset") is None:
            self._wandb_init.pop("anonymous")
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


def finish_wandb(exit_code: int | None = None, error_line: str | None = None) -> None:
    """Finish the active W&B run, if any (a dead W&B service only prints a line); with an
    ``error_line``, the run's summary keeps it under ``error`` (a non-zero ``exit_code`` marks the
    run failed).

    ``WandbLogger`` reuses an open run and never finishes it, so without this consecutive jobs of
    a Hydra multirun in one process would all log into the first job's run.
    """
    if wandb.run is None:
        return
    try:
        if error_line is not None:
            wandb.run.summary["error"] = error_line
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
    ``trainer/global_step`` is still logged on every row, in one unit on metric and image rows
    alike: Lightning's count of training batches (``n_critic`` per generator step), not
    ``trainer.global_step`` (see ``lit_gp.callbacks.periodic.lightning_log_step``). No-op for
    loggers other than ``WandbLogger``.
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


# --- the logger factory ------------------------------------------------------------------------


def _wandb_run_names() -> dict[str, str]:
    """Group a sweep's runs on W&B and name each run by its overrides."""
    if not HydraConfig.initialized():
        return {}
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return {}
    sweep = str(hydra_config.sweep.dir).strip("/").replace("/", "_")
    names = {"group": sweep}
    if hydra_config.job.override_dirname:
        names["name"] = hydra_config.job.override_dirname
    return names


def is_wandb_spec(spec: DictConfig) -> bool:
    """True when a logger spec builds a ``WandbLogger`` (or a subclass)."""
    try:
        return issubclass(get_class(spec.get("_target_", "")), WandbLogger)
    except Exception:
        return False


def saved_wandb_run_id(checkpoint: dict[str, Any] | None) -> str | None:
    """The W&B run id a checkpoint was written under (see RememberWandbRun), or None."""
    if checkpoint is None:
        return None
    run_id = checkpoint.get("wandb_run_id")
    return str(run_id) if run_id else None


def make_logger(spec: DictConfig | None, resume_run_id: str | None = None) -> Any:
    """The logger ``spec`` (``cfg.logger``) describes, or False for none (``logger=none``).

    W&B never prompts: without a login (or when the server does not answer) it logs offline and
    one line says how to sync. In a multirun the runs are grouped by the sweep directory and named
    by their overrides. Online, ``resume_run_id`` (from the checkpoint a run resumes) continues
    that W&B run.
    """
    if not spec:
        return False
    if not is_wandb_spec(spec):
        return build(spec, "logger")
    overrides: dict[str, Any] = {
        key: value for key, value in _wandb_run_names().items() if spec.get(key) is None
    }
    save_dir = spec.get("save_dir") or "."
    # WandbLogger(offline=True) sets WANDB_MODE=dryrun for the whole process, and wandb 0.31
    # then still asks for a login; wandb.init(mode="offline") does not.
    mode = "offline" if spec.get("offline") else choose_wandb_mode(save_dir)
    overrides["offline"] = False
    if mode in ("offline", "disabled"):
        overrides["mode"] = mode
    if mode == "online" and resume_run_id and spec.get("id") is None:
        overrides.update(id=resume_run_id, resume="allow")
    logger = build(spec, "logger", **overrides)
    if mode == "online":
        try:
            logger.experiment  # noqa: B018 (starts the run now, so a dead network shows here)
        except Exception as error:
            print(f"W&B: no online run ({first_line(error)}), {offline_hint(save_dir)}")
            overrides.pop("resume", None)
            overrides.pop("id", None)
            logger = build(spec, "logger", **overrides, mode="offline")
    return logger


def logger_callbacks(logger: Any) -> list[L.Callback]:
    """Callbacks a logger needs: a W&B run id remembered in every checkpoint."""
    return [RememberWandbRun(logger)] if isinstance(logger, WandbLogger) else []


@contextmanager
def wandb_run_closed(describe: Callable[[BaseException], tuple[str, int]]) -> Iterator[None]:
    """Finish the W&B run the block started, whatever happens in it (a multirun's next job would
    otherwise log into it): with exit code 0, or when the block raises, with the status and one
    line that ``describe(error)`` gives (kept in the run's summary under ``error``; the run shows
    as failed, or as preempted after SIGTERM)."""
    try:
        yield
    except BaseException as error:
        line, status = describe(error)
        if isinstance(error, TrainingInterrupted) and error.signal_name == "SIGTERM":
            mark_wandb_preempting()
        finish_wandb(status, line)
        raise
    finish_wandb(0)
