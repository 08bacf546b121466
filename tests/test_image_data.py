"""Image data modules: loaded from tiny files in the real on-disk formats (tests/image_fixtures),
pixel values checked against the formula by hand."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from image_fixtures import (
    CIFAR_COLORS,
    FOLDER_PNG_COLOR,
    MNIST_MID_PIXEL,
    MNIST_MID_VALUE,
    MNIST_STRIPE_ROW0,
    cifar_square,
    write_cifar10,
    write_image_folder,
    write_mnist,
)
from sklearn.datasets import load_digits

from lit_gp.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from lit_gp.data import images as image_data
from lit_gp.errors import ConfigError


def _level(k: int, max_level: int = 255) -> torch.Tensor:
    """2 k / max_level - 1 rounded once to float32 (the value a pixel k must map to)."""
    return torch.tensor(2 * k / max_level - 1, dtype=torch.float64).float()


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    write_mnist(tmp_path, n_train=64, n_test=32)
    return tmp_path


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    write_cifar10(tmp_path, n_per_batch=20)
    return tmp_path


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "images", n=12, size=(40, 30))
    return tmp_path / "images"


def _check_batches(dm: ImageDataModule, shape: tuple[int, ...], num_train: int, num_val: int):
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == num_train // dm.batch_size  # drop_last
    for images, labels in train:
        assert images.shape == (dm.batch_size, *shape) and images.dtype == torch.float32
        assert labels.shape == (dm.batch_size,) and labels.dtype == torch.int64
        assert images.min() >= -1 and images.max() <= 1
    val_images = torch.cat([images for images, _ in dm.val_dataloader()])
    assert val_images.shape == (num_val, *shape) and val_images.dtype == torch.float32
    # In order and never dequantized: the same as real_images.
    assert torch.equal(val_images, dm.real_images("val")[0])
    assert dm.data_shape == shape
    reference = dm.reference_samples(3)
    assert torch.equal(reference, val_images[:3])


# --- digits -----------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_values():
    dm = DigitsDataModule(batch_size=32)
    assert dm.name == "digits" and dm.num_classes == 10 and dm.max_level == 16
    assert dm.data_shape == (1, 8, 8)  # before setup
    n_val = round(0.2 * 1797)
    _check_batches(dm, (1, 8, 8), 1797 - n_val, n_val)

    train_x, train_y = dm.real_images("train")
    val_x, val_y = dm.real_images("val")
    assert len(train_x) + len(val_x) == 1797 and len(val_x) == n_val
    digits = load_digits()
    counts = torch.bincount(torch.cat([train_y, val_y]), minlength=10)
    assert torch.equal(counts, torch.bincount(torch.from_numpy(digits.target), minlength=10))
    assert set(train_y.tolist()) == set(range(10))
    # Pixels are 0..16: k maps to exactly 2 k / 16 - 1, so only 17 values occur.
    levels = torch.stack([_level(k, 16) for k in range(17)])
    assert torch.isin(train_x, levels).all()
    assert train_x.min() == -1 and train_x.max() == 1

    # Every val image is a digits image with its own label (the split only reorders).
    flat = torch.from_numpy(digits.images.reshape(1797, 64)).float()
    pixels = ((val_x.reshape(n_val, 64).double() + 1) * 8).round().float()
    match = (pixels[:, None, :] == flat[None]).all(dim=2)
    assert match.any(dim=1).all()
    labels = torch.from_numpy(digits.target)
    for row in range(n_val):
        assert val_y[row] in labels[match[row]]


def test_digits_split_follows_fraction_and_seed():
    dm = DigitsDataModule(val_fraction=0.5)
    assert len(dm.real_images("val")[0]) == round(0.5 * 1797)

    def split(seed: int):
        return DigitsDataModule(seed=seed).real_images("val")

    same_x, same_y = split(0)
    again_x, again_y = split(0)
    other_x, _ = split(1)
    assert torch.equal(same_x, again_x) and torch.equal(same_y, again_y)
    assert not torch.equal(same_x, other_x)

    def first_batch(seed: int) -> torch.Tensor:
        return next(iter(DigitsDataModule(seed=seed).train_dataloader()))[0]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def _dequantized_in_order(dm, n: int) -> torch.Tensor:
    """The first ``n`` training images in split order, dequantized as training batches are:
    the loader yields integer pixels and the datamodule's batch hook adds the noise."""
    dataset = dm.train_dataloader().dataset
    items = [dataset[i] for i in range(n)]
    pixels = torch.stack([image for image, _ in items])
    assert not pixels.is_floating_point()
    labels = torch.stack([label for _, label in items])
    return dm.on_after_batch_transfer((pixels, labels), 0)[0]


