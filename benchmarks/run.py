"""lit_gp benchmarks: one process, interleaved rounds, ratios against plain PyTorch.

    python benchmarks/run.py            # the full run (about 17 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # a smoke run (about 1 minute)

Two setups: the WGAN-GP paper's toy setup (MLP 3 x 512, batch 256, 2-D data) and an MNIST-sized
conv setup (DCGAN-style, 1 x 28 x 28, batch 64). Three tables:

1. training loop: lit_gp's Trainer loop against a minimal plain-PyTorch loop of the same nets,
   data and optimizers (wgan_gp, n_critic 5): generator steps per second and their ratio;
2. critic step: the cost of a critic step with each penalty relative to the un-penalized step,
   full and lazy (every 16), with real and fake scored in one fused call or in two; beside it
   the FLOP ratio, what the step with the penalty computes over what the un-penalized step
   computes (matrix products and convolutions, counted by torch's FlopCounterMode). The FLOP
   ratio does not depend on the machine: it is the time ratio a step would have if every FLOP
   cost the same and nothing else took time;
3. peak memory of a critic step with each penalty (CUDA: allocator peak; CPU: peak resident
   memory above the step's start, sampled every millisecond, in a child process with glibc's
   mmap threshold fixed so that freed tensors leave the resident set).

The configurations of a table run interleaved, once per round (5 rounds). Times are medians
over rounds; ratios are medians over rounds of each round's ratio to the baseline measured in
the same round, so a slow spell of a shared machine cancels out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from lit_gp import GANModule, penalties
from lit_gp.callbacks import GeneratorStepLimit
from lit_gp.nets import MaskedReLU, MLPCritic, MLPGenerator

# --- setups --------------------------------------------------------------------------------


class ConvGenerator(nn.Module):
    """DCGAN-style generator for 1 x 28 x 28 (BatchNorm is fine in a generator)."""

    def __init__(self, latent_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.width = width
        self.project = nn.Sequential(nn.Linear(latent_dim, 2 * width * 7 * 7), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(self.project(noise).view(-1, 2 * self.width, 7, 7))


class ConvCritic(nn.Module):
    """DCGAN-style critic for 1 x 28 x 28 without normalization (per-sample penalties), with
    leaky ReLUs as MaskedReLU (the same function, cheaper under a penalty)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),
            MaskedReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            MaskedReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 1),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).squeeze(1)


@dataclass(frozen=True)
class Setup:
    name: str
    make_generator: Callable[[], nn.Module]
    make_critic: Callable[[], nn.Module]
    data_shape: tuple[int, ...]
    batch_size: int
    penalty_weight: float


SETUPS = {
    "toy": Setup("toy MLP 3x512, batch 256", MLPGenerator, MLPCritic, (2,), 256, 0.1),
    "conv": Setup("conv 1x28x28, batch 64", ConvGenerator, ConvCritic, (1, 28, 28), 64, 10.0),
}


def real_data(setup: Setup, batches: int) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batches * setup.batch_size, *setup.data_shape, generator=generator) * 2 - 1


def adam(parameters) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=1e-4, betas=(0.5, 0.9))


# --- 1. training loop ----------------------------------------------------------------------


def plain_loop(setup: Setup, generator_steps: int, warmup: int, n_critic: int = 5) -> float:
    """Generator steps per second of a minimal hand-written WGAN-GP loop (after warm-up)."""
    torch.manual_seed(0)
    generator, critic = setup.make_generator(), setup.make_critic()
    generator_optimizer, critic_optimizer = adam(generator.parameters()), adam(critic.parameters())
    data = real_data(setup, 64)
    loader = DataLoader(TensorDataset(data), batch_size=setup.batch_size, shuffle=True)
    batches = iter(())
    start = 0.0
    for step in range(warmup + generator_steps):
        if step == warmup:
            start = time.perf_counter()
        for _ in range(n_critic):
            try:
                (real,) = next(batches)
            except StopIteration:
                batches = iter(loader)
                (real,) = next(batches)
            with torch.no_grad():
                fake = generator(torch.randn(real.shape[0], generator.latent_dim))
            loss = critic(fake).mean() - critic(real).mean()
            eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)))
            points = (eps * real + (1 - eps) * fake).requires_grad_(True)
            (gradient,) = torch.autograd.grad(critic(points).sum(), points, create_graph=True)
            norm = gradient.flatten(1).norm(dim=1)
            loss = loss + setup.penalty_weight * ((norm - 1) ** 2).mean()
            critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            critic_optimizer.step()
        for parameter in critic.parameters():
            parameter.requires_grad_(False)
        fake = generator(torch.randn(setup.batch_size, generator.latent_dim))
        loss = -critic(fake).mean()
        generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        generator_optimizer.step()
        for parameter in critic.parameters():
            parameter.requires_grad_(True)
    return generator_steps / (time.perf_counter() - start)


