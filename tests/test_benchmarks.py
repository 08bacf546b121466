"""The benchmark's FLOP count against a count by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
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
