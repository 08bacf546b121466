"""lit_gp.distributed: refused DDP strategies, per-rank seeds, the trainer=ddp configs.
(The 2-process parity test is tests/test_ddp.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lit_gp import ConfigError
from lit_gp.config import build
from lit_gp.distributed import check_strategy, seed_per_rank


def trainer(strategy, devices: int = 2) -> L.Trainer:
    # Building a Trainer starts no processes; only fit would.
    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False)


@pytest.mark.parametrize(
    "strategy",
    [
        "ddp_find_unused_parameters_true",
        "ddp_spawn_find_unused_parameters_true",
        DDPStrategy(find_unused_parameters=True),
    ],
)
def test_ddp_with_unused_parameter_detection_is_accepted(strategy) -> None:
    check_strategy(trainer(strategy))


def test_single_device_is_accepted() -> None:
    check_strategy(trainer("auto", devices=1))


@pytest.mark.parametrize(
    "strategy",
    [
        DDPStrategy(static_graph=True),
        DDPStrategy(static_graph=True, find_unused_parameters=True),
    ],
)
def test_static_graph_is_refused(strategy) -> None:
    with pytest.raises(ConfigError, match="static_graph=True is not supported") as error:
        check_strategy(trainer(strategy))
    assert error.value.key == "trainer.strategy"
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "strategy", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_false", DDPStrategy()]
)
def test_ddp_without_unused_parameter_detection_is_refused(strategy) -> None:
    with pytest.raises(ConfigError, match="DDP needs find_unused_parameters=True"):
        check_strategy(trainer(strategy))


@pytest.mark.parametrize(("name", "start_method"), [("ddp", "popen"), ("ddp_spawn", "spawn")])
def test_trainer_configs_build_an_accepted_ddp_strategy(
    compose_config, name: str, start_method: str
) -> None:
    cfg = compose_config(f"trainer={name}")
    built = build(cfg.trainer, "trainer", logger=False)
    assert isinstance(built.strategy, DDPStrategy)
    assert built.strategy._start_method == start_method
    assert built.num_devices == 2
    check_strategy(built)


def ranks_noise(seed: int, rank: int, world_size: int = 2) -> torch.Tensor:
    torch.manual_seed(seed)
    seed_per_rank(SimpleNamespace(world_size=world_size, global_rank=rank))
    return torch.randn(4)


def test_seed_per_rank_gives_each_rank_its_own_reproducible_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without seed_everything's PL_GLOBAL_SEED (an earlier test's train() may have set it), the
    # base seed is torch's.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    with torch.random.fork_rng():
        rank0, rank1, rank1_again = ranks_noise(0, 0), ranks_noise(0, 1), ranks_noise(0, 1)
        torch.manual_seed(0)
        unseeded = torch.randn(4)
        other_seed = ranks_noise(1, 1)
        single = ranks_noise(0, 0, world_size=1)
    assert torch.equal(rank0, unseeded)  # rank 0 keeps the seeded stream
    assert torch.equal(single, unseeded)  # so does a single process
    assert not torch.equal(rank1, rank0)
    assert torch.equal(rank1, rank1_again)
    assert not torch.equal(other_seed, rank1)
