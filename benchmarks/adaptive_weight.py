"""Does an adaptive penalty weight make the initial weight not matter? The full-size sweep.

    python benchmarks/adaptive_weight.py                       # every cell (resumable)
    python benchmarks/adaptive_weight.py --data gaussians8 --models r1 --controllers fixed auc
    python benchmarks/adaptive_weight.py --table-only          # table and plot from the cells

A cell is one run with its data set's defaults (nets, steps, learning rate: no shrunken setup)
and one initial penalty weight, fixed or under a controller:

- toy data: ``python train.py model=<model> data=<data> seed=<seed> \\
  model.penalty.<weight key>=<weight> weight_controller=<controller>``;
- ``digits``: the same with ``experiment=wgangp_digits`` (model wgan_gp) or
  ``experiment=r1_digits`` (model r1) instead of model and data.

Each finished cell writes ``<results>/<data>/<model>/<controller>/weight<w>/seed<N>.json``
(final metrics, the weight's and the critic AUC's trajectories, wall and CPU time, command), and
is not run again, so the sweep fills over several sessions. Then the script writes
``<results>/adaptive_weight.md``: per data set and penalty, a row per controller and initial
weight (modes covered, high-quality fraction or FID, final weight, time; means over seeds) and
the target check (the worst start against the best fixed weight), and
``adaptive_weight.png``: the weight's trajectory from every initial weight, per controller.
Controllers that hold a gradient-norm target (pi, lagrangian) refuse the zero-centred R1: those
cells are skipped.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

import cells

ROOT = cells.ROOT
MODELS = ("wgan_gp", "r1")
DATA = ("gaussians8", "gaussians25", "digits")
CONTROLLERS = ("fixed", "balance", "auc", "norm_ratio", "pi", "lagrangian")
WEIGHTS = (0.01, 0.1, 1.0, 10.0, 100.0)
# The penalty option that is the weight, per model.
WEIGHT_KEY = {"wgan_gp": "weight", "r1": "gamma"}
# On digits a model runs as its CPU-sized experiment.
DIGITS_EXPERIMENT = {"wgan_gp": "wgangp_digits", "r1": "r1_digits"}
# Controllers that hold the gradient norm at the penalty's target refuse zero-centred penalties.
NEEDS_NORM_TARGET = {"pi", "lagrangian"}
ZERO_CENTRED = {"r1"}
FID = "val/fid_digits_classifier"
# Trajectory points kept per run (the CSV log has one every 10 generator steps).
TRAJECTORY_POINTS = 200


def folder(controller: str) -> str:
    """A controller (``name:option=value``) as a folder name that a Hydra override can carry
    (``=`` and ``:`` are part of the override grammar)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", controller)


def cell_path(results: Path, data: str, model: str, controller: str, weight: float, seed: int):
    return results / data / model / folder(controller) / f"weight{weight:g}" / f"seed{seed}.json"


def controller_overrides(controller: str) -> list[str]:
    """``name`` or ``name:option=value,option=value`` (a controller with other settings, e.g.
    ``lagrangian:multiplier_lr=0.01``) as Hydra overrides."""
    name, _, options = controller.partition(":")
    settings = [f"model.weight_controller.{item}" for item in options.split(",") if item]
    return [f"weight_controller={name}", *settings]


def controllers_in(records: list[dict]) -> list[str]:
    """The controllers of the records: fixed first, then the known ones, then variants."""
    present = {r["controller"] for r in records}
    known = [c for c in CONTROLLERS if c in present]
    return known + sorted(present - set(known))


def overrides(data: str, model: str, controller: str, weight: float, seed: int) -> list[str]:
    if data == "digits":
        base = [f"experiment={DIGITS_EXPERIMENT[model]}"]
    else:
        base = [f"model={model}", f"data={data}"]
    return [
        *base,
        f"seed={seed}",
        f"model.penalty.{WEIGHT_KEY[model]}={weight:g}",
        *controller_overrides(controller),
    ]


