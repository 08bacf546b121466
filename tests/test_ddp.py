"""DDP parity: 2 gloo processes x batch B train exactly like 1 process x batch 2B.

DDP averages the gradients of the ranks, and each rank's loss is a mean over its B samples, so
the averaged gradient is the gradient of the 2B-sample mean. The worker script below makes every
random draw identical between the two layouts: the DistributedSampler gives rank r the rows r::2
of each 2B block of the single process's sample order (checked), and the generator noise and
wgan_gp's interpolation eps of a step are one 2B draw of which rank r takes the rows r::2.
Lightning's ``ddp`` relaunches ``sys.argv`` for rank 1, so the runs are scripts in subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

STRATEGY = "ddp_find_unused_parameters_true"  # conf/trainer/ddp.yaml
PARITY_CASES = (
    "wgan_gp",
    "r1",
    "r1_lazy",
    "wgan_gp_pi",
    "r1_auc",
    "r1_norm_ratio",
    "r1_balance",
    "r3gan",
    "r3gan_fd",
)
TOLERANCE = 1e-6

WORKER = r'''
"""python ddp_worker.py OUT_DIR DEVICES STRATEGY CASE[,CASE...]: fit each case, save per rank."""

import sys

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler

from lit_gp import GANModule, penalties
from lit_gp.distributed import check_strategy, seed_per_rank
from lit_gp.nets import MLPCritic, MLPGenerator

# float64: a parameter whose true gradient is 0 (e.g. the bias of a unit active on every sample
# under the Wasserstein loss) gets rounding noise of order 1e-8 in float32, which Adam scales to
# a step of order lr; measured 5e-4 between the layouts in float32, 7e-12 in float64.
torch.set_default_dtype(torch.float64)

B, N_CRITIC, GENERATOR_STEPS, HIDDEN = 8, 2, 3, 16
WGAN_GP = {"_target_": "lit_gp.penalties.wgan_gp", "weight": 10.0}
R1 = {"_target_": "lit_gp.penalties.r1", "gamma": 10.0}
# case: (penalty, loss, noise layout, seed_per_rank)
CASES = {
    "wgan_gp": (WGAN_GP, "wasserstein", "parity", False),
    "r1": (R1, "non_saturating", "parity", False),
    "r1_lazy": ({**R1, "every": 2}, "non_saturating", "parity", False),
    # An adaptive weight: its signal (the gradient norms) is averaged over the ranks.
    "wgan_gp_pi": (WGAN_GP, "wasserstein", "parity", False),
    # The AUC controller on R1: it counts the samples of every rank (B x 2 per step, as the
    # single process's 2B).
    "r1_auc": (R1, "non_saturating", "parity", False),
    # The norm-ratio controller on R1: one more input-gradient pass at the generated batch.
    "r1_norm_ratio": (R1, "non_saturating", "parity", False),
    # The gradient-balance controller: the output layer's two gradients, averaged over the ranks.
    "r1_balance": (R1, "non_saturating", "parity", False),
    # Two penalty terms (R1 lazy, R2 with a weight schedule) and the relativistic pairing loss,
    # whose generator step scores the real batch too.
    "r3gan": (
        {
            "r1": {**R1, "every": 2},
            "r2": {
                "_target_": "lit_gp.penalties.r2",
                "gamma": 10.0,
                "schedule": {
                    "_target_": "lit_gp.schedules.Cosine",
                    "start": 1.0,
                    "end": 0.1,
                    "steps": 3,
                },
            },
        },
        "relativistic_pairing",
        "parity",
        False,
    ),
    # Both terms by the finite-difference estimator (its directions drawn as the noise is), R1
    # with a gradient-balance controller of its own and R2 at a fixed weight.
    "r3gan_fd": (
        {
            "r1": {
                **R1,
                "estimator": "finite_difference",
                "sigma": 0.01,
                "directions": 2,
                "weight_controller": {
                    "_target_": "lit_gp.penalty_weights.GradientBalance",
                    "smoothing": 0.5,
                },
            },
            "r2": {
                "_target_": "lit_gp.penalties.r2",
                "gamma": 10.0,
                "estimator": "finite_difference",
                "sigma": 0.01,
                "directions": 2,
            },
        },
        "relativistic_pairing",
        "parity",
        False,
    ),
    # Wrong on purpose: every rank takes the same rows of the noise and eps draws.
    "wgan_gp_same_draws": (WGAN_GP, "wasserstein", "same_rows", False),
    # GANModule's own noise, without and with lit_gp.distributed.seed_per_rank.
    "module_noise": (WGAN_GP, "wasserstein", "module", False),
    "module_noise_seed_per_rank": (WGAN_GP, "wasserstein", "module", True),
}
CONTROLLERS = {
    "wgan_gp_pi": {"_target_": "lit_gp.penalty_weights.ProportionalIntegral", "ki": 0.5},
    # Under DDP the signal is the mean of the ranks' AUCs, not the AUC of the joint batch, so
    # the two layouts agree step by step only where both fall on the same side of the target:
    # a target of 0.01 (any critic ranks more than 1% of pairs right) makes every step a move
    # up, and the weight then checks the sample count: 2B samples a step in both layouts.
    "r1_auc": {
        "_target_": "lit_gp.penalty_weights.AUCTarget",
        "target": 0.01,
        "samples_per_decade": 64,
    },
    # The same for the mean over ranks of log(free / held ‖∇D‖): a target ratio of 1e-6 makes
    # every step a move down (the penalty "flattens its side" more than that).
    "r1_norm_ratio": {
        "_target_": "lit_gp.penalty_weights.NormRatio",
        "target": 1e-6,
        "samples_per_decade": 64,
    },
    # Exact: the mean over ranks of each rank's gradient is the joint batch's gradient.
    "r1_balance": {"_target_": "lit_gp.penalty_weights.GradientBalance", "smoothing": 0.5},
}
LAYOUT = ["parity"]
DRAWS = [0]


def rows_of_this_rank(n, draw):
    """This rank's n rows of one (n * world) draw from a generator seeded by the draw's index:
    rank r takes the rows r::world, the rows the DistributedSampler gives it of the data."""
    DRAWS[0] += 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    full = draw(n * world, torch.Generator().manual_seed(DRAWS[0]))
    return full[:n] if LAYOUT[0] == "same_rows" else full[rank::world]


def interpolates(real, fake):
    if LAYOUT[0] == "module":
        return ORIGINAL_INTERPOLATES(real, fake)
    eps = rows_of_this_rank(real.shape[0], lambda m, g: torch.rand(m, generator=g))
    eps = penalties.per_sample(eps.to(real.device, real.dtype), real)
    return torch.lerp(fake.to(real.dtype), real, eps)


def random_directions(points, directions):
    """The finite-difference directions of this rank's rows of one draw for the joint batch."""
    shape = points.shape[1:]
    rows = rows_of_this_rank(
        points.shape[0], lambda m, g: torch.randn(m, directions, *shape, generator=g)
    )
    return rows.transpose(0, 1).to(points.device, points.dtype)


