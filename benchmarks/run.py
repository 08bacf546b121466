"""lit_gp benchmarks: one process, interleaved rounds, ratios against plain PyTorch.

    python benchmarks/run.py            # the full run (about 35 minutes on 2 quiet CPU cores)
    python benchmarks/run.py --quick    # a smoke run (about 3 minutes)
    python benchmarks/run.py --only critic,compiled --penalties r1 "r1 finite difference"

Two setups: the WGAN-GP paper's toy setup (MLP 3 x 512, batch 256, 2-D data) and an MNIST-sized
conv setup (DCGAN-style, 1 x 28 x 28, batch 64). Four tables (``--only`` picks some of them,
``--penalties`` the rows of the critic, memory and compiled tables; the un-penalized baseline
always runs):

1. ``loop``: lit_gp's Trainer loop against a minimal plain-PyTorch loop of the same nets,
   data and optimizers (wgan_gp, n_critic 5): generator steps per second and their ratio;
2. ``critic``: the cost of a critic step with each penalty relative to the un-penalized step,
   full and lazy (every 16), with real and fake scored in one fused call or in two; beside it
   the FLOP ratio, what the step with the penalty computes over what the un-penalized step
   computes (matrix products and convolutions, counted by torch's FlopCounterMode). The FLOP
   ratio does not depend on the machine: it is the time ratio a step would have if every FLOP
   cost the same and nothing else took time. The rows include R1 and R2 with the
   finite-difference estimator (sigma 0.01, one direction; no double backward), R3GAN's
   R1 + R2 (two named terms) exact and by finite differences, and MaxGP when registered; see
   :func:`penalty_configs` for the FLOP ratios they should have and have (r1 finite
   difference 10/7 = 1.43x against exact r1's 11/7 = 1.57x);
3. ``memory``: peak memory of a critic step with each penalty (CUDA: allocator peak; CPU: peak
   resident memory above the step's start, sampled every millisecond, in a child process with
   glibc's mmap threshold fixed so that freed tensors leave the resident set), printed as the
   critic table's last column;
4. ``compiled``: ``GANModule(compile=True)`` (torch.compile of the critic and generator, default
   backend inductor) against eager, for no penalty and the finite-difference R1 and R1 + R2
   (exact penalties need the double backward, which torch.compile refuses): ms per critic
   step, and per cycle with n_critic 1 (one batch = a critic step plus a generator step, so
   the generator step's cost is the difference of the two rows' times), both fused, with the
   compiled/eager ratio measured in the same rounds; beside it the graphs torch.compile built
   and the batches that built them, the seconds those batches took beyond a steady one
   (compilation), and how many batches compiled after the warm-up (should be 0). A compiler
   failure (no C++ compiler, say) prints its reason in the row instead of stopping the run.
   Compile seconds depend on inductor's on-disk cache: point ``TORCHINDUCTOR_CACHE_DIR`` at an
   empty folder to measure a cold compile.

The configurations of a table run interleaved, once per round (5 rounds; 1 with ``--quick``).
Times are medians over rounds; ratios are medians over rounds of each round's ratio to the
baseline measured in the same round, so a slow spell of a shared machine cancels out. Torch
uses as many threads as ``OMP_NUM_THREADS`` allows; on a machine busy with other jobs, two
threads per process can run many times slower than one (threads wait for each other), so set
``OMP_NUM_THREADS=1`` there and compare only ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
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


# The finite-difference estimator's options in the tables (lit_gp's defaults).
FINITE_DIFFERENCE = {"estimator": "finite_difference", "sigma": 0.01, "directions": 1}


def penalty_configs(setup: Setup) -> dict[str, dict | None]:
    """The critic table's rows: a penalty spec (or several by name) per row, None for none.

    FLOP ratios torch's FlopCounterMode gives (toy / conv): exact r1 1.57x / 1.57x (11/7),
    "r1 finite difference" 1.43x / 1.42x, "r1 + r2" 2.14x / 2.14x (15/7), "r1 + r2 finite
    difference" 1.86x / 1.85x (13/7). In B-sample passes of the critic: the un-penalized step is
    7 (the generator's forward 1, the critic's forward on the 2B real and fake points 2, its
    backward 4: a backward costs two forwards, the activations' and the weights' gradients).
    The finite-difference penalty reuses the adversarial pass's D(x) (lit_gp.objective's
    ScoredCritic, so no pass for it) and adds the forward on the B perturbed points (1) and its
    backward (2): 10/7 = 1.43x, not the (7 + 2)/7 = 1.29x guessed in the issue, which counted
    two forwards (D(x) and D(x + sigma u)) and no backward. The exact penalty adds 4 (the
    forward on B points, their input gradient, and the double backward through it: 2): 11/7.
    Each penalty of a sum pays its own passes. The conv setup's ratios sit a little below the
    fractions because its first layer's input gradient is never computed (the data needs
    none; 3% of the critic's FLOPs) and its generator is 6% dearer than the critic.
    """
    weight = {"weight": setup.penalty_weight}
    configs: dict[str, dict | None] = {"none": None}
    for name in ("wgan_gp", "wgan_lp", "zero_gp", "dragan"):
        configs[name] = {"_target_": f"lit_gp.penalties.{name}", **weight}
    for name in ("r1", "r2"):
        configs[name] = {"_target_": f"lit_gp.penalties.{name}", "gamma": 10.0}
    configs["wgan_div"] = {"_target_": "lit_gp.penalties.wgan_div"}
    if "max_gp" in penalties.REGISTRY:
        configs["max_gp"] = {"_target_": "lit_gp.penalties.max_gp", **weight}
    configs["wgan_gp lazy 16"] = {**configs["wgan_gp"], "every": 16}
    configs["r1 lazy 16"] = {**configs["r1"], "every": 16}
    for name in ("r1", "r2"):
        configs[f"{name} finite difference"] = {**configs[name], **FINITE_DIFFERENCE}
    # R3GAN's R1 + R2, as named terms (GANModule's dict form).
    configs["r1 + r2"] = {"r1": configs["r1"], "r2": configs["r2"]}
    configs["r1 + r2 finite difference"] = {
        "r1": configs["r1 finite difference"],
        "r2": configs["r2 finite difference"],
    }
    # What an adaptive weight adds to the step (conf/weight_controller/): auc reads the scores
    # the step has (no pass), norm_ratio an input gradient at the free batch, balance the
    # penalty's and the adversarial loss's gradients on the critic's output layer.
    for name in ("auc", "norm_ratio", "balance"):
        controller = f"lit_gp.penalty_weights.{CONTROLLER_CLASSES[name]}"
        configs[f"r1 {name}"] = {**configs["r1"], "weight_controller": {"_target_": controller}}
    return configs


CONTROLLER_CLASSES = {"auc": "AUCTarget", "norm_ratio": "NormRatio", "balance": "GradientBalance"}


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


def penalty_interval(penalty: dict | None) -> int:
    """Critic steps after which a penalty's schedule of lazy steps repeats (1 when every term
    runs every step): the steps over which :func:`critic_step_flops` must average, since every
    other step of a cycle counts the same FLOPs."""
    if penalty is None:
        return 1
    specs = [penalty] if "_target_" in penalty else list(penalty.values())
    return math.lcm(*(int(spec.get("every", 1)) for spec in specs))


# --- 5. compiled steps ---------------------------------------------------------------------

# The compiled table's penalties (those without a double backward, which torch.compile refuses).
COMPILED_PENALTIES = ("none", "r1 finite difference", "r1 + r2 finite difference")
# Its two kinds of step: a critic step alone (no generator step: n_critic is huge) and a whole
# cycle with n_critic 1 (one critic step and one generator step per batch).
STEP_KINDS = {"critic step": 10**9, "cycle (n_critic 1)": 1}


def _graphs_compiled() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class _StepWatch(L.Callback):
    """Seconds of every batch, and dynamo's count of compiled graphs after it."""

    def __init__(self) -> None:
        self.last = 0.0
        self.durations: list[float] = []
        self.graphs: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.durations.append(time.perf_counter() - self.last)
        self.graphs.append(_graphs_compiled())


