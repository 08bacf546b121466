"""Mode metrics of stacked digits (the StackedMNIST protocol of VEEGAN, PacGAN, GDPP): each
channel classified by a digits classifier, the 1,000-bin histogram of the resulting modes, the
number of modes with at least one sample and the KL divergence of the histogram from uniform."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_gp.errors import check_int


class ModeHistogram(Metric):
    """A histogram of samples over ``num_modes`` modes; :meth:`compute` gives ``modes_covered``
    (modes with at least one sample) and ``mode_kl``, ``KL(p || uniform) = sum_k p_k log(p_k K)``
    with ``p`` the normalized histogram, ``K = num_modes`` and ``0 log 0 = 0`` (natural log: 0 for
    a uniform histogram, ``log K`` when every sample is in one mode).

    The counts reduce by summation across DDP ranks, so each rank may score its share.
    """

    is_differentiable = False
    higher_is_better = None  # more modes is better, a smaller KL is better
    full_state_update = False

    def __init__(self, num_modes: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        check_int("num_modes", num_modes, 2)
        self.num_modes = num_modes
        self.add_state(
            "counts", default=torch.zeros(num_modes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, modes: Tensor) -> None:
        """Count integer modes ``(B,)`` in ``0..num_modes-1``."""
        modes = modes.detach().reshape(-1)
        if modes.is_floating_point() or modes.is_complex():
            raise ValueError(f"modes must be integers, got {modes.dtype}")
        if modes.numel() and (int(modes.min()) < 0 or int(modes.max()) >= self.num_modes):
            raise ValueError(f"modes must lie in 0..{self.num_modes - 1}")
        self.counts += torch.bincount(modes.long(), minlength=self.num_modes)

    def compute(self) -> dict[str, Tensor]:
        """``modes_covered`` (float count) and ``mode_kl`` (nats; NaN without samples)."""
        counts = self.counts.double()
        p = counts / counts.sum()
        present = counts > 0
        kl = (p[present] * (p[present] * self.num_modes).log()).sum()
        return {
            "modes_covered": present.sum().float(),
            "mode_kl": kl.float() if self.counts.sum() > 0 else torch.tensor(math.nan),
        }


class StackedModeClassifier(nn.Module):
    """Classifies each channel of stacked digits ``(B, C, H, W)`` in [-1, 1] with a
    single-digit classifier (``logits(images (N, 1, H, W)) -> (N, 10)``) and returns the modes
    ``sum_c d_c 10^(C-1-c)`` ``(B,)`` (``100 d0 + 10 d1 + d2`` for three channels)."""

    def __init__(self, digit_classifier: nn.Module, num_digits: int = 10) -> None:
        super().__init__()
        self.digit_classifier = digit_classifier
        self.num_digits = num_digits

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The modes ``(B,)`` and their confidence ``(B,)``: the product over channels of the
        classifier's top probability (near 1 for clear digits, near 0.1^C for noise)."""
        batch, channels = images.shape[:2]
        single = images.float().reshape(batch * channels, 1, *images.shape[2:])
        probabilities = self.digit_classifier.logits(single).softmax(1)
        top, digits = probabilities.max(1)
        digits = digits.reshape(batch, channels)
        weights = self.num_digits ** torch.arange(channels - 1, -1, -1, device=digits.device)
        return (digits * weights).sum(1), top.reshape(batch, channels).prod(1)

    def forward(self, images: Tensor) -> Tensor:
        return self.predict(images)[0]