def thin(points: list[tuple[int, float]], keep: int = TRAJECTORY_POINTS) -> list:
    stride = max(1, math.ceil(len(points) / keep))
    kept = points[::stride]
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return [list(point) for point in kept]


def run_cell(
    cell: tuple[str, str, str, float, int],
    threads: int,
    results: Path,
    work: Path,
    timeout: float,
    extra: list[str],
) -> dict:
    data, model, controller, weight, seed = cell
    command = [*overrides(*cell), *extra]
    run_dir = work / data / model / folder(controller) / f"weight{weight:g}" / f"seed{seed}"
    run = cells.train(command, run_dir, threads, timeout)
    name = f"{data} {model} {controller} {weight:g} seed {seed}"
    if run.metrics is None:
        print(f"failed: {name}: {run.last_line}", flush=True)
        return {}
    record = {
        "data": data,
        "model": model,
        "controller": controller,
        "initial_weight": weight,
        "seed": seed,
        "wall_seconds": run.wall_seconds,
        "cpu_seconds": run.cpu_seconds,
        "threads": threads,
        "command": " ".join(["python train.py", *command]),
        "machine": cells.machine(),
        "metrics": run.metrics,
        "weight_trajectory": thin(cells.history(run_dir, "train/penalty_weight")),
        "auc_trajectory": thin(cells.history(run_dir, "train/critic_auc")),
    }
    cells.save(cell_path(results, *cell), record)
    print(f"{name}: {quality_text(data, [record])}, {run.cpu_seconds:.0f} s CPU", flush=True)
    return record


def _mean(records: list[dict], key: str) -> float:
    values = [r["metrics"][key] for r in records if key in r["metrics"]]
    return statistics.fmean(values) if values else float("nan")


def quality_text(data: str, records: list[dict]) -> str:
    if data == "digits":
        return f"FID {_mean(records, FID):.2f}"
    return (
        f"modes {_mean(records, 'val/modes_covered'):.1f}, "
        f"hq {100 * _mean(records, 'val/high_quality_fraction'):.1f}%"
    )


def table(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["data"], record["model"], record["controller"], record["initial_weight"])
        groups.setdefault(key, []).append(record)
    lines = []
    checks = []
    for data in [d for d in DATA if any(k[0] == d for k in groups)]:
        quality_columns = (
            "FID (digits classifier)" if data == "digits" else "modes | high-quality (%)"
        )
        for model in [m for m in MODELS if any(k[:2] == (data, m) for k in groups)]:
            lines += [
                "",
                f"**{data}, {model}**",
                "",
                f"| controller | initial weight | seeds | {quality_columns} | final weight | "
                "CPU min |",
                "|---" * (6 if data == "digits" else 7) + "|",
            ]
            best = _best_fixed(data, model, groups)
            for controller in controllers_in(records):
                weights = sorted(k[3] for k in groups if k[:3] == (data, model, controller))
                for weight in weights:
                    runs = groups[(data, model, controller, weight)]
                    if data == "digits":
                        quality = f"{_mean(runs, FID):.2f}"
                    else:
                        quality = (
                            f"{_mean(runs, 'val/modes_covered'):.1f} | "
                            f"{100 * _mean(runs, 'val/high_quality_fraction'):.1f}"
                        )
                    cpu = statistics.fmean(r["cpu_seconds"] for r in runs) / 60
                    lines.append(
                        f"| {controller} | {weight:g} | {len(runs)} | {quality} | "
                        f"{_mean(runs, 'train/penalty_weight'):.3g} | {cpu:.1f} |"
                    )
                if best is not None and weights:
                    checks.append(_check(data, model, controller, weights, groups, best))
    lines += ["", "Target check (every initial weight against the best fixed weight):", ""]
    lines += [f"- {check}" for check in checks]
    return "\n".join(lines).strip()