ORIGINAL_INTERPOLATES = penalties.interpolates
penalties.interpolates = interpolates  # wgan_gp looks it up in its module at call time
penalties.random_directions = random_directions  # as the finite-difference estimator does


class ParityGAN(GANModule):
    def __init__(self, *args, seed_ranks=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed_ranks = seed_ranks
        self.seen = []
        self.first_noise = None

    def setup(self, stage):
        check_strategy(self.trainer)  # the proposed GANModule.setup change
        super().setup(stage)

    def on_fit_start(self):
        super().on_fit_start()
        if self.seed_ranks:
            seed_per_rank(self.trainer)  # the proposed GANModule.on_fit_start change

    def noise(self, n):
        if LAYOUT[0] == "module":
            z = super().noise(n)
        else:
            latent = self.generator.latent_dim
            z = rows_of_this_rank(n, lambda m, g: torch.randn(m, latent, generator=g))
        if self.first_noise is None:
            self.first_noise = z.clone()
        return z.to(self.device)

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())
        return super().training_step(batch, batch_idx)


def strategy(name):
    if name == "static_graph":
        return DDPStrategy(static_graph=True, find_unused_parameters=True)
    return name


def fit(out, devices, strategy_name, case):
    penalty, loss, LAYOUT[0], seed_ranks = CASES[case]
    DRAWS[0] = 0
    L.seed_everything(0, verbose=False)  # also the DistributedSampler's seed (PL_GLOBAL_SEED)
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.5, 0.9]}
    model = ParityGAN(
        generator=MLPGenerator(hidden_dim=HIDDEN, num_layers=2),
        critic=MLPCritic(hidden_dim=HIDDEN, num_layers=2),
        penalty=penalty,
        loss=loss,
        n_critic=N_CRITIC,
        critic_optimizer=adam,
        generator_optimizer=adam,
        seed_ranks=seed_ranks,
        weight_controller=CONTROLLERS.get(case),
    )
    initial = {
        net: {key: value.clone() for key, value in getattr(model, net).state_dict().items()}
        for net in ("critic", "generator")
    }
    rows = 2 * B * N_CRITIC * GENERATOR_STEPS
    data = torch.randn(rows, 2, generator=torch.Generator().manual_seed(7))
    # Under DDP Lightning replaces a training loader's sampler by DistributedSampler(shuffle=True,
    # seed=PL_GLOBAL_SEED), whatever shuffle says; one process takes that sampler's whole order.
    sampler = None if devices > 1 else DistributedSampler(data, num_replicas=1, rank=0, seed=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy(strategy_name),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(data, batch_size=2 * B // devices, sampler=sampler)
    trainer.fit(model, train_dataloaders=loader)
    state = {
        "critic": model.critic.state_dict(),
        "generator": model.generator.state_dict(),
        "initial": initial,
        "seen": torch.stack(model.seen),
        "first_noise": model.first_noise,
        "generator_step": model.generator_step,
        "penalty_weight": model.weight_controller.weight,
    }
    torch.save(state, f"{out}/{case}.rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out, devices, strategy_name, cases = sys.argv[1:5]
    for case in cases.split(","):
        fit(out, int(devices), strategy_name, case)
'''


class Worker:
    """The worker script running ``cases`` with ``devices`` processes, outputs in
    ``directory/name``; started at once, so independent runs share the wait."""

    def __init__(
        self, directory: Path, name: str, devices: int, strategy: str, cases: list[str]
    ) -> None:
        self.name = name
        self.out = directory / name
        self.out.mkdir()
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        # A leftover launcher environment would make Lightning think it was already launched.
        for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
            env.pop(key, None)
        script = directory / "ddp_worker.py"
        if not script.exists():
            script.write_text(WORKER)
        command = [sys.executable, str(script), str(self.out), str(devices), strategy]
        self.start = time.perf_counter()
        # Own session: a timeout kills rank 0 and the rank it launched together.
        self.log = directory / f"{name}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [*command, ",".join(cases)],
                cwd=directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.returncode: int | None = None
        self.output = ""

    def wait(self, timeout: float = 240) -> Worker:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.returncode = self.process.returncode
        self.output = self.log.read_text()
        print(f"{self.name}: {time.perf_counter() - self.start:.1f} s")
        return self

    def check(self) -> None:
        assert self.returncode == 0, self.output[-3000:]


Runs = dict[str, Worker]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A single-process run and a 2-process DDP run of every case, and a 2-process run under
    static_graph=True, side by side (each mostly waits for imports and process start-up)."""
    directory = tmp_path_factory.mktemp("ddp")
    ddp_cases = [*PARITY_CASES, "wgan_gp_same_draws", "module_noise", "module_noise_seed_per_rank"]
    workers = [
        Worker(directory, "single", 1, "auto", list(PARITY_CASES)),
        Worker(directory, "ddp", 2, STRATEGY, ddp_cases),
        Worker(directory, "static_graph", 2, "static_graph", ["wgan_gp"]),
    ]
    return {worker.name: worker.wait() for worker in workers}


def load(runs: Runs, run: str, case: str, rank: int = 0) -> dict:
    runs[run].check()
    return torch.load(runs[run].out / f"{case}.rank{rank}.pt", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    return max(
        (a[net][name] - b[net][name]).abs().max().item()
        for net in ("critic", "generator")
        for name in a[net]
    )


def test_each_rank_sees_its_rows_of_the_single_process_batch(runs: Runs) -> None:
    single = load(runs, "single", "wgan_gp")["seen"]  # (batches, 2B, 2)
    ranks = [load(runs, "ddp", "wgan_gp", rank)["seen"] for rank in (0, 1)]
    assert single.shape[0] == ranks[0].shape[0] == 6  # 3 generator steps x n_critic 2
    for rank, seen in enumerate(ranks):
        assert torch.equal(seen, single[:, rank::2])
    # Together the ranks see every row once, in a shuffled (DistributedSampler) order.
    rows = torch.cat([seen.flatten(0, 1) for seen in ranks])
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0] == 96


@pytest.mark.parametrize("case", PARITY_CASES)
def test_two_ranks_of_batch_b_match_one_process_of_batch_2b(runs: Runs, case: str) -> None:
    single = load(runs, "single", case)
    rank0, rank1 = (load(runs, "ddp", case, rank) for rank in (0, 1))
    assert single["generator_step"] == rank0["generator_step"] == rank1["generator_step"] == 3
    assert max_difference(rank0, rank1) == 0  # DDP keeps the ranks identical
    assert max_difference(rank0, single) < TOLERANCE
    # An adaptive weight moves the same on every rank, as in the single process.
    assert rank0["penalty_weight"] == rank1["penalty_weight"]
    # Relative: the weight is exp(kp e + ki I), which magnifies float rounding in e.
    assert abs(rank0["penalty_weight"] - single["penalty_weight"]) < TOLERANCE * abs(
        single["penalty_weight"]
    )
    if case == "wgan_gp_pi":
        assert abs(single["penalty_weight"] - 10.0) > 1000 * TOLERANCE  # it did move
    if case == "r1_auc":
        # 6 critic steps of 16 samples, each a move up by 16 / 64 of a decade; the weight
        # saved is the one after the last step.
        assert single["penalty_weight"] == pytest.approx(10.0 * 10 ** (6 * 16 / 64))
    if case == "r1_norm_ratio":
        assert single["penalty_weight"] == pytest.approx(10.0 * 10 ** (-6 * 16 / 64))
    if case in ("r1_balance", "r3gan_fd"):
        assert abs(single["penalty_weight"] - 10.0) > 1000 * TOLERANCE  # it did move
    # Not trivially equal: training moved the parameters far more than the tolerance.
    assert max_difference(single, single["initial"]) > 1000 * TOLERANCE


def test_parity_check_detects_ranks_drawing_the_same_noise(runs: Runs) -> None:
    """The comparison can fail: with every rank taking the same rows of the noise and eps draws
    (as identically seeded processes do) the ranks still agree with each other, but not with
    the single process."""
    single = load(runs, "single", "wgan_gp")
    rank0, rank1 = (load(runs, "ddp", "wgan_gp_same_draws", rank) for rank in (0, 1))
    assert max_difference(rank0, rank1) == 0
    assert max_difference(rank0, single) > 100 * TOLERANCE


def test_seed_per_rank_gives_ranks_their_own_noise(runs: Runs) -> None:
    plain = [load(runs, "ddp", "module_noise", rank)["first_noise"] for rank in (0, 1)]
    seeded = [
        load(runs, "ddp", "module_noise_seed_per_rank", rank)["first_noise"] for rank in (0, 1)
    ]
    assert not torch.equal(seeded[0], seeded[1])
    assert torch.equal(seeded[0], plain[0])  # rank 0 keeps its stream


def test_gan_module_ranks_draw_their_own_noise(runs: Runs) -> None:
    noise = [load(runs, "ddp", "module_noise", rank)["first_noise"] for rank in (0, 1)]
    assert not torch.equal(noise[0], noise[1])


def test_static_graph_is_refused_before_training(runs: Runs) -> None:
    result = runs["static_graph"]
    assert result.returncode != 0
    assert "trainer.strategy: DDP with static_graph=True is not supported" in result.output
    assert not list(result.out.iterdir())
