"""How well the finite-difference estimate of ||grad D(x)||^2 tracks the exact one on a trained
conv critic.

    python benchmarks/finite_difference.py                      # train a critic here, then compare
    python benchmarks/finite_difference.py --checkpoint PATH    # a GANModule checkpoint instead

About 17 minutes on one thread of a busy 2-core CPU (5 of them training); ``--sigmas`` and
``--directions`` change the grid, ``--save PATH`` keeps the trained critic for ``--checkpoint``.

The critic: by default one trained here on scikit-learn's 8x8 digits with the DCGAN nets of
``conf/nets/dcgan.yaml`` (latent 128, dim 64, critic without normalization) through GANModule and
a Lightning Trainer: R1 exact with gamma 1, the non-saturating loss, n_critic 1, Adam 2e-4 betas
(0, 0.99) for both nets, batch 64, 1,500 generator steps (``--steps``), seed 0, no EMA and no
learning-rate decay (``experiment=r1_digits`` minus those two). The digits are split 70/30
(``val_fraction=0.3``, seed 0) so that 512 held-out real digits exist (the default 0.2 holds out
359). With ``--checkpoint`` (e.g. ``outputs/.../checkpoints/last.ckpt`` of ``python train.py
experiment=r1_digits``) the held-out split is the checkpoint's own data module's, when the
checkpoint stores its hyperparameters (else ``DigitsDataModule(seed=0)``), and fewer than 512
real points are used if the split is smaller: the ``points`` column says how many.

The comparison, at the critic's final parameters: on 512 held-out real digits and 512 generated
samples (the generator in eval mode), per sample the exact ||grad D(x)||^2 (autograd, float64)
and the estimate s(x) = (1 / K) sum_k (D(x + sigma u_k) - D(x))^2 / sigma^2, u_k ~ N(0, I), the
formula of ``lit_gp.penalties.finite_difference_penalty`` (checked against it at start-up), for
sigma in {1e-1, 1e-2, 1e-3} and K = directions in {1, 4, 16}, in float32 (what training uses) and
float64. Every figure is the mean over ``--draws`` (default 8) independent draws of the
directions u (the same draws for every sigma and both dtypes, so that their rows differ by sigma
and dtype alone):

- Pearson r: correlation over the points of s(x) with the exact value (one draw); beside it
  "r if linear", the correlation a linear critic with the same gradient norms would give
  (exact times chi-square(K) / K, drawn from the same directions): the ceiling that the
  directions' noise alone sets, so r below it is the critic's curvature or round-off;
- mean ratio: mean_x s(x) / mean_x ||grad D(x)||^2 (one draw), as mean +- standard deviation over
  draws: its mean is the estimator's bias on this critic, its spread the noise of one batch's
  penalty;
- |rel. error| of the mean: |mean ratio - 1| per draw, averaged (bias and noise together);
- median per-sample |rel. error|: the median over points of |s(x) / exact - 1|.

What it shows: whether the finite-difference penalty measures the same quantity as exact R1/R2
on a critic that R1 trained, how large sigma can be before the critic's curvature biases it and
how small before float32 round-off does, and how much the directions buy. For a linear critic
s(x) is ||grad D||^2 times a chi-square with K degrees of freedom over K, so the per-sample
relative noise is sqrt(2 / K) (1.41, 0.71, 0.35) whatever the dimension, and the batch mean of
512 points carries about sqrt(2 / (512 K)) of it (6%, 3%, 1.6%), less when ||grad D(x)|| varies
over the points.

Found here (the critic trained here, seed 0, 512 + 512 points): at sigma 1e-2 and 1e-3 the
batch mean is unbiased within its noise (ratio 0.99-1.01 with 16 directions; 1.03-1.06 with
one, about two standard errors of its 8 draws)
and the correlation sits at the ceiling the directions' noise sets (r 0.18-0.20 / 0.34-0.39 /
0.56-0.63 for 1 / 4 / 16 directions against 0.16-0.17 / 0.33-0.35 / 0.56-0.63 for a linear
critic; the gradient norms of this critic vary little, 0.22-0.49, so noise dominates); at sigma
1e-1 the curvature shows on the real digits only (ratio 1.27-1.32, fake 1.02-1.06). float32 and
float64 agree to 2e-5 in the mean ratio down to sigma 1e-3 (round-off appears only at 1e-6:
ratio 1.27 in float32 against 1.01 in float64, with ``--sigmas 1e-4 1e-5 1e-6``).

What it does not show: anything about training with the estimate. The penalty's gradient with
respect to the critic's parameters is not the exact penalty's gradient (the estimator's gradient
is noisy and biased in its own way), so a good correlation here does not prove that training
with it matches exact R1 (that is the job of a training comparison, e.g.
``experiment=r3gan_fd_digits`` against ``experiment=r3gan_digits``). Nor does one small 8x8
critic at one point of training speak for larger images, other architectures (smooth
activations, attention, normalization layers) or bf16, where the critic's outputs carry about 3
significant digits and sigma = 0.01 drowns in their rounding.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch

# benchmarks/run.py, beside this script (its directory is on sys.path when run as a script).
from run import trainer as quiet_trainer
from torch import Tensor, nn

from lit_gp import GANModule
from lit_gp.callbacks import GeneratorStepLimit
from lit_gp.data import DigitsDataModule
from lit_gp.penalties import finite_difference_penalty

SIGMAS = (1e-1, 1e-2, 1e-3)
DIRECTIONS = (1, 4, 16)
IMAGE_SHAPE = [1, 8, 8]


def adam() -> dict:
    return {"_target_": "torch.optim.Adam", "lr": 2e-4, "betas": [0.0, 0.99]}


def train_module(
    steps: int, seed: int, datamodule: DigitsDataModule, save: str | None = None
) -> GANModule:
    """R1 (exact, gamma 1) with the non-saturating loss on digits, n_critic 1, ``steps``
    generator steps (the nets and optimizers of ``experiment=r1_digits``); with ``save``, a
    checkpoint of it there (``--checkpoint`` reads it back)."""
    L.seed_everything(seed, verbose=False)
    module = GANModule(
        generator={
            "_target_": "lit_gp.nets.DCGANGenerator",
            "image_shape": IMAGE_SHAPE,
            "latent_dim": 128,
            "dim": 64,
        },
        critic={
            "_target_": "lit_gp.nets.DCGANCritic",
            "image_shape": IMAGE_SHAPE,
            "dim": 64,
            "norm": "none",
        },
        penalty={"_target_": "lit_gp.penalties.r1", "gamma": 1.0},
        loss="non_saturating",
        n_critic=1,
        critic_optimizer=adam(),
        generator_optimizer=adam(),
    )
    trainer = quiet_trainer([GeneratorStepLimit(steps)])
    trainer.fit(module, datamodule=datamodule)
    if save:
        trainer.save_checkpoint(save)
    return module


def load_module(path: str) -> tuple[GANModule, DigitsDataModule]:
    """A checkpoint's module and the digits data module it was trained with (its stored
    hyperparameters, else ``DigitsDataModule(seed=0)``)."""
    module = GANModule.load_from_checkpoint(path, map_location="cpu")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    stored = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    keys = ("val_fraction", "seed")
    return module, DigitsDataModule(**{key: stored[key] for key in keys if key in stored})


# --- the estimates ---------------------------------------------------------------------------


def exact_squared_norm(critic: nn.Module, points: Tensor) -> Tensor:
    """Per-sample ||dD/dx||^2 by autograd (the critic has no batch coupling)."""
    points = points.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(points).sum(), points)
    return gradient.flatten(1).pow(2).sum(1)


@torch.no_grad()
def finite_difference(critic: nn.Module, points: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """Per-sample mean over the K directions ``noise`` (K, B, ...) of
    (D(x + sigma u) - D(x))^2 / sigma^2, as lit_gp.penalties.finite_difference_penalty
    computes it."""
    directions, batch = noise.shape[0], points.shape[0]
    base = critic(points).reshape(batch)
    shifted = critic((points.unsqueeze(0) + sigma * noise).flatten(0, 1)).reshape(directions, batch)
    return ((shifted - base) / sigma).pow(2).mean(0)


def check_against_library(critic: nn.Module, points: Tensor) -> None:
    """The estimate above is the library's: same directions (same seed), same values."""
    torch.manual_seed(123)
    library = finite_difference_penalty(critic, points, weight=1.0, sigma=0.01, directions=4)
    torch.manual_seed(123)
    noise = torch.randn((4, *points.shape), dtype=points.dtype)
    ours = finite_difference(critic, points, noise, 0.01)
    if not torch.allclose(library.squared_norm.detach(), ours, rtol=1e-5, atol=1e-7):
        raise RuntimeError("the benchmark's estimate differs from finite_difference_penalty")


