"""How a ``train.py`` job ends: one line per failure; in a multirun a failed job is recorded and
the other jobs run.

A single run prints the line and exits: 2 for a bad value (:class:`ConfigError`), 3 for a
non-finite loss or data (:class:`NonFiniteError`), 128 + the signal after SIGTERM or Ctrl+C
(:class:`TrainingInterrupted`). In a multirun, where such an exit would end the whole sweep
(Hydra's ``run_job`` catches ``Exception``, not ``SystemExit``), a failed job instead

- prints its line and writes it to ``<job dir>/error.txt`` (an unexpected error also logs its
  traceback to the job's log);
- returns a :class:`FailedJob`, which is not a number: hydra-optuna-sweeper records the trial as
  failed (``TrialState.FAIL``) and the search goes on;

and :class:`JobCallback` (``hydra.callbacks`` in ``conf/config.yaml``) names the failed jobs at
the end and exits 1. A signal still stops the whole multirun.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lit_gp.errors import ConfigError, NonFiniteError, TrainingInterrupted, first_line

log = logging.getLogger(__name__)

# A failed multirun job's error line, in its job directory.
ERROR_FILE = "error.txt"


def describe_failure(error: BaseException) -> tuple[str, int]:
    """The one line and the exit status of an error that ends a job."""
    if isinstance(error, ConfigError):
        return f"error: {error}", 2
    if isinstance(error, NonFiniteError):
        return f"error: {error}", 3
    if isinstance(error, TrainingInterrupted):
        return f"interrupted: {error}", error.exit_status
    if isinstance(error, KeyboardInterrupt):
        return "interrupted: KeyboardInterrupt", 130
    return f"error: {type(error).__name__}: {first_line(error)}", 1


@dataclass(frozen=True)
class FailedJob:
    """What a failed job of a multirun returns instead of its metric. Deliberately not a number:
    hydra-optuna-sweeper 1.3 marks a trial whose value ``float()`` refuses as failed, while a NaN
    would make optuna 2.10's ``study.tell`` raise and end the search."""

    exit_status: int
    line: str

    def __str__(self) -> str:
        return f"failed job (exit status {self.exit_status}): {self.line}"


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """``task(cfg)``, ending as the module docstring says."""
    try:
        return task(cfg)
    except TrainingInterrupted as stop:
        print(
            f"interrupted: {stop}; resume with the same command plus ckpt_path=last",
            file=sys.stderr,
        )
        sys.exit(stop.exit_status)
    except (ConfigError, NonFiniteError) as error:
        line, status = describe_failure(error)
        if not _multirun():
            print(line, file=sys.stderr)
            sys.exit(status)
    except Exception as error:
        if not _multirun():
            raise  # a bug: Hydra prints the traceback
        log.exception("the job failed")
        line, status = describe_failure(error)
    print(line, file=sys.stderr, flush=True)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / ERROR_FILE).write_text(line + "\n")
    return FailedJob(status, line)


def check_output_folder(key: str, folder: Any) -> None:
    """Refuse an output folder that cannot be created (Hydra would fail with a traceback while
    making it): its nearest existing parent must be a writable folder."""
    path = Path(str(folder)).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ConfigError(key, f"cannot create the output folder {path}: {existing} {problem}")


def failed_jobs(sweep_dir: Path, since: float = 0.0) -> list[tuple[Path, str]]:
    """(job directory, error line) of the jobs under ``sweep_dir`` that failed since ``since``
    (a time stamp: an earlier multirun into the same folder does not count)."""
    failed = []
    for path in sorted(sweep_dir.rglob(ERROR_FILE)):
        if path.stat().st_mtime >= since:
            failed.append((path.parent, path.read_text().strip()))
    return failed


def _overrides(job_dir: Path) -> list[str]:
    try:
        return [str(item) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    except Exception:
        return []


def failure_report(sweep_dir: Path, since: float = 0.0) -> str | None:
    """Lines naming the jobs under ``sweep_dir`` that failed since ``since``, each with the
    overrides that set it apart from the other jobs and its error line; None when none failed."""
    failed = failed_jobs(sweep_dir, since)
    if not failed:
        return None
    jobs = [
        path.parent.parent
        for path in sweep_dir.rglob(".hydra/overrides.yaml")
        if path.stat().st_mtime >= since
    ]
    common = set.intersection(*(set(_overrides(job)) for job in jobs)) if jobs else set()
    lines = [f"error: {len(failed)} of {len(jobs)} jobs failed (each wrote {ERROR_FILE}):"]
    for job_dir, line in failed:
        own = ",".join(item for item in _overrides(job_dir) if item not in common)
        lines.append(f"  {job_dir} ({own}): {line}")
    return "\n".join(lines)


class JobCallback(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): before a run or multirun,
    refuse an output folder that cannot be created (one line, exit 2); after a multirun, name the
    jobs that failed and exit 1."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # File times are coarser than time.time() on some file systems.
        self.started = time.time() - 1.0
        self._check("hydra.sweep.dir", config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report = failure_report(Path(str(config.hydra.sweep.dir)), self.started)
        if report is not None:
            print(report, file=sys.stderr, flush=True)
            sys.exit(1)

    @staticmethod
    def _check(key: str, config: DictConfig) -> None:
        try:
            check_output_folder(key, OmegaConf.select(config, key))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
