"""Markdown table of an adaptive-weight sweep (``experiment=adaptive_weight``).

    python train.py -m experiment=adaptive_weight
    python benchmarks/adaptive_weight_table.py multirun/<date>/<time>

Reads every job's ``metrics.json`` (the final metrics train.py writes) and its
``.hydra/overrides.yaml`` (data, initial weight, controller, seed) and prints, per data set and
controller, one row per initial weight: final modes covered, high-quality fraction and
gradient-norm deviation mean |‖∇D‖ − 1| (mean over seeds), and the final penalty weight. Below
each block, the spread of the final high-quality fraction across initial weights (max − min):
the claim under test is that it is small for the adaptive controllers and large for a fixed
weight.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

CONTROLLERS = ("fixed", "pi", "lagrangian")


def read_job(directory: Path) -> tuple[tuple[str, str, float, str], dict[str, float]] | None:
    """((data, controller, initial weight, seed), final metrics) of one job, or None."""
    metrics_file = directory / "metrics.json"
    overrides_file = directory / ".hydra" / "overrides.yaml"
    if not metrics_file.is_file() or not overrides_file.is_file():
        return None
    overrides = dict(item.split("=", 1) for item in yaml.safe_load(overrides_file.read_text()))
    controller = overrides.get("weight_controller", "fixed")
    key = (
        overrides.get("data", "gaussians8"),
        "fixed" if controller == "null" else controller,  # weight_controller=null: fixed
        float(overrides["model.penalty.weight"]),
        overrides.get("seed", "0"),
    )
    return key, json.loads(metrics_file.read_text())


def table(root: Path) -> str:
    runs: dict[tuple[str, str, float], list[dict[str, float]]] = defaultdict(list)
    for metrics_file in sorted(root.rglob("metrics.json")):
        job = read_job(metrics_file.parent)
        if job is not None:
            (data, controller, weight, _seed), metrics = job
            runs[(data, controller, weight)].append(metrics)
    if not runs:
        raise SystemExit(f"error: no metrics.json with .hydra/overrides.yaml under {root}")

    def mean(values: list[dict[str, float]], key: str) -> float:
        return statistics.fmean(value.get(key, float("nan")) for value in values)

    lines = [
        "| data | controller | initial weight | seeds | modes covered | high-quality (%) | "
        "‖∇D‖ deviation | final weight |",
        "|---|---|---|---|---|---|---|---|",
    ]
    spreads = []
    for data in sorted({key[0] for key in runs}):
        for controller in CONTROLLERS:
            weights = sorted(key[2] for key in runs if key[:2] == (data, controller))
            quality = []
            for weight in weights:
                values = runs[(data, controller, weight)]
                quality.append(100 * mean(values, "val/high_quality_fraction"))
                lines.append(
                    f"| {data} | {controller} | {weight:g} | {len(values)} | "
                    f"{mean(values, 'val/modes_covered'):.1f} | {quality[-1]:.1f} | "
                    f"{mean(values, 'train/grad_norm_deviation'):.3f} | "
                    f"{mean(values, 'train/penalty_weight'):.3g} |"
                )
            if quality:
                spreads.append(f"{data}, {controller}: {max(quality) - min(quality):.1f} points")
    lines.append("")
    lines.append(
        "Spread of the high-quality fraction across initial weights: " + "; ".join(spreads)
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory of the sweep")
    args = parser.parse_args()
    print(table(args.sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