def test_digits_dequantization_stays_in_each_pixels_bin():
    torch.manual_seed(0)
    dm = DigitsDataModule(dequantize=True)
    plain_x, _ = dm.real_images("train", 200)
    noisy = _dequantized_in_order(dm, 200)
    k = torch.round((plain_x.double() + 1) * 16 / 2)
    lower = (2 * k / 17 - 1).float()
    upper = (2 * (k + 1) / 17 - 1).float()
    assert (noisy >= lower).all() and (noisy < upper).all()
    assert not torch.equal(noisy, plain_x)
    # Validation batches are never dequantized.
    assert torch.equal(next(iter(dm.val_dataloader()))[0], dm.real_images("val", 64)[0])


# --- MNIST, Fashion-MNIST --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "folder", "name"),
    [
        (MNISTDataModule, "MNIST", "mnist"),
        (FashionMNISTDataModule, "FashionMNIST", "fashion_mnist"),
    ],
)
def test_mnist_like_from_idx_files(tmp_path, module, folder, name):
    write_mnist(tmp_path, n_train=64, n_test=32, folder=folder)
    dm = module(root=str(tmp_path), batch_size=16)
    assert dm.name == name and dm.num_classes == 10 and dm.max_level == 255
    _check_batches(dm, (1, 28, 28), 64, 32)

    images, labels = dm.real_images("train")
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert set(labels.tolist()) == set(range(10))
    # The fixture's stripe (value 255) sits on the label's rows: images and labels line up.
    for image, label in zip(images[:, 0], labels.tolist(), strict=True):
        assert (image[MNIST_STRIPE_ROW0 + 2 * label] == 1).sum() == 16
    # Known pixels: 0 -> -1, 255 -> 1, 51 -> 2 * 51 / 255 - 1 = -0.6, all exact.
    assert (images[:, 0, 0, 0] == -1).all()
    assert (images[:, 0, MNIST_MID_PIXEL[0], MNIST_MID_PIXEL[1]] == _level(MNIST_MID_VALUE)).all()
    assert _level(MNIST_MID_VALUE).item() == pytest.approx(-0.6, abs=1e-7)
    assert set(torch.unique(images).tolist()) == {-1.0, _level(51).item(), 1.0}


def test_mnist_dequantization_bins(mnist_root):
    torch.manual_seed(0)
    dm = MNISTDataModule(root=str(mnist_root), dequantize=True)
    plain_x, _ = dm.real_images("train")
    noisy = _dequantized_in_order(dm, len(plain_x))
    k = torch.round((plain_x.double() + 1) * 255 / 2)
    lower = (2 * k / 256 - 1).float()
    upper = (2 * (k + 1) / 256 - 1).float()
    assert (noisy >= lower).all() and (noisy < upper).all()
    assert not torch.equal(noisy, plain_x)
    assert (noisy != plain_x).float().mean() > 0.99
    # Training batches are dequantized too (by the batch hook), validation batches not.
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)[0]
    assert not torch.isin(batch, torch.tensor([-1.0, 1.0, _level(51).item()])).all()
    assert torch.equal(next(iter(dm.val_dataloader()))[0], dm.real_images("val", 32)[0])


