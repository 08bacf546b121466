"""Nets: MaskedReLU is ReLU / LeakyReLU with a cheaper double backward, nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_gp import ConfigError, penalties
from lit_gp.nets import MaskedReLU, MLPCritic, MLPGenerator


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_masked_relu_matches_relu_values_and_gradients(slope: float) -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    reference = nn.LeakyReLU(slope) if slope else nn.ReLU()
    expected_values = reference(x)
    (expected_gradient,) = torch.autograd.grad(expected_values.sum(), x)
    values = MaskedReLU(slope)(x)
    (gradient,) = torch.autograd.grad(values.sum(), x)
    torch.testing.assert_close(values, expected_values)
    # By hand: 1 above zero, the slope below, and 0 at zero as torch's ReLU has it.
    by_hand = [slope, slope, slope if slope else 0.0, 1.0, 1.0]
    torch.testing.assert_close(gradient, torch.tensor(by_hand, dtype=torch.float64))
    torch.testing.assert_close(gradient, expected_gradient)


@pytest.mark.parametrize("method", sorted(penalties.METHODS))
def test_mlp_critic_penalty_gradients_equal_those_with_nn_relu(method: str) -> None:
    torch.manual_seed(0)
    critic = MLPCritic(hidden_dim=32).double()
    relu_critic = MLPCritic(hidden_dim=32).double()
    relu_critic.load_state_dict(critic.state_dict())
    relu_critic.net = nn.Sequential(
        *[nn.ReLU() if isinstance(layer, MaskedReLU) else layer for layer in relu_critic.net]
    )
    real = torch.randn(16, 2, dtype=torch.float64)
    fake = torch.randn(16, 2, dtype=torch.float64)
    results = []
    for net in (critic, relu_critic):
        torch.manual_seed(1)
        loss = penalties.METHODS[method](net, real, fake).loss
        results.append((loss, torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)))
    (loss, gradients), (relu_loss, relu_gradients) = results
    torch.testing.assert_close(loss, relu_loss)
    for gradient, relu_gradient in zip(gradients, relu_gradients, strict=True):
        # A parameter the penalty does not depend on (the output bias) gets None on one side
        # and zeros on the other: nn.ReLU's double backward computes those zeros.
        if gradient is None or relu_gradient is None:
            other = relu_gradient if gradient is None else gradient
            assert other is None or torch.count_nonzero(other) == 0
        else:
            torch.testing.assert_close(gradient, relu_gradient)


def test_mlp_sizes_are_checked() -> None:
    with pytest.raises(ConfigError, match="hidden_dim"):
        MLPCritic(hidden_dim=0)
    with pytest.raises(ConfigError, match="norm"):
        MLPCritic(norm="group")
    with pytest.raises(ConfigError, match="latent_dim"):
        MLPGenerator(latent_dim=-1)
    assert MLPGenerator(latent_dim=3, output_dim=5)(torch.randn(4, 3)).shape == (4, 5)
    assert MLPCritic(input_dim=5)(torch.randn(4, 5)).shape == (4,)


def test_masked_relu_infinities_and_nan() -> None:
    x = torch.tensor([float("-inf"), float("inf"), float("nan"), -1.0])
    leaky = nn.LeakyReLU(0.2)
    torch.testing.assert_close(MaskedReLU(0.2)(x), leaky(x), equal_nan=True)
    # Slope 0: like ReLU except -inf, where -inf * 0 is NaN (the documented difference).
    values = MaskedReLU(0.0)(x)
    assert torch.isnan(values[0])
    torch.testing.assert_close(values[1:], nn.ReLU()(x)[1:], equal_nan=True)