def summary(records: list[dict]) -> str:
    """One table for the README: a row per data set, penalty and controller, a column per
    initial weight (modes / high-quality %, or FID on digits; means over seeds), and how far
    the worst initial weight is behind the best fixed one (modes and high-quality points, or
    FID %)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["data"], record["model"], record["controller"], record["initial_weight"])
        groups.setdefault(key, []).append(record)
    header = ["data, penalty", "controller", *(f"from {w:g}" for w in WEIGHTS), "worst vs best"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for data in DATA:
        for model in MODELS:
            best = _best_fixed(data, model, groups)
            for controller in controllers_in(records):
                if not any(k[:3] == (data, model, controller) for k in groups):
                    continue
                cells, values, modes = [], [], []
                for weight in WEIGHTS:
                    runs = groups.get((data, model, controller, weight))
                    if not runs:
                        cells.append("not run")
                        continue
                    if data == "digits":
                        values.append(_mean(runs, FID))
                        cells.append(f"FID {values[-1]:.2f}")
                    else:
                        values.append(100 * _mean(runs, "val/high_quality_fraction"))
                        modes.append(_mean(runs, "val/modes_covered"))
                        cells.append(f"{modes[-1]:.0f} / {values[-1]:.1f}")
                if best is None:
                    worst = "no fixed baseline"
                elif data == "digits":
                    worst = f"{100 * (max(values) / best['fid'] - 1):+.0f}% FID"
                else:
                    worst = (
                        f"{best['modes'] - min(modes):.0f} modes, "
                        f"{best['hq'] - min(values):.1f} points"
                    )
                lines.append(f"| {data}, {model} | {controller} | {' | '.join(cells)} | {worst} |")
    return "\n".join(lines)


def _best_fixed(data: str, model: str, groups: dict) -> dict | None:
    """The best fixed weight's mean figures: lowest FID on digits, else highest high-quality
    fraction."""
    fixed = [runs for key, runs in groups.items() if key[:3] == (data, model, "fixed")]
    if not fixed:
        return None
    if data == "digits":
        runs = min(fixed, key=lambda r: _mean(r, FID))
        return {"fid": _mean(runs, FID), "weight": runs[0]["initial_weight"]}
    runs = max(fixed, key=lambda r: _mean(r, "val/high_quality_fraction"))
    return {
        "modes": _mean(runs, "val/modes_covered"),
        "hq": 100 * _mean(runs, "val/high_quality_fraction"),
        "weight": runs[0]["initial_weight"],
    }


def _check(data, model, controller, weights, groups, best) -> str:
    """Whether every initial weight lands within the target of the best fixed weight: 5 points
    of modes and of high-quality fraction on the gaussians, 10% of FID on digits."""
    runs = [groups[(data, model, controller, w)] for w in weights]
    head = f"{data}, {model}, {controller} ({len(weights)} initial weights)"
    if data == "digits":
        worst = max(_mean(r, FID) for r in runs)
        excess = 100 * (worst / best["fid"] - 1)
        verdict = "meets" if excess <= 10 else "misses"
        return (
            f"{head}: worst FID {worst:.2f} vs best fixed {best['fid']:.2f} (weight "
            f"{best['weight']:g}): {excess:+.0f}%, {verdict} the 10% target"
        )
    modes = [_mean(r, "val/modes_covered") for r in runs]
    hq = [100 * _mean(r, "val/high_quality_fraction") for r in runs]
    modes_gap, hq_gap = best["modes"] - min(modes), best["hq"] - min(hq)
    # Modes as a share of the data set's modes, so that "5 points" means the same on 8 and 25.
    total = 8 if data == "gaussians8" else 25
    modes_points = 100 * modes_gap / total
    verdict = "meets" if modes_points <= 5 and hq_gap <= 5 else "misses"
    return (
        f"{head}: worst {min(modes):.1f} modes, {min(hq):.1f}% high-quality vs best fixed "
        f"{best['modes']:.1f}, {best['hq']:.1f}% (weight {best['weight']:g}): "
        f"{modes_points:.0f} and {hq_gap:.1f} points behind, {verdict} the 5-point target"
    )


def plot(records: list[dict], path: Path) -> None:
    """The weight through training from each initial weight (seed 0 where present): a row per
    adaptive controller, a column per data set and penalty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adaptive = [c for c in controllers_in(records) if c != "fixed"]
    present = {(r["data"], r["model"], r["controller"]) for r in records}
    # The data sets and penalties some adaptive controller ran on; a panel per controller there.
    columns = [
        (d, m)
        for d in DATA
        for m in MODELS
        if any(p[:2] == (d, m) and p[2] != "fixed" for p in present)
    ]
    if not adaptive or not columns:
        return
    figure, axes = plt.subplots(
        len(adaptive),
        len(columns),
        figsize=(3.6 * len(columns), 2.8 * len(adaptive)),
        squeeze=False,
    )
    colours = plt.get_cmap("viridis")
    for row, controller in enumerate(adaptive):
        for column, (data, model) in enumerate(columns):
            axis = axes[row][column]
            if (data, model, controller) not in present:
                axis.set_visible(False)
                continue
            for index, weight in enumerate(WEIGHTS):
                runs = [
                    r
                    for r in records
                    if (r["data"], r["model"], r["controller"], r["initial_weight"])
                    == (data, model, controller, weight)
                ]
                if not runs:
                    continue
                run = min(runs, key=lambda r: r["seed"])
                steps = [0] + [p[0] for p in run["weight_trajectory"]]
                values = [weight] + [p[1] for p in run["weight_trajectory"]]
                axis.plot(
                    steps, values, color=colours(index / (len(WEIGHTS) - 1)), label=f"{weight:g}"
                )
            axis.set_yscale("log")
            axis.set_title(f"{controller}: {data}, {model}", fontsize=9)
            axis.set_xlabel("generator step", fontsize=8)
            axis.set_ylabel("penalty weight", fontsize=8)
            axis.grid(alpha=0.3)
    axes[0][0].legend(title="initial", fontsize=7, title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--controllers",
        nargs="+",
        default=["fixed", "auc"],
        help="controller names (conf/weight_controller/), or name:option=value,... for other "
        "settings (e.g. lagrangian:multiplier_lr=0.01)",
    )
    parser.add_argument("--weights", nargs="+", type=float, default=list(WEIGHTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    cells.add_sweep_arguments(parser, "adaptive_weight")
    args = parser.parse_args()
    threads = cells.threads_per_job(parser, args)
    if not args.table_only:
        todo = [
            (data, model, controller, weight, seed)
            for seed in args.seeds
            for data in args.data
            for model in args.models
            for controller in args.controllers
            for weight in args.weights
            if not (controller.partition(":")[0] in NEEDS_NORM_TARGET and model in ZERO_CENTRED)
            and not cell_path(args.results, data, model, controller, weight, seed).exists()
        ]
        cells.run_all(
            todo,
            args.jobs,
            threads,
            lambda cell: run_cell(
                cell, threads, args.results, args.work, args.timeout, args.override
            ),
        )
    records = cells.load(args.results, "*/*/*/weight*/seed*.json")
    if not records:
        print("no results yet")
        return 1
    markdown = "\n\n".join(
        [
            "Summary: modes / high-quality % (FID on digits) from each initial weight, means over "
            "seeds; the last column is the worst start behind the best fixed weight.",
            summary(records),
            table(records),
        ]
    )
    (args.results / "adaptive_weight.md").write_text(markdown + "\n")
    plot(records, args.results / "adaptive_weight.png")
    print(markdown)
    print(
        f"\nwrote {args.results / 'adaptive_weight.md'} and {args.results / 'adaptive_weight.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
