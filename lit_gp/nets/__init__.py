"""Generators and critics: plain ``nn.Module``s."""

from lit_gp.nets.classifier_nets import ConvClassifier, MLPClassifier
from lit_gp.nets.dcgan import DCGANCritic, DCGANGenerator
from lit_gp.nets.layers import MaskedReLU
from lit_gp.nets.mlp import MLPCritic, MLPGenerator
from lit_gp.nets.resnet import ResNetCritic, ResNetGenerator

__all__ = [
    "ConvClassifier",
    "DCGANCritic",
    "DCGANGenerator",
    "MLPClassifier",
    "MLPCritic",
    "MLPGenerator",
    "MaskedReLU",
    "ResNetCritic",
    "ResNetGenerator",
]
