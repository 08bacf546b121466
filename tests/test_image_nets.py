"""Image nets (the WGAN-GP paper's DCGAN and CIFAR-10 ResNet): sizes, parameter counts and init
worked out by hand, and the per-sample independence that gradient penalties rely on."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_gp import ConfigError, penalties
from lit_gp.nets import DCGANCritic, DCGANGenerator, ResNetCritic, ResNetGenerator
from lit_gp.nets.dcgan import stage_sizes

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 48, 32)]
GENERATORS = [DCGANGenerator, ResNetGenerator]
CRITICS = [DCGANCritic, ResNetCritic]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_stage_sizes_halve_rounding_up_down_to_four() -> None:
    # At least two stages, so an 8x8 critic is more than one conv deep.
    assert stage_sizes((1, 8, 8)) == [(8, 8), (4, 4), (2, 2)]
    assert stage_sizes((1, 28, 28)) == [(28, 28), (14, 14), (7, 7), (4, 4)]
    assert stage_sizes((3, 32, 32)) == [(32, 32), (16, 16), (8, 8), (4, 4)]
    # 48 needs four halvings (48, 24, 12, 6, 3), so 32 halves on past 4 to 2.
    assert stage_sizes((3, 48, 32)) == [(48, 32), (24, 16), (12, 8), (6, 4), (3, 2)]
    assert stage_sizes((1, 4, 4)) == [(4, 4), (2, 2), (1, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_output_shapes(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    for net in GENERATORS:
        generator = net(shape, latent_dim=16, dim=8)
        samples = generator(torch.randn(3, 16))
        assert samples.shape == (3, *shape), net.__name__
        assert samples.min() >= -1 and samples.max() <= 1
        assert generator.latent_dim == 16 and generator.image_shape == shape
    for net in CRITICS:
        for norm in ("none", "layer"):
            # A list, as a Hydra ListConfig converts to, is accepted too.
            critic = net(list(shape), dim=8, norm=norm)
            assert critic(torch.randn(3, *shape)).shape == (3,), (net.__name__, norm)
            assert critic.image_shape == shape


def test_resnet_parameter_counts_at_paper_width() -> None:
    dim, latent, channels = 128, 128, 3
    conv3 = dim * dim * 9 + dim  # 147_584, 3x3 conv dim -> dim with bias
    conv1 = dim * dim + dim  # 16_512, 1x1 shortcut
    bn = 2 * dim  # scale and offset
    # Generator: Linear 128 -> 128*4*4, three up blocks (BN, conv3, BN, conv3, shortcut conv1),
    # output BN and 3x3 conv to 3 channels.
    linear = latent * dim * 16 + dim * 16  # 264_192
    up_block = bn + conv3 + bn + conv3 + conv1  # 312_192
    output = bn + dim * channels * 9 + channels  # 256 + 3_459
    assert count(ResNetGenerator()) == linear + 3 * up_block + output == 1_204_483
    # Critic: optimized block (conv3 3 -> 128, conv3, conv1 3 -> 128), down block (two conv3,
    # conv1), two plain blocks (two conv3 each, identity shortcut), Linear 128 -> 1.
    first = (channels * dim * 9 + dim) + conv3 + (channels * dim + dim)  # 151_680
    down = 2 * conv3 + conv1  # 311_680
    plain = 2 * conv3  # 295_168
    critic = first + down + 2 * plain + dim + 1
    assert count(ResNetCritic()) == critic == 1_053_825
    # Layer norm: a scale and offset per channel before each of the 6 ReLUs in blocks 2-4.
    assert count(ResNetCritic(norm="layer")) == critic + 6 * bn


def test_dcgan_parameter_counts_at_mnist_paper_width() -> None:
    dim = 64
    # Generator: Linear 128 -> 4*4*4dim, BatchNorm1d on those 4096 features, deconv 5x5
    # 4dim -> 2dim, BN, 2dim -> dim, BN, dim -> 1.
    generator = (
        (128 * 4096 + 4096)
        + 2 * 4096
        + (256 * 128 * 25 + 128)
        + 2 * 128
        + (128 * 64 * 25 + 64)
        + 2 * 64
        + (64 * 1 * 25 + 1)
    )
    assert count(DCGANGenerator((1, 28, 28), dim=dim)) == generator == 1_562_753
    # Critic: conv 5x5 1 -> dim -> 2dim -> 4dim, Linear 4*4*4dim -> 1.
    critic = (1 * 64 * 25 + 64) + (64 * 128 * 25 + 128) + (128 * 256 * 25 + 256) + (4096 + 1)
    assert count(DCGANCritic((1, 28, 28), dim=dim)) == critic == 1_030_145


def test_mnist_generator_goes_4_7_14_28_like_the_paper() -> None:
    generator = DCGANGenerator((1, 28, 28), dim=64)
    shapes: list[tuple[int, ...]] = []
    for module in [generator.input, *generator.stages]:
        module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    generator(torch.randn(2, 128))
    assert shapes == [(256, 4, 4), (128, 7, 7), (64, 14, 14), (1, 28, 28)]


@pytest.mark.parametrize(
    ("shape", "generator_sizes", "critic_sizes"),
    [
        # 8: two up blocks from 2x2; the critic halves once (4 < 8 stops the second halving).
        ((1, 8, 8), [2, 4, 8], [4, 4, 4, 4]),
        ((1, 28, 28), [4, 7, 14, 28], [14, 7, 7, 7]),
        # The paper's CIFAR-10 nets: three up blocks; 32 -> 16 -> 8 in the critic.
        ((3, 32, 32), [4, 8, 16, 32], [16, 8, 8, 8]),
    ],
)
def test_resnet_block_sizes(
    shape: tuple[int, int, int], generator_sizes: list[int], critic_sizes: list[int]
) -> None:
    generator = ResNetGenerator(shape, latent_dim=4, dim=4)
    critic = ResNetCritic(shape, dim=4)
    sizes: list[int] = []
    for module in [generator.input, *generator.blocks, *critic.blocks[:4]]:
        module.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    critic(generator(torch.randn(2, 4)))
    assert sizes == generator_sizes + critic_sizes


def test_critics_have_no_batch_norm_generators_do() -> None:
    for net in CRITICS:
        for norm in ("none", "layer"):
            critic = net((3, 32, 32), dim=8, norm=norm)
            assert penalties.find_batch_norm(critic) is None
            penalties.check_critic(critic)
    for net in GENERATORS:
        assert penalties.find_batch_norm(net((3, 32, 32), dim=8)) is not None


def _gradient_of_first(
    critic: nn.Module, first: torch.Tensor, others: torch.Tensor
) -> torch.Tensor:
    first = first.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(torch.cat([first, others])).sum(), first)
    return gradient


@pytest.mark.parametrize("norm", ["none", "layer"])
@pytest.mark.parametrize("net", CRITICS, ids=lambda n: n.__name__)
def test_critic_input_gradient_of_a_sample_ignores_the_rest_of_the_batch(
    net: type[nn.Module], norm: str
) -> None:
    torch.manual_seed(0)
    critic = net((3, 16, 16), dim=4, norm=norm).double()
    first = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    others = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    alone = _gradient_of_first(critic, first, others[:0])
    in_batch = _gradient_of_first(critic, first, others)
    assert alone.abs().sum() > 0
    torch.testing.assert_close(in_batch, alone)
    # The check can fail: a BatchNorm in front couples the samples.
    coupled = nn.Sequential(nn.BatchNorm2d(3), critic).double()
    alone = _gradient_of_first(coupled, first, others[:1])
    assert not torch.allclose(_gradient_of_first(coupled, first, others), alone)


def _uniform_std(weight: torch.Tensor) -> float:
    return weight.detach().double().std().item()


def test_init_follows_tflib() -> None:
    torch.manual_seed(0)
    # Stride-1 3x3 conv 128 -> 128 (he): fan_in = fan_out = 128 * 9 = 1152,
    # std sqrt(4 / 2304) = 1/24; uniform, so |w| <= sqrt(3) * std.
    conv = ResNetCritic().blocks[2].residual[1]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
    assert _uniform_std(conv.weight) == pytest.approx(1 / 24, rel=0.1)
    assert conv.weight.abs().max() <= math.sqrt(3) / 24 + 1e-7
    assert torch.count_nonzero(conv.bias) == 0
    # 1x1 shortcut (Glorot, gain 1): sqrt(2 / (128 + 128)) = 1 / sqrt(128).
    shortcut = ResNetCritic().blocks[1].shortcut[1]
    assert isinstance(shortcut, nn.Conv2d) and shortcut.kernel_size == (1, 1)
    assert _uniform_std(shortcut.weight) == pytest.approx(128**-0.5, rel=0.1)
    # Strided 5x5 conv 64 -> 128: tflib divides the output fan by stride**2 = 4:
    # fan_in = 64 * 25 = 1600, fan_out = 128 * 25 / 4 = 800, std sqrt(4 / 2400) = 0.0408
    # (PyTorch's fans would give sqrt(4 / 4800) = 0.0289).
    strided = DCGANCritic((1, 28, 28), dim=64).net[2]
    assert isinstance(strided, nn.Conv2d) and strided.out_channels == 128
    assert _uniform_std(strided.weight) == pytest.approx(math.sqrt(4 / 2400), rel=0.1)
    # Transposed 5x5 256 -> 128: the input fan is divided: 256 * 25 / 4 = 1600,
    # fan_out = 128 * 25 = 3200, std sqrt(4 / 4800).
    generator = DCGANGenerator((1, 28, 28), dim=64)
    deconv = generator.stages[0][0]
    assert isinstance(deconv, nn.ConvTranspose2d) and deconv.in_channels == 256
    assert _uniform_std(deconv.weight) == pytest.approx(math.sqrt(4 / 4800), rel=0.1)
    assert torch.count_nonzero(deconv.bias) == 0
    # Input Linear 128 -> 4096, Glorot as tflib's Linear default: sqrt(2 / 4224).
    linear = generator.input[0]
    assert _uniform_std(linear.weight) == pytest.approx(math.sqrt(2 / 4224), rel=0.1)
    batch_norm = generator.input[1]
    assert torch.all(batch_norm.weight == 1) and torch.all(batch_norm.bias == 0)


def test_bad_arguments_name_their_key() -> None:
    for shape in [(28, 28), (1, 0, 28), "abc", (1, 28.0, 28), (1, True, 28), None]:
        for net in [*GENERATORS, *CRITICS]:
            with pytest.raises(ConfigError) as error:
                net(shape)
            assert error.value.key == "image_shape"
    for net in [*GENERATORS, *CRITICS]:
        with pytest.raises(ConfigError) as error:
            net(dim=0)
        assert error.value.key == "dim"
    for net in GENERATORS:
        with pytest.raises(ConfigError) as error:
            net(latent_dim=0)
        assert error.value.key == "latent_dim"
    for net in CRITICS:
        with pytest.raises(ConfigError, match="must be one of none, layer, got 'batch'") as error:
            net(norm="batch")
        assert error.value.key == "norm"


@pytest.mark.parametrize("norm", ["none", "layer"])
@pytest.mark.parametrize("net", CRITICS, ids=lambda n: n.__name__)
def test_wgan_gp_runs_with_each_critic(net: type[nn.Module], norm: str) -> None:
    torch.manual_seed(0)
    critic = net((3, 32, 32), dim=8, norm=norm)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = ResNetGenerator((3, 32, 32), latent_dim=8, dim=8)(torch.randn(4, 8)).detach()
    result = penalties.wgan_gp(critic, real, fake)
    assert torch.isfinite(result.loss)
    result.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters() if p.grad is not None)
