"""Feature extractors for FID/KID: a small classifier trained on the data set's own training
split (cached on disk), for data sets where Inception features mean little (8x8 digits, MNIST)
or cannot be downloaded."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_gp.errors import ConfigError, check_int

log = logging.getLogger(__name__)

# Part of the cache key: bump it when the architecture or the training recipe changes, so an old
# cached classifier is never read as a new one.
_RECIPE_VERSION = 1


def default_cache_dir() -> Path:
    """``$LIT_GP_CACHE`` if set, else ``~/.cache/lit_gp``."""
    return Path(os.environ.get("LIT_GP_CACHE") or Path.home() / ".cache" / "lit_gp")


class ClassifierFeatures(nn.Module):
    """A small convolutional classifier whose penultimate layer serves as FID/KID features.

    ``forward(images)`` returns ``(B, num_features)`` features (the input of the last layer,
    before its ReLU); :meth:`logits` returns class scores. Images are (B, C, H, W) in [-1, 1].
    torchmetrics' FID reads ``num_features``.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        num_features: int = 64,
    ) -> None:
        super().__init__()
        channels = int(image_shape[0])
        check_int("num_classes", num_classes, 2)
        check_int("width", width)
        check_int("num_features", num_features)
        self.image_shape = tuple(int(size) for size in image_shape)
        self.num_classes = num_classes
        self.width = width
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            # A fixed 4x4 grid keeps where strokes are (global pooling would lose it on 8x8).
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(16 * 4 * width, num_features),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(num_features, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images.float())

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self.forward(images))

    def config(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "width": self.width,
            "num_features": self.num_features,
        }


def accuracy(classifier: ClassifierFeatures, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` that ``classifier`` labels correctly."""
    with torch.no_grad():
        predictions = torch.cat(
            [classifier.logits(chunk).argmax(1) for chunk in images.split(1024)]
        )
    return float((predictions == labels).float().mean())


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    **architecture: Any,
) -> ClassifierFeatures:
    """Train a :class:`ClassifierFeatures` with Adam on ``images`` (N, C, H, W) in [-1, 1] and
    int64 ``labels``; deterministic for a given seed, and leaves the global RNG untouched."""
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = ClassifierFeatures(images.shape[1:], num_classes, **architecture)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
        for _ in range(epochs):
            order = torch.randperm(images.shape[0])
            for index in order.split(batch_size):
                loss = nn.functional.cross_entropy(classifier.logits(images[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return classifier.eval().requires_grad_(False)


def _cache_key(images: Tensor, labels: Tensor, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(repr((_RECIPE_VERSION, sorted(settings.items()), tuple(images.shape))).encode())
    digest.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_classifier(
    name: str,
    train: tuple[Tensor, Tensor],
    validation: tuple[Tensor, Tensor] | None,
    num_classes: int,
    cache_dir: str | os.PathLike[str] | None = None,
    epochs: int = 10,
    seed: int = 0,
    **architecture: Any,
) -> tuple[ClassifierFeatures, float | None]:
    """The classifier of data set ``name`` trained on ``train`` = (images, labels), read from
    ``cache_dir`` when one with the same data and settings was trained before, else trained and
    written there. Returns it with its accuracy on ``validation`` (None without one)."""
    images, labels = train
    settings = {"epochs": epochs, "seed": seed, "num_classes": num_classes, **architecture}
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{name}_classifier_{_cache_key(images, labels, settings)}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            classifier = ClassifierFeatures(**saved["config"])
            classifier.load_state_dict(saved["state_dict"])
            log.info("feature classifier: %s (cached)", path)
            return classifier.eval().requires_grad_(False), saved.get("val_accuracy")
        except Exception as error:  # a damaged cache file is rebuilt, not fatal
            log.warning("feature classifier: ignoring unreadable cache file %s (%s)", path, error)
    classifier = train_classifier(
        images, labels, num_classes, epochs=epochs, seed=seed, **architecture
    )
    val_accuracy = accuracy(classifier, *validation) if validation is not None else None
    state = {
        "config": classifier.config(),
        "state_dict": classifier.state_dict(),
        "val_accuracy": val_accuracy,
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees a half-written file.
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as handle:
            torch.save(state, handle)
        os.replace(handle.name, path)
        log.info("feature classifier: trained, saved to %s", path)
    except OSError as error:
        log.warning("feature classifier: not cached (%s)", error)
    return classifier, val_accuracy


def check_labelled(datamodule: Any) -> int:
    """The number of classes of a labelled image data module, else a ConfigError."""
    num_classes = getattr(datamodule, "num_classes", None)
    if not num_classes:
        name = getattr(datamodule, "name", type(datamodule).__name__)
        raise ConfigError(
            "callbacks.image_metrics.features",
            f"'classifier' needs a labelled data set and {name} has no labels; use "
            "features=inception (pip install 'lit_gp[fid]') or callbacks.image_metrics=null",
        )
    return int(num_classes)
