"""Toy 2-D data sets of the WGAN-GP paper (8 Gaussians, 25 Gaussians, swiss roll)."""

from __future__ import annotations

import math

import lightning
import numpy as np
import torch
from sklearn.datasets import make_swiss_roll
from torch.utils.data import Dataset

from lit_gp.data.loading import EpochSampler, ResumableDataLoader, derived_generator
from lit_gp.errors import ConfigError

DATASETS = ("gaussians8", "gaussians25", "swissroll")

_R = 1.0 / math.sqrt(2.0)
# (unscaled centers, noise std around each center, divisor of the whole data set), as in the
# paper's gan_toy.py.
_GAUSSIAN_MIXTURES: dict[str, tuple[list[tuple[float, float]], float, float]] = {
    "gaussians8": (
        [
            (2.0 * x, 2.0 * y)
            for x, y in [
                (1, 0),
                (-1, 0),
                (0, 1),
                (0, -1),
                (_R, _R),
                (_R, -_R),
                (-_R, _R),
                (-_R, -_R),
            ]
        ],
        0.02,
        1.414,
    ),
    "gaussians25": (
        [(2.0 * x, 2.0 * y) for x in range(-2, 3) for y in range(-2, 3)],
        0.05,
        2.828,
    ),
}
_SWISSROLL_NOISE = 0.25
_SWISSROLL_DIVISOR = 7.5

# Independent RNG streams derived from the user's seed, so e.g. reference samples do not depend
# on whether the train split has been drawn.
_STREAM_TRAIN, _STREAM_VAL, _STREAM_REFERENCE, _STREAM_SHUFFLE = range(4)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ConfigError("dataset", f"must be one of {', '.join(DATASETS)}, got {dataset!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_positive_int(key: str, value: object) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")


def toy_modes(dataset: str) -> torch.Tensor | None:
    """Mode centers ``(k, 2)`` of ``dataset`` in data coordinates, or None for the swiss roll."""
    _check_dataset(dataset)
    if dataset not in _GAUSSIAN_MIXTURES:
        return None
    centers, _, divisor = _GAUSSIAN_MIXTURES[dataset]
    return (torch.tensor(centers, dtype=torch.float64) / divisor).float()


def toy_mode_std(dataset: str) -> float | None:
    """Per-coordinate std of each mode in data coordinates, or None for the swiss roll."""
    _check_dataset(dataset)
    if dataset not in _GAUSSIAN_MIXTURES:
        return None
    _, std, divisor = _GAUSSIAN_MIXTURES[dataset]
    return std / divisor


def sample_toy(dataset: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` points of ``dataset`` as a float32 tensor ``(n, 2)``, using only ``generator``."""
    _check_dataset(dataset)
    _check_positive_int("n", n)
    if dataset == "swissroll":
        # sklearn needs a numpy seed; take it from the generator to keep one source of randomness.
        state = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        points = make_swiss_roll(n, noise=_SWISSROLL_NOISE, random_state=state)[0][:, [0, 2]]
        return torch.from_numpy(points / _SWISSROLL_DIVISOR).float()
    centers, std, divisor = _GAUSSIAN_MIXTURES[dataset]
    centers_t = torch.tensor(centers, dtype=torch.float64)
    index = torch.randint(0, len(centers), (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return ((centers_t[index] + std * noise) / divisor).float()


class _Rows(Dataset):
    """Rows of a ``(n, d)`` tensor, so the default collate yields plain ``(B, d)`` batches."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


class ToyDataModule(lightning.LightningDataModule):
    """2-D toy data (``gaussians8``, ``gaussians25``, ``swissroll``); batches are ``(B, 2)``."""

    def __init__(
        self,
        dataset: str = "gaussians8",
        batch_size: int = 256,
        num_train: int = 100_000,
        num_val: int = 2_500,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        _check_dataset(dataset)
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("num_train", num_train)
        _check_positive_int("num_val", num_val)
        if batch_size > num_train:
            # drop_last=True would leave no training batch at all.
            raise ConfigError(
                "batch_size", f"must not exceed num_train ({num_train}), got {batch_size}"
            )
        if not _is_int(seed) or seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
        if not _is_int(num_workers) or num_workers < 0:
            raise ConfigError("num_workers", f"must be a non-negative integer, got {num_workers!r}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_train = int(num_train)
        self.num_val = int(num_val)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.modes: torch.Tensor | None = toy_modes(dataset)
        self.mode_std: float | None = toy_mode_std(dataset)
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return (2,)

    def setup(self, stage: str | None = None) -> None:
        """Draw the train and validation points (once)."""
        if self.train_data is None:
            gen = derived_generator(self.seed, _STREAM_TRAIN)
            self.train_data = sample_toy(self.dataset, self.num_train, gen)
        if self.val_data is None:
            gen = derived_generator(self.seed, _STREAM_VAL)
            self.val_data = sample_toy(self.dataset, self.num_val, gen)

    def reference_samples(self, n: int) -> torch.Tensor:
        """``n`` real points from their own RNG stream: fixed for given ``seed`` and ``n``."""
        return sample_toy(self.dataset, n, derived_generator(self.seed, _STREAM_REFERENCE))

    def _loader(self, data: torch.Tensor, train: bool) -> ResumableDataLoader:
        return ResumableDataLoader(
            _Rows(data),
            batch_size=self.batch_size,
            sampler=EpochSampler(len(data), self.seed, _STREAM_SHUFFLE, shuffle=train),
            drop_last=train,
            num_workers=self.num_workers,
            generator=derived_generator(self.seed, _STREAM_SHUFFLE),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled ``(batch_size, 2)`` batches; the last partial batch is dropped."""
        self.setup("fit")
        return self._loader(self.train_data, train=True)

    def val_dataloader(self) -> ResumableDataLoader:
        """All ``num_val`` validation points in order, in batches of ``batch_size``."""
        self.setup("validate")
        return self._loader(self.val_data, train=False)
