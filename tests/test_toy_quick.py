"""experiment=toy_quick, the one-minute demo: its settings, and (slow) that it learns the ring
through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_train


def test_toy_quick_composes_to_its_settings(compose_config) -> None:
    cfg = compose_config("experiment=toy_quick", fast=[])
    assert cfg.data.dataset == "gaussians8" and cfg.data.batch_size == 256
    assert cfg.model.penalty._target_ == "lit_gp.penalties.r1"
    assert cfg.model.penalty.gamma == 1.0
    assert cfg.model.loss == "non_saturating" and cfg.model.n_critic == 1
    for net in (cfg.model.generator, cfg.model.critic):
        assert (net.hidden_dim, net.num_layers) == (128, 3)
    for optimizer in (cfg.model.critic_optimizer, cfg.model.generator_optimizer):
        assert optimizer.lr == 3.0e-3 and list(optimizer.betas) == [0.5, 0.9]
    # Decayed linearly to 0 over the run.
    assert cfg.model.critic_scheduler.total_iters == cfg.generator_steps == 700
    assert cfg.model.critic_scheduler.end_factor == 0.0
    # One validation (figure, metrics, checkpoint) at the end; one thread; the default logger
    # (W&B, offline without a login: no account needed).
    assert cfg.val_every_generator_steps == 700
    assert cfg.callbacks.checkpoint.save_top_k == 0  # last.ckpt only
    assert cfg.num_threads == 1
    assert cfg.logger._target_ == "lit_gp.wandb_utils.ResilientWandbLogger"
    assert cfg.model.num_eval_samples == 2500  # the VEEGAN/PacGAN protocol, as everywhere


def test_the_papers_toy_setup_stays_model_wgangps_default(compose_config) -> None:
    cfg = compose_config("model=wgangp", fast=[])
    assert cfg.model.penalty._target_ == "lit_gp.penalties.wgan_gp"
    assert cfg.model.penalty.weight == 0.1 and cfg.model.n_critic == 5
    assert cfg.model.generator.hidden_dim == cfg.model.critic.hidden_dim == 512
    assert cfg.model.critic_optimizer.lr == 1.0e-4
    assert cfg.generator_steps == 3000 and cfg.data.batch_size == 256


@pytest.mark.slow
def test_toy_quick_learns_the_ring(tmp_path: Path) -> None:
    # The command a new user runs first (under a minute here), through the real entry point,
    # with Python's warnings as a user sees them.
    run_dir = tmp_path / "run"
    result = run_train(
        "experiment=toy_quick",
        "seed=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PYTHONWARNINGS": None},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/modes_covered"] == 8
    assert metrics["val/high_quality_fraction"] >= 0.7
    # It ends with the summary, without Lightning's advertisement or its deprecation warning.
    output = result.stdout + result.stderr
    assert "run finished: 700 generator steps" in output
    assert "wandb sync" in output.split("run finished")[-1]
    assert "💡" not in output and "LeafSpec" not in output
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "samples" / "step_000700.png").is_file()
