"""Image data sets as LightningDataModules: pixels in [-1, 1], batches ``(images, labels)``.

Every module keeps a split as integer pixels ``(C, H, W)`` with a known ``max_level`` (255 for
8-bit images, 16 for scikit-learn's digits) and maps a pixel ``k`` to ``2 k / max_level - 1``.
With ``dequantize=True`` training pixels get uniform noise as in the WGAN-GP paper's code,
``2 (k + u) / (max_level + 1) - 1`` with ``u ~ U[0, 1)``, so the data has a density. The noise is
added to the whole batch on the training device (``on_after_batch_transfer``), from the global
torch RNG in the main process: the same draws whatever the number of workers, and restored with
the rest of the random state when a run resumes.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.error import URLError

import lightning
import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from lit_gp.data.loading import EpochSampler, ResumableDataLoader, derived_generator
from lit_gp.errors import ConfigError, check_int, check_number, first_line

SPLITS = ("train", "val")

log = logging.getLogger(__name__)

# RNG streams derived from the user's seed (toy.py uses 0-3; distinct numbers keep one meaning
# per stream).
_STREAM_SPLIT, _STREAM_SHUFFLE = 4, 5

_DIGITS_COUNT = 1797  # sklearn.datasets.load_digits, documented and fixed
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Where Debian's package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`; also in
# Ubuntu) installs the four files above, gzipped: `dpkg -L dataset-fashion-mnist`. Read in
# place, never written to. There is no such package for MNIST.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# Images per class in the official training splits: a data set's files found under the other
# one's name (the four file names are the same) are refused instead of trained on.
_OFFICIAL_TRAIN_CLASS_COUNTS = {
    "MNIST": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "Fashion-MNIST": (6000,) * 10,
}
_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
# What reading a damaged data file raises: torchvision's CIFAR-10 reader (unpickling), and
# read_idx (ValueError, damaged .gz files included).
_READ_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    AssertionError,
    EOFError,
    pickle.UnpicklingError,
)


class ImageReadError(ConfigError):
    """A ConfigError that survives DataLoader workers.

    A worker's exception is re-raised in the main process as ``type(error)(formatted
    traceback)``; ConfigError needs two arguments, so torch would turn it into a RuntimeError
    carrying the whole traceback. With one argument this class recovers key and message from
    the traceback's last line (``...ImageReadError: root: cannot read image ...``).

    The torchvision data modules raise it from ``setup`` too (missing or damaged files): that
    runs inside ``trainer.fit``, where ``lit_gp.training.fit`` gives this class its ``data.``
    prefix.
    """

    def __init__(self, key: str, message: str | None = None) -> None:
        if message is None:
            lines = [line for line in key.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else key
            # "lit_gp.data.images.ImageReadError: root: cannot read image x.png: reason"
            parts = last.split(": ", 2)
            key, message = (parts[1], parts[2]) if len(parts) == 3 else ("root", last)
        super().__init__(key, message)


def _error_summary(error: BaseException) -> str:
    """One line: the first, plus the last when the first only announces a list (MNIST's
    download error is "Error downloading x.gz:" followed by one "Tried <mirror>" per mirror)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"
    return first_line(error)


