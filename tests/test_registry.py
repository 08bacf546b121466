"""A new penalty is one function and one yaml, a new loss one definition and one yaml: both are
defined in this test module only and train through the composition train.py uses, with no other
file of the package changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from lit_gp import ConfigError, GANModule
from lit_gp.losses import AdversarialLoss
from lit_gp.penalties import PenaltyResult, at_least, gradient_penalty, register_penalty
from lit_gp.training import train


@register_penalty(
    points="real",
    scale="strength",
    norm_target="target",
    rules={"strength": at_least(0), "target": at_least(0)},
)
def real_norm_band(
    critic, points: Tensor, *, strength: float = 1.0, target: float = 2.0, loss_scale=None
) -> PenaltyResult:
    """strength * E[(||grad D(x)|| - target)^2] on real data (a test penalty)."""
    return gradient_penalty(critic, points, weight=strength, target=target, loss_scale=loss_scale)


def _least_squares_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    return 0.5 * ((real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean())


def _least_squares_generator(fake_scores: Tensor) -> Tensor:
    return 0.5 * (fake_scores - 1).pow(2).mean()


# Least-squares GAN (Mao et al. 2017), as a user would define it in their own package.
LEAST_SQUARES = AdversarialLoss("least_squares", _least_squares_critic, _least_squares_generator)


MODEL_YAML = """\
# The one yaml of the new penalty (a user's conf/model/real_norm_band.yaml).
defaults:
  - /base/gan@_here_
  - _self_

penalty:
  _target_: test_registry.real_norm_band
  strength: 3.0
  every: 1
loss: test_registry.LEAST_SQUARES
n_critic: 2
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "user_conf"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "real_norm_band.yaml").write_text(MODEL_YAML)
    return folder


def test_a_penalty_registered_elsewhere_trains_from_its_yaml(
    compose_config, config_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    cfg = compose_config(
        f"hydra.searchpath=[file://{config_dir}]",
        "model=real_norm_band",
        "logger=csv",
        "optimized_metric=train/penalty",
        output_dir=output,
    )
    assert cfg.model.penalty._target_ == "test_registry.real_norm_band"
    penalty = train(cfg)
    assert penalty > 0
    module = GANModule.load_from_checkpoint(output / "checkpoints" / "last.ckpt")
    assert module.generator_step == 3
    assert module.adversarial_loss is LEAST_SQUARES
    # The registry told the module which option is the weight and which the norm target.
    (term,) = module.penalty_terms
    assert term.controller.initial_weight == 3.0
    assert term.controller.norm_target == 2.0


def test_a_registered_penalty_declares_its_options_and_their_rules(
    compose_config, config_dir: Path
) -> None:
    search = f"hydra.searchpath=[file://{config_dir}]"
    cfg = compose_config(search, "model=real_norm_band", "model.penalty.strength=-1")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert error.value.key == "model.penalty.strength"
    cfg = compose_config(search, "model=real_norm_band", "+model.penalty.gamma=1")
    with pytest.raises(ConfigError, match="allowed: strength, target") as error:
        train(cfg)
    assert error.value.key == "model.penalty.gamma"
    # A pi controller binds to the declared scale and target, not to a table elsewhere.
    cfg = compose_config(search, "model=real_norm_band", "weight_controller=pi")
    module = GANModule(**{key: value for key, value in cfg.model.items() if key != "_target_"})
    assert module.weight_controller.initial_weight == 3.0
    assert module.weight_controller.held_norm == 2.0


def test_the_registered_penalty_computes_what_it_declares() -> None:
    # A linear critic has grad D = w everywhere: the penalty is strength * (||w|| - target)^2.
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)

    def critic(x: Tensor) -> Tensor:
        return x @ w

    real = torch.randn(6, 2, dtype=torch.float64)
    result = real_norm_band(critic, real, torch.zeros_like(real), strength=0.5)
    torch.testing.assert_close(result.loss, torch.tensor(0.5 * (5.0 - 2.0) ** 2, dtype=w.dtype))


def test_the_user_loss_is_the_least_squares_loss() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    # 0.5 * (mean((0, 2)^2) + mean((0, 2)^2)) = 0.5 * (2 + 2)
    assert float(LEAST_SQUARES.critic(real, fake)) == pytest.approx(2.0)
    # 0.5 * mean((-1, 1)^2) = 0.5
    assert float(LEAST_SQUARES.generator_loss(fake)) == pytest.approx(0.5)
