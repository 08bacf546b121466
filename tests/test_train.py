"""The entry point: every model config trains, sweeps, W&B offline, bad input stops cleanly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import run_train
from wandb_records import find_offline_runs, read_run

from lit_gp import ConfigError, GANModule
from lit_gp.training import train

MODELS = ["wgangp", "wganlp", "zerogp", "dragan", "r1", "r2", "wgandiv"]
PENALTIES = {
    "wgangp": "wgan_gp",
    "wganlp": "wgan_lp",
    "zerogp": "zero_gp",
    "dragan": "dragan",
    "r1": "r1",
    "r2": "r2",
    "wgandiv": "wgan_div",
}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_trains(model: str, compose_config, tmp_path: Path) -> None:
    cfg = compose_config(f"model={model}")
    assert cfg.model.penalty._target_ == f"lit_gp.penalties.{PENALTIES[model]}"
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    module = GANModule.load_from_checkpoint(last)
    assert module.generator_step == 3
    assert module.hparams.penalty["_target_"] == cfg.model.penalty._target_
    assert list((tmp_path / "samples").glob("step_*.png"))


@pytest.mark.parametrize("data", ["gaussians8", "gaussians25", "swissroll"])
def test_data_configs_train_and_report_metrics(data: str, compose_config) -> None:
    cfg = compose_config(f"data={data}", "optimized_metric=val/wasserstein_estimate")
    value = train(cfg)
    assert math.isfinite(value)


def test_penalty_weight_override_reaches_the_module(compose_config, tmp_path: Path) -> None:
    cfg = compose_config("model.penalty.weight=1", "model.n_critic=2")
    train(cfg)
    module = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.hparams.penalty["weight"] == 1
    assert module.n_critic == 2


def test_resume_from_last_checkpoint_continues_counters(compose_config, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(compose_config("generator_steps=2", output_dir=first))
    last = first / "checkpoints" / "last.ckpt"
    second = tmp_path / "second"
    train(compose_config("generator_steps=4", f"ckpt_path={last}", output_dir=second))
    checkpoint = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["lit_gp"]["generator_step"] == 4
    assert checkpoint["global_step"] == 4 * (5 + 1)  # n_critic = 5
    assert (first / "checkpoints" / "last.ckpt").is_file()  # the first run is left as it was


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.penalty.weight=-1", "model.penalty.weight"),
        ("model.n_critic=0", "model.n_critic"),
        ("model.loss=squared", "model.loss"),
        ("model.critic.norm=batch", "model.critic"),
        ("data.batch_size=0", "data.batch_size"),
        ("generator_steps=0", "generator_steps"),
        ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override: str, key: str, compose_config):
    with pytest.raises(ConfigError) as error:
        train(compose_config(override))
    assert error.value.key == key


def test_batch_norm_opt_out(compose_config) -> None:
    train(compose_config("model.critic.norm=batch", "+model.penalty.allow_batch_norm=true"))


def test_not_a_checkpoint_is_refused(compose_config, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        train(compose_config(f"ckpt_path={bogus}"))
    assert bogus.read_text() == "not a checkpoint"


# --- through the real train.py ---------------------------------------------------------------

CLI_FAST = [
    "generator_steps=2",
    "val_every_generator_steps=2",
    "model.generator.hidden_dim=16",
    "model.critic.hidden_dim=16",
    "data.num_train=512",
    "data.num_val=128",
    "data.batch_size=32",
    "model.num_eval_samples=128",
    "callbacks.toy_plot.grid_size=8",
    "callbacks.toy_plot.num_samples=32",
    "+trainer.enable_progress_bar=false",
]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.penalty.weight=-1", "model.penalty.weight"),
        ("model.n_critic=0", "model.n_critic"),
        ("model.critic.norm=batch", "model.critic"),
        ("ckpt_path=missing.ckpt", "ckpt_path"),
    ],
)
def test_cli_bad_value_one_line_no_traceback(override: str, key: str, tmp_path: Path) -> None:
    result = run_train(*CLI_FAST, "logger=none", override, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("override", ["model=nosuch", "data=nosuch"])
def test_cli_unknown_name_lists_the_choices(override: str, tmp_path: Path) -> None:
    result = run_train("logger=none", override, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    group = override.split("=")[0]
    assert f"Could not find '{group}/nosuch'" in result.stderr
    assert "gaussians8" in result.stderr or "wgangp" in result.stderr


@pytest.mark.slow
def test_cli_wandb_offline_without_login_logs_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "WANDB_MODE": None, "WANDB_API_KEY": None, "WANDB_SILENT": "true"}
    result = run_train(*CLI_FAST, "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    sync_lines = [line for line in result.stdout.splitlines() if "wandb sync" in line]
    assert len(sync_lines) == 1 and sync_lines[0].startswith("W&B: no login found")

    (run_dir,) = find_offline_runs(tmp_path / "run")
    run = read_run(run_dir)
    logged = {key for row in run.history for key in row}
    for key in [
        "train/critic_loss",
        "train/generator_loss",
        "train/penalty",
        "train/grad_norm_mean",
        "train/grad_norm_max",
        "train/grad_norm_fraction_above_1",
        "train/wasserstein_estimate",
        "train/generator_step",
        "val/wasserstein_estimate",
        "val/modes_covered",
        "val/high_quality_fraction",
        "val/samples",
    ]:
        assert key in logged, key
    assert run.config["model"]["penalty"]["_target_"] == "lit_gp.penalties.wgan_gp"
    assert run.config["model"]["penalty"]["weight"] == 10
    assert run.config["generator_steps"] == 2
    assert run.exit_code == 0


@pytest.mark.slow
def test_cli_multirun_four_jobs_four_grouped_runs(tmp_path: Path) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_train(
        "-m",
        *CLI_FAST,
        "model=wgangp,dragan",
        "model.penalty.weight=1,10",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    job_dirs = sorted(path for path in (tmp_path / "sweep").iterdir() if path.is_dir())
    assert len(job_dirs) == 4
    runs = []
    for job_dir in job_dirs:
        assert (job_dir / "checkpoints" / "last.ckpt").is_file()
        (run_dir,) = find_offline_runs(job_dir)
        runs.append(read_run(run_dir))
    assert len({run.run_id for run in runs}) == 4
    assert {run.group for run in runs} == {"sweep"}
    settings = {
        (run.config["model"]["penalty"]["_target_"], run.config["model"]["penalty"]["weight"])
        for run in runs
    }
    assert settings == {
        (f"lit_gp.penalties.{method}", weight)
        for method in ("wgan_gp", "dragan")
        for weight in (1, 10)
    }