def _check_bool(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")


def _check_fraction(key: str, value: object) -> None:
    check_number(key, value, 0, 1, strict=True, strict_maximum=True)


def _check_root(value: object) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ConfigError("root", f"must be a folder path, got {value!r}")
    return os.fspath(value)


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices of ``n`` items: a permutation derived from ``seed``; the validation
    split gets ``round(val_fraction * n)`` items, at least one."""
    n_val = max(1, round(val_fraction * n))
    if n_val >= n:
        raise ConfigError(
            "val_fraction",
            f"leaves no training images ({n} images, {n_val} for validation), got {val_fraction}",
        )
    order = torch.randperm(n, generator=derived_generator(seed, _STREAM_SPLIT))
    return order[n_val:], order[:n_val]


def level_table(max_level: int) -> torch.Tensor:
    """float32 ``2 k / max_level - 1`` for k = 0..max_level, each correctly rounded (computed
    in float64): pixel k maps to exactly the float32 nearest that value."""
    levels = torch.arange(max_level + 1, dtype=torch.float64)
    return (2.0 * levels / max_level - 1.0).float()


def dequantize_pixels(pixels: torch.Tensor, max_level: int) -> torch.Tensor:
    """``2 (k + u) / (max_level + 1) - 1`` as float32, ``u ~ U[0, 1)`` per pixel from the torch
    global RNG; each value stays below its bin's upper edge ``2 (k + 1) / (max_level + 1) - 1``
    (rounding to float32 alone could reach it)."""
    k = pixels.double()
    scale = 2.0 / (max_level + 1)
    noisy = ((k + torch.rand(k.shape, dtype=torch.float64, device=k.device)) * scale - 1.0).float()
    upper = ((k + 1.0) * scale - 1.0).float()
    return torch.minimum(noisy, torch.nextafter(upper, torch.full_like(upper, -math.inf)))


class _Split(ABC):
    """The images of one split: integer pixels ``(C, H, W)`` and int64 labels (-1: none)."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @abstractmethod
    def pixels(self, index: int) -> torch.Tensor:
        """Integer pixels ``(C, H, W)`` of one image."""

    @abstractmethod
    def range_pixels(self, start: int, stop: int) -> torch.Tensor:
        """Integer pixels ``(stop - start, C, H, W)`` of images ``start..stop-1``."""


class _TensorSplit(_Split):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def pixels(self, index: int) -> torch.Tensor:
        return self.images[index]

    def range_pixels(self, start: int, stop: int) -> torch.Tensor:
        return self.images[start:stop]


class _ImageDataset(Dataset):
    """``(image, label)`` pairs: float32 ``(C, H, W)`` in [-1, 1] (or the integer pixels, to be
    dequantized batch-wise on the device) and an int64 label."""

    def __init__(self, split: _Split, max_level: int, integer_pixels: bool) -> None:
        self.split = split
        self.levels = None if integer_pixels else level_table(max_level)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.split.pixels(index)
        image = pixels if self.levels is None else self.levels[pixels.long()]
        return image, self.split.labels[index]


class ImageDataModule(lightning.LightningDataModule, ABC):
    """Base of the image data modules.

    Batches are ``(images, labels)``: float32 ``(B, C, H, W)`` in [-1, 1] and int64 ``(B,)``
    (-1 when the data has no labels). Subclasses set ``name``, ``max_level``, ``num_classes``
    and ``_data_shape`` and implement ``_load_splits``.
    """

    name: str = "images"
    max_level: int = 255
    num_classes: int | None = None
    _data_shape: tuple[int, int, int]

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        dequantize: bool = False,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size)
        check_int("num_workers", num_workers, minimum=0)
        check_int("seed", seed, minimum=0)
        _check_bool("dequantize", dequantize)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.dequantize = dequantize
        self._splits: dict[str, _Split] | None = None

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, known before ``setup``."""
        return self._data_shape

    @abstractmethod
    def _load_splits(self) -> dict[str, _Split]:
        """Read the data: ``{"train": ..., "val": ...}``."""

    def _check_batch_size(self, num_train: int) -> None:
        if self.batch_size > num_train:
            # drop_last=True would leave no training batch at all.
            raise ConfigError(
                "batch_size",
                f"must not exceed the {num_train} training images of {self.name}, "
                f"got {self.batch_size}",
            )

    def setup(self, stage: str | None = None) -> None:
        """Read both splits (once)."""
        if self._splits is None:
            splits = self._load_splits()
            self._check_batch_size(len(splits["train"]))
            self._splits = splits

    def _split(self, split: str) -> _Split:
        if split not in SPLITS:
            raise ConfigError("split", f"must be one of {', '.join(SPLITS)}, got {split!r}")
        self.setup()
        return self._splits[split]

    def real_images(
        self, split: str = "train", n: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images of ``split`` as float32 ``(n, C, H, W)`` in [-1, 1], never
        dequantized, and their int64 labels ``(n,)``: all of them if ``n`` is None or larger
        than the split (callers that need exactly ``n`` compare ``len``)."""
        data = self._split(split)
        if n is not None:
            check_int("n", n)
        n = len(data) if n is None else min(n, len(data))
        levels = level_table(self.max_level)
        images = torch.empty((n, *self.data_shape), dtype=torch.float32)
        chunk = 1024  # bounds the int64 index copy (and the decoded files) held at once
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            images[start:stop] = levels[data.range_pixels(start, stop).long()]
        return images, data.labels[:n].clone()

    def reference_samples(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images (float32 in [-1, 1]; fewer if the split is
        smaller), e.g. for a grid of real images."""
        return self.real_images("val", n)[0]

    def _loader(self, split: str, train: bool) -> ResumableDataLoader:
        data = self._split(split)
        return ResumableDataLoader(
            _ImageDataset(data, self.max_level, integer_pixels=self.dequantize and train),
            batch_size=self.batch_size,
            sampler=EpochSampler(len(data), self.seed, _STREAM_SHUFFLE, shuffle=train),
            drop_last=train,
            num_workers=self.num_workers,
            generator=derived_generator(self.seed, _STREAM_SHUFFLE),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled training batches (the order of each epoch fixed by seed and epoch; resumable
        mid-epoch); the last partial batch is dropped. With ``dequantize`` the images are the
        integer pixels until :meth:`on_after_batch_transfer` adds the noise on the device."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> ResumableDataLoader:
        """All validation images in order, never dequantized."""
        return self._loader("val", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Dequantize a batch of integer pixels (training batches with ``dequantize``)."""
        images, labels = batch
        if images.is_floating_point():
            return batch
        return dequantize_pixels(images, self.max_level), labels


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled digits: 1,797 images ``(1, 8, 8)``, pixels 0..16, 10 classes.

    No download. Train/val are a permutation of all images derived from ``seed``.
    """

    name = "digits"
    max_level = 16
    num_classes = 10
    _data_shape = (1, 8, 8)

    def __init__(
        self,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        dequantize: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, dequantize)
        _check_fraction("val_fraction", val_fraction)
        self.save_hyperparameters()
        self.val_fraction = val_fraction
        self._train_index, self._val_index = _split_indices(_DIGITS_COUNT, val_fraction, seed)
        self._check_batch_size(len(self._train_index))

    def _load_splits(self) -> dict[str, _Split]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        if images.shape != (_DIGITS_COUNT, *self._data_shape):
            raise RuntimeError(f"unexpected digits shape {tuple(images.shape)}")
        return {
            "train": _TensorSplit(images[self._train_index], labels[self._train_index]),
            "val": _TensorSplit(images[self._val_index], labels[self._val_index]),
        }


class _TorchvisionDataModule(ImageDataModule):
    """A data set torchvision can download, read into integer tensors (no per-item PIL
    transform).

    Train split = the official train split, val split = its test split. :meth:`source` is the
    folder the files are read from: ``folder`` (where torchvision downloads to) unless a subclass
    looks in more places. ``download=True`` fetches them into ``folder`` when no place holds them
    (``prepare_data``, or ``setup`` when no trainer called it).
    """

    num_classes = 10
    title: str  # for messages: "MNIST", "Fashion-MNIST", "CIFAR-10"
    _files: tuple[str, ...]

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        dequantize: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, dequantize)
        self.root = _check_root(root)
        _check_bool("download", download)
        self.download = download
        if not download:
            self._require_files()
        # Subclasses add no arguments, so this frame holds all of them.
        self.save_hyperparameters()

    @property
    @abstractmethod
    def folder(self) -> str:
        """The folder torchvision downloads the files to (and reads them from)."""

    @abstractmethod
    def _dataset(self, train: bool, download: bool) -> torchvision.datasets.VisionDataset:
        """The torchvision data set of one split."""

    @abstractmethod
    def _read(self, folder: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer images ``(N, C, H, W)`` and int64 labels of one split, read from ``folder``."""

    def source(self) -> str | None:
        """The folder the files are read from; None when no place holds all of them."""
        complete = all(os.path.isfile(os.path.join(self.folder, name)) for name in self._files)
        return self.folder if complete else None

    def _missing_message(self) -> str:
        return (
            f"no {self.title} files in {self.folder} (expected {', '.join(self._files)}); "
            "set data.download=true to download them, or copy the files there"
        )

    def _download_hint(self) -> str:
        return f"copy the files to {self.folder} instead"

    def _require_files(self) -> str:
        source = self.source()
        if source is None:
            raise ImageReadError("root", self._missing_message())
        return source

    def _download(self) -> None:
        try:
            self._dataset(train=True, download=True)
        except (URLError, OSError, RuntimeError) as error:
            raise ImageReadError(
                "download",
                f"could not download {self.title} to {self.root} ({_error_summary(error)}); "
                + self._download_hint(),
            ) from None

    def prepare_data(self) -> None:
        """Download the files if asked and no place holds them (Lightning calls this on one
        process)."""
        if self.download and self.source() is None:
            self._download()

    def _check_train_labels(self, labels: torch.Tensor, source: str) -> None:
        """Refuse files that are readable but hold another data set (nothing to check here)."""

    def _load_splits(self) -> dict[str, _Split]:
        # Errors here are ImageReadErrors: raised inside trainer.fit, they are the ones
        # lit_gp.training.fit prefixes with "data." (as it does for a bad image file).
        self.prepare_data()
        source = self._require_files()
        log.info("%s: reading the files in %s", self.title, source)
        splits = {}
        for split, train in (("train", True), ("val", False)):
            try:
                images, labels = self._read(source, train)
            except _READ_ERRORS as error:
                message = f"cannot read the {self.title} files in {source}: "
                raise ImageReadError("root", message + _error_summary(error)) from None
            if tuple(images.shape[1:]) != self.data_shape or len(labels) != len(images):
                raise ImageReadError(
                    "root",
                    f"the {self.title} files in {source} hold {len(images)} images of shape "
                    f"{tuple(images.shape[1:])} and {len(labels)} labels; expected images of "
                    f"shape {self.data_shape}, one label each",
                )
            splits[split] = _TensorSplit(images, labels)
        self._check_train_labels(splits["train"].labels, source)
        return splits


def _idx_path(folder: str, name: str) -> str | None:
    """``folder/name``, else ``folder/name.gz``; None when neither is a file."""
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file of unsigned bytes with ``ndim`` dimensions, read directly
    from ``.gz`` files (by suffix). The format (yann.lecun.com/exdb/mnist): the magic number
    ``0x0800 + ndim`` (two zero bytes, type 0x08 = unsigned byte, ``ndim``) and the ``ndim``
    sizes, all big-endian 32-bit, then the bytes in row-major order and nothing after.

    Raises ValueError naming the file for anything else (damaged gzip data included).
    """
    name = os.path.basename(path)
    header_size = 4 * (1 + ndim)
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as file:
            header = file.read(header_size)
            if len(header) < header_size:
                raise ValueError(f"{len(header)} bytes, shorter than an IDX header")
            magic, *sizes = struct.unpack(f">{1 + ndim}I", header)
            if magic != 0x0800 + ndim:
                raise ValueError(
                    f"magic number {magic:#010x}, expected {0x0800 + ndim:#010x} (IDX file of "
                    f"unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''})"
                )
            count = math.prod(sizes)
            data = file.read(count)  # never more than the file holds
            extra = file.read(1)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ValueError(f"{name}: {first_line(error)}") from None
    if len(data) != count or extra:
        held = "more than" if extra else f"{len(data)} bytes, not"
        raise ValueError(f"{name}: its data is {held} the {count} bytes of sizes {tuple(sizes)}")
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(sizes)


class _MNISTLikeDataModule(_TorchvisionDataModule):
    """The four IDX files of MNIST's format (uncompressed or ``.gz``), read by :func:`read_idx`;
    torchvision only downloads them."""

    max_level = 255
    _data_shape = (1, 28, 28)
    _files = _MNIST_FILES
    _torchvision_class: type[torchvision.datasets.MNIST]

    @property
    def folder(self) -> str:
        # torchvision reads <root>/<class name>/raw: MNIST/raw, FashionMNIST/raw. (Subclassing
        # torchvision's class would move the folder, so it is used as is.)
        return os.path.join(self.root, self._torchvision_class.__name__, "raw")

    def _places(self) -> list[str]:
        """The folders that may hold the files, in lookup order."""
        return [self.folder, self.root]

    def _fixes(self) -> str:
        return f"set data.download=true to download them, or copy the files to {self.root}"

    def source(self) -> str | None:
        """The first of :meth:`_places` holding all four files (each uncompressed or ``.gz``);
        None when none does."""
        for place in self._places():
            if all(_idx_path(place, name) for name in self._files):
                return place
        return None

    def _missing_message(self) -> str:
        *first, last = self._places()
        return (
            f"no {self.title} files in {', '.join(first)} or {last} "
            f"(expected {', '.join(self._files)}, each uncompressed or .gz); {self._fixes()}"
        )

    def _dataset(self, train: bool, download: bool) -> torchvision.datasets.MNIST:
        return self._torchvision_class(self.root, train=train, download=download)

    def _read(self, folder: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "train" if train else "t10k"
        paths = [
            _idx_path(folder, name) or os.path.join(folder, name)
            for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
        ]
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
        if labels.size and labels.max() >= self.num_classes:
            raise ValueError(
                f"{os.path.basename(paths[1])}: label {labels.max()} is not a class 0..9"
            )
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    def _check_train_labels(self, labels: torch.Tensor, source: str) -> None:
        # MNIST and Fashion-MNIST files have the same names: tell them apart by the official
        # training split's class counts.
        counts = tuple(torch.bincount(labels, minlength=self.num_classes).tolist())
        for title, official in _OFFICIAL_TRAIN_CLASS_COUNTS.items():
            if title != self.title and counts == official:
                raise ImageReadError(
                    "root",
                    f"the files in {source} are {title}'s (its training split's class counts), "
                    f"not {self.title}'s; point data.root at {self.title}'s files",
                )


class MNISTDataModule(_MNISTLikeDataModule):
    """MNIST: ``(1, 28, 28)`` grey digits, 10 classes; train 60,000, val = the 10,000 test
    images.

    Lookup order (the first folder that holds all four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` is
    read, each file uncompressed or ``.gz``, in place):

    1. ``<root>/MNIST/raw``: torchvision's layout (where ``download=true`` puts them);
    2. ``<root>`` itself, e.g. the four ``.gz`` files as distributed;
    3. with ``download=true``, torchvision downloads them to ``<root>/MNIST/raw``.

    Otherwise a one-line ConfigError on ``root`` names the places and what to do. (No Debian
    package ships MNIST.)
    """

    name = "mnist"
    title = "MNIST"
    _torchvision_class = torchvision.datasets.MNIST


class FashionMNISTDataModule(_MNISTLikeDataModule):
    """Fashion-MNIST: as MNIST (``(1, 28, 28)``, 10 classes, train 60,000, val = the 10,000
    test images), grey clothing images instead of digits.

    Lookup order (the first folder that holds all four IDX files is read, each file
    uncompressed or ``.gz``, in place; nothing is copied):

    1. ``<root>/FashionMNIST/raw``: torchvision's layout (where ``download=true`` puts them);
    2. ``<root>`` itself, e.g. the four ``.gz`` files as distributed;
    3. ``/usr/share/datasets/fashion-mnist``: Debian's (and Ubuntu's) package
       ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
    4. with ``download=true``, torchvision downloads them to ``<root>/FashionMNIST/raw``.

    Otherwise a one-line ConfigError on ``root`` names the places and what to do.
    """

    name = "fashion_mnist"
    title = "Fashion-MNIST"
    _torchvision_class = torchvision.datasets.FashionMNIST

    def _places(self) -> list[str]:
        return [self.folder, self.root, DEBIAN_FASHION_MNIST_DIR]

    def _fixes(self) -> str:
        return (
            f"apt-get install {FASHION_MNIST_PACKAGE}, or set data.download=true, "
            f"or copy the files to {self.root}"
        )

    def _download_hint(self) -> str:
        return f"apt-get install {FASHION_MNIST_PACKAGE}, or {super()._download_hint()}"


class _CIFAR10FilesExist(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 whose integrity check is "the files exist".

    torchvision compares the md5 sum of every batch file (and of batches.meta) with the
    official ones, so any other file in that format (our small test fixtures, a re-packed
    copy) reads as "not found or corrupted". A damaged file still fails when unpickled, which
    the data module reports. The downloaded archive keeps its md5 check (``tgz_md5``).
    """

    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 through torchvision: ``(3, 32, 32)`` RGB images, 10 classes; train 50,000,
    val = the 10,000 test images. Files in ``<root>/cifar-10-batches-py``."""

    name = "cifar10"
    title = "CIFAR-10"
    max_level = 255
    _data_shape = (3, 32, 32)
    _files = _CIFAR10_FILES

    @property
    def folder(self) -> str:
        return os.path.join(self.root, _CIFAR10_FOLDER)

    def _dataset(self, train: bool, download: bool) -> torchvision.datasets.CIFAR10:
        return _CIFAR10FilesExist(self.root, train=train, download=download)

    def _read(self, folder: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = self._dataset(train=train, download=False)  # reads <root>/cifar-10-batches-py
        # torchvision stores (N, H, W, C) (a transposed view of the files' (N, C, H, W) planes).
        images = np.ascontiguousarray(
            np.asarray(dataset.data, dtype=np.uint8).transpose(0, 3, 1, 2)
        )
        return torch.from_numpy(images), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively, symlinked folders too), sorted by path."""
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found.extend(Path(folder, name) for name in names if name.lower().endswith(IMG_EXTENSIONS))
    return sorted(found, key=lambda path: path.as_posix())


def load_image(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 ``(C, H, W)``: the image at ``path`` in RGB (C=3) or grayscale (C=1), scaled to
    cover ``(H, W)`` (the shorter side for a square target) and center-cropped."""
    channels, height, width = image_shape
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError("root", f"cannot read image {path}: {first_line(error)}") from None
    pixels = TF.pil_to_tensor(image)
    h, w = pixels.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        size = [max(height, round(h * scale)), max(width, round(w * scale))]
        pixels = TF.resize(pixels, size, antialias=True)
        pixels = TF.center_crop(pixels, [height, width])
    return pixels


class _FileSplit(_Split):
    def __init__(self, paths: list[Path], image_shape: tuple[int, int, int]) -> None:
        self.paths = paths
        self.image_shape = image_shape
        self.labels = torch.full((len(paths),), -1, dtype=torch.int64)

    def pixels(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index], self.image_shape)

    def range_pixels(self, start: int, stop: int) -> torch.Tensor:
        return torch.stack([self.pixels(index) for index in range(start, stop)])


class ImageFolderDataModule(ImageDataModule):
    """Every image under ``root`` (recursively; extensions of torchvision's
    ``IMG_EXTENSIONS``), read lazily, converted to RGB or grayscale, resized and
    center-cropped to ``image_shape`` ``(C, H, W)``. No labels (-1).

    Train/val are a permutation of the sorted file list derived from ``seed``.
    """

    name = "image_folder"
    max_level = 255
    num_classes = None

    def __init__(
        self,
        root: str,
        image_shape: Sequence[int] = (3, 64, 64),
        val_fraction: float = 0.05,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        dequantize: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, dequantize)
        self.root = _check_root(root)
        self._data_shape = self._check_image_shape(image_shape)
        _check_fraction("val_fraction", val_fraction)
        self.save_hyperparameters()
        self.val_fraction = val_fraction
        if not os.path.isdir(self.root):
            raise ConfigError("root", f"no folder {self.root}")
        self.files = _image_files(Path(self.root))
        if not self.files:
            raise ConfigError("root", f"no images ({', '.join(IMG_EXTENSIONS)}) under {self.root}")
        train, val = _split_indices(len(self.files), val_fraction, seed)
        self._train_files = [self.files[i] for i in train.tolist()]
        self._val_files = [self.files[i] for i in val.tolist()]
        self._check_batch_size(len(self._train_files))

    @staticmethod
    def _check_image_shape(image_shape: object) -> tuple[int, int, int]:
        message = f"must be (channels, height, width) with channels 1 or 3, got {image_shape!r}"
        if isinstance(image_shape, str) or not isinstance(image_shape, Sequence):
            raise ConfigError("image_shape", message)
        shape = tuple(image_shape)
        valid = len(shape) == 3 and all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape
        )
        if not valid or shape[0] not in (1, 3):
            raise ConfigError("image_shape", message)
        return shape

    def _load_splits(self) -> dict[str, _Split]:
        return {
            "train": _FileSplit(self._train_files, self._data_shape),
            "val": _FileSplit(self._val_files, self._data_shape),
        }