@dataclass
class Row:
    pearson: float
    linear_pearson: float
    ratio_mean: float
    ratio_std: float
    mean_error: float
    median_sample_error: float


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def compare(
    critics: dict[torch.dtype, nn.Module],
    points: Tensor,
    exact: Tensor,
    draws: int,
    seed: int,
    sigmas: list[float],
    all_directions: list[int],
) -> dict[tuple[float, int, torch.dtype], Row]:
    """Every (sigma, directions, dtype) against the exact float64 values, over ``draws``
    draws of the directions (the same directions, drawn in float64, for both dtypes)."""
    rows = {}
    for sigma in sigmas:
        for directions in all_directions:
            per_dtype: dict[torch.dtype, list[tuple[float, float, float]]] = {
                dtype: [] for dtype in critics
            }
            linear: list[float] = []
            for draw in range(draws):
                generator = torch.Generator().manual_seed(seed + 1000 * draw + directions)
                noise = torch.randn(
                    (directions, *points.shape), generator=generator, dtype=torch.float64
                )
                for dtype, critic in critics.items():
                    estimate = finite_difference(
                        critic, points.to(dtype), noise.to(dtype), sigma
                    ).double()
                    ratio = float(estimate.mean() / exact.mean())
                    sample_error = float((estimate / exact - 1).abs().median())
                    per_dtype[dtype].append((pearson(estimate, exact), ratio, sample_error))
                # A linear critic's estimate at these gradient norms: exact * chi2_K / K.
                chi2 = noise.flatten(2)[:, :, 0].pow(2).mean(0)
                linear.append(pearson(exact * chi2, exact))
            for dtype, values in per_dtype.items():
                ratios = [ratio for _, ratio, _ in values]
                rows[(sigma, directions, dtype)] = Row(
                    pearson=statistics.fmean(r for r, _, _ in values),
                    linear_pearson=statistics.fmean(linear),
                    ratio_mean=statistics.fmean(ratios),
                    ratio_std=statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
                    mean_error=statistics.fmean(abs(ratio - 1) for ratio in ratios),
                    median_sample_error=statistics.fmean(e for _, _, e in values),
                )
    return rows


DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def print_table(
    results: dict[str, tuple[int, dict]],
    keep: Callable[[float, int, torch.dtype], bool],
    sigmas: list[float],
    all_directions: list[int],
) -> None:
    print(
        "| sigma | directions | points | dtype | Pearson r | r if linear "
        "| mean ratio (est / exact) | abs. rel. error of mean "
        "| median per-sample abs. rel. error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for sigma in sigmas:
        for directions in all_directions:
            for dtype in DTYPE_NAMES:
                if not keep(sigma, directions, dtype):
                    continue
                for name, (count, rows) in results.items():
                    row = rows[(sigma, directions, dtype)]
                    print(
                        f"| {sigma:g} | {directions} | {name} ({count}) | {DTYPE_NAMES[dtype]} "
                        f"| {row.pearson:.3f} | {row.linear_pearson:.3f} "
                        f"| {row.ratio_mean:.4f} +- {row.ratio_std:.4f} "
                        f"| {row.mean_error:.2%} | {row.median_sample_error:.2%} |"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a GANModule checkpoint trained on data=digits")
    parser.add_argument("--steps", type=int, default=1500, help="generator steps to train")
    parser.add_argument("--points", type=int, default=512, help="real and generated points")
    parser.add_argument("--draws", type=int, default=8, help="draws of the directions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write a checkpoint of the critic trained here")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--directions", type=int, nargs="+", default=list(DIRECTIONS))
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    start = time.perf_counter()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), lightning "
        f"{L.__version__}, CPU"
    )

    if args.checkpoint:
        module, datamodule = load_module(args.checkpoint)
        print(f"critic: {args.checkpoint} (generator step {module.generator_step})")
    else:
        datamodule = DigitsDataModule(val_fraction=0.3, batch_size=64, seed=args.seed)
        module = train_module(args.steps, args.seed, datamodule, args.save)
        print(
            f"critic: trained here, {module.generator_step} generator steps of R1 (exact, "
            f"gamma 1), non-saturating loss, in {time.perf_counter() - start:.0f} s"
        )
    datamodule.setup("fit")
    module.eval()
    critic = module.critic.float()
    for parameter in critic.parameters():
        parameter.requires_grad_(False)
    critics = {torch.float32: critic, torch.float64: copy.deepcopy(critic).double()}

    real, _ = datamodule.real_images("val", args.points)
    torch.manual_seed(args.seed)
    fake = module.sample(args.points).float()
    check_against_library(critic, real)

    results = {}
    for name, points in (("real", real), ("fake", fake)):
        exact = exact_squared_norm(critics[torch.float64], points.double())
        exact32 = exact_squared_norm(critic, points).double()
        norm = exact.sqrt()
        print(
            f"{name}: {len(points)} points, ||grad D(x)|| median {norm.median():.3g} "
            f"(min {norm.min():.3g}, max {norm.max():.3g}), D(x) mean "
            f"{critic(points).mean():.3g}; exact float32 vs float64: max relative difference "
            f"{float(((exact32 - exact) / exact).abs().max()):.1e}"
        )
        results[name] = (
            len(points),
            compare(critics, points, exact, args.draws, args.seed, args.sigmas, args.directions),
        )

    print(
        f"\nAgainst the exact ||grad D(x)||^2 (float64 autograd); means over {args.draws} draws "
        "of the directions (+- their standard deviation).\n"
    )
    print_table(
        results,
        lambda sigma, directions, dtype: dtype == torch.float32,
        args.sigmas,
        args.directions,
    )
    worst = max(
        abs(rows[(s, k, torch.float32)].ratio_mean - rows[(s, k, torch.float64)].ratio_mean)
        for _, rows in results.values()
        for s in args.sigmas
        for k in args.directions
    )
    print(
        f"\nfloat32 against float64 with the same directions (largest difference of the mean "
        f"ratio over the whole grid: {worst:.1e}):\n"
    )
    print_table(
        results,
        lambda sigma, directions, dtype: math.isclose(sigma, min(args.sigmas)),
        args.sigmas,
        args.directions,
    )
    print(f"\nwall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