@dataclass(frozen=True)
class StepRun:
    """One timed run of a GANModule, eager or compiled.

    ``seconds``: mean seconds per batch after the warm-up; ``compile_steps``: the batches
    (1-based) during which torch.compile compiled new graphs, and ``graphs`` how many it
    compiled in the whole run; ``compile_seconds``: what those batches took beyond a steady
    one (the compilation, from tracing to inductor's C++); ``error``: why the run failed."""

    seconds: float = math.nan
    compile_steps: tuple[int, ...] = ()
    graphs: int = 0
    compile_seconds: float = 0.0
    error: str | None = None


def _reason(error: BaseException) -> str:
    """The first line of an error, short enough for a table cell."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # torch's compiler errors open with "backend='inductor' raised:" and give the reason next.
    message = " ".join(lines[:2]) if lines and lines[0].endswith(":") else "".join(lines[:1])
    text = f"{type(error).__name__}: {message}".replace("|", "/")
    return text if len(text) <= 160 else text[:157] + "..."


def step_run(
    setup: Setup,
    penalty: dict | None,
    *,
    compile: bool,
    n_critic: int,
    steps: int,
    warmup: int,
) -> StepRun:
    """Seconds per batch of GANModule(compile=...) under a Trainer: a critic step alone
    (``n_critic`` huge) or a critic step plus a generator step (``n_critic`` 1). A failure
    (inductor's C++ compiler, say) is returned as the run's ``error``, not raised."""
    torch.manual_seed(0)
    batches = warmup + steps
    watch = _StepWatch()
    start = _graphs_compiled()
    try:
        module = GANModule(
            generator=setup.make_generator(),
            critic=setup.make_critic(),
            penalty=penalty,
            n_critic=n_critic,
            compile=compile,
        )
        loader = DataLoader(TensorDataset(real_data(setup, batches)), batch_size=setup.batch_size)
        # max_steps counts optimizer steps: two per batch when every batch ends a cycle.
        optimizer_steps = batches * (2 if n_critic == 1 else 1)
        trainer([watch], max_steps=optimizer_steps).fit(module, loader)
    except Exception as error:  # a compiler failure belongs in the table, not a traceback
        return StepRun(error=_reason(error))
    counts = [start, *watch.graphs]
    compile_steps = tuple(i for i in range(1, len(counts)) if counts[i] > counts[i - 1])
    steady = statistics.fmean(watch.durations[warmup:])
    return StepRun(
        seconds=steady,
        compile_steps=compile_steps,
        graphs=counts[-1] - start,
        compile_seconds=sum(max(watch.durations[i - 1] - steady, 0.0) for i in compile_steps),
    )


def compiled_runs(
    setup: Setup,
    configs: dict[str, dict | None],
    rounds: int,
    steps: int,
    warmup: int,
    reset: bool,
) -> dict[tuple[str, str, bool], list[StepRun]]:
    """Eager and compiled runs of every step kind and penalty, interleaved in the same rounds.

    With ``reset``, torch.compile's in-memory caches are cleared before every compiled run of
    the first round, so that each row's first steps show its own compilation (inductor's
    on-disk caches stay as found); later rounds reuse the compiled code, and their warm-up
    absorbs any recompilation (the table counts graphs compiled after it). A failed run is not
    repeated."""
    keys = [
        (kind, name, compiled)
        for kind in STEP_KINDS
        for name in configs
        for compiled in (False, True)
    ]
    runs: dict[tuple[str, str, bool], list[StepRun]] = {key: [] for key in keys}
    for round_index in range(rounds):
        for kind, name, compiled in keys:
            done = runs[(kind, name, compiled)]
            if done and done[0].error:
                continue
            if compiled and reset and round_index == 0:
                torch._dynamo.reset()
            done.append(
                step_run(
                    setup,
                    configs[name],
                    compile=compiled,
                    n_critic=STEP_KINDS[kind],
                    steps=steps,
                    warmup=warmup,
                )
            )
    return runs


def compiled_rows(runs: dict[tuple[str, str, bool], list[StepRun]], warmup: int) -> list[list[str]]:
    """The compiled table's cells: per step kind and penalty, eager and compiled ms, their
    paired ratio, the graphs compiled in the first round and the batches that compiled them,
    the seconds those batches took beyond a steady one, and graphs compiled after the
    warm-up in any round."""
    rows = []
    for kind, name, compiled in runs:
        if not compiled:
            continue
        eager, fast = runs[(kind, name, False)], runs[(kind, name, True)]
        row = [f"{kind}, {name}"]
        failed = next((run.error for run in eager + fast if run.error), None)
        if failed:
            eager_ms = statistics.median(run.seconds for run in eager) * 1e3
            row += [f"{eager_ms:.1f}", "-", f"failed: {failed}", "-", "-", "-"]
            rows.append(row)
            continue
        ratio = paired_ratio([r.seconds for r in fast], [r.seconds for r in eager])
        first = fast[0]
        late = sum(
            1 for run in fast for step in run.compile_steps if step > warmup
        )  # batches that compiled after the warm-up
        steps = ", ".join(str(step) for step in first.compile_steps) or "-"
        row += [
            f"{statistics.median(r.seconds for r in eager) * 1e3:.1f}",
            f"{statistics.median(r.seconds for r in fast) * 1e3:.1f}",
            f"{ratio:.2f}x",
            f"{first.graphs} (batch {steps})" if first.graphs else "0 (reused)",
            f"{first.compile_seconds:.1f}",
            str(late),
        ]
        rows.append(row)
    return rows


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


def memory_table(setup_key: str, names: list[str]) -> dict[str, float]:
    """Peak memory per penalty, measured in a child process with glibc's mmap threshold fixed at
    64 KiB. glibc raises the threshold after large frees and then keeps freed tensors in its heap,
    so resident memory stops showing what a step allocates; with a fixed threshold every tensor
    above 64 KiB is its own mapping, returned on free. The fixed threshold makes every large
    allocation a system call, so it must not run beside the timings."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    result = subprocess.run(
        [sys.executable, __file__, "--memory-of", setup_key, "--penalties", *names],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


