"""MNIST and Fashion-MNIST from IDX files: ``.gz`` read directly, the lookup order (torchvision's
folder, data.root itself, Debian's dataset-fashion-mnist package), one-line errors; and the real
package's files when it is installed."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_IMAGES
from image_fixtures import (
    MNIST_FILES,
    idx_bytes,
    mnist_split,
    write_idx,
    write_mnist,
    write_mnist_files,
)

from lit_gp import GANModule
from lit_gp.data import FashionMNISTDataModule, MNISTDataModule
from lit_gp.data import images as image_data
from lit_gp.data.images import DEBIAN_FASHION_MNIST_DIR, ImageReadError, read_idx
from lit_gp.errors import ConfigError
from lit_gp.training import train

MODULES = [MNISTDataModule, FashionMNISTDataModule]
GZ_FILES = [name + ".gz" for split in ("train", "test") for name in MNIST_FILES[split]]
PACKAGE_INSTALLED = all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST_DIR, f)) for f in GZ_FILES)
needs_package = pytest.mark.skipif(
    not PACKAGE_INSTALLED, reason="apt-get install dataset-fashion-mnist (Debian/Ubuntu)"
)


@pytest.fixture
def no_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Debian package's folder moved to an empty place (the package "not installed")."""
    missing = tmp_path / "no_package"
    monkeypatch.setattr(image_data, "DEBIAN_FASHION_MNIST_DIR", str(missing))
    return missing


def _pixels(dm, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup()
    data = dm._splits[split]
    return data.images, data.labels


def _one_line_error(module, root: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        module(root=str(root)).setup()
    error = caught.value
    assert error.key == "root" and "\n" not in str(error)
    return error


# --- .gz IDX files, read directly ------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_gz_idx_files_in_root_are_read_as_written(tmp_path, module, no_package) -> None:
    write_mnist_files(tmp_path, n_train=48, n_test=20, gz=True)
    dm = module(root=str(tmp_path), batch_size=16)
    assert dm.source() == str(tmp_path)
    for split, fixture_split, n in (("train", "train", 48), ("val", "test", 20)):
        images, labels = _pixels(dm, split)
        expected_images, expected_labels = mnist_split(fixture_split, n)
        assert images.dtype == torch.uint8 and images.shape == (n, 1, 28, 28)
        assert torch.equal(images[:, 0], torch.from_numpy(expected_images))
        assert torch.equal(labels, torch.from_numpy(expected_labels.astype(np.int64)))
    # Through the loaders: pixel k -> 2 k / 255 - 1, the labels as written.
    batch_images, batch_labels = next(iter(dm.val_dataloader()))
    expected_images, expected_labels = mnist_split("test", 16)
    expected = torch.from_numpy(expected_images).double() * 2 / 255 - 1
    assert torch.equal(batch_images[:, 0], expected.float())
    assert batch_labels.tolist() == expected_labels.tolist()
    # Read in place: nothing was written next to the files.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(GZ_FILES)


def test_gz_files_in_torchvisions_folder_and_mixed_with_raw_ones(tmp_path, no_package) -> None:
    write_mnist(tmp_path, n_train=32, n_test=16, folder="FashionMNIST", gz=True)
    raw = tmp_path / "FashionMNIST" / "raw"
    # One file uncompressed, as torchvision leaves it after a download, the others gzipped.
    name = MNIST_FILES["test"][1]
    (raw / name).write_bytes(gzip.decompress((raw / (name + ".gz")).read_bytes()))
    (raw / (name + ".gz")).unlink()
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=16)
    assert dm.source() == str(raw)
    assert torch.equal(_pixels(dm, "val")[1], torch.from_numpy(mnist_split("test", 16)[1]).long())


def test_lookup_order(tmp_path, monkeypatch) -> None:
    """torchvision's folder, then data.root itself, then the Debian package's folder; a folder
    missing one of the four files is passed over."""
    package = tmp_path / "package"
    monkeypatch.setattr(image_data, "DEBIAN_FASHION_MNIST_DIR", str(package))
    root = tmp_path / "data"
    raw = root / "FashionMNIST" / "raw"
    write_mnist_files(package, n_train=16, n_test=8, gz=True)
    write_mnist_files(root, n_train=24, n_test=8, gz=True)
    write_mnist_files(raw, n_train=32, n_test=8)

    def train_size() -> tuple[int, str | None]:
        dm = FashionMNISTDataModule(root=str(root), batch_size=8)
        dm.setup()
        return len(dm._splits["train"]), dm.source()

    assert train_size() == (32, str(raw))
    (raw / MNIST_FILES["test"][0]).unlink()
    assert train_size() == (24, str(root))
    (root / GZ_FILES[1]).unlink()
    assert train_size() == (16, str(package))
    # MNIST has no package: its lookup stops at data.root.
    with pytest.raises(ConfigError, match="no MNIST files"):
        MNISTDataModule(root=str(package / "elsewhere"))


def test_package_files_are_found_without_download_and_left_untouched(tmp_path, monkeypatch) -> None:
    package = tmp_path / "package"
    monkeypatch.setattr(image_data, "DEBIAN_FASHION_MNIST_DIR", str(package))
    write_mnist_files(package, n_train=32, n_test=16, gz=True)
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in package.iterdir()}

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the package holds the files")

    monkeypatch.setattr(FashionMNISTDataModule, "_download", no_download)
    # The default root "data", relative to the working directory, holds nothing.
    monkeypatch.chdir(tmp_path)
    for download in (False, True):
        dm = FashionMNISTDataModule(download=download, batch_size=16)
        dm.prepare_data()
        assert len(dm.real_images("train")[0]) == 32
    after = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in package.iterdir()}
    assert after == before
    assert not (tmp_path / "data").exists()


