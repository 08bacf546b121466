"""Modes of stacked digits at every validation: ``val/modes_covered`` and ``val/mode_kl`` (the
StackedMNIST protocol), enabled by ``data=stacked_digits``."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from torchmetrics.aggregation import MeanMetric

from lit_gp.errors import check_int
from lit_gp.metrics.stacked import ModeHistogram, StackedModeClassifier

log = logging.getLogger(__name__)

_BATCH = 1000  # samples per generator / classifier call


def _shares(total: int, world_size: int, rank: int) -> int:
    """How many of ``total`` samples rank ``rank`` draws (the ranks' shares sum to ``total``)."""
    return len(range(rank, total, world_size))


class StackedModes(pl.Callback):
    """Scores ``num_samples`` generated stacks at every validation: each channel classified by
    the data module's digits classifier (``digit_classifier``: trained on the training digits,
    cached), the modes ``100 d0 + 10 d1 + d2`` counted in a 1,000-bin
    :class:`~lit_gp.metrics.stacked.ModeHistogram`. Logs

    - ``val/modes_covered``: modes with at least one sample (1,000 at most);
    - ``val/mode_kl``: KL(histogram || uniform) in nats (0 is uniform, log 1000 = 6.91 one mode);
    - ``val/stack_classifier_accuracy``: acc^3 with acc the classifier's accuracy on held-out
      single digits, the estimated share of real stacks whose three digits are all classified
      right;
    - ``val/mode_confidence``: the mean over samples of the product of the three channels' top
      class probabilities. The protocol counts a mode for any sample the classifier labels, also
      for channels that are no digit (uniform pixel noise covers 984 of the 1,000 modes with
      26,000 samples); this says how digit-like the channels are (real held-out stacks 0.89,
      uniform noise 0.27).

    Default 26,000 samples (VEEGAN, PacGAN): a perfect generator then leaves an expected
    1000 (1 - 1/1000)^26000 = 5e-9 modes empty (10,000 samples: 0.045) and its KL is sampling
    noise, about (1000 - 1) / (2 * 26000) = 0.019. At setup it logs (python logging) the same
    scores of ``num_samples`` real held-out stacks, the reference a generator is compared to.

    Under DDP each rank draws its share of the samples; the histogram is summed across ranks.
    Works with a module exposing ``sample(n)`` and a data module exposing ``digit_classifier``
    and ``reference_stacks`` (:class:`lit_gp.data.StackedDigitsDataModule`); otherwise it does
    nothing.
    """

    def __init__(
        self,
        num_samples: int = 26000,
        classifier_epochs: int = 10,
        cache_dir: str | None = None,
    ) -> None:
        check_int("num_samples", num_samples)
        check_int("classifier_epochs", classifier_epochs)
        self.num_samples = num_samples
        self.classifier_epochs = classifier_epochs
        self.cache_dir = cache_dir
        self.classifier: StackedModeClassifier | None = None
        self.digit_accuracy: float | None = None
        self.real_scores: dict[str, float] | None = None
        self.histogram: ModeHistogram | None = None
        self.confidence: MeanMetric | None = None

    @property
    def stack_accuracy(self) -> float | None:
        """acc^3: the estimated share of real stacks classified right in all three channels."""
        return None if self.digit_accuracy is None else self.digit_accuracy**3

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        applies = hasattr(datamodule, "digit_classifier") and hasattr(pl_module, "sample")
        if not applies or self.classifier is not None:
            return
        digit_classifier, self.digit_accuracy = datamodule.digit_classifier(
            self.cache_dir, self.classifier_epochs
        )
        self.classifier = StackedModeClassifier(digit_classifier).to(pl_module.device)
        self.histogram = ModeHistogram(datamodule.num_classes).to(pl_module.device)
        self.confidence = MeanMetric().to(pl_module.device)
        real, _ = datamodule.reference_stacks(self.num_samples, "val")
        self.real_scores = self.score(real)
        log.info(
            "stacked digits: digit classifier accuracy %.4f on held-out digits (stacks: %.4f); "
            "%d real held-out stacks: %d modes, KL %.4f, confidence %.4f",
            self.digit_accuracy or float("nan"),
            self.stack_accuracy or float("nan"),
            self.num_samples,
            self.real_scores["modes_covered"],
            self.real_scores["mode_kl"],
            self.real_scores["mode_confidence"],
        )

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """Modes covered, KL and confidence of given stacks (this process only, no DDP
        reduction)."""
        device = self.histogram.device
        histogram = ModeHistogram(self.histogram.num_modes, sync_on_compute=False).to(device)
        confidence = MeanMetric(sync_on_compute=False).to(device)
        for chunk in images.split(_BATCH):
            modes, confidences = self.classifier.predict(chunk.to(device))
            histogram.update(modes)
            confidence.update(confidences)
        scores = {key: float(value) for key, value in histogram.compute().items()}
        return {**scores, "mode_confidence": float(confidence.compute())}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.classifier is None or trainer.sanity_checking:
            return
        self.histogram.reset()
        self.confidence.reset()
        remaining = _shares(self.num_samples, trainer.world_size, trainer.global_rank)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        # Drawing the samples never moves the training run's random stream.
        with torch.random.fork_rng(devices=devices):
            while remaining > 0:
                fake = pl_module.sample(min(_BATCH, remaining))
                remaining -= fake.shape[0]
                modes, confidences = self.classifier.predict(fake)
                self.histogram.update(modes)
                self.confidence.update(confidences)
        scores = self.histogram.compute()
        logs = {
            "val/modes_covered": scores["modes_covered"],
            "val/mode_kl": scores["mode_kl"],
            "val/mode_confidence": self.confidence.compute(),
        }
        if self.stack_accuracy is not None:
            logs["val/stack_classifier_accuracy"] = torch.tensor(self.stack_accuracy)
        pl_module.log_dict(
            {key: value.float() for key, value in logs.items()}, on_step=False, on_epoch=True
        )
