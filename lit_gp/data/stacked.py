"""Stacked digits: three independent 8x8 digits as the channels of one image, 1,000 modes.

The 8x8 counterpart of StackedMNIST (Metz et al. 2017; VEEGAN, PacGAN): each sample is
``(3, 8, 8)``, channel ``c`` a digit image drawn uniformly from a split of scikit-learn's digits,
the three draws independent; its label is the mode ``100 d0 + 10 d1 + d2`` of the channels'
digits. The digits are split into train and validation exactly as :class:`DigitsDataModule`
splits them (same ``val_fraction`` and ``seed``), so training stacks are made of training digits
only, validation stacks of held-out digits only, and the digits classifier trained on that
training split (the FID feature extractor of ``data=digits``) classifies the channels.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from lit_gp.data.images import (
    DigitsDataModule,
    ImageDataModule,
    _check_fraction,
    _Split,
    level_table,
)
from lit_gp.data.loading import EpochSampler, ResumableDataLoader, derived_generator
from lit_gp.errors import check_int

# RNG streams derived from the user's seed (toy.py uses 0-3, images.py 4-5).
_STREAM_TRAIN_STACKS, _STREAM_VAL_STACKS, _STREAM_REFERENCE_STACKS = 6, 7, 8

CHANNELS = 3
NUM_MODES = 10**CHANNELS


def mode_of_digits(digits: torch.Tensor) -> torch.Tensor:
    """The mode ``100 d0 + 10 d1 + d2`` of digits ``(..., 3)`` (int64, ``(...)``)."""
    weights = torch.tensor([10 ** (CHANNELS - 1 - c) for c in range(CHANNELS)], dtype=torch.int64)
    return (digits.long() * weights.to(digits.device)).sum(-1)


def draw_triples(num_digits: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3)`` int64 digit indices, each uniform over ``0..num_digits-1``, all independent."""
    return torch.randint(num_digits, (n, CHANNELS), generator=generator)


class _StackSplit(_Split):
    """Fixed stacks: digit indices ``(n, 3)`` into integer digit images ``(N, 1, 8, 8)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, triples: torch.Tensor) -> None:
        self.digit_images = images
        self.digit_labels = labels
        self.triples = triples
        self.labels = mode_of_digits(labels[triples])

    def pixels(self, index: int) -> torch.Tensor:
        return self.digit_images[self.triples[index], 0]

    def range_pixels(self, start: int, stop: int) -> torch.Tensor:
        return self.digit_images[self.triples[start:stop], 0]


class _StackDataset(Dataset):
    """Keyed by a triple of digit indices (from :class:`StackSampler`): ``(image, mode)`` with
    the image float32 ``(3, 8, 8)`` in [-1, 1], or the integer pixels to be dequantized on the
    device."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, max_level: int, integer_pixels: bool
    ) -> None:
        self.images = images
        self.labels = labels
        self.levels = None if integer_pixels else level_table(max_level)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, triple: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(triple, dtype=torch.int64)
        pixels = self.images[index, 0]
        image = pixels if self.levels is None else self.levels[pixels.long()]
        return image, mode_of_digits(self.labels[index])


class StackSampler(EpochSampler):
    """``n`` triples of digit indices per epoch, drawn from ``(seed, stream, epoch)`` alone, so an
    epoch's stacks (and a resume mid-epoch, through ``start``) do not depend on what ran
    before. Yields tuples, the keys of :class:`_StackDataset`."""

    def __init__(self, n: int, num_digits: int, seed: int, stream: int) -> None:
        super().__init__(n, seed, stream, shuffle=True)
        self.num_digits = num_digits

    def order(self, epoch: int) -> torch.Tensor:
        """The ``(n, 3)`` triples of ``epoch``, in the order they are drawn."""
        generator = derived_generator(self.seed, self.stream, epoch)
        return draw_triples(self.num_digits, self.n, generator)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        start, self.start = self.start, 0
        yield from (tuple(triple) for triple in self.order(self.epoch)[start:].tolist())


