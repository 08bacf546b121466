"""Which penalty should I use? Every model with its defaults on every mode benchmark, one command.

    python benchmarks/quality.py                      # every cell, seeds 0 and 1, 2 parallel jobs
    python benchmarks/quality.py --data gaussians8 --models r1 r3gan --seeds 0 1 2
    python benchmarks/quality.py --table-only         # the table and plot from the results so far

Each cell is ``python train.py model=<model> data=<data> seed=<seed>`` with everything else at
its defaults (one torch thread per job when jobs share the cores). A finished cell writes
``<results>/<data>/<model>/seed<seed>.json`` (its final validation metrics, wall time, its own
CPU time, command and machine), so the matrix can be filled over several sessions: a cell whose
file exists is not run again (``--rerun`` forces it). Then the script writes
``<results>/quality.md`` (one markdown table of every cell in ``<results>``, whatever this call
selected to run: quality and time per cell, mean over seeds with the
range) and ``quality.png`` (quality against CPU time, one panel per data set, one colour per
model).

Quality per data set: gaussians8 and gaussians25 modes covered and high-quality fraction (VEEGAN
/ PacGAN protocol, 2,500 samples); swissroll the exact W1 distance between 2,500 generated and
2,500 real points (``val/w1_distance``, lower is better); stacked_digits modes covered of 1,000
and KL of the mode histogram from uniform (26,000 samples). Wall time is the whole run,
start-up and validations included, and depends on what else the machine runs; the CPU time
(``os.wait4``, the cell's process alone) does not, so the table gives both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import cells

ROOT = cells.ROOT
MODELS = (
    "wgan_gp",
    "wgan_lp",
    "zero_gp",
    "dragan",
    "r1",
    "r2",
    "wgan_div",
    "max_gp",
    "r3gan",
    "r3gan_fd",
)
DATA = ("gaussians8", "gaussians25", "swissroll", "stacked_digits")
# Per data set: extra overrides (the FID classifier of stacked digits is not meaningful yet) and
# the metrics that make a cell: (key, label, format).
EXTRA = {"stacked_digits": ["callbacks.image_metrics=null"]}
METRICS = {
    "gaussians8": [
        ("val/modes_covered", "modes", "{:.1f}"),
        ("val/high_quality_fraction", "hq", "{:.1%}"),
    ],
    "gaussians25": [
        ("val/modes_covered", "modes", "{:.1f}"),
        ("val/high_quality_fraction", "hq", "{:.1%}"),
    ],
    "swissroll": [("val/w1_distance", "W1", "{:.3f}")],
    "stacked_digits": [("val/modes_covered", "modes", "{:.0f}"), ("val/mode_kl", "KL", "{:.3f}")],
}

# The metric each panel of the plot shows.
PLOTTED = {
    "gaussians8": "val/high_quality_fraction",
    "gaussians25": "val/high_quality_fraction",
    "swissroll": "val/w1_distance",
    # Every model covers 989-1,000 of the 8x8 version's modes: the KL is what separates them.
    "stacked_digits": "val/mode_kl",
}
LOWER_IS_BETTER = {"val/w1_distance", "val/mode_kl"}


def cell_path(results: Path, data: str, model: str, seed: int) -> Path:
    return results / data / model / f"seed{seed}.json"


def run_cell(
    data: str,
    model: str,
    seed: int,
    threads: int,
    results: Path,
    work: Path,
    timeout: float,
    overrides: list[str],
) -> dict:
    """Train one cell through train.py and save its final metrics, wall time and CPU time."""
    cell = [f"model={model}", f"data={data}", f"seed={seed}", *EXTRA.get(data, []), *overrides]
    run = cells.train(cell, work / data / model / f"seed{seed}", threads, timeout)
    if run.metrics is None:
        print(f"failed: {data} {model} seed {seed}: {run.last_line}", flush=True)
        return {}
    record = {
        "data": data,
        "model": model,
        "seed": seed,
        "wall_seconds": run.wall_seconds,
        "cpu_seconds": run.cpu_seconds,
        "threads": threads,
        "command": " ".join(["python train.py", *cell]),
        "machine": cells.machine(),
        "metrics": run.metrics,
    }
    cells.save(cell_path(results, data, model, seed), record)
    summary = ", ".join(
        f"{label} {fmt.format(run.metrics[key])}"
        for key, label, fmt in METRICS[data]
        if key in run.metrics
    )
    print(
        f"{data} {model} seed {seed}: {summary}, {run.wall_seconds:.0f} s "
        f"({run.cpu_seconds:.0f} s CPU)",
        flush=True,
    )
    return record


def load_records(results: Path) -> list[dict]:
    return cells.load(results, "*/*/seed*.json")


def _spread(values: list[float], fmt: str) -> str:
    mean = fmt.format(statistics.fmean(values))
    if len(values) == 1:
        return mean
    return f"{mean} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(records: list[dict], models: list[str], data_sets: list[str]) -> str:
    """One markdown table: a row per model, a column per data set."""
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        by_cell.setdefault((record["data"], record["model"]), []).append(record)
    header = "| model | " + " | ".join(data_sets) + " |"
    lines = [header, "|---" * (len(data_sets) + 1) + "|"]
    for model in models:
        cells = []
        for data in data_sets:
            runs = by_cell.get((data, model), [])
            if not runs:
                cells.append("not run")
                continue
            parts = [
                f"{label} {_spread([run['metrics'][key] for run in runs], fmt)}"
                for key, label, fmt in METRICS[data]
                if all(key in run["metrics"] for run in runs)
            ]
            minutes = statistics.fmean(run["wall_seconds"] for run in runs) / 60
            time_text = f"{minutes:.1f} min"
            if all("cpu_seconds" in run for run in runs):
                cpu_minutes = statistics.fmean(run["cpu_seconds"] for run in runs) / 60
                time_text += f" ({cpu_minutes:.1f} min CPU)"
            seeds = f"{len(runs)} seed" + "s" * (len(runs) > 1)
            cells.append(f"{', '.join(parts)}; {time_text}; {seeds}")
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict], models: list[str], data_sets: list[str], path: Path) -> None:
    """Quality against CPU time (wall time for cells recorded before CPU time was): a panel per
    data set, a point per model (mean over seeds) and its seeds as small dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(data_sets), figsize=(4.2 * len(data_sets), 3.8))
    axes = [axes] if len(data_sets) == 1 else list(axes)
    colours = plt.get_cmap("tab10")
    for axis, data in zip(axes, data_sets, strict=True):
        key, label, _ = next(m for m in METRICS[data] if m[0] == PLOTTED[data])
        for index, model in enumerate(models):
            runs = [r for r in records if r["data"] == data and r["model"] == model]
            runs = [r for r in runs if key in r["metrics"]]
            if not runs:
                continue
            times = [r.get("cpu_seconds", r["wall_seconds"]) / 60 for r in runs]
            values = [r["metrics"][key] for r in runs]
            colour = colours(index % 10)
            axis.scatter(times, values, s=10, color=colour, alpha=0.4)
            axis.scatter(
                statistics.fmean(times),
                statistics.fmean(values),
                s=50,
                color=colour,
                label=model,
                edgecolors="black",
                linewidths=0.5,
            )
        axis.set_title(data)
        axis.set_xlabel("CPU time (min, one thread)")
        axis.set_ylabel(label + (" (lower is better)" if key in LOWER_IS_BETTER else ""))
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for axis in axes[1:]:
        for handle, name in zip(*axis.get_legend_handles_labels(), strict=True):
            if name not in labels:
                handles.append(handle)
                labels.append(name)
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10), fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rerun", action="store_true", help="run cells that have results too")
    cells.add_sweep_arguments(parser, "quality")
    args = parser.parse_args()
    threads = cells.threads_per_job(parser, args)

    if not args.table_only:
        todo = [
            (data, model, seed)
            for seed in args.seeds
            for data in args.data
            for model in args.models
            if args.rerun or not cell_path(args.results, data, model, seed).exists()
        ]
        cells.run_all(
            todo,
            args.jobs,
            threads,
            lambda cell: run_cell(
                *cell, threads, args.results, args.work, args.timeout, args.override
            ),
        )

    # The table and plot show every cell in the results folder, not only the cells this call
    # selected: a partial run (one data set, --rerun of a few cells) must not replace the full
    # table with a piece of it.
    records = load_records(args.results)
    if not records:
        print("no results yet")
        return 1
    # The models and data sets this script lists (it knows how to score those), in its order.
    models = [model for model in MODELS if any(r["model"] == model for r in records)]
    data_sets = [data for data in DATA if any(r["data"] == data for r in records)]
    markdown = table(records, models, data_sets)
    (args.results / "quality.md").write_text(markdown + "\n")
    plot(records, models, data_sets, args.results / "quality.png")
    print(markdown)
    print(f"\nwrote {args.results / 'quality.md'} and {args.results / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
