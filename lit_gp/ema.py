"""An exponential moving average of the generator's weights, with a warm-up.

A plain EMA starts from the first generator and forgets it slowly: after ``t`` updates of decay
``d`` the first generator still has weight ``d ** t`` in the average (0.9999 ** 5000 = 0.61 at a
first validation after 5,000 generator steps). The warm-up here lowers the decay while the
average is young, so that the early, untrained generators are forgotten quickly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from lit_gp.errors import ConfigError


def warmup_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update that adds one more generator to an average of ``num_averaged``:
    ``min(decay, (1 + num_averaged) / (10 + num_averaged))``, TensorFlow's
    ``tf.train.ExponentialMovingAverage(decay, num_updates=...)`` rule."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


class WarmupEMA:
    """A ``multi_avg_fn`` for :class:`~torch.optim.swa_utils.AveragedModel`:
    ``average <- d * average + (1 - d) * current`` with ``d = warmup_decay(decay, n_averaged)``.

    The decay depends only on the model's own ``n_averaged`` buffer (saved in its state dict),
    so a run resumed from a checkpoint continues bitwise. A class rather than a closure, so an
    averaged model can be pickled (``ddp_spawn``).
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    def __repr__(self) -> str:
        return f"WarmupEMA(decay={self.decay})"

    @torch.no_grad()
    def __call__(
        self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int
    ) -> None:
        decay = warmup_decay(self.decay, int(num_averaged))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:  # integer buffers (BatchNorm's num_batches_tracked), as torch's own EMA does
            for average, value in zip(averaged, current, strict=True):
                average.copy_(average * decay + value * (1 - decay))


def averaged_generator(generator: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``generator`` (parameters and buffers) with a warm-up,
    or None when ``decay`` is None.

    The first update copies the generator; the update that adds the ``n + 1``-th generator uses
    the decay ``min(decay, (1 + n) / (10 + n))``, the ``num_updates`` rule of TensorFlow's
    ``tf.train.ExponentialMovingAverage`` (parameter-free). Until the decay reaches ``decay``
    (after about 9,000 updates for 0.999, 90,000 for 0.9999) the average spans about the last
    ninth of the updates so far (1 / (1 - d) = (10 + n) / 9). Call
    ``update_parameters(generator)`` after every generator step; the average is ``.module``.
    It is a plain ``AveragedModel``, so its state dict (weights, buffers, ``n_averaged``) goes
    into checkpoints and a resume continues it exactly.
    """
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ConfigError("ema_decay", f"must be null or a number in [0, 1), got {decay!r}")
    # use_buffers: BatchNorm running statistics are averaged too, so the averaged generator's
    # eval mode matches its averaged weights.
    averaged = AveragedModel(generator, multi_avg_fn=WarmupEMA(decay), use_buffers=True)
    averaged.requires_grad_(False)
    return averaged
