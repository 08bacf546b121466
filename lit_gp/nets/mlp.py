"""Fully connected generator and critic (the WGAN-GP paper's toy networks)."""

from __future__ import annotations

from torch import Tensor, nn

from lit_gp.errors import ConfigError, check_int
from lit_gp.nets.layers import MaskedReLU


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        check_int(name, value)


NORMS = ("none", "layer", "batch")


def _norm_layer(norm: str, width: int) -> list[nn.Module]:
    if norm == "layer":
        return [nn.LayerNorm(width)]
    if norm == "batch":
        return [nn.BatchNorm1d(width)]
    return []


def _mlp(
    input_dim: int,
    output_dim: int,
    hidden_dim: int,
    num_layers: int,
    norm: str = "none",
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = input_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim), *_norm_layer(norm, hidden_dim), activation()]
        width = hidden_dim
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """Maps Gaussian noise of size ``latent_dim`` to points of size ``output_dim`` through
    ``num_layers`` ReLU layers of width ``hidden_dim`` (paper: 3 x 512, noise dim 2)."""

    def __init__(
        self, latent_dim: int = 2, output_dim: int = 2, hidden_dim: int = 512, num_layers: int = 3
    ) -> None:
        super().__init__()
        _check_positive(
            latent_dim=latent_dim,
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
        )
        self.latent_dim = latent_dim
        self.net = _mlp(latent_dim, output_dim, hidden_dim, num_layers)

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise)


class MLPCritic(nn.Module):
    """Scores points of size ``input_dim`` with ``num_layers`` ReLU layers of width
    ``hidden_dim`` and a linear output; returns shape (B,).

    ``norm`` is ``"none"`` (the paper's), ``"layer"`` or ``"batch"``; BatchNorm couples the
    samples of a batch, so the gradient penalties refuse a critic that has it.
    """

    def __init__(
        self, input_dim: int = 2, hidden_dim: int = 512, num_layers: int = 3, norm: str = "none"
    ) -> None:
        super().__init__()
        _check_positive(input_dim=input_dim, hidden_dim=hidden_dim, num_layers=num_layers)
        if norm not in NORMS:
            raise ConfigError("norm", f"must be one of {', '.join(NORMS)}, got {norm!r}")
        # MaskedReLU: the same function as ReLU, cheaper under a penalty's double backward.
        self.net = _mlp(input_dim, 1, hidden_dim, num_layers, norm, MaskedReLU)

    def forward(self, points: Tensor) -> Tensor:
        return self.net(points.flatten(1)).squeeze(1)
