"""A generator whose samples are known by hand, for end-to-end checks of the toy metrics."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FixedPoints(nn.Module):
    """Ignores its noise and returns ``points`` in turn: sample i is ``points[i % len(points)]``.

    Its one parameter enters the output multiplied by 0, so training leaves the samples as they
    are (the gradient is 0) while the generator step still has a graph to backpropagate.
    """

    def __init__(self, points: list[list[float]], latent_dim: int = 2) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("points", torch.tensor(points, dtype=torch.float32))
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, noise: Tensor) -> Tensor:
        index = torch.arange(noise.shape[0], device=noise.device) % self.points.shape[0]
        return self.points[index] + 0 * self.unused
