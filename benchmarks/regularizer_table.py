"""Markdown table of a regularizer comparison (``experiment=regularizer_comparison``).

    python train.py -m experiment=regularizer_comparison
    python benchmarks/regularizer_table.py multirun/<date>/<time>

Reads every ``results.json`` under the given directory (one per job, written by
:class:`lit_gp.classifier.GradientPenaltyClassifier` after its final test) and the job's
``.hydra/overrides.yaml`` for its ``regularizer`` and ``seed``, and prints, per regularizer, the
mean ± sample standard deviation over seeds of test accuracy, accuracy under Gaussian input noise
and under FGSM, the mean input-gradient norm ||grad_x CE|| and the training time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Table order; other regularizers follow alphabetically.
ORDER = ("none", "weight_decay", "dropout", "input_gradient")
# (results.json key, column title, scale, decimals)
COLUMNS = (
    ("test/accuracy", "test accuracy (%)", 100.0, 1),
    ("test/accuracy_noise", "noise σ={noise_std:g} (%)", 100.0, 1),
    ("test/accuracy_fgsm", "FGSM ε={fgsm_epsilon:g} (%)", 100.0, 1),
    ("test/input_grad_norm", "‖∇ₓ CE‖", 1.0, 3),
    ("train/time_s", "train time (s)", 1.0, 1),
)


@dataclass
class Run:
    path: Path
    regularizer: str
    seed: str
    results: dict[str, Any]


def _overrides(job_dir: Path) -> dict[str, str]:
    """``key=value`` overrides of a Hydra job as a dict (empty without ``.hydra``)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = {}
    for line in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(line).partition("=")
        pairs[key.lstrip("+~")] = value
    return pairs


def _choice(job_dir: Path, group: str) -> str | None:
    """The option of config ``group`` a job used (``.hydra/hydra.yaml``), or None."""
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    value = (hydra.get("runtime", {}).get("choices") or {}).get(group)
    return None if value is None else str(value)


def find_runs(root: Path) -> list[Run]:
    runs = []
    for results_path in sorted(root.rglob("results.json")):
        job_dir = results_path.parent
        overrides = _overrides(job_dir)
        regularizer = overrides.get("regularizer") or _choice(job_dir, "regularizer") or "?"
        runs.append(
            Run(
                path=job_dir,
                regularizer=regularizer,
                seed=overrides.get("seed", "?"),
                results=json.loads(results_path.read_text()),
            )
        )
    return runs


def _cell(values: list[float], scale: float, decimals: int) -> str:
    values = [value * scale for value in values if value is not None and math.isfinite(value)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def _setting(runs: list[Run], key: str) -> Any:
    values = {run.results.get(key) for run in runs}
    return values.pop() if len(values) == 1 else None


def table(runs: list[Run]) -> str:
    """The markdown table (and a note on the split and the settings) for ``runs``."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.regularizer, []).append(run)
    names = [name for name in ORDER if name in groups]
    names += sorted(name for name in groups if name not in ORDER)
    settings = {key: _setting(runs, key) for key in ("noise_std", "fgsm_epsilon")}
    titles = [
        title.format(**settings) if None not in settings.values() else title.split(" ")[0]
        for _, title, _, _ in COLUMNS
    ]
    lines = [
        "| regularizer | seeds | " + " | ".join(titles) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name in names:
        group = groups[name]
        seeds = ",".join(sorted({run.seed for run in group}))
        cells = [
            _cell([run.results.get(key) for run in group], scale, decimals)
            for key, _, scale, decimals in COLUMNS
        ]
        lines.append(f"| {name} | {len(group)} ({seeds}) | " + " | ".join(cells) + " |")
    splits = sorted({str(run.results.get("test_split")) for run in runs})
    lines += [
        "",
        f"Mean ± sample standard deviation over seeds; tested on the {'/'.join(splits)} split; "
        "training time excludes validation.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path, help="the sweep directory of the multirun")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        print(f"error: {args.multirun_dir} is not a directory", file=sys.stderr)
        return 2
    runs = find_runs(args.multirun_dir)
    if not runs:
        print(f"error: no results.json under {args.multirun_dir}", file=sys.stderr)
        return 1
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