TABLES = ("loop", "critic", "memory", "compiled")


def parse_tables(text: str) -> list[str]:
    """``--only critic,compiled`` -> ["critic", "compiled"] (names checked)."""
    tables = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in tables if name not in TABLES]
    if unknown or not tables:
        raise argparse.ArgumentTypeError(
            f"unknown table {', '.join(unknown) or text!r}; choose from {', '.join(TABLES)}"
        )
    return tables


def select(configs: dict[str, dict | None], names: list[str] | None) -> dict[str, dict | None]:
    """The rows ``names`` of ``configs`` (all when None), always with the baseline "none"."""
    if names is None:
        return configs
    unknown = [name for name in names if name not in configs]
    if unknown:
        raise SystemExit(f"unknown penalty {unknown}; choose from {list(configs)}")
    return {name: configs[name] for name in configs if name == "none" or name in names}


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument(
        "--only",
        type=parse_tables,
        default=list(TABLES),
        metavar="TABLES",
        help=f"comma-separated tables to run, of {','.join(TABLES)} (default: all); the critic "
        "table shows the peak memory column when memory is among them",
    )
    parser.add_argument(
        "--penalties",
        nargs="+",
        metavar="NAME",
        help='rows of the critic, memory and compiled tables (names as printed, e.g. "r1" '
        '"r1 finite difference"; "none", the baseline, is always run)',
    )
    parser.add_argument("--memory-of", choices=list(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        setup = SETUPS[args.memory_of]
        configs = select(penalty_configs(setup), args.penalties)
        print(json.dumps({name: peak_memory_mb(setup, p) for name, p in configs.items()}))
        return
    rounds = args.rounds or (1 if args.quick else 5)
    loop_steps, loop_warmup = (10, 2) if args.quick else (60, 5)
    critic_steps, critic_warmup = (8, 2) if args.quick else (64, 5)
    # Every batch that compiled did so in the first one here (3 graphs for a critic step: the
    # generator's no-grad forward, the critic on 2B and on B points; 5 for a cycle): 2 or 3
    # batches of warm-up leave a margin, and the table counts any compiled later.
    compiled_steps, compiled_warmup = (4, 2) if args.quick else (32, 3)
    tables = args.only
    select(penalty_configs(SETUPS[args.setups[0]]), args.penalties)  # names checked first

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    start = time.perf_counter()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), lightning "
        f"{L.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU'}; {rounds} rounds"
    )
    for key in args.setups:
        setup = SETUPS[key]
        print(f"\n## {setup.name}\n")
        if "loop" in tables:
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
            print()

        configs = select(penalty_configs(setup), args.penalties)
        if "critic" in tables or "memory" in tables:
            header, rows = ["critic step"], [[name] for name in configs]
            if "critic" in tables:
                # Every row runs at least one whole lazy interval, so its penalized step counts.
                timers = {
                    (name, fused): functools.partial(
                        critic_step_seconds,
                        setup,
                        penalty,
                        fused,
                        max(critic_steps, penalty_interval(penalty)),
                        critic_warmup,
                    )
                    for name, penalty in configs.items()
                    for fused in (True, False)
                }
                seconds = interleaved_rounds(timers, rounds)
                flops = {
                    name: critic_step_flops(setup, penalty, steps=penalty_interval(penalty))
                    for name, penalty in configs.items()
                }
                header += ["fused ms", "fused ratio", "unfused ms", "unfused ratio", "FLOP ratio"]
                for name, row in zip(configs, rows, strict=True):
                    for fused in (True, False):
                        values = seconds[(name, fused)]
                        ratio = paired_ratio(values, seconds[("none", fused)])
                        row += [f"{statistics.median(values) * 1e3:.1f}", f"{ratio:.2f}x"]
                    row.append(f"{flops[name] / flops['none']:.2f}x")
            if "memory" in tables:
                memory = memory_table(key, list(configs))
                header.append("peak MB (fused)")
                for name, row in zip(configs, rows, strict=True):
                    row.append(f"{memory[name]:.1f}")
            print_table(header, rows)
            print()

        if "compiled" in tables:
            compiled_configs = {
                name: configs[name] for name in COMPILED_PENALTIES if name in configs
            }
            reset = not args.quick
            runs = compiled_runs(
                setup, compiled_configs, rounds, compiled_steps, compiled_warmup, reset
            )
            print_table(
                [
                    "compiled steps",
                    "eager ms",
                    "compiled ms",
                    "compiled / eager",
                    "graphs compiled (in batch)",
                    "compile s",
                    "compiles after warm-up",
                ],
                compiled_rows(runs, compiled_warmup),
            )
            print(
                f"\ntorch.compile, default backend (inductor), fused critic pass; ms per batch "
                f"after {compiled_warmup} batches of warm-up, {compiled_steps} batches a round; "
                f"graphs and compile s from round 1"
                + (
                    " with torch.compile's in-memory caches cleared before each compiled row "
                    "(inductor's on-disk cache as found)"
                    if reset
                    else " (--quick: caches kept, so a row reuses graphs an earlier row compiled)"
                )
                + "."
            )
            print()
    print(f"wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