class StackedDigitsDataModule(ImageDataModule):
    """Stacked 8x8 digits: ``(3, 8, 8)`` images whose channels are three independent digits of
    scikit-learn's set (pixels 0..16); label ``100 d0 + 10 d1 + d2``, 1,000 classes (modes).

    - The 1,797 digits are split as :class:`DigitsDataModule` splits them (``val_fraction``,
      ``seed``): 1,438 training and 359 held-out digits at the defaults.
    - Training: ``num_train`` stacks per epoch (default 60,000, the size of MNIST's training set
      that StackedMNIST stacks), each channel uniform over the training digits, drawn afresh
      every epoch from ``(seed, epoch)``; resumable mid-epoch like the other loaders.
    - Validation: ``num_val`` fixed stacks of held-out digits.
    - :meth:`real_images` of ``"train"`` gives the first epoch's stacks.
    - :meth:`reference_stacks` draws any number of stacks of one split (the real-data
      reference of the mode metric).
    - :meth:`digit_classifier` is the cached digits classifier (the FID features of
      ``data=digits``), trained on the training digits, with its held-out accuracy.
    """

    name = "stacked_digits"
    max_level = DigitsDataModule.max_level
    num_classes = NUM_MODES
    _data_shape = (CHANNELS, 8, 8)

    def __init__(
        self,
        num_train: int = 60000,
        num_val: int = 1000,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        dequantize: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, dequantize)
        check_int("num_train", num_train)
        check_int("num_val", num_val)
        _check_fraction("val_fraction", val_fraction)
        self.save_hyperparameters()
        self.num_train = num_train
        self.num_val = num_val
        self.val_fraction = val_fraction
        # The digits, split as data=digits splits them (its train split trains the classifier).
        self.digits = DigitsDataModule(val_fraction=val_fraction, batch_size=1, seed=seed)
        self._check_batch_size(num_train)

    def _digit_split(self, split: str) -> _Split:
        return self.digits._split(split)

    def _load_splits(self) -> dict[str, _Split]:
        splits = {}
        for split, n, stream in (
            ("train", self.num_train, (_STREAM_TRAIN_STACKS, 0)),
            ("val", self.num_val, (_STREAM_VAL_STACKS,)),
        ):
            digits = self._digit_split(split)
            triples = draw_triples(len(digits), n, derived_generator(self.seed, *stream))
            splits[split] = _StackSplit(digits.images, digits.labels, triples)
        return splits

    def train_dataloader(self) -> ResumableDataLoader:
        """Fresh stacks of training digits every epoch (fixed by seed and epoch; resumable
        mid-epoch); the last partial batch is dropped. With ``dequantize`` the images are the
        integer pixels until :meth:`on_after_batch_transfer` adds the noise on the device."""
        self.setup()
        digits = self._digit_split("train")
        return ResumableDataLoader(
            _StackDataset(
                digits.images, digits.labels, self.max_level, integer_pixels=self.dequantize
            ),
            batch_size=self.batch_size,
            sampler=StackSampler(self.num_train, len(digits), self.seed, _STREAM_TRAIN_STACKS),
            drop_last=True,
            num_workers=self.num_workers,
            generator=derived_generator(self.seed, _STREAM_TRAIN_STACKS),
        )

    def reference_stacks(
        self, n: int, split: str = "val", stream: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` stacks of ``split``'s digits, float32 ``(n, 3, 8, 8)`` in [-1, 1], and their
        modes ``(n,)``: drawn from ``(seed, stream)``, the same for the same arguments and apart
        from the training and validation stacks."""
        check_int("n", n)
        check_int("stream", stream, 0)
        digits = self._digit_split(split)
        generator = derived_generator(self.seed, _STREAM_REFERENCE_STACKS, stream)
        stacks = _StackSplit(digits.images, digits.labels, draw_triples(len(digits), n, generator))
        return level_table(self.max_level)[stacks.range_pixels(0, n).long()], stacks.labels

    def digit_classifier(self, cache_dir: str | None = None, epochs: int = 10):
        """The digits classifier of :func:`lit_gp.metrics.features.cached_classifier` trained on
        the training digits (the same cached file as ``data=digits``' FID features at the same
        ``val_fraction``, ``seed`` and ``epochs``), and its accuracy on the held-out digits."""
        from lit_gp.metrics.features import cached_classifier

        return cached_classifier(
            self.digits.name,
            self.digits.real_images("train"),
            self.digits.real_images("val"),
            self.digits.num_classes,
            cache_dir=cache_dir,
            epochs=epochs,
        )