# --- one-line errors ----------------------------------------------------------------------------


def _damaged(kind: str) -> bytes:
    images, _ = mnist_split("train", 64)
    good = gzip.compress(idx_bytes(images), mtime=0)
    if kind == "truncated gzip":
        return good[: len(good) // 2]
    if kind == "garbled gzip":
        middle = len(good) // 2
        return good[:20] + bytes(b ^ 0x5A for b in good[20:middle]) + good[middle:]
    if kind == "wrong checksum":
        return good[:-8] + bytes([good[-8] ^ 1]) + good[-7:]
    if kind == "not gzip":
        return b"garbage"
    if kind == "wrong magic":
        return gzip.compress(b"\x00\x00\x08\x01" + idx_bytes(images)[4:])
    if kind == "fewer images than its header says":
        return gzip.compress(idx_bytes(images)[:-784])
    if kind == "trailing bytes":
        return gzip.compress(idx_bytes(images) + b"\x00")
    raise ValueError(kind)


DAMAGE = {
    "truncated gzip": "Compressed file ended before the end-of-stream marker was reached",
    "garbled gzip": "Error -3 while decompressing data",
    "wrong checksum": "CRC check failed",
    "not gzip": "Not a gzipped file",
    "wrong magic": "magic number 0x00000801, expected 0x00000803",
    "fewer images than its header says": "not the 50176 bytes of sizes (64, 28, 28)",
    "trailing bytes": "more than the 50176 bytes of sizes (64, 28, 28)",
}


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_gz_file_is_one_line_on_root(tmp_path, module, kind, no_package) -> None:
    write_mnist_files(tmp_path, n_train=64, n_test=16, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(_damaged(kind))
    error = _one_line_error(module, tmp_path)
    # An ImageReadError: lit_gp.training.fit prefixes it with "data." (setup runs inside fit).
    assert isinstance(error, ImageReadError)
    assert error.with_prefix("data").key == "data.root"
    title = "MNIST" if module is MNISTDataModule else "Fashion-MNIST"
    prefix = f"cannot read the {title} files in {tmp_path}: train-images-idx3-ubyte.gz: "
    assert error.message.startswith(prefix), error.message
    assert DAMAGE[kind] in error.message


def test_damaged_gz_file_stops_a_run_with_data_root(compose_config, tmp_path, no_package) -> None:
    root = tmp_path / "data"
    write_mnist_files(root, n_train=64, n_test=16, gz=True)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(_damaged("truncated gzip"))
    cfg = compose_config("data=fashion_mnist", f"data.root={root}", fast=FAST_IMAGES)
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    assert caught.value.key == "data.root"
    assert caught.value.message.startswith(
        f"cannot read the Fashion-MNIST files in {root}: t10k-labels-idx1-ubyte.gz: "
    )


def test_label_outside_the_ten_classes(tmp_path) -> None:
    write_mnist_files(tmp_path, n_train=16, n_test=8, gz=True)
    labels = np.zeros(8, dtype=np.uint8)
    labels[3] = 12
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    error = _one_line_error(MNISTDataModule, tmp_path)
    assert error.message.endswith("t10k-labels-idx1-ubyte.gz: label 12 is not a class 0..9")


def test_read_idx_refuses_what_is_not_idx(tmp_path) -> None:
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08"))
    with pytest.raises(ValueError, match=r"^short\.gz: 3 bytes, shorter than an IDX header$"):
        read_idx(str(path), 1)
    with pytest.raises(ValueError, match=r"^absent: \[Errno 2\]"):
        read_idx(str(tmp_path / "absent"), 1)


def test_missing_everywhere_names_the_package_in_one_line(tmp_path, no_package) -> None:
    root = tmp_path / "data"
    with pytest.raises(ConfigError) as caught:
        FashionMNISTDataModule(root=str(root))
    error = caught.value
    assert error.key == "root" and "\n" not in str(error)
    places = f"{root / 'FashionMNIST' / 'raw'}, {root} or {no_package}"
    assert error.message == (
        f"no Fashion-MNIST files in {places} (expected train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each "
        "uncompressed or .gz); apt-get install dataset-fashion-mnist, or set "
        f"data.download=true, or copy the files to {root}"
    )
    # MNIST names no package (Debian has none for it).
    with pytest.raises(ConfigError) as caught:
        MNISTDataModule(root=str(root))
    assert caught.value.message.startswith(f"no MNIST files in {root / 'MNIST' / 'raw'} or {root} ")
    assert "apt-get" not in caught.value.message and "download=true" in caught.value.message


@pytest.mark.parametrize(
    ("module", "counts", "other"),
    [
        (
            FashionMNISTDataModule,
            (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
            "MNIST",
        ),
        (MNISTDataModule, (6000,) * 10, "Fashion-MNIST"),
    ],
)
def test_the_other_data_sets_files_are_refused(tmp_path, module, counts, other, no_package):
    """The four file names are the same for both data sets: a copy of one in data.root is not
    trained on under the other's name (told apart by the official train split's class counts)."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), counts)
    write_idx(tmp_path / GZ_FILES[0], np.zeros((60_000, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / GZ_FILES[1], labels)
    write_idx(tmp_path / GZ_FILES[2], np.zeros((10, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / GZ_FILES[3], np.arange(10, dtype=np.uint8))
    error = _one_line_error(module, tmp_path)
    assert isinstance(error, ImageReadError)
    assert error.message.startswith(f"the files in {tmp_path} are {other}'s")


# --- the real package -------------------------------------------------------------------------

# sha256 of the 784 bytes of the first training image (label 9, ankle boot; pixel sum 76,247)
# and of the first test image (label 9; pixel sum 33,456) in the official files.
FIRST_TRAIN_SHA256 = "5bd44e331a6d6998daf675700cd0c13dcd7af8ab954b7585124124da61459e7b"
FIRST_TEST_SHA256 = "ffc7351ed0f8bae542820866086177fa4e0b366b97bf9d998dffdb8dbe138787"


def _package_state() -> dict[str, tuple[int, int]]:
    return {
        entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in os.scandir(DEBIAN_FASHION_MNIST_DIR)
    }


@needs_package
def test_real_package_files(tmp_path, monkeypatch) -> None:
    before = _package_state()
    monkeypatch.chdir(tmp_path)  # the default root "data" holds nothing here
    dm = FashionMNISTDataModule()
    assert dm.source() == DEBIAN_FASHION_MNIST_DIR
    train_images, train_labels = _pixels(dm, "train")
    test_images, test_labels = _pixels(dm, "val")
    assert train_images.shape == (60_000, 1, 28, 28) and test_images.shape == (10_000, 1, 28, 28)
    assert train_images.dtype == test_images.dtype == torch.uint8
    for images in (train_images, test_images):
        assert images.min() == 0 and images.max() == 255
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    assert (int(train_labels[0]), int(train_images[0].long().sum())) == (9, 76_247)
    assert hashlib.sha256(train_images[0].numpy().tobytes()).hexdigest() == FIRST_TRAIN_SHA256
    assert (int(test_labels[0]), int(test_images[0].long().sum())) == (9, 33_456)
    assert hashlib.sha256(test_images[0].numpy().tobytes()).hexdigest() == FIRST_TEST_SHA256
    # Read in place: nothing written into the package's folder, nothing copied to data.root.
    assert _package_state() == before
    assert not (tmp_path / "data").exists()
    # data.root pointed at the package's folder reads the same files; MNIST refuses them.
    assert (
        FashionMNISTDataModule(root=DEBIAN_FASHION_MNIST_DIR).source() == DEBIAN_FASHION_MNIST_DIR
    )
    error = _one_line_error(MNISTDataModule, Path(DEBIAN_FASHION_MNIST_DIR))
    assert error.message.startswith(f"the files in {DEBIAN_FASHION_MNIST_DIR} are Fashion-MNIST's")


@needs_package
def test_fashion_mnist_trains_from_the_package_without_a_root_override(
    compose_config, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # data.root "data" is relative to where train.py starts
    cfg = compose_config(
        "model=wgangp",
        "data=fashion_mnist",
        "callbacks.image_metrics=null",  # a classifier trained on 60,000 images: too long here
        "+trainer.limit_val_batches=2",
        fast=FAST_IMAGES,
    )
    assert cfg.data.root == "data" and not cfg.data.download
    train(cfg)
    model = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.sample(2).shape == (2, 1, 28, 28)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("model", ["wgangp", "r1", "r3gan"])
def test_fashion_mnist_experiments_compose(compose_config, model) -> None:
    cfg = compose_config(f"experiment={model}_fashion_mnist", fast=[])
    assert cfg.data._target_ == "lit_gp.data.FashionMNISTDataModule"
    assert cfg.image_shape == [1, 28, 28]
    assert cfg.model.generator.dim == cfg.model.critic.dim == 32
    assert cfg.model.ema_decay == 0.999
    # The 60,000-image sets train their FID classifier for 2 epochs (the small sets: 10), so
    # every run on them shares one cache entry with benchmarks/fashion_mnist_quality.py.
    assert cfg.callbacks.image_metrics.classifier_epochs == 2
    assert compose_config("data=mnist", fast=[]).callbacks.image_metrics.classifier_epochs == 2
    assert compose_config("data=digits", fast=[]).callbacks.image_metrics.classifier_epochs == 10
