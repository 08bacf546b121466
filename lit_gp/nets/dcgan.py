"""The WGAN-GP paper's DCGAN-style generator and critic (``gan_mnist.py`` / ``gan_cifar.py`` of
igul222/improved_wgan_training), sized by image shape.

Also home of what :mod:`lit_gp.nets.resnet` shares: :func:`stage_sizes`, the argument checks and
:func:`tflib_init`, the paper code's weight initialization.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral
from typing import TypeVar

from torch import Tensor, nn

from lit_gp.errors import ConfigError, check_int
from lit_gp.nets.layers import MaskedReLU

# No "batch": BatchNorm mixes the samples of a batch, so the gradient of one sample's score
# depends on the others and a per-sample gradient penalty no longer means what it says.
CRITIC_NORMS = ("none", "layer")

Layer = TypeVar("Layer", bound=nn.Module)


# --- shared helpers -------------------------------------------------------------------------


def check_image_shape(image_shape: object) -> tuple[int, int, int]:
    """``image_shape`` as a (C, H, W) tuple of positive ints, or a ConfigError naming it.

    Any sequence is accepted (tuple, list, a Hydra ``ListConfig``, ``torch.Size``), but not a
    string.
    """
    values = (
        list(image_shape)
        if isinstance(image_shape, Sequence) and not isinstance(image_shape, str | bytes)
        else None
    )
    if (
        values is None
        or len(values) != 3
        or any(isinstance(v, bool) or not isinstance(v, Integral) or v < 1 for v in values)
    ):
        raise ConfigError(
            "image_shape", f"must be 3 positive integers (C, H, W), got {image_shape!r}"
        )
    channels, height, width = (int(v) for v in values)
    return channels, height, width


def check_critic_norm(norm: object) -> str:
    if norm not in CRITIC_NORMS:
        raise ConfigError("norm", f"must be one of {', '.join(CRITIC_NORMS)}, got {norm!r}")
    return norm  # type: ignore[return-value]


def _halve(size: int) -> int:
    return -(-size // 2)


def stage_sizes(image_shape: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial sizes (H, W) from the image down to the smallest feature map.

    Per dimension: start at the image size and halve, rounding up, while the last size is above
    4, and at least twice (28: 28, 14, 7, 4; 32: 32, 16, 8, 4; 8: 8, 4, 2): a single stage would
    leave an 8x8 critic one conv layer deep. Both dimensions take the
    longer chain's number of steps, the shorter one halving on below 4, so non-square images
    share one set of stages ((48, 32): (48, 32), (24, 16), (12, 8), (6, 4), (3, 2)). A stride-2
    conv with kernel 5 and padding 2 maps each size to the next one; a doubling generator maps
    it back when followed by a crop.
    """
    _, height, width = check_image_shape(image_shape)
    chains = []
    for size in (height, width):
        chain = [size, _halve(size)]
        while chain[-1] > 4 or len(chain) < 3:
            chain.append(_halve(chain[-1]))
        chains.append(chain)
    length = max(len(chain) for chain in chains)
    for chain in chains:
        while len(chain) < length:
            chain.append(_halve(chain[-1]))
    return list(zip(*chains, strict=True))


def tflib_init(layer: Layer, he: bool = True) -> Layer:
    """Initialize a Linear / Conv2d / ConvTranspose2d as the paper's code (tflib) does; returns it.

    Weights are uniform with std sqrt(4 / (fan_in + fan_out)) when ``he`` (tflib's ``he_init``,
    for layers feeding a ReLU-type nonlinearity through the residual or main path) and
    sqrt(2 / (fan_in + fan_out)) otherwise (Glorot: 1x1 shortcut convs, output layers and every
    Linear, which tflib's ``Linear`` initializes that way by default); biases are 0.

    Fans are tflib's: channels x kernel area, with the strided side divided by stride**2 (the
    output side of a strided conv, the input side of a transposed one). At stride 1 this is
    exactly ``nn.init.xavier_uniform_(weight, gain=sqrt(2) if he else 1)``; at stride 2
    PyTorch's fans would give the paper's 5x5 layers a std up to 2x smaller.
    """
    weight = layer.weight
    if isinstance(layer, nn.Linear):
        fan_in, fan_out = float(layer.in_features), float(layer.out_features)
    elif isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
        area = math.prod(layer.kernel_size)
        stride = math.prod(layer.stride)
        fan_in, fan_out = float(layer.in_channels * area), float(layer.out_channels * area)
        if isinstance(layer, nn.ConvTranspose2d):
            fan_in /= stride
        else:
            fan_out /= stride
    else:
        raise TypeError(f"tflib_init: unsupported layer {type(layer).__name__}")
    std = math.sqrt((4.0 if he else 2.0) / (fan_in + fan_out))
    bound = math.sqrt(3.0) * std  # U(-b, b) has std b / sqrt(3)
    nn.init.uniform_(weight, -bound, bound)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def batch_norm(num_features: int, spatial: bool = True) -> nn.Module:
    """BatchNorm with scale 1 and offset 0 (tflib's ``Batchnorm``, eps 1e-5)."""
    layer = nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
    nn.init.ones_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def layer_norm(channels: int) -> nn.Module:
    """tflib's ``Layernorm`` over (C, H, W) of each sample with a per-channel scale and offset."""
    return nn.GroupNorm(1, channels, eps=1e-5)


