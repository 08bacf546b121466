"""Tiny image data sets written in the real on-disk formats, so the data modules read them
through the same torchvision code users hit.

Content is deterministic and encodes the label, so a classifier can learn it:

- MNIST / Fashion-MNIST: label ``y`` is a 255-valued horizontal stripe on rows
  ``MNIST_STRIPE_ROW0 + 2 y`` and the next one (columns shift a little with the index), pixel
  ``(0, 0)`` is 0 and pixel ``MNIST_MID_PIXEL`` is ``MNIST_MID_VALUE`` (51, i.e. -0.6). The IDX
  files are written uncompressed (torchvision's layout) or gzipped (as distributed).
- CIFAR-10: label ``y`` is an 8x8 square of colour ``CIFAR_COLORS[y]`` at ``cifar_square(y, i)``
  on black; image 0 of ``data_batch_1`` has label 0, a pure red square at rows/cols 0..7.
- Image folder: PNGs are one solid colour ``FOLDER_PNG_COLOR`` (RGB or RGBA), JPEGs gradients
  (RGB or grayscale), in nested folders, plus a text file that must be ignored.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_STRIPE_ROW0 = 4
MNIST_MID_PIXEL = (0, 27)
MNIST_MID_VALUE = 51

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR_COLORS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
    (255, 128, 0),
    (128, 0, 255),
    (0, 128, 255),
]

FOLDER_PNG_COLOR = (255, 0, 51)


def mnist_label(index: int) -> int:
    return (3 * index + index // 10) % 10


def mnist_image(label: int, index: int) -> np.ndarray:
    """uint8 (28, 28): the label's stripe, 0 at (0, 0), the middle value at MNIST_MID_PIXEL."""
    image = np.zeros((28, 28), dtype=np.uint8)
    row = MNIST_STRIPE_ROW0 + 2 * label
    shift = index % 5
    image[row : row + 2, 4 + shift : 20 + shift] = 255
    image[MNIST_MID_PIXEL] = MNIST_MID_VALUE
    return image


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: big-endian magic (0x08 = unsigned byte, then the number of
    dimensions), the dimensions as big-endian int32, then the bytes row-major."""
    magic = 0x0800 | array.ndim
    header = struct.pack(f">{1 + array.ndim}i", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` as an IDX file at ``path``, gzipped when the name ends in ``.gz`` (as the
    files are distributed, and as Debian's dataset-fashion-mnist installs them)."""
    data = idx_bytes(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    path.write_bytes(data)


def mnist_split(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(n, 28, 28)`` and labels ``(n,)`` of the fixture's ``split`` ("train":
    indices 0.., "test": 1000..)."""
    offset = 0 if split == "train" else 1000
    labels = np.array([mnist_label(offset + i) for i in range(n)], dtype=np.uint8)
    images = np.stack([mnist_image(int(y), offset + i) for i, y in enumerate(labels)])
    return images, labels


def write_mnist_files(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = False) -> None:
    """The four IDX files directly in ``folder``, uncompressed or (``gz``) as ``.gz``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = mnist_split(split, n)
        image_file, label_file = MNIST_FILES[split]
        write_idx(folder / (image_file + suffix), images)
        write_idx(folder / (label_file + suffix), labels)


def write_mnist(
    root: Path, n_train: int = 64, n_test: int = 32, folder: str = "MNIST", gz: bool = False
) -> None:
    """The four IDX files in ``<root>/<folder>/raw`` ("FashionMNIST" for Fashion-MNIST),
    uncompressed as torchvision leaves them after a download (or ``.gz`` with ``gz``)."""
    write_mnist_files(Path(root) / folder / "raw", n_train, n_test, gz)


def cifar_square(label: int, index: int) -> tuple[int, int]:
    """Top-left (row, col) of the label's 8x8 square: a 3x4 grid of places, shifted down by
    0..3 rows with the index (image 0 is not shifted)."""
    return 8 * (label // 4) + (index // 10) % 4, 8 * (label % 4)


def cifar_image(label: int, index: int) -> np.ndarray:
    """uint8 (3, 32, 32) RGB planes."""
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    row, col = cifar_square(label, index)
    image[:, row : row + 8, col : col + 8] = np.array(CIFAR_COLORS[label], dtype=np.uint8)[
        :, None, None
    ]
    return image


class _Py2Str(bytes):
    """Bytes that pickle as a Python 2 ``str``, as in the real CIFAR-10 files."""


class _Py2Pickler(pickle._Pickler):
    """Pickler writing ``_Py2Str`` with the Python 2 string opcodes.

    The real files were pickled by Python 2: their keys and label names load as ``str`` with
    ``encoding="latin1"`` (torchvision) and as ``bytes`` (``b"data"``) with
    ``encoding="bytes"`` (the CIFAR web page's recipe). Python 3 ``bytes`` keys would load as
    bytes either way, and torchvision's ``entry["data"]`` would fail.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2(text: str) -> _Py2Str:
    return _Py2Str(text.encode("latin1"))


def _write_py2_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as file:
        _Py2Pickler(file, protocol=2).dump(obj)


def write_cifar10(root: Path, n_per_batch: int = 20) -> None:
    """``<root>/cifar-10-batches-py/data_batch_1..5``, ``test_batch`` and ``batches.meta``:
    pickled dicts with the real keys (``data`` uint8 ``(N, 3072)``: the R, G, B planes of each
    image, each plane row-major; ``labels`` a list of ints; meta ``label_names``)."""
    folder = Path(root) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for batch, name in enumerate(names):
        indices = range(batch * n_per_batch, (batch + 1) * n_per_batch)
        labels = [index % 10 for index in indices]
        data = np.stack(
            [cifar_image(y, i).reshape(3072) for y, i in zip(labels, indices, strict=True)]
        )
        title = (
            "testing batch 1 of 1" if name == "test_batch" else f"training batch {batch + 1} of 5"
        )
        entry = {
            _py2("batch_label"): _py2(title),
            _py2("labels"): labels,
            _py2("data"): data,
            _py2("filenames"): [_py2(f"image_{i:05d}.png") for i in indices],
        }
        _write_py2_pickle(folder / name, entry)
    meta = {
        _py2("num_cases_per_batch"): n_per_batch,
        _py2("label_names"): [_py2(label) for label in CIFAR_LABEL_NAMES],
        _py2("num_vis"): 3072,
    }
    _write_py2_pickle(folder / "batches.meta", meta)


def write_image_folder(root: Path, n: int = 12, size: tuple[int, int] = (40, 30)) -> None:
    """``n`` images of ``size`` (width, height) under ``root``, in ``.``, ``a`` and ``a/b``:
    even indices PNG (solid ``FOLDER_PNG_COLOR``; RGBA for every second one), odd ones JPEG
    (gradients; grayscale for every second one; index 1 with the upper-case suffix ``.JPEG``);
    and a ``notes.txt`` that is not an image."""
    root = Path(root)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    for index in range(n):
        folder = root / ["", "a", "a/b"][index % 3]
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2 == 0:
            mode = "RGBA" if index % 4 == 2 else "RGB"
            color = FOLDER_PNG_COLOR + ((255,) if mode == "RGBA" else ())
            Image.new(mode, size, color).save(folder / f"img{index:03d}.png")
        else:
            gradient = ((xs * 255) // max(1, width - 1) + 17 * index) % 256
            planes = [gradient, (ys * 255) // max(1, height - 1), 255 - gradient]
            rgb = np.stack(planes, axis=-1).astype(np.uint8)
            image = Image.fromarray(rgb, "RGB")
            if index % 4 == 3:
                image = image.convert("L")
            suffix = ".JPEG" if index == 1 else ".jpg"
            image.save(folder / f"img{index:03d}{suffix}", format="JPEG", quality=90)
    (root / "notes.txt").write_text("not an image\n")