class _Clock(L.Callback):
    """Times generator steps after a warm-up, inside the Trainer's loop."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.generator_step == self.warmup and self.start is None:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def trainer(callbacks: list[L.Callback], **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def lit_gp_loop(setup: Setup, generator_steps: int, warmup: int, n_critic: int = 5) -> float:
    """Generator steps per second of GANModule under a Lightning Trainer (after warm-up)."""
    torch.manual_seed(0)
    module = GANModule(
        generator=setup.make_generator(),
        critic=setup.make_critic(),
        penalty=lambda critic, real, fake: penalties.wgan_gp(
            critic, real, fake, weight=setup.penalty_weight
        ),
        n_critic=n_critic,
    )
    data = real_data(setup, 64)
    loader = DataLoader(TensorDataset(data), batch_size=setup.batch_size, shuffle=True)
    clock = _Clock(warmup)
    trainer([clock, GeneratorStepLimit(warmup + generator_steps)]).fit(module, loader)
    return generator_steps / (clock.end - clock.start)


# --- 2. critic steps ----------------------------------------------------------------------


class _StepTimes(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.last = 0.0
        self.durations: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.durations.append(time.perf_counter() - self.last)


def critic_step_seconds(
    setup: Setup, penalty: dict | None, fused: bool, steps: int, warmup: int
) -> float:
    """Mean seconds per critic step of GANModule (no generator step: n_critic is huge). The
    mean, not the median, so a lazy penalty's occasional expensive step counts."""
    torch.manual_seed(0)
    module = GANModule(
        generator=setup.make_generator(),
        critic=setup.make_critic(),
        penalty=penalty,
        n_critic=10**9,
        fused_critic_pass=fused,
    )
    data = real_data(setup, warmup + steps)
    loader = DataLoader(TensorDataset(data), batch_size=setup.batch_size)
    times = _StepTimes(warmup)
    trainer([times], max_steps=warmup + steps).fit(module, loader)
    return statistics.fmean(times.durations)


def penalty_configs(setup: Setup) -> dict[str, dict | None]:
    weight = {"weight": setup.penalty_weight}
    configs: dict[str, dict | None] = {"none": None}
    for name in ("wgan_gp", "wgan_lp", "zero_gp", "dragan"):
        configs[name] = {"_target_": f"lit_gp.penalties.{name}", **weight}
    for name in ("r1", "r2"):
        configs[name] = {"_target_": f"lit_gp.penalties.{name}", "gamma": 10.0}
    configs["wgan_div"] = {"_target_": "lit_gp.penalties.wgan_div"}
    configs["wgan_gp lazy 16"] = {**configs["wgan_gp"], "every": 16}
    configs["r1 lazy 16"] = {**configs["r1"], "every": 16}
    return configs


# --- 3. memory ----------------------------------------------------------------------------


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bare_module(setup: Setup, penalty: dict | None, device: torch.device) -> GANModule:
    """A GANModule whose ``critic_update`` runs without a Trainer (for memory and FLOPs)."""
    torch.manual_seed(0)
    module = GANModule(
        generator=setup.make_generator(), critic=setup.make_critic(), penalty=penalty, n_critic=10
    )
    module.to(device)
    optimizer = adam(module.critic.parameters())
    module.optimizers = lambda: [optimizer, None]  # what a Trainer would hand out
    module.toggle_optimizer = module.untoggle_optimizer = lambda optimizer: None
    module.manual_backward = lambda loss: loss.backward()
    return module