class Crop(nn.Module):
    """Keep the top-left ``height`` x ``width`` pixels (the paper's ``output[:, :, :7, :7]``)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height = height
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : self.height, : self.width]

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


def crop_to(size: tuple[int, int], doubled_from: tuple[int, int]) -> list[nn.Module]:
    """A Crop if doubling ``doubled_from`` overshoots ``size``, else nothing."""
    height, width = size
    if 2 * doubled_from[0] > height or 2 * doubled_from[1] > width:
        return [Crop(height, width)]
    return []


# --- the nets -------------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """The paper's DCGAN generator (``gan_cifar.py``; ``gan_mnist.py`` at 28x28), any image size.

    Linear(latent_dim -> c0 * h0 * w0), BatchNorm, ReLU, reshape to (c0, h0, w0), then one
    ConvTranspose2d(5, stride 2, padding 2, output_padding 1) per stage of :func:`stage_sizes`,
    each doubling H and W (cropped top-left when that overshoots the stage's size) and followed
    by BatchNorm + ReLU, except the last, which outputs C channels through tanh. Channels halve
    per stage down to ``dim``: 32x32 goes 4x4x4dim -> 8x8x2dim -> 16x16xdim -> 32x32xC, 28x28
    goes 4 -> 8 cropped to 7 -> 14 -> 28 as ``gan_mnist.py`` does.

    Differences from ``gan_mnist.py``: tanh instead of sigmoid (samples in [-1, 1] like the
    other nets) and BatchNorm always (that file only uses it in its weight-clipping mode).
    Weights: :func:`tflib_init`; every transposed conv is he-initialized, the output one too,
    as in the paper's code; the input Linear is Glorot.
    """

    def __init__(
        self, image_shape: Sequence[int] = (1, 28, 28), latent_dim: int = 128, dim: int = 64
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        check_int("latent_dim", latent_dim)
        check_int("dim", dim)
        self.latent_dim = latent_dim
        channels = self.image_shape[0]
        sizes = stage_sizes(self.image_shape)
        num_stages = len(sizes) - 1
        widths = [dim * 2 ** (num_stages - 1 - i) for i in range(num_stages)] + [channels]
        height, width = sizes[-1]
        features = widths[0] * height * width
        self.input = nn.Sequential(
            tflib_init(nn.Linear(latent_dim, features), he=False),
            batch_norm(features, spatial=False),
            nn.ReLU(),
            nn.Unflatten(1, (widths[0], height, width)),
        )
        stages: list[nn.Module] = []
        for i in range(num_stages):
            last = i == num_stages - 1
            deconv = nn.ConvTranspose2d(
                widths[i], widths[i + 1], 5, stride=2, padding=2, output_padding=1
            )
            layers = [tflib_init(deconv)]
            if not last:
                layers += [batch_norm(widths[i + 1]), nn.ReLU()]
            # Crop after BatchNorm + ReLU, the order of gan_mnist.py: its BatchNorm statistics
            # include the row and column that are then cropped away.
            layers += crop_to(sizes[-2 - i], sizes[-1 - i])
            if last:
                layers.append(nn.Tanh())
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)

    def forward(self, noise: Tensor) -> Tensor:
        return self.stages(self.input(noise))


class DCGANCritic(nn.Module):
    """The paper's DCGAN critic (``gan_mnist.py`` / ``gan_cifar.py``), any image size; returns (B,).

    One Conv2d(5, stride 2, padding 2) per stage of :func:`stage_sizes` (28 -> 14 -> 7 -> 4;
    32 -> 16 -> 8 -> 4) with ``dim * 2**i`` channels at stage i, each followed by
    LeakyReLU(0.2) (as :class:`MaskedReLU`: the same function, cheaper under the penalty's
    double backward), then flatten and Linear -> 1.

    ``norm`` is ``"none"`` (the paper's WGAN-GP setting) or ``"layer"`` (GroupNorm(1, channels),
    a layer norm over (C, H, W) per sample, after every conv but the first). Never BatchNorm:
    it couples the samples of a batch and per-sample gradient penalties would be wrong.
    Weights: :func:`tflib_init`, he for the convs, Glorot for the output Linear.
    """

    def __init__(
        self, image_shape: Sequence[int] = (1, 28, 28), dim: int = 64, norm: str = "none"
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        check_int("dim", dim)
        self.norm = check_critic_norm(norm)
        sizes = stage_sizes(self.image_shape)
        layers: list[nn.Module] = []
        in_channels = self.image_shape[0]
        for i in range(len(sizes) - 1):
            out_channels = dim * 2**i
            layers.append(tflib_init(nn.Conv2d(in_channels, out_channels, 5, stride=2, padding=2)))
            if norm == "layer" and i > 0:
                layers.append(layer_norm(out_channels))
            layers.append(MaskedReLU(0.2))
            in_channels = out_channels
        height, width = sizes[-1]
        layers += [
            nn.Flatten(),
            tflib_init(nn.Linear(in_channels * height * width, 1), he=False),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).squeeze(1)
