"""Layers for critics under gradient penalties."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskedReLU(nn.Module):
    """(Leaky) ReLU computed as ``x * mask`` with a mask that autograd treats as a constant.

    Values and first derivatives equal ``nn.ReLU`` / ``nn.LeakyReLU(negative_slope)`` (the mask
    is 1 where x > 0, else ``negative_slope``; 0 at x = 0 like torch's ReLU), except at
    x = -inf with slope 0, which gives NaN instead of 0. The difference is in
    a gradient penalty's double backward: through ``nn.ReLU`` autograd walks back along the
    forward activations with a second derivative that is exactly zero, through this layer it does
    not, which made a penalized critic step of the 3 x 512 MLP about 13% faster here.
    """

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        # x * mask measured faster here than masked_fill or where (which also avoid the one
        # difference from ReLU: -inf * 0 is NaN, where ReLU gives 0; a critic with infinite
        # pre-activations has diverged either way).
        positive = x > 0
        if self.negative_slope == 0:
            mask = positive.to(x.dtype)
        else:
            mask = torch.where(positive, 1.0, self.negative_slope).to(x.dtype)
        return x * mask

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"
