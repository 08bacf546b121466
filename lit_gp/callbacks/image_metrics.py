"""FID and KID of generated images (torchmetrics) with a pluggable feature extractor, computed at
every validation."""

from __future__ import annotations

import importlib.util
import logging
import warnings

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lit_gp.errors import ConfigError, check_int, first_line
from lit_gp.metrics.features import ClassifierFeatures, cached_classifier, check_labelled

log = logging.getLogger(__name__)

FEATURES = ("auto", "classifier", "inception")
_BATCH = 250  # images per feature-extractor call


def fid_extra_installed() -> bool:
    """Whether torch-fidelity (the ``fid`` extra, Inception features) can be imported."""
    return importlib.util.find_spec("torch_fidelity") is not None


class InceptionFeatures(nn.Module):
    """The standard FID Inception-v3 pool features (torch-fidelity's port of the TF graph, as
    torchmetrics uses) of images in [-1, 1]; grey images are repeated to three channels."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.inception = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=[str(self.num_features)]
            )
        except (ImportError, ModuleNotFoundError) as error:
            raise ConfigError(
                "features",
                f"inception needs torch-fidelity ({first_line(error)}): pip install 'lit_gp[fid]'",
            ) from None
        except Exception as error:  # the weights are downloaded on first use
            raise ConfigError(
                "features",
                f"could not load the Inception weights ({first_line(error)}); they are "
                "downloaded once from GitHub, or use features=classifier offline",
            ) from None

    def forward(self, images: Tensor) -> Tensor:
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        return self.inception(pixels).reshape(images.shape[0], -1)


class ImageMetrics(pl.Callback):
    """FID and KID between ``num_samples`` generated images and as many training images, at
    every validation (every ``val_every_generator_steps`` and at the end of training).

    ``features`` chooses the feature extractor, which is also part of the logged keys, so that a
    number is never mistaken for the standard Inception FID:

    - ``"auto"`` (default): ``"classifier"`` for labelled data; for data without labels
      (``image_folder``) ``"inception"`` if torch-fidelity is installed, else no FID/KID, with
      one warning saying so (a custom folder should train without an optional extra).
    - ``"classifier"``: a small convolutional classifier trained on the data set's own
      training split (``classifier_epochs`` epochs), cached in ``cache_dir`` (default
      ``$LIT_GP_CACHE`` or ``~/.cache/lit_gp``). Keys ``val/fid_<data>_classifier`` and
      ``val/kid_<data>_classifier``, e.g. ``val/fid_digits_classifier``. It also logs how the
      classifier labels the generated images: ``val/min_class_fraction`` (the rarest class's
      share; 1/num_classes when all classes are equally frequent) and
      ``val/mean_top_probability`` (its mean confidence).
    - ``"inception"``: the standard Inception-v3 features (needs ``pip install 'lit_gp[fid]'``
      and a one-time download of the weights). Keys ``val/fid_inception``, ``val/kid_inception``.

    KID is the mean over ``kid_subsets`` subsets of ``kid_subset_size`` samples (torchmetrics);
    it is unbiased, so it can be slightly negative for a good generator. For non-image data the
    callback does nothing.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        features: str = "auto",
        kid_subset_size: int = 100,
        kid_subsets: int = 50,
        classifier_epochs: int = 10,
        cache_dir: str | None = None,
    ) -> None:
        check_int("num_samples", num_samples, 2)
        check_int("kid_subset_size", kid_subset_size, 2)
        check_int("kid_subsets", kid_subsets)
        check_int("classifier_epochs", classifier_epochs)
        if features not in FEATURES:
            raise ConfigError("features", f"must be one of {', '.join(FEATURES)}, got {features!r}")
        self.num_samples = num_samples
        self.features = features
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.classifier_epochs = classifier_epochs
        self.cache_dir = cache_dir
        # Built once here so that a missing package or weights stop the run before training.
        self.extractor: nn.Module | None = InceptionFeatures() if features == "inception" else None
        self.extractor_name = "inception" if features == "inception" else None
        self.classifier_accuracy: float | None = None
        self.enabled = True  # False when features=auto finds no extractor for the data
        self._fid: FrechetInceptionDistance | None = None
        self._kid: KernelInceptionDistance | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        shape = getattr(datamodule, "data_shape", None)
        if shape is None or len(shape) != 3 or self._fid is not None or not self.enabled:
            return
        datamodule.setup(stage)
        features = self.features
        if features == "auto":
            features = self._choose_auto_features(datamodule)
            if features is None:
                self.enabled = False
                return
        if features == "classifier":
            num_classes = check_labelled(datamodule)
            self.extractor, self.classifier_accuracy = cached_classifier(
                datamodule.name,
                datamodule.real_images("train"),
                datamodule.real_images("val"),
                num_classes,
                cache_dir=self.cache_dir,
                epochs=self.classifier_epochs,
            )
            self.extractor_name = f"{datamodule.name}_classifier"
            log.info(
                "%s: accuracy %.4f on the validation split",
                self.extractor_name,
                self.classifier_accuracy or float("nan"),
            )
        real, _ = datamodule.real_images("train", self.num_samples)
        self._fid = FrechetInceptionDistance(feature=self.extractor, reset_real_features=False).to(
            pl_module.device
        )
        subset_size = min(self.kid_subset_size, real.shape[0], self.num_samples)
        with warnings.catch_warnings():
            # KID keeps every feature vector: num_samples of them here, by design.
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            self._kid = KernelInceptionDistance(
                feature=self.extractor,
                subsets=self.kid_subsets,
                subset_size=subset_size,
                reset_real_features=False,
            ).to(pl_module.device)
        for chunk in real.split(_BATCH):
            chunk = chunk.to(pl_module.device)
            self._fid.update(chunk, real=True)
            self._kid.update(chunk, real=True)

    def _choose_auto_features(self, datamodule) -> str | None:
        """``classifier`` for labelled data; else ``inception`` if torch-fidelity is installed
        (built here, so missing weights still stop the run before training); else None."""
        if getattr(datamodule, "num_classes", None):
            return "classifier"
        name = getattr(datamodule, "name", type(datamodule).__name__)
        if not fid_extra_installed():
            log.warning(
                "no FID/KID for %s: it has no labels to train classifier features, and Inception "
                "features need pip install 'lit_gp[fid]' (callbacks.image_metrics.features)",
                name,
            )
            return None
        self.extractor, self.extractor_name = InceptionFeatures(), "inception"
        return "inception"

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fid is None or trainer.sanity_checking:
            return
        self._fid.reset()
        self._kid.reset()
        top_probabilities, predictions = [], []
        remaining = self.num_samples
        while remaining > 0:
            fake = pl_module.sample(min(_BATCH, remaining)).float()
            remaining -= fake.shape[0]
            self._fid.update(fake, real=False)
            self._kid.update(fake, real=False)
            if isinstance(self.extractor, ClassifierFeatures):
                with torch.no_grad():
                    probabilities = self.extractor.logits(fake).softmax(1)
                top, predicted = probabilities.max(1)
                top_probabilities.append(top)
                predictions.append(predicted)
        logs = {
            f"val/fid_{self.extractor_name}": self._fid.compute(),
            f"val/kid_{self.extractor_name}": self._kid.compute()[0],
        }
        if predictions:
            counts = torch.bincount(torch.cat(predictions), minlength=self.extractor.num_classes)
            logs["val/min_class_fraction"] = counts.min() / self.num_samples
            logs["val/mean_top_probability"] = torch.cat(top_probabilities).mean()
        pl_module.log_dict(
            {key: value.float() for key, value in logs.items()}, on_step=False, on_epoch=True
        )
