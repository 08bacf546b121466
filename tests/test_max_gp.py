"""MaxGP (Zhou et al. 2019; StudioGAN's ``cal_maxgrad_penalty``): weight * the largest squared
input-gradient norm over the batch at interpolates, against hand-computed values, and its yaml.

A linear critic has the same gradient at every point, so the maximum could not be told from the
mean; the quadratic critic D(x) = 0.5 x^T A x + b.x has grad D(x) = A x + b, different per sample.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lit_gp import ConfigError, GANModule
from lit_gp.penalties import METHODS, REGISTRY, check_options, max_gp, zero_gp
from lit_gp.training import train

F64 = torch.float64

A = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
B = torch.tensor([1.0, -1.0], dtype=F64)
# grad D = A x + b at each point, by hand:
#   (0, 0)  -> (1, -1):  ||.||^2 = 2
#   (1, 2)  -> (3, 1):   ||.||^2 = 10
#   (-1, 1) -> (-1, 0):  ||.||^2 = 1
POINTS = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, 1.0]], dtype=F64)
SQUARED = [2.0, 10.0, 1.0]


class QuadraticCritic(nn.Module):
    """D(x) = 0.5 x^T A x + b.x (A symmetric): grad D(x) = A x + b. Keeps its inputs."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(b.clone())
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return 0.5 * ((x @ self.a) * x).sum(1) + x @ self.b


def test_max_gp_at_the_points_themselves():
    # real == fake: every interpolate eps * x + (1 - eps) * x is x itself.
    critic = QuadraticCritic(A, B)
    result = max_gp(critic, POINTS, POINTS.clone(), weight=3.0)

    torch.testing.assert_close(critic.inputs[0], POINTS, rtol=0, atol=0)
    assert result.loss.item() == pytest.approx(3.0 * 10.0)  # weight * max(2, 10, 1)
    torch.testing.assert_close(result.grad_norm, torch.tensor(SQUARED, dtype=F64).sqrt())
    torch.testing.assert_close(result.squared_norm.detach(), torch.tensor(SQUARED, dtype=F64))
    # Not the mean of the zero-centred GP on the same points: weight * (2 + 10 + 1) / 3.
    mean = zero_gp(QuadraticCritic(A, B), POINTS, POINTS.clone(), weight=3.0).loss.item()
    assert mean == pytest.approx(13.0)


def test_max_gp_trains_only_through_the_largest_norm():
    """d/db ||A x* + b||^2 = 2 (A x* + b) at the maximizing point x* = (1, 2): only that sample
    reaches the parameters; d/dA_jk = 2 g_j x*_k, symmetrized by the quadratic form (the
    critic uses A through x^T A x, so dD/dx = 0.5 (A + A^T) x + b)."""
    weight = 0.5
    critic = QuadraticCritic(A, B)
    max_gp(critic, POINTS, POINTS.clone(), weight=weight).loss.backward()
    g = torch.tensor([3.0, 1.0], dtype=F64)
    x = torch.tensor([1.0, 2.0], dtype=F64)
    torch.testing.assert_close(critic.b.grad, weight * 2 * g)
    outer = torch.outer(g, x)
    torch.testing.assert_close(critic.a.grad, weight * (outer + outer.T))


def test_max_gp_at_interpolates_one_eps_per_sample():
    torch.manual_seed(0)
    real = torch.randn(64, 2, dtype=F64)
    fake = 3.0 + torch.randn(64, 2, dtype=F64)
    critic = QuadraticCritic(A, B)
    result = max_gp(critic, real, fake, weight=2.0)

    (points,) = critic.inputs
    # Each point lies on its segment with one eps per sample (the same in both coordinates).
    eps = (points - fake) / (real - fake)
    torch.testing.assert_close(eps[:, 0], eps[:, 1])
    assert ((eps >= 0) & (eps <= 1)).all()
    assert eps[:, 0].unique().numel() == 64
    # By hand at the recorded points: weight * max_i ||A x_i + b||^2.
    squared = ((points @ A + B) ** 2).sum(1)
    assert result.loss.item() == pytest.approx(2.0 * squared.max().item(), rel=1e-12)
    torch.testing.assert_close(result.grad_norm, squared.sqrt())


def test_max_gp_options_and_registry():
    method = REGISTRY["max_gp"]
    assert METHODS["max_gp"] is max_gp
    assert (method.points, method.scale, method.norm_target) == ("interpolates", "weight", 0.0)
    assert method.defaults == {"weight": 10.0}
    assert method.needs_double_backward({})
    with pytest.raises(ConfigError) as error:
        max_gp(QuadraticCritic(A, B), POINTS, POINTS, weight=-1.0)
    assert error.value.key == "weight"
    with pytest.raises(ConfigError) as error:
        check_options(max_gp, {"target": 1.0})
    assert error.value.key == "target"


def test_max_gp_loss_scale_is_undone():
    critic = QuadraticCritic(A, B)
    plain = max_gp(critic, POINTS, POINTS.clone(), weight=1.0)
    scaled = max_gp(critic, POINTS, POINTS.clone(), weight=1.0, loss_scale=1024.0)
    torch.testing.assert_close(scaled.loss, plain.loss)
    assert math.isclose(plain.loss.item(), 10.0)


# --- the yaml -----------------------------------------------------------------------------------


def test_max_gp_config_composes_with_studiogans_settings(compose_config):
    cfg = compose_config("model=max_gp", "data=digits", fast=["debug=fast"])
    assert cfg.model.penalty._target_ == "lit_gp.penalties.max_gp"
    assert cfg.model.penalty.weight == 10  # the image value (StudioGAN's LGAN.yaml)
    assert cfg.model.penalty.every == 1
    assert cfg.model.loss == "non_saturating"
    assert cfg.model.n_critic == 5
    # The toy data sets read their weight from conf/base/toy_data.yaml, if it names one.
    toy = compose_config("model=max_gp")
    assert toy.model.penalty.weight == toy.toy_penalty_weights.get("max_gp", 10)


def test_max_gp_config_trains(compose_config, tmp_path: Path):
    cfg = compose_config("model=max_gp", "optimized_metric=train/penalty")
    penalty = train(cfg)
    assert math.isfinite(penalty) and penalty >= 0
    module = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.generator_step == 3
    assert module.hparams.penalty["_target_"] == "lit_gp.penalties.max_gp"
    (term,) = module.penalty_terms
    # The toy weight of conf/base/toy_data.yaml (1; 10 on images).
    assert term.controller.initial_weight == cfg.toy_penalty_weights.max_gp == 1.0