def peak_memory_mb(setup: Setup, penalty: dict | None) -> float:
    """Peak memory of one critic step above its start, in MB."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = bare_module(setup, penalty, device)
    real = real_data(setup, 1).to(device)
    module.critic_update(real)  # allocate optimizer state first
    module.critic_step = 0  # so a lazy penalty's step is among the measured ones
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        module.critic_update(real)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base, peak, done = _resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(3):
        module.critic_update(real)
    done.set()
    sampler.join()
    return max(peak[0] - base, 0) / 2**20


# --- 4. FLOPs ----------------------------------------------------------------------------


class _GlobalScope:
    """Stands in for FlopCounterMode's module tracker, which registers gradient hooks on every
    module input and fails inside ``torch.autograd.grad`` on a leaf (the penalty's points)."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalScope:
        return self

    def __exit__(self, *exc_info) -> None:
        return None


def critic_step_flops(setup: Setup, penalty: dict | None, steps: int = 16) -> float:
    """Mean FLOPs (matrix products and convolutions, as torch counts them) per critic step over
    ``steps`` steps, so a lazy penalty counts once per 16. Deterministic, whatever the machine;
    a ratio of two counts is the time ratio the steps would have if every FLOP cost the same and
    nothing else took time."""
    module = bare_module(setup, penalty, torch.device("cpu"))
    real = real_data(setup, 1)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalScope()
    with counter:
        for _ in range(steps):
            module.critic_update(real)
    return counter.get_total_flops() / steps


# --- main ---------------------------------------------------------------------------------


def interleaved_rounds(functions: dict[Any, Callable[[], float]], rounds: int) -> dict[Any, list]:
    """Every function once per round, in order; the values per function, one per round."""
    results: dict[Any, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            results[name].append(function())
    return results


def paired_ratio(values: list[float], baseline: list[float]) -> float:
    """The median over rounds of each round's ratio to the baseline measured in the same round:
    a slow spell of a shared machine then cancels out instead of landing in one median only."""
    return statistics.median(value / base for value, base in zip(values, baseline, strict=True))


def memory_table(setup_key: str) -> dict[str, float]:
    """Peak memory per penalty, measured in a child process with glibc's mmap threshold fixed at
    64 KiB. glibc raises the threshold after large frees and then keeps freed tensors in its heap,
    so resident memory stops showing what a step allocates; with a fixed threshold every tensor
    above 64 KiB is its own mapping, returned on free. The fixed threshold makes every large
    allocation a system call, so it must not run beside the timings."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    result = subprocess.run(
        [sys.executable, __file__, "--memory-of", setup_key],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--memory-of", choices=list(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        setup = SETUPS[args.memory_of]
        configs = penalty_configs(setup)
        print(json.dumps({name: peak_memory_mb(setup, p) for name, p in configs.items()}))
        return
    rounds = args.rounds or (1 if args.quick else 5)
    loop_steps, loop_warmup = (10, 2) if args.quick else (60, 5)
    critic_steps, critic_warmup = (16, 2) if args.quick else (64, 5)

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), lightning "
        f"{L.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU'}; {rounds} rounds"
    )
    for key in args.setups:
        setup = SETUPS[key]
        print(f"\n## {setup.name}\n")
        loops = interleaved_rounds(
            {
                "plain PyTorch": lambda s=setup: plain_loop(s, loop_steps, loop_warmup),
                "lit_gp": lambda s=setup: lit_gp_loop(s, loop_steps, loop_warmup),
            },
            rounds,
        )
        print("| training loop (wgan_gp, n_critic 5) | generator steps/s | ratio |")
        print("|---|---|---|")
        for name, values in loops.items():
            ratio = paired_ratio(values, loops["plain PyTorch"])
            print(f"| {name} | {statistics.median(values):.2f} | {ratio:.2f}x |")

        configs = penalty_configs(setup)
        timers = {
            (name, fused): (
                lambda s=setup, p=penalty, f=fused: critic_step_seconds(
                    s, p, f, critic_steps, critic_warmup
                )
            )
            for name, penalty in configs.items()
            for fused in (True, False)
        }
        seconds = interleaved_rounds(timers, rounds)
        memory = memory_table(key)
        flops = {name: critic_step_flops(setup, penalty) for name, penalty in configs.items()}
        print(
            "\n| critic step | fused ms | fused ratio | unfused ms | unfused ratio "
            "| FLOP ratio | peak MB (fused) |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in configs:
            row = [name]
            for fused in (True, False):
                values = seconds[(name, fused)]
                ratio = paired_ratio(values, seconds[("none", fused)])
                row += [f"{statistics.median(values) * 1e3:.1f}", f"{ratio:.2f}x"]
            row.append(f"{flops[name] / flops['none']:.2f}x")
            row.append(f"{memory[name]:.1f}")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
