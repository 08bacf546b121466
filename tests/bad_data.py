"""A data module with a NaN in its training data, for the bad-input catalogue (imported by
train.py in a subprocess through PYTHONPATH)."""

from __future__ import annotations

import math

from lit_gp.data import ToyDataModule


class ToyWithNaN(ToyDataModule):
    """8 Gaussians with one training point set to NaN (as a corrupt file or a bad transform
    would leave it)."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.train_data[:, 0] = math.nan
