"""Small image classifiers (plain ``nn.Module``s mapping (B, C, H, W) to logits (B, K)), sized
by image shape like the GAN nets, for :class:`lit_gp.classifier.GradientPenaltyClassifier`.

No BatchNorm: it couples the samples of a batch, so a per-sample input-gradient penalty would no
longer be per sample. Activations are :class:`MaskedReLU` (ReLU's values and gradients, a cheaper
double backward). ``dropout`` acts on the hidden features before the last layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from lit_gp.errors import check_int, check_number
from lit_gp.nets.dcgan import check_image_shape
from lit_gp.nets.layers import MaskedReLU


def _check_dropout(dropout: object) -> float:
    return check_number("dropout", dropout, 0, 1, strict_maximum=True)


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []


class MLPClassifier(nn.Module):
    """Flattened image -> ``num_layers`` ReLU layers of width ``hidden_dim`` -> ``num_classes``
    logits, with dropout (probability ``dropout``) after every hidden layer, i.e. before each of
    the last ``num_layers`` linear layers. ``num_layers=0`` is a linear (softmax regression)
    model."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        hidden_dim: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        check_int("num_classes", num_classes, 2)
        check_int("hidden_dim", hidden_dim)
        check_int("num_layers", num_layers, 0)
        p = _check_dropout(dropout)
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(self.image_shape)
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), MaskedReLU(), *_dropout(p)]
            width = hidden_dim
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class ConvClassifier(nn.Module):
    """Three 3x3 convolutions (``width``, ``2 width``, ``2 width`` channels; the last two with
    stride 2, so H x W -> ceil(H/4) x ceil(W/4): 8 -> 2, 28 -> 7, 32 -> 8), ReLU, then dropout
    and a linear layer to ``num_classes`` logits."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width_px = check_image_shape(image_shape)
        self.image_shape = (channels, height, width_px)
        check_int("num_classes", num_classes, 2)
        check_int("width", width)
        p = _check_dropout(dropout)
        self.num_classes = num_classes
        out_h, out_w = height, width_px
        for _ in range(2):
            out_h, out_w = -(-out_h // 2), -(-out_w // 2)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            MaskedReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            MaskedReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            MaskedReLU(),
            nn.Flatten(),
            *_dropout(p),
            nn.Linear(2 * width * out_h * out_w, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)
