"""LightningDataModules."""

from lit_gp.data.images import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from lit_gp.data.stacked import StackedDigitsDataModule
from lit_gp.data.toy import ToyDataModule, sample_toy

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "StackedDigitsDataModule",
    "ToyDataModule",
    "sample_toy",
]
