"""Generators and critics: plain ``nn.Module``s."""

from lit_gp.nets.layers import MaskedReLU
from lit_gp.nets.mlp import MLPCritic, MLPGenerator

__all__ = ["MLPCritic", "MLPGenerator", "MaskedReLU"]
