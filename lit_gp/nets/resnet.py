"""The WGAN-GP paper's CIFAR-10 ResNet generator and critic (``gan_cifar_resnet.py`` of
igul222/improved_wgan_training), sized by image shape."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lit_gp.errors import check_int
from lit_gp.nets.dcgan import (
    batch_norm,
    check_critic_norm,
    check_image_shape,
    crop_to,
    layer_norm,
    stage_sizes,
    tflib_init,
)
from lit_gp.nets.layers import MaskedReLU


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return tflib_init(nn.Conv2d(in_channels, out_channels, 3, padding=1))


def _shortcut_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return tflib_init(nn.Conv2d(in_channels, out_channels, 1), he=False)


def _pool() -> nn.AvgPool2d:
    # ceil_mode: an odd size halves rounding up, like stage_sizes, instead of dropping the last
    # row; windows hanging off the edge average the pixels they cover. Even sizes: plain 2x2.
    return nn.AvgPool2d(2, ceil_mode=True)


class _UpBlock(nn.Module):
    """Generator residual block with resample='up': BN, ReLU, nearest x2, Conv3x3, BN, ReLU,
    Conv3x3; shortcut nearest x2 + Conv1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            batch_norm(channels),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv3x3(channels, channels),
            batch_norm(channels),
            nn.ReLU(),
            _conv3x3(channels, channels),
        )
        # The paper upsamples, then applies the 1x1 conv; a 1x1 conv commutes with nearest
        # upsampling, so convolving first gives the same values on a quarter of the pixels.
        self.shortcut = nn.Sequential(
            _shortcut_conv(channels, channels), nn.Upsample(scale_factor=2, mode="nearest")
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class _CriticBlock(nn.Module):
    """Critic residual block: [LN], ReLU, Conv3x3, [LN], ReLU, Conv3x3, [AvgPool]; the shortcut
    is identity without resampling, else AvgPool + Conv1x1."""

    def __init__(self, channels: int, downsample: bool, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            if norm == "layer":
                layers.append(layer_norm(channels))
            layers += [MaskedReLU(), _conv3x3(channels, channels)]
        if downsample:
            layers.append(_pool())
        self.residual = nn.Sequential(*layers)
        # The paper convolves, then pools (ConvMeanPool); the two commute for a 1x1 conv, so
        # pooling first gives the same values on a quarter of the pixels.
        self.shortcut: nn.Module = (
            nn.Sequential(_pool(), _shortcut_conv(channels, channels))
            if downsample
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class _OptimizedBlock(nn.Module):
    """The critic's first block (``OptimizedResBlockDisc1``): Conv3x3, ReLU, Conv3x3, AvgPool;
    shortcut AvgPool + Conv1x1. No nonlinearity or norm on the raw image."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            _conv3x3(in_channels, channels), MaskedReLU(), _conv3x3(channels, channels), _pool()
        )
        self.shortcut = nn.Sequential(_pool(), _shortcut_conv(in_channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class ResNetGenerator(nn.Module):
    """The paper's CIFAR-10 ResNet generator (``gan_cifar_resnet.py``), any image size.

    Linear(latent_dim -> dim * h0 * w0), reshape, one residual up block per stage of
    :func:`~lit_gp.nets.dcgan.stage_sizes` (cropped top-left after the block when doubling
    overshoots: 32x32 has the paper's three blocks 4 -> 8 -> 16 -> 32, 28x28 goes
    4 -> 8 cropped to 7 -> 14 -> 28), then BN, ReLU, Conv3x3 -> C and tanh. ``dim`` channels
    throughout (the paper: 128).

    Weights (:func:`~lit_gp.nets.dcgan.tflib_init`): 3x3 convs he, 1x1 shortcuts, the output
    conv and the input Linear Glorot, as the paper's code.
    """

    def __init__(
        self, image_shape: Sequence[int] = (3, 32, 32), latent_dim: int = 128, dim: int = 128
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        check_int("latent_dim", latent_dim)
        check_int("dim", dim)
        self.latent_dim = latent_dim
        sizes = stage_sizes(self.image_shape)
        height, width = sizes[-1]
        self.input = nn.Sequential(
            tflib_init(nn.Linear(latent_dim, dim * height * width), he=False),
            nn.Unflatten(1, (dim, height, width)),
        )
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(_UpBlock(dim), *crop_to(sizes[-2 - i], sizes[-1 - i]))
                for i in range(len(sizes) - 1)
            )
        )
        self.output = nn.Sequential(
            batch_norm(dim),
            nn.ReLU(),
            tflib_init(nn.Conv2d(dim, self.image_shape[0], 3, padding=1), he=False),
            nn.Tanh(),
        )

    def forward(self, noise: Tensor) -> Tensor:
        return self.output(self.blocks(self.input(noise)))


class ResNetCritic(nn.Module):
    """The paper's CIFAR-10 ResNet critic (``gan_cifar_resnet.py``), any image size; returns (B,).

    An optimized first block that halves H and W, one residual block that halves them again if
    the smaller side is still at least 8 (32 -> 16 -> 8; 28 -> 14 -> 7; 8 -> 4 and no more), two
    residual blocks without resampling, ReLU, the mean over H and W, Linear(dim -> 1). ReLUs are
    :class:`MaskedReLU` (cheaper under the penalty's double backward).

    ``norm`` is ``"none"`` (the paper's default) or ``"layer"``: GroupNorm(1, dim), a layer norm
    over (C, H, W) per sample, before each ReLU inside the residual blocks but not in the first
    block (the paper's ``NORMALIZATION_D``). Never BatchNorm: it couples the samples of a batch
    and per-sample gradient penalties would be wrong.
    Weights (:func:`~lit_gp.nets.dcgan.tflib_init`): 3x3 convs he, 1x1 shortcuts and the output
    Linear Glorot, as the paper's code.
    """

    def __init__(
        self, image_shape: Sequence[int] = (3, 32, 32), dim: int = 128, norm: str = "none"
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        check_int("dim", dim)
        self.norm = check_critic_norm(norm)
        channels, height, width = self.image_shape
        after_first = min(-(-height // 2), -(-width // 2))
        self.blocks = nn.Sequential(
            _OptimizedBlock(channels, dim),
            _CriticBlock(dim, downsample=after_first >= 8, norm=norm),
            _CriticBlock(dim, downsample=False, norm=norm),
            _CriticBlock(dim, downsample=False, norm=norm),
            MaskedReLU(),
        )
        self.output = tflib_init(nn.Linear(dim, 1), he=False)

    def forward(self, images: Tensor) -> Tensor:
        features = self.blocks(images).mean(dim=(2, 3))
        return self.output(features).squeeze(1)
