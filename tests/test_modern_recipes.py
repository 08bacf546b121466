"""Several penalties per model, weight schedules, the R3GAN preset and torch.compile, against
values computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FAST_IMAGES, QUIET
from torch import nn

from lit_gp import GANModule
from lit_gp.errors import ConfigError
from lit_gp.losses import get_loss
from lit_gp.objective import GANObjective, build_penalty_terms
from lit_gp.schedules import Beta2Schedule, Constant, Cosine, Linear
from lit_gp.training import train

MLP_NETS = {
    "generator": {"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 8},
    "critic": {"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 8},
}
R1 = {"_target_": "lit_gp.penalties.r1", "gamma": 2.0}
R2 = {"_target_": "lit_gp.penalties.r2", "gamma": 4.0}


class LinearCritic(nn.Module):
    """D(x) = w . x: the same input gradient w everywhere, so ||grad D||^2 = ||w||^2."""

    def __init__(self, weight: list[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


W = [3.0, 4.0]  # ||w||^2 = 25
REAL = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
FAKE = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])


def critic_step(terms, critic_step=0, generator_step=0, loss="relativistic_pairing"):
    objective = GANObjective(get_loss(loss), terms)
    return objective.critic_loss(
        LinearCritic(W), REAL, FAKE, critic_step, generator_step=generator_step
    )


# --- several penalties -------------------------------------------------------------------------


def test_r1_plus_r2_adds_both_terms_logged_by_name() -> None:
    step = critic_step(build_penalty_terms({"r1": R1, "r2": R2}))
    real_scores, fake_scores = REAL @ torch.tensor(W), FAKE @ torch.tensor(W)
    adversarial = torch.nn.functional.softplus(-(real_scores - fake_scores)).mean()
    # (gamma / 2) ||w||^2 each: 1 * 25 and 2 * 25.
    assert step.logs["penalty/r1"].item() == pytest.approx(25.0)
    assert step.logs["penalty/r2"].item() == pytest.approx(50.0)
    assert step.loss.item() == pytest.approx(adversarial.item() + 75.0)
    assert step.logs["penalty_weight/r1"].item() == 2.0
    assert step.logs["grad_norm_mean/r2"].item() == pytest.approx(5.0)
    assert set(step.terms) == {"critic_loss", "penalty/r1", "penalty/r2"}


def test_a_named_term_keeps_its_name_when_alone() -> None:
    """model=r3gan model.penalty.r2=null: the remaining term still logs as penalty/r1, so a
    dashboard does not change keys when a term is dropped."""
    terms = build_penalty_terms({"r1": R1, "r2": None})
    assert [term.name for term in terms] == ["r1"]
    assert "penalty/r1" in critic_step(terms).logs
    # One unnamed spec keeps the plain keys.
    assert "penalty" in critic_step(build_penalty_terms(R1)).logs


def test_each_term_has_its_own_interval() -> None:
    terms = build_penalty_terms({"r1": {**R1, "every": 2}, "r2": R2})
    due = [[term.due(step) for term in terms] for step in range(4)]
    assert due == [[True, True], [False, True], [True, True], [False, True]]
    # The lazy term's loss is multiplied by its interval; logged without it.
    step = critic_step(terms, critic_step=0)
    assert step.loss.item() == pytest.approx(step.logs["critic_loss"].item() + 2 * 25.0 + 50.0)
    skipped = critic_step(terms, critic_step=1)
    assert skipped.terms.keys() == {"critic_loss", "penalty/r2"}


def test_each_term_builds_its_own_controller() -> None:
    pi = {"_target_": "lit_gp.penalty_weights.ProportionalIntegral"}
    gp = {"_target_": "lit_gp.penalties.wgan_gp", "weight": 1.0}
    lp = {"_target_": "lit_gp.penalties.wgan_lp", "weight": 3.0}
    terms = build_penalty_terms({"gp": gp, "lp": lp}, pi)
    assert terms[0].controller is not terms[1].controller
    assert [term.controller.weight for term in terms] == [1.0, 3.0]
    # A term's own controller wins over the module-wide one.
    lagrangian = {"_target_": "lit_gp.penalty_weights.AugmentedLagrangian"}
    terms = build_penalty_terms({"gp": {**gp, "weight_controller": lagrangian}, "lp": lp}, pi)
    assert [type(term.controller).__name__ for term in terms] == [
        "AugmentedLagrangian",
        "ProportionalIntegral",
    ]


@pytest.mark.parametrize(
    ("penalty", "controller", "key"),
    [
        ({"r1": {**R1, "gamma": -1}}, None, "penalty.r1.gamma"),
        ({"r1": {**R1, "every": 0}}, None, "penalty.r1.every"),
        ({"r1": {"gamma": 1}}, None, "penalty.r1"),
        ({"r1": {**R1, "schedule": {"_target_": "lit_gp.schedules.Cosine"}}}, None, "penalty.r1"),
        ({"r1": R1, "r2": R2}, {"_target_": "lit_gp.penalty_weights.ProportionalIntegral"}, None),
        ({"r1": None}, {"_target_": "lit_gp.penalty_weights.ProportionalIntegral"}, None),
    ],
    ids=["bad_gamma", "bad_every", "no_target", "bad_schedule", "pi_on_r1", "no_terms"],
)
def test_bad_penalty_terms_name_their_key(penalty, controller, key) -> None:
    with pytest.raises(ConfigError) as caught:
        build_penalty_terms(penalty, controller)
    assert "\n" not in str(caught.value)
    assert caught.value.key.startswith(key or "weight_controller")


# --- schedules ---------------------------------------------------------------------------------


def test_cosine_and_linear_schedules_by_hand() -> None:
    cosine = Cosine(start=1.0, end=0.1, steps=100)
    assert cosine(0) == 1.0
    assert cosine(50) == pytest.approx(0.55)  # the midpoint of the cosine
    assert cosine(25) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine(100) == pytest.approx(0.1)
    assert cosine(1000) == pytest.approx(0.1)
    linear = Linear(start=0.9, end=0.99, steps=10)
    assert [round(linear(step), 6) for step in (0, 5, 10, 20)] == [0.9, 0.945, 0.99, 0.99]
    assert Constant(0.3)(12345) == 0.3


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: Cosine(start=1.0, end=0.1, steps=0), "steps"),
        (lambda: Linear(start=math.nan, end=0.1, steps=10), "start"),
        (lambda: Constant("high"), "value"),
    ],
)
def test_bad_schedule_values_name_their_key(make, key) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.key == key


def test_the_schedule_scales_the_weight_at_the_generator_step() -> None:
    schedule = {"_target_": "lit_gp.schedules.Cosine", "start": 1.0, "end": 0.1, "steps": 10}
    terms = build_penalty_terms({"r1": {**R1, "schedule": schedule}})
    for generator_step, factor in [(0, 1.0), (5, 0.55), (10, 0.1), (30, 0.1)]:
        step = critic_step(terms, generator_step=generator_step)
        assert step.logs["penalty_weight/r1"].item() == pytest.approx(2.0 * factor)
        assert step.logs["penalty/r1"].item() == pytest.approx(25.0 * factor)


def test_beta2_schedule_sets_adams_beta2_and_leaves_the_rate() -> None:
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3, betas=(0.0, 0.9))
    scheduler = Beta2Schedule(optimizer, Cosine(start=0.9, end=0.99, steps=4))
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["betas"])
        optimizer.step()
        scheduler.step()
    expected = [0.9 + 0.09 * (1 - math.cos(math.pi * k / 4)) / 2 for k in range(5)]
    assert [beta1 for beta1, _ in seen] == [0.0] * 5
    assert [beta2 for _, beta2 in seen] == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    # Its checkpoint state is plain values (weights_only loading) and restores the step.
    state = scheduler.state_dict()
    assert "schedule" not in state and state["last_epoch"] == 5
    restored_optimizer = torch.optim.Adam([parameter], lr=1e-3, betas=(0.0, 0.9))
    restored = Beta2Schedule(restored_optimizer, Cosine(start=0.9, end=0.99, steps=4))
    restored.load_state_dict(state)
    restored.step()
    assert restored_optimizer.param_groups[0]["betas"][1] == pytest.approx(0.99)


# --- the relativistic loss in the module -------------------------------------------------------


def test_the_generator_step_pairs_fakes_with_the_critic_steps_real_batch() -> None:
    objective = GANObjective(get_loss("relativistic_pairing"))
    critic = LinearCritic(W)
    fake = FAKE.clone().requires_grad_(True)
    loss, _ = objective.generator_loss(critic, fake, REAL)
    real_scores, fake_scores = REAL @ torch.tensor(W), FAKE @ torch.tensor(W)
    expected = torch.nn.functional.softplus(-(fake_scores - real_scores)).mean()
    assert loss.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="needs a real batch"):
        objective.generator_loss(critic, fake, None)


def test_a_paired_loss_refuses_another_generator_batch_size() -> None:
    with pytest.raises(ConfigError) as caught:
        GANModule(**MLP_NETS, loss="relativistic_pairing", generator_batch_size=32)
    assert caught.value.key == "generator_batch_size"


def test_r3gan_trains_and_logs_each_term(compose_config, tmp_path) -> None:
    train(compose_config("model=r3gan"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("penalty", "penalty_weight", "grad_norm_mean"):
        assert f"train/{key}/r1" in metrics and f"train/{key}/r2" in metrics
    assert "train/penalty" not in metrics


def test_r3gan_preset_is_the_papers_cifar10_schedule(compose_config) -> None:
    cfg = compose_config("model=r3gan", "data=digits", "generator_steps=100", fast=FAST_IMAGES)
    module = GANModule(**{k: v for k, v in cfg.model.items() if k != "_target_"})
    r1, r2 = module.penalty_terms
    assert (r1.name, r2.name) == ("r1", "r2")
    assert r1.options["gamma"] == r2.options["gamma"] == 0.05
    assert r1.schedule(0) == 1.0 and r1.schedule(100) == pytest.approx(0.1)
    (critic_optimizer, _), schedulers = module.configure_optimizers()
    assert critic_optimizer.param_groups[0]["betas"] == (0.0, 0.9)
    assert len(schedulers) == 4  # cosine lr and beta2, for each optimizer
    for _ in range(100):
        schedulers[0].step()
        schedulers[1].step()
    assert critic_optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert critic_optimizer.param_groups[0]["betas"][1] == pytest.approx(0.99)


# --- torch.compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["r3gan", "wgan_gp", "r1"])
def test_compile_is_refused_for_exact_penalties(compose_config, model) -> None:
    with pytest.raises(ConfigError) as caught:
        train(compose_config(f"model={model}", "model.compile=true"))
    assert caught.value.key == "model.compile"
    assert "double backward" in str(caught.value)
    assert "\n" not in str(caught.value)
    # The hint names the key to set: each named term's own estimator in r3gan.
    estimator_key = "model.penalty.r1.estimator" if model == "r3gan" else "model.penalty.estimator"
    assert f"({estimator_key}=finite_difference" in str(caught.value)


def test_compile_must_be_a_bool() -> None:
    with pytest.raises(ConfigError) as caught:
        GANModule(**MLP_NETS, compile="yes")
    assert caught.value.key == "compile"


def test_compiled_nets_are_not_submodules() -> None:
    """Checkpoints keep the nets' own parameter names with compile=true."""
    module = GANModule(**MLP_NETS, penalty=None, compile=True)
    eager = GANModule(**MLP_NETS, penalty=None)
    assert module.state_dict().keys() == eager.state_dict().keys()
    assert module._step_nets["critic"] is not module.critic


