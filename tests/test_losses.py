"""Adversarial losses against values computed by hand."""

import math

import pytest
import torch

from lit_gp.errors import ConfigError
from lit_gp.losses import (
    LOSSES,
    get_loss,
    hinge_critic,
    hinge_generator,
    non_saturating_critic,
    non_saturating_generator,
    wasserstein_critic,
    wasserstein_generator,
)

REAL_VALUES = [1.0, -2.0, 0.5]
FAKE_VALUES = [0.0, 3.0, -2.0, 0.5]
REAL = torch.tensor(REAL_VALUES, dtype=torch.float64)
FAKE = torch.tensor(FAKE_VALUES, dtype=torch.float64)


def _softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_wasserstein_critic():
    # mean(fake) = 1.5 / 4 = 0.375, mean(real) = -0.5 / 3
    expected = 0.375 - (-0.5 / 3)
    assert wasserstein_critic(REAL, FAKE).item() == pytest.approx(expected)


def test_wasserstein_generator():
    assert wasserstein_generator(FAKE).item() == pytest.approx(-0.375)


def test_non_saturating_critic():
    expected = _mean(_softplus(-r) for r in REAL_VALUES) + _mean(_softplus(f) for f in FAKE_VALUES)
    assert non_saturating_critic(REAL, FAKE).item() == pytest.approx(expected)


def test_non_saturating_generator():
    expected = _mean(_softplus(-f) for f in FAKE_VALUES)
    assert non_saturating_generator(FAKE).item() == pytest.approx(expected)


def test_non_saturating_at_zero_is_log_two():
    zeros = torch.zeros(5)
    assert non_saturating_critic(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert non_saturating_generator(zeros).item() == pytest.approx(math.log(2))


def test_non_saturating_is_stable_for_large_logits():
    # log(1 + exp(100)) = 100 + log(1 + exp(-100)) ~ 100; a naive float32 exp(100) is inf
    big = torch.full((3,), 100.0)
    assert non_saturating_critic(big, big).item() == pytest.approx(100.0)
    assert non_saturating_generator(-big).item() == pytest.approx(100.0)
    assert non_saturating_generator(big).item() == pytest.approx(0.0, abs=1e-30)


def test_non_saturating_generator_gradient():
    # d/df_i mean(softplus(-f)) = -sigmoid(-f_i) / n = -1 / (1 + exp(f_i)) / n
    fake = FAKE.clone().requires_grad_(True)
    non_saturating_generator(fake).backward()
    expected = torch.tensor([-1 / (1 + math.exp(f)) / 4 for f in FAKE_VALUES], dtype=torch.float64)
    torch.testing.assert_close(fake.grad, expected)


def test_hinge_critic():
    # relu(1 - real) = [0, 3, 0.5] -> 3.5 / 3; relu(1 + fake) = [1, 4, 0, 1.5] -> 6.5 / 4
    assert hinge_critic(REAL, FAKE).item() == pytest.approx(3.5 / 3 + 6.5 / 4)


def test_hinge_critic_is_zero_beyond_the_margin():
    assert hinge_critic(torch.tensor([1.0, 5.0]), torch.tensor([-1.0, -3.0])).item() == 0.0


def test_hinge_generator():
    assert hinge_generator(FAKE).item() == pytest.approx(-0.375)


def test_relativistic_pairing_on_given_scores():
    real, fake = REAL, FAKE[:3]
    pairs = list(zip(REAL_VALUES, FAKE_VALUES[:3], strict=True))
    loss = get_loss("relativistic_pairing")
    assert loss.generator_needs_real and loss.paired
    assert loss.critic(real, fake).item() == pytest.approx(
        _mean(_softplus(-(r - f)) for r, f in pairs)
    )
    # softplus(-(1 - 0)), softplus(-(-2 - 3)), softplus(-(0.5 + 2)) by hand:
    assert loss.critic(real, fake).item() == pytest.approx(
        (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(5)) + math.log(1 + math.exp(-2.5))) / 3
    )
    assert loss.generator_loss(fake, real).item() == pytest.approx(
        _mean(_softplus(-(f - r)) for r, f in pairs)
    )


def test_relativistic_pairing_depends_on_the_pairing():
    """Pairs, not batch means: swapping two fake scores changes the loss."""
    loss = get_loss("relativistic_pairing")
    swapped = FAKE[:3][[1, 0, 2]]
    assert loss.critic(REAL, FAKE[:3]).item() != pytest.approx(loss.critic(REAL, swapped).item())


def test_relativistic_average_on_given_scores():
    loss = get_loss("relativistic_average")
    real_mean, fake_mean = _mean(REAL_VALUES), _mean(FAKE_VALUES)
    assert loss.generator_needs_real and not loss.paired
    assert loss.critic(REAL, FAKE).item() == pytest.approx(
        _mean(_softplus(-(r - fake_mean)) for r in REAL_VALUES)
        + _mean(_softplus(f - real_mean) for f in FAKE_VALUES)
    )
    assert loss.generator_loss(FAKE, REAL).item() == pytest.approx(
        _mean(_softplus(-(f - real_mean)) for f in FAKE_VALUES)
        + _mean(_softplus(r - fake_mean) for r in REAL_VALUES)
    )


def test_get_loss_names():
    assert set(LOSSES) == {
        "wasserstein",
        "non_saturating",
        "hinge",
        "relativistic_pairing",
        "relativistic_average",
    }
    expected = {
        "wasserstein": (wasserstein_critic, wasserstein_generator),
        "non_saturating": (non_saturating_critic, non_saturating_generator),
        "hinge": (hinge_critic, hinge_generator),
    }
    for name, (critic, generator) in expected.items():
        loss = get_loss(name)
        assert loss.name == name
        assert loss.critic is critic
        assert loss.generator is generator


@pytest.mark.parametrize("name", ["wgan", "Hinge", "", "non-saturating"])
def test_get_loss_unknown_name(name):
    with pytest.raises(ConfigError) as excinfo:
        get_loss(name)
    assert excinfo.value.key == "loss"
    for known in LOSSES:
        assert known in str(excinfo.value)
