"""LightningDataModules."""

from lit_gp.data.toy import ToyDataModule, sample_toy

__all__ = ["ToyDataModule", "sample_toy"]
