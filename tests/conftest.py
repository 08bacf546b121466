"""Shared fixtures: Hydra-composed configs for in-process runs, and the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# No logger, no progress bar (for tests that set their own run length).
QUIET = ["logger=none", "+trainer.enable_progress_bar=false"]
# debug=fast (conf/debug/fast.yaml: 3 generator steps, validation and plots at step 2 and at the
# end, small evaluation sample counts, no logger) with narrow nets and small toy data sets.
FAST = [
    "debug=fast",
    "model.generator.hidden_dim=32",
    "model.critic.hidden_dim=32",
    "data.num_train=1024",
    "data.num_val=256",
    "data.batch_size=64",
]
# The same for image data (DCGAN or ResNet nets): validation, FID/KID and grids at step 2 and at
# the end (step 3).
FAST_IMAGES = [
    "debug=fast",
    "model.n_critic=2",
    "model.generator.dim=8",
    "model.critic.dim=8",
    "model.generator.latent_dim=16",
    "data.batch_size=16",
]


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """In-process runs may call torch.set_num_threads (num_threads=...); later tests in the same
    process must not inherit it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides, its output directory in tmp_path (as a Hydra run
    would set it), ready for ``lit_gp.training.train``."""

    def _compose(
        *overrides: str, output_dir: Path | None = None, fast: list[str] = FAST
    ) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*fast, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir or tmp_path)
            cfg.hydra.job.name = "test"
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def run_train(
    *args: str, cwd: Path, env: dict[str, str | None] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run the real ``train.py`` in a subprocess (``env`` values of None unset a variable)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class RecordingLogger(Logger):
    """Keeps every row Lightning writes to a logger."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass
