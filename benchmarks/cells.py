"""One training run of a benchmark sweep (a "cell"), run through train.py and measured.

Shared by ``benchmarks/quality.py`` (the results matrix) and ``benchmarks/adaptive_weight.py``
(the adaptive-weight sweep): both fill a grid of cells over several sessions, one JSON file per
finished cell, so a cell whose file exists is not run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Finished:
    """A run that ended: its final metrics (None when it failed), wall and CPU seconds, and the
    last line of its log (what went wrong, when it failed)."""

    metrics: dict[str, float] | None
    wall_seconds: float
    cpu_seconds: float
    last_line: str


def train(overrides: list[str], run_dir: Path, threads: int, timeout: float) -> Finished:
    """``python train.py <overrides>`` with the CSV logger into ``run_dir``, on ``threads``
    torch threads, killed after ``timeout`` seconds; W&B off."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *overrides,
        f"num_threads={threads}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "cell.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=run_dir.parent, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        # wait4 gives this child's own CPU time: unlike wall time, it does not grow with what
        # else the machine runs, so cells measured under different loads stay comparable.
        _, status, usage = os.wait4(process.pid, 0)
        timer.cancel()
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    metrics_file = run_dir / "metrics.json"
    failed = os.waitstatus_to_exitcode(status) != 0 or not metrics_file.exists()
    # Hydra ends its errors with a hint about HYDRA_FULL_ERROR: the line before says what failed.
    lines = [
        line for line in log_path.read_text().strip().splitlines() if "HYDRA_FULL_ERROR" not in line
    ]
    return Finished(
        metrics=None if failed else json.loads(metrics_file.read_text()),
        wall_seconds=round(wall, 1),
        cpu_seconds=round(cpu, 1),
        last_line=lines[-1] if lines else "",
    )


def history(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(generator step, value) of a logged key through a run, from its CSV log."""
    points = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                value, step = row.get(key), row.get("train/generator_step")
                if value and step:
                    points.append((int(float(step)), float(value)))
    return points


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores"


def save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def load(results: Path, pattern: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(results.glob(pattern))]


def add_sweep_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every sweep takes: parallel jobs and their threads, where results and runs
    go (``benchmarks/results/<name>``, ``outputs/<name>``), the timeout, --table-only and
    overrides for every cell."""
    parser.add_argument("--jobs", type=int, default=2, help="parallel training jobs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / name)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / name)
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per cell")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="Hydra overrides for every cell (e.g. generator_steps=1000); results then differ "
        "from the defaults' table: use another --results folder",
    )


def threads_per_job(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--threads, or the cores shared out between --jobs."""
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args.threads or max(1, (os.cpu_count() or 1) // args.jobs)


def run_all(todo: Sequence, jobs: int, threads: int, run: Callable[[object], dict]) -> None:
    """``run(cell)`` for every cell, ``jobs`` at a time."""
    print(f"{len(todo)} cells to run, {jobs} jobs x {threads} threads", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, todo))
