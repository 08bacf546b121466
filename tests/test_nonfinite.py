"""The non-finite guard: a NaN stops the run before it reaches the weights, with one line that
names the term and the generator step, and last.ckpt stays the last good state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import run_train

from lit_gp import GANModule
from lit_gp.callbacks import NonFiniteGuard
from lit_gp.errors import ConfigError, NonFiniteError
from lit_gp.objective import GANObjective, PenaltyTerm
from lit_gp.penalties import PenaltyResult
from lit_gp.training import train

EVERY_2 = ["generator_steps=8", "val_every_generator_steps=2", "model.n_critic=2"]


def inject_nan_scores(monkeypatch, at_generator_steps: set[int], n_critic: int = 2) -> None:
    """Critic scores turn NaN in the critic updates of the given generator steps (with
    ``n_critic`` critic updates each), as when a critic blows up."""
    critic_loss = GANObjective.critic_loss

    def nan_critic_loss(self, critic, real, fake, critic_step, loss_scale=None, **options):
        def nan_critic(x):
            return critic(x) * math.nan

        if critic_step // n_critic in at_generator_steps:
            # The adversarial loss sees NaN scores; the penalty its own (finite) critic.
            original = GANObjective.score
            monkeypatch.setattr(
                GANObjective,
                "score",
                lambda self, _critic, real, fake: original(self, nan_critic, real, fake),
            )
            try:
                return critic_loss(self, critic, real, fake, critic_step, loss_scale, **options)
            finally:
                monkeypatch.setattr(GANObjective, "score", original)
        return critic_loss(self, critic, real, fake, critic_step, loss_scale, **options)

    monkeypatch.setattr(GANObjective, "critic_loss", nan_critic_loss)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    compose_config, tmp_path: Path, monkeypatch
) -> None:
    inject_nan_scores(monkeypatch, {5})
    with pytest.raises(NonFiniteError) as caught:
        train(compose_config(*EVERY_2))
    message = str(caught.value)
    assert "\n" not in message
    assert "non-finite critic_loss in the critic update at generator step 5" in message
    assert "lower learning rate" in message

    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["lit_gp"]["generator_step"] == 4  # the save before the NaN, not overwritten
    assert all_finite(last["state_dict"])
    assert not (tmp_path / "metrics.json").exists()


def test_skip_drops_the_updates_and_counts_them(compose_config, tmp_path, monkeypatch) -> None:
    inject_nan_scores(monkeypatch, {3})
    cfg = compose_config(*EVERY_2, "callbacks.nonfinite_guard.action=skip")
    train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["lit_gp"]["generator_step"] == 8
    assert all_finite(last["state_dict"])
    # Both critic updates of generator step 3 were skipped.
    (guard_state,) = [
        state for name, state in last["callbacks"].items() if name.startswith("NonFiniteGuard")
    ]
    assert guard_state == {"skips": 2}

    inject_nan_scores(monkeypatch, {3, 4})
    cfg = compose_config(
        *EVERY_2, "callbacks.nonfinite_guard.action=skip", "callbacks.nonfinite_guard.max_skips=3"
    )
    with pytest.raises(NonFiniteError, match="after skipping 3, the limit"):
        train(cfg)


def test_a_nonfinite_gradient_is_named() -> None:
    """A finite loss can still give a NaN gradient (sqrt at 0): the message names the net."""
    module = GANModule(
        generator={"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 4},
        critic={"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 4},
    )
    critic_optimizer, _ = module.configure_optimizers()[0]
    module.optimizers = lambda: [critic_optimizer, None]  # as inside a fit
    module.loss_terms = {"critic_loss": torch.tensor(0.5)}
    for parameter in module.critic.parameters():
        parameter.grad = torch.zeros_like(parameter)
    next(module.critic.parameters()).grad[0] = math.nan
    with pytest.raises(NonFiniteError, match="non-finite gradient of the critic in the critic"):
        NonFiniteGuard().on_before_optimizer_step(None, module, critic_optimizer)
    # Finite everything: no complaint.
    next(module.critic.parameters()).grad.zero_()
    NonFiniteGuard().on_before_optimizer_step(None, module, critic_optimizer)


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ({"action": "ignore"}, "action"),
        ({"max_skips": -1}, "max_skips"),
        ({"check_data": "yes"}, "check_data"),
    ],
)
def test_guard_options_are_checked(arguments, key) -> None:
    with pytest.raises(ConfigError) as caught:
        NonFiniteGuard(**arguments)
    assert caught.value.key == key


@pytest.mark.slow
def test_train_py_reports_a_diverging_run_in_one_line(tmp_path: Path) -> None:
    # A learning rate of 1e30 overflows the critic within a few updates.
    result = run_train(
        "generator_steps=50",
        "model.critic_optimizer.lr=1e30",
        "logger=none",
        cwd=tmp_path,
        env={"WANDB_MODE": "disabled"},
    )
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "generator step 0" in errors[0]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/*.ckpt"))


def test_each_penalty_term_is_guarded_by_name(compose_config, tmp_path: Path, monkeypatch) -> None:
    """With several penalties (R3GAN's R1 + R2) a NaN in one term is caught and named."""
    loss = PenaltyTerm.loss

    def nan_in_r2(self, *args, **kwargs):
        if self.name == "r2" and not hasattr(self, "exact_function"):
            self.exact_function = self.function
            self.function = lambda *a, **k: PenaltyResult(
                self.exact_function(*a, **k).loss * math.nan, torch.zeros(1)
            )
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(PenaltyTerm, "loss", nan_in_r2)
    with pytest.raises(NonFiniteError) as caught:
        train(compose_config("model=r3gan", *EVERY_2, "model.n_critic=1"))
    assert "non-finite penalty/r2 in the critic update at generator step 0" in str(caught.value)
    assert not (tmp_path / "metrics.json").exists()