def test_mnist_missing_files_offline(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as caught:
        MNISTDataModule(root=str(tmp_path / "data"))
    error = caught.value
    assert error.key == "root"
    assert os.path.join(str(tmp_path / "data"), "MNIST", "raw") in error.message
    assert "train-images-idx3-ubyte" in error.message and "download=true" in error.message
    assert "\n" not in str(error)

    # Files of the other data set are not taken: Fashion-MNIST reads FashionMNIST/raw (and,
    # were it installed, Debian's package, left out here).
    monkeypatch.setattr(image_data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no_package"))
    write_mnist(tmp_path, folder="MNIST")
    with pytest.raises(ConfigError, match="FashionMNIST") as caught:
        FashionMNISTDataModule(root=str(tmp_path))
    assert caught.value.key == "root"


def test_mnist_download_failure_is_one_line(tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise URLError("no network")

    # The real MNIST.download loop: every mirror fails, torchvision raises a multi-line
    # RuntimeError.
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    dm = MNISTDataModule(root=str(tmp_path), download=True)  # no files needed yet
    with pytest.raises(ConfigError) as caught:
        dm.prepare_data()
    error = caught.value
    assert error.key == "download"
    assert error.message.startswith(f"could not download MNIST to {tmp_path} (")
    assert "no network" in error.message
    assert f"copy the files to {os.path.join(str(tmp_path), 'MNIST', 'raw')} instead" in (
        error.message
    )
    assert "\n" not in str(error)
    # setup (outside a trainer nobody calls prepare_data) tries the download as well.
    with pytest.raises(ConfigError) as caught:
        dm.setup()
    assert caught.value.key == "download"


def test_mnist_batch_size_larger_than_train_split(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), batch_size=65)
    with pytest.raises(ConfigError, match="64 training images") as caught:
        dm.setup()
    assert caught.value.key == "batch_size"


def test_mnist_damaged_file(mnist_root):
    (mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read the MNIST files") as caught:
        MNISTDataModule(root=str(mnist_root)).setup()
    assert caught.value.key == "root"


# --- CIFAR-10 ---------------------------------------------------------------------------------


def test_cifar10_from_pickled_batches(cifar_root):
    dm = CIFAR10DataModule(root=str(cifar_root), batch_size=32)
    assert dm.name == "cifar10" and dm.num_classes == 10 and dm.data_shape == (3, 32, 32)
    _check_batches(dm, (3, 32, 32), 100, 20)

    images, labels = dm.real_images("train")
    assert labels.tolist() == [i % 10 for i in range(100)]  # the five batches in order
    # Image 0: label 0, a pure red square at rows/cols 0..7. Channel 0 is red (RGB as written).
    first = images[0]
    assert (first[0, :8, :8] == 1).all()
    assert first[0].sum() == 64 - (32 * 32 - 64)  # 1 on the square, -1 elsewhere
    assert (first[1:] == -1).all()
    # Every image: its label's colour at its label's place; a transposed or channel-swapped
    # read would put it elsewhere (label 1's square is at rows 0..7, cols 8..15).
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        row, col = cifar_square(label, index)
        color = torch.stack([_level(c) for c in CIFAR_COLORS[label]])
        square = image[:, row : row + 8, col : col + 8]
        assert torch.equal(square, color[:, None, None].expand(3, 8, 8))
        assert (image.sum() == color.sum() * 64 - 3 * (32 * 32 - 64)).item()


def test_cifar10_missing_files_offline(tmp_path):
    with pytest.raises(ConfigError) as caught:
        CIFAR10DataModule(root=str(tmp_path))
    assert caught.value.key == "root"
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in caught.value.message
    assert "data_batch_1" in caught.value.message and "download=true" in caught.value.message


def test_cifar10_download_failure(tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True)
    with pytest.raises(ConfigError) as caught:
        dm.setup()
    assert caught.value.key == "download"
    assert "could not download CIFAR-10" in caught.value.message
    assert "no network" in caught.value.message
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in caught.value.message


# --- image folder -----------------------------------------------------------------------------


@pytest.mark.parametrize("image_shape", [(3, 24, 24), (1, 16, 16), (3, 20, 28)])
def test_image_folder_shapes(folder_root, image_shape):
    dm = ImageFolderDataModule(
        root=str(folder_root), image_shape=image_shape, val_fraction=0.25, batch_size=4
    )
    assert dm.name == "image_folder" and dm.num_classes is None and dm.max_level == 255
    assert len(dm.files) == 12  # nested folders, upper-case suffix; notes.txt ignored
    _check_batches(dm, image_shape, 9, 3)
    _, labels = dm.real_images("train")
    assert (labels == -1).all()


def test_image_folder_pixel_values(folder_root):
    dm = ImageFolderDataModule(root=str(folder_root), image_shape=(3, 24, 24), batch_size=4)
    images = torch.cat([dm.real_images("train")[0], dm.real_images("val")[0]])
    # The six PNGs are one solid colour (255, 0, 51): exactly (1, -1, -0.6) after resize/crop.
    color = torch.stack([_level(c) for c in FOLDER_PNG_COLOR])[:, None, None]
    solid = [image for image in images if torch.equal(image, color.expand(3, 24, 24))]
    assert len(solid) == 6
    assert len(torch.unique(images)) > 50  # the JPEG gradients


def test_image_folder_dequantized(folder_root):
    torch.manual_seed(0)
    dm = ImageFolderDataModule(
        root=str(folder_root), image_shape=(3, 8, 8), dequantize=True, batch_size=4
    )
    plain_x, _ = dm.real_images("train")
    noisy = _dequantized_in_order(dm, len(plain_x))
    k = torch.round((plain_x.double() + 1) * 255 / 2)
    assert (noisy >= (2 * k / 256 - 1).float()).all()
    assert (noisy < (2 * (k + 1) / 256 - 1).float()).all()


def test_image_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="no folder") as caught:
        ImageFolderDataModule(root=str(tmp_path / "missing"))
    assert caught.value.key == "root"

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError) as caught:
        ImageFolderDataModule(root=str(empty))
    assert caught.value.key == "root"
    assert caught.value.message.startswith("no images (.jpg, .jpeg, .png")
    assert str(empty) in caught.value.message

    for bad in [(3, 64), (2, 8, 8), (3, 0, 8), (3, 8.0, 8), "3,8,8", (3, True, 8)]:
        with pytest.raises(ConfigError, match="channels 1 or 3") as caught:
            ImageFolderDataModule(root=str(empty), image_shape=bad)
        assert caught.value.key == "image_shape"


def test_image_folder_unreadable_image(tmp_path):
    write_image_folder(tmp_path, n=3)
    (tmp_path / "x.png").write_bytes(b"this is not a png")
    dm = ImageFolderDataModule(
        root=str(tmp_path), image_shape=(3, 8, 8), val_fraction=0.25, batch_size=1
    )
    bad = str(tmp_path / "x.png")
    # Reported when the image is loaded (lazily), from real_images or a loader.
    with pytest.raises(ConfigError, match="cannot read image") as caught:
        torch.cat([dm.real_images("train")[0], dm.real_images("val")[0]])
    assert caught.value.key == "root" and bad in caught.value.message
    with pytest.raises(ConfigError, match="cannot read image") as caught:
        list(dm.train_dataloader()) + list(dm.val_dataloader())
    assert caught.value.key == "root" and bad in caught.value.message


def test_image_folder_unreadable_image_in_worker(tmp_path):
    """A worker's error is re-raised in the main process, still a one-line ConfigError."""
    (tmp_path / "x.png").write_bytes(b"garbage")
    (tmp_path / "y.png").write_bytes(b"garbage")
    dm = ImageFolderDataModule(
        root=str(tmp_path), image_shape=(3, 8, 8), val_fraction=0.5, batch_size=1, num_workers=1
    )
    with pytest.raises(ConfigError, match="cannot read image") as caught:
        next(iter(dm.val_dataloader()))
    assert caught.value.key == "root"
    assert str(caught.value).startswith("root: cannot read image ")
    assert "\n" not in str(caught.value)


# --- argument checks --------------------------------------------------------------------------


def test_batch_size_larger_than_train_split(folder_root):
    with pytest.raises(ConfigError, match="1438 training images") as caught:
        DigitsDataModule(batch_size=1439)
    assert caught.value.key == "batch_size"
    DigitsDataModule(batch_size=1438)
    with pytest.raises(ConfigError, match="11 training images") as caught:
        ImageFolderDataModule(root=str(folder_root), batch_size=12)
    assert caught.value.key == "batch_size"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 8.0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"dequantize": 1}, "dequantize"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1}, "val_fraction"),
        ({"val_fraction": float("nan")}, "val_fraction"),
        ({"val_fraction": "0.2"}, "val_fraction"),
    ],
)
def test_argument_checks(kwargs, key):
    with pytest.raises(ConfigError) as caught:
        DigitsDataModule(**kwargs)
    assert caught.value.key == key


def test_other_argument_checks(mnist_root, folder_root):
    with pytest.raises(ConfigError) as caught:
        MNISTDataModule(root=str(mnist_root), download="yes")
    assert caught.value.key == "download"
    with pytest.raises(ConfigError) as caught:
        MNISTDataModule(root=None)
    assert caught.value.key == "root"
    with pytest.raises(ConfigError) as caught:
        ImageFolderDataModule(root=str(folder_root), val_fraction=0.99)
    assert caught.value.key == "val_fraction"
    dm = DigitsDataModule()
    with pytest.raises(ConfigError) as caught:
        dm.real_images("test")
    assert caught.value.key == "split"
    # More than the split holds: all of it (the caller sees the length).
    assert len(dm.real_images("val", 10_000)[0]) == 359
    assert len(dm.reference_samples(10_000)) == 359
    with pytest.raises(ConfigError) as caught:
        dm.real_images("val", 0)
    assert caught.value.key == "n"
