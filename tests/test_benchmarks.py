"""The benchmark's FLOP count against a count by hand, its rows, and its compiled table."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

_spec = importlib.util.spec_from_file_location(
    "benchmarks_run", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
)
benchmarks_run = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = benchmarks_run  # dataclasses look their module up there
_spec.loader.exec_module(benchmarks_run)
Setup, critic_step_flops = benchmarks_run.Setup, benchmarks_run.critic_step_flops

LATENT, DIM, BATCH = 3, 5, 4


class LinearGenerator(nn.Linear):
    latent_dim = LATENT

    def __init__(self) -> None:
        super().__init__(LATENT, DIM)


class LinearCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, 1)

    def forward(self, points: Tensor) -> Tensor:
        return self.linear(points).squeeze(1)


SETUP = Setup("linear", LinearGenerator, LinearCritic, (DIM,), BATCH, 1.0)

# A product of (m x k) and (k x n) is 2mkn FLOPs. Un-penalized step: the generator's forward on
# B noise vectors (B x z x d), the critic's forward on the 2B real and fake points (2B x d x 1)
# and its weight gradient (1 x 2B x d); no input gradient, since the data needs none.
UNPENALIZED = 2 * BATCH * LATENT * DIM + 2 * (2 * 2 * BATCH * DIM)
# The penalty adds the critic's forward on B points (B x d x 1), their input gradient
# (ones (B x 1) times the weight (1 x d)), and in the backward the weight's gradient through
# that product (1 x B x d). The forward's value never reaches the penalty, so nothing else.
PENALTY = 3 * (2 * BATCH * DIM)


def test_unpenalized_step_flops_match_the_hand_count() -> None:
    assert critic_step_flops(SETUP, None, steps=2) == UNPENALIZED


@pytest.mark.parametrize("name", ["wgan_gp", "r1", "zero_gp"])
def test_penalized_step_adds_the_hand_counted_flops(name: str) -> None:
    penalty = {"_target_": f"lit_gp.penalties.{name}"}
    assert critic_step_flops(SETUP, penalty, steps=2) == UNPENALIZED + PENALTY


def test_lazy_penalty_flops_are_spread_over_its_interval() -> None:
    penalty = {"_target_": "lit_gp.penalties.wgan_gp", "every": 4}
    assert critic_step_flops(SETUP, penalty, steps=4) == UNPENALIZED + PENALTY / 4


# The finite-difference estimator reuses the adversarial pass's D(x) and adds the critic's forward
# on B perturbed points per direction (B x d x 1) and its weight gradient (1 x B x d); the points
# need no input gradient (data + noise), so there is no third product.
FINITE_DIFFERENCE_PENALTY = 2 * (2 * BATCH * DIM)
FINITE_DIFFERENCE = {"estimator": "finite_difference", "sigma": 0.01}


@pytest.mark.parametrize("name", ["r1", "r2"])
@pytest.mark.parametrize("directions", [1, 4])
def test_finite_difference_penalty_adds_a_forward_and_a_backward_per_direction(
    name: str, directions: int
) -> None:
    penalty = {
        "_target_": f"lit_gp.penalties.{name}",
        **FINITE_DIFFERENCE,
        "directions": directions,
    }
    expected = UNPENALIZED + directions * FINITE_DIFFERENCE_PENALTY
    assert critic_step_flops(SETUP, penalty, steps=2) == expected


@pytest.mark.parametrize(
    ("options", "per_term"), [({}, PENALTY), (FINITE_DIFFERENCE, FINITE_DIFFERENCE_PENALTY)]
)
def test_named_penalties_count_each_term(options: dict, per_term: int) -> None:
    penalty = {name: {"_target_": f"lit_gp.penalties.{name}", **options} for name in ("r1", "r2")}
    assert critic_step_flops(SETUP, penalty, steps=2) == UNPENALIZED + 2 * per_term


def test_critic_table_has_the_finite_difference_and_r3gan_rows() -> None:
    configs = benchmarks_run.penalty_configs(benchmarks_run.SETUPS["toy"])
    fd = configs["r1 finite difference"]
    assert fd["estimator"] == "finite_difference" and fd["sigma"] == 0.01
    assert fd["directions"] == 1 and fd["gamma"] == 10.0
    assert configs["r2 finite difference"]["_target_"] == "lit_gp.penalties.r2"
    assert set(configs["r1 + r2"]) == {"r1", "r2"}
    assert configs["r1 + r2 finite difference"]["r2"] == configs["r2 finite difference"]
    assert "max_gp" in configs
    assert set(benchmarks_run.COMPILED_PENALTIES) <= set(configs)


def test_toy_finite_difference_flop_ratio_lies_between_none_and_exact_r1() -> None:
    # Deterministic counts on the real toy setup: 10/7 and 11/7 of the un-penalized step.
    setup = benchmarks_run.SETUPS["toy"]
    configs = benchmarks_run.penalty_configs(setup)
    flops = {
        name: critic_step_flops(setup, configs[name], steps=1)
        for name in ("none", "r1", "r1 finite difference")
    }
    exact, estimate = flops["r1"] / flops["none"], flops["r1 finite difference"] / flops["none"]
    assert 1.0 < estimate < exact
    assert estimate == pytest.approx(10 / 7, abs=0.01)
    assert exact == pytest.approx(11 / 7, abs=0.01)


def test_flops_are_averaged_over_the_lazy_interval_only_when_there_is_one() -> None:
    configs = benchmarks_run.penalty_configs(benchmarks_run.SETUPS["toy"])
    intervals = {name: benchmarks_run.penalty_interval(spec) for name, spec in configs.items()}
    assert intervals["wgan_gp lazy 16"] == intervals["r1 lazy 16"] == 16
    assert {intervals[name] for name in configs if "lazy" not in name} == {1}
    named = {"r1": {"_target_": "lit_gp.penalties.r1", "every": 4}, "r2": {"every": 6}}
    assert benchmarks_run.penalty_interval(named) == 12


# --- the compiled table, with torch.compile's eager backend (no C++ compiler, seconds) --------


@pytest.fixture
def dynamo_reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_table_has_a_row_per_step_kind_and_penalty(monkeypatch, dynamo_reset) -> None:
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    configs = {
        "none": None,
        "r1 finite difference": {"_target_": "lit_gp.penalties.r1", **FINITE_DIFFERENCE},
    }
    runs = benchmarks_run.compiled_runs(SETUP, configs, rounds=1, steps=2, warmup=2, reset=True)
    rows = benchmarks_run.compiled_rows(runs, warmup=2)
    assert [row[0] for row in rows] == [
        f"{kind}, {name}" for kind in benchmarks_run.STEP_KINDS for name in configs
    ]
    for (_kind, _name, compiled), (run,) in runs.items():
        assert run.error is None and run.seconds > 0
        # Eager runs compile nothing; every compiled run compiles its graphs in its first batch
        # (the caches are cleared before each), and nothing after the warm-up.
        assert run.compile_steps == ((1,) if compiled else ())
        assert (run.graphs > 0) == compiled
    assert all(row[-1] == "0" and row[3].endswith("x") for row in rows)


def test_a_compiler_failure_is_reported_in_the_table(monkeypatch, dynamo_reset) -> None:
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=failing_backend))
    runs = benchmarks_run.compiled_runs(
        SETUP, {"none": None}, rounds=2, steps=1, warmup=1, reset=False
    )
    compiled = runs[("critic step", "none", True)]
    assert len(compiled) == 1  # not repeated
    assert "no C++ compiler here" in compiled[0].error
    row = benchmarks_run.compiled_rows(runs, warmup=1)[0]
    assert row[3].startswith("failed: ") and "no C++ compiler here" in row[3]


def test_only_takes_known_tables() -> None:
    assert benchmarks_run.parse_tables("critic, compiled") == ["critic", "compiled"]
    with pytest.raises(argparse.ArgumentTypeError):
        benchmarks_run.parse_tables("critic,flops")


# The benchmark scripts import their neighbours (benchmarks/cells.py), as when run as scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
_quality_spec = importlib.util.spec_from_file_location(
    "benchmarks_quality", Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
)
benchmarks_quality = importlib.util.module_from_spec(_quality_spec)
_quality_spec.loader.exec_module(benchmarks_quality)


@pytest.mark.slow
def test_a_matrix_cell_records_its_metrics_and_its_own_cpu_time(tmp_path: Path) -> None:
    results, work = tmp_path / "results", tmp_path / "work"
    fast = ["debug=fast", "model.generator.hidden_dim=16", "model.critic.hidden_dim=16"]
    record = benchmarks_quality.run_cell("gaussians8", "r1", 3, 1, results, work, 600, fast)
    saved = benchmarks_quality.load_records(results)
    assert saved == [record]
    # The record holds what train.py wrote at the end of the run, unchanged.
    run_dir = work / "gaussians8" / "r1" / "seed3"
    assert record["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"]["generator_step"] == 3 and "val/w1_distance" in record["metrics"]
    # The child's CPU time: at least the interpreter's start-up, at most its wall time on one
    # thread (plus a margin for library threads).
    assert 1 < record["cpu_seconds"] < 2 * record["wall_seconds"]
    assert "seed=3" in record["command"] and "debug=fast" in record["command"]
    table = benchmarks_quality.table(saved, ["r1", "dragan"], ["gaussians8"])
    assert "| `r1` | modes " in table and "min CPU); 1 seed |" in table
    assert "| `dragan` | not run |" in table
    # A failed cell writes nothing and says why.
    assert (
        benchmarks_quality.run_cell("gaussians8", "r1", 4, 1, results, work, 600, ["seed=x"]) == {}
    )
    assert not (results / "gaussians8" / "r1" / "seed4.json").exists()


def _quality_record(results: Path, data: str, model: str, seed: int, metrics: dict) -> None:
    path = results / data / model / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"data": data, "model": model, "seed": seed, "metrics": metrics}
    path.write_text(json.dumps({**record, "wall_seconds": 120.0, "cpu_seconds": 60.0}))


def test_a_partial_quality_call_keeps_every_cell_in_the_table(tmp_path: Path, monkeypatch) -> None:
    """--table-only (or a --rerun) of one data set and one model rewrites quality.md from every
    cell in the results folder, not from the selected piece only."""
    results = tmp_path / "results"
    ring = {"val/modes_covered": 8, "val/high_quality_fraction": 0.8}
    _quality_record(results, "gaussians8", "r1", 0, ring)
    _quality_record(results, "gaussians8", "dragan", 0, {**ring, "val/modes_covered": 6})
    _quality_record(results, "swissroll", "r1", 0, {"val/w1_distance": 0.07})
    # A data set the script no longer scores is left out, not a KeyError.
    _quality_record(results, "moons", "r1", 0, {"val/w1_distance": 0.1})
    argv = ["quality.py", "--table-only", "--results", str(results)]
    monkeypatch.setattr(sys, "argv", [*argv, "--data", "gaussians8", "--models", "r1"])
    assert benchmarks_quality.main() == 0
    written = (results / "quality.md").read_text()
    assert "| model | gaussians8 | swissroll |" in written
    assert "| `r1` | modes 8.0, hq 80.0%; 2.0 min (1.0 min CPU); 1 seed | W1 0.070;" in written
    assert "| `dragan` | modes 6.0, hq 80.0%; 2.0 min (1.0 min CPU); 1 seed | not run |" in written
    assert (results / "quality.png").stat().st_size > 0