def test_r3gan_experiments_compose(compose_config) -> None:
    paper = compose_config("experiment=r3gan_cifar10", fast=QUIET)
    assert paper.model.loss == "relativistic_pairing"
    assert list(paper.image_shape) == [3, 32, 32]
    assert paper.model.penalty.r1.gamma == paper.model.penalty.r2.gamma == 0.05
    assert paper.model.penalty.r1.schedule.end == 0.1  # gamma -> gamma / 10
    # 20M images at batch 512, the preset's decay horizon.
    assert (paper.data.batch_size, paper.generator_steps) == (512, 39063)
    assert paper.model.critic_scheduler[0].eta_min == 5e-5
    assert paper.model.critic_scheduler[1].schedule.end == 0.99
    digits = compose_config("experiment=r3gan_digits", fast=QUIET)
    assert digits.model.critic._target_ == "lit_gp.nets.DCGANCritic"
    assert (digits.generator_steps, digits.model.penalty.r1.gamma) == (10000, 1.0)
    assert "estimator" not in digits.model.penalty.r1
    fd = compose_config("experiment=r3gan_fd_digits", fast=QUIET)
    for term in ("r1", "r2"):
        assert fd.model.penalty[term].estimator == "finite_difference"
        assert fd.model.penalty[term].gamma == 1.0
    assert fd.generator_steps == 10000


@pytest.mark.slow
def test_r3gan_fd_trains_compiled(compose_config, tmp_path) -> None:
    """No double backward: the finite-difference R3GAN runs under torch.compile (inductor)."""
    train(compose_config("model=r3gan_fd", "model.compile=true"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["train/penalty/r1"]) and metrics["train/penalty/r2"] > 0
