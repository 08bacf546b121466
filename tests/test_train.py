"""The entry point: every model config trains, sweeps, W&B offline, bad input stops cleanly."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_many
from conftest import FAST, FAST_IMAGES, run_train
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import OmegaConf, open_dict
from wandb_records import find_offline_runs, read_run

from lit_gp import ConfigError, GANModule
from lit_gp.data.toy import toy_modes
from lit_gp.training import train

# Every GAN model config is named like its penalty function (lit_gp.penalties.<name>).
MODELS = ["wgan_gp", "wgan_lp", "zero_gp", "dragan", "r1", "r2", "wgan_div"]
# The earlier config names, kept as aliases.
ALIASES = {"wgangp": "wgan_gp", "wganlp": "wgan_lp", "zerogp": "zero_gp", "wgandiv": "wgan_div"}


@pytest.mark.parametrize(("alias", "model"), sorted(ALIASES.items()))
@pytest.mark.parametrize("data", ["gaussians8", "digits"])
def test_old_model_names_compose_the_same_config(alias, model, data, compose_config) -> None:
    fast = FAST if data == "gaussians8" else FAST_IMAGES
    assert compose_config(f"model={alias}", f"data={data}", fast=fast) == compose_config(
        f"model={model}", f"data={data}", fast=fast
    )


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_trains(model: str, compose_config, tmp_path: Path) -> None:
    cfg = compose_config(f"model={model}")
    assert cfg.model.penalty._target_ == f"lit_gp.penalties.{model}"
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    module = GANModule.load_from_checkpoint(last)
    assert module.generator_step == 3
    assert module.hparams.penalty["_target_"] == cfg.model.penalty._target_
    assert list((tmp_path / "samples").glob("step_*.png"))


@pytest.mark.parametrize("data", ["gaussians8", "gaussians25", "swissroll"])
def test_data_configs_train_and_report_metrics(data: str, compose_config):
    cfg = compose_config(f"data={data}", "optimized_metric=val/wasserstein_estimate")
    assert math.isfinite(train(cfg))
    if data == "swissroll":  # no modes
        cfg = compose_config(f"data={data}", "optimized_metric=val/modes_covered")
        with pytest.raises(ConfigError, match="was not logged"):
            train(cfg)


# A generator whose samples are known: some of the data set's modes exactly, and one point far
# from every mode, in turn. The final validation scores its 256 samples (debug=fast).
MODE_CASES = {
    # 3 modes and a far point: each mode holds 64 of 256 samples (>= 1%), 3/4 are high quality.
    "gaussians8": ([0, 3, 5], 3, 0.75),
    # 7 modes and a far point: 32 samples each, 7/8 high quality.
    "gaussians25": ([0, 4, 6, 12, 18, 20, 24], 7, 0.875),
}


@pytest.mark.parametrize("data", MODE_CASES)
@pytest.mark.parametrize(
    "metric", ["val/modes_covered", "val/high_quality_fraction"], ids=["modes", "quality"]
)
def test_toy_metrics_of_known_samples(data: str, metric: str, compose_config) -> None:
    modes, covered, quality = MODE_CASES[data]
    points = toy_modes(data)[modes].tolist() + [[5.0, 5.0]]
    cfg = compose_config(f"data={data}", f"optimized_metric={metric}")
    with open_dict(cfg):
        cfg.model.generator = {"_target_": "fixed_points.FixedPoints", "points": points}
    assert cfg.model.num_eval_samples == 256
    expected = covered if metric == "val/modes_covered" else quality
    assert train(cfg) == expected


def test_validation_and_checkpoints_at_generator_steps(compose_config, tmp_path: Path):
    # n_critic 3 and every 2 generator steps: Lightning's units are 6 batches and 8 optimizer
    # steps; the files and logs must land at generator steps 2, 4 and 6.
    cfg = compose_config(
        "model.n_critic=3", "generator_steps=6", "val_every_generator_steps=2", "logger=csv"
    )
    train(cfg)
    names = sorted(path.name for path in (tmp_path / "checkpoints").glob("step=*.ckpt"))
    assert names == ["step=16.ckpt", "step=24.ckpt", "step=8.ckpt"]
    for name, generator_step in [("step=8.ckpt", 2), ("step=16.ckpt", 4), ("step=24.ckpt", 6)]:
        checkpoint = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert checkpoint["lit_gp"]["generator_step"] == generator_step
    (metrics_file,) = (tmp_path / "csv").rglob("metrics.csv")
    with metrics_file.open() as handle:
        rows = list(csv.DictReader(handle))
    validated_at = [float(r["train/generator_step"]) for r in rows if r.get("val/modes_covered")]
    assert validated_at == [2.0, 4.0, 6.0]
    plots = sorted(path.name for path in (tmp_path / "samples").glob("*.png"))
    assert plots == ["step_000002.png", "step_000004.png", "step_000006.png"]


def test_penalty_weight_override_reaches_the_module(compose_config, tmp_path: Path) -> None:
    cfg = compose_config("model.penalty.weight=1", "model.n_critic=2")
    train(cfg)
    module = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.hparams.penalty["weight"] == 1
    assert module.n_critic == 2


CONSTANT_LR = ["model.critic_scheduler=null", "model.generator_scheduler=null"]


def test_resume_from_last_checkpoint_continues_counters(compose_config, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(compose_config("generator_steps=2", *CONSTANT_LR, output_dir=first))
    last = first / "checkpoints" / "last.ckpt"
    second = tmp_path / "second"
    train(compose_config("generator_steps=4", *CONSTANT_LR, f"ckpt_path={last}", output_dir=second))
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
        ("seed=-1", "seed"),
        ("seed=abc", "seed"),
        ("val_every_generator_steps=0", "val_every_generator_steps"),
        ("val_every_generator_steps=2.5", "val_every_generator_steps"),
        ("model.critic_optimizer.lr=-1", "model.critic_optimizer"),
        ("model.generator_optimizer.lr=abc", "model.generator_optimizer"),
        ("model.generator.output_dim=3", "model.generator"),
        ("model.critic.input_dim=3", "model.critic"),
        ("+model.penalty.foo=1", "model.penalty.foo"),
        ("+model.penalty.allow_batch_norm=no", "model.penalty.allow_batch_norm"),
        ("data.dataset=moons", "data.dataset"),
        ("callbacks.toy_plot.grid_size=2.5", "callbacks.toy_plot.grid_size"),
        ("trainer.precision=16-true", "trainer.precision"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override: str, key: str, compose_config):
    with pytest.raises(ConfigError) as error:
        train(compose_config(override))
    assert error.value.key == key


def test_batch_norm_opt_out(compose_config) -> None:
    train(compose_config("model.critic.norm=batch", "+model.penalty.allow_batch_norm=true"))


def test_bf16_mixed_trains(compose_config, tmp_path: Path) -> None:
    train(compose_config("trainer.precision=bf16-mixed"))
    module = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.generator_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_resume_with_other_nets_or_schedule_is_refused(compose_config, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(compose_config("generator_steps=2", output_dir=first))
    last = first / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"other model\.critic;") as error:
        train(compose_config("generator_steps=2", f"ckpt_path={last}", "model.critic.hidden_dim=8"))
    assert error.value.key == "ckpt_path"
    # The checkpoint's scheduler state would override a longer decay: refused, not ignored.
    with pytest.raises(ConfigError, match=r"model\.critic_scheduler, model\.generator_scheduler"):
        train(compose_config("generator_steps=5", f"ckpt_path={last}"))
    # A new learning rate is a legitimate change on resume.
    train(
        compose_config("generator_steps=2", f"ckpt_path={last}", "model.critic_optimizer.lr=5e-5")
    )


def test_not_a_checkpoint_is_refused(compose_config, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        train(compose_config(f"ckpt_path={bogus}"))
    assert bogus.read_text() == "not a checkpoint"


# --- through the real train.py ---------------------------------------------------------------

CLI_FAST = [
    "debug=fast",
    "generator_steps=2",
    "model.generator.hidden_dim=16",
    "model.critic.hidden_dim=16",
    "data.num_train=512",
    "data.num_val=128",
    "data.batch_size=32",
    "model.num_eval_samples=128",
    "callbacks.toy_plot.grid_size=8",
    "callbacks.toy_plot.num_samples=32",
]


CLI_BAD_VALUES = [
    ("model.penalty.weight=-1", "model.penalty.weight"),
    ("model.n_critic=0", "model.n_critic"),
    ("model.critic.norm=batch", "model.critic"),
    ("ckpt_path=missing.ckpt", "ckpt_path"),
    ("seed=abc", "seed"),
]
CLI_UNKNOWN_NAMES = [("model=nosuch", "wgangp"), ("data=nosuch", "gaussians8")]


@pytest.fixture(scope="module")
def cli_failures(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """The failing runs of the two tests below, by override, each in a folder of its own: the
    real train.py through tests/cli_runner.py (one start-up for all of them)."""
    runs = {override: [*CLI_FAST, "logger=none", override] for override, _ in CLI_BAD_VALUES}
    runs.update({override: ["logger=none", override] for override, _ in CLI_UNKNOWN_NAMES})
    root = tmp_path_factory.mktemp("cli_failures")
    folders = {override: root / str(index) for index, override in enumerate(runs)}
    for folder in folders.values():
        folder.mkdir()
    results = run_many(
        [(args, folders[override]) for override, args in runs.items()],
        env={"PYTHONWARNINGS": "ignore"},  # as run_train
    )
    return {
        override: (result, folders[override])
        for override, result in zip(runs, results, strict=True)
    }


@pytest.mark.slow
@pytest.mark.parametrize(("override", "key"), CLI_BAD_VALUES)
def test_cli_bad_value_one_line_no_traceback(override: str, key: str, cli_failures) -> None:
    result, folder = cli_failures[override]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], result.stderr
    assert not list(folder.rglob("*.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize(("override", "choice"), CLI_UNKNOWN_NAMES)
def test_cli_unknown_name_lists_the_choices(override: str, choice: str, cli_failures) -> None:
    result, _ = cli_failures[override]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    group = override.split("=")[0]
    assert f"Could not find '{group}/nosuch'" in result.stderr
    assert choice in result.stderr


@pytest.mark.slow
def test_cli_wandb_offline_without_login_logs_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "WANDB_MODE": None, "WANDB_API_KEY": None, "WANDB_SILENT": "true"}
    result = run_train(*CLI_FAST, "logger=wandb", "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    sync_lines = [line for line in result.stdout.splitlines() if "wandb sync" in line]
    # Once at the start, once in the end-of-run summary.
    assert len(sync_lines) == 2 and sync_lines[0].startswith("W&B: no login found")
    assert "upload it with: wandb sync" in sync_lines[1]

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
        "train/critic_auc",
        "train/generator_step",
        "val/wasserstein_estimate",
        "val/modes_covered",
        "val/high_quality_fraction",
        "val/samples",
    ]:
        assert key in logged, key
    assert run.config["model"]["penalty"]["_target_"] == "lit_gp.penalties.wgan_gp"
    assert run.config["model"]["penalty"]["weight"] == 0.1
    assert run.config["generator_steps"] == 2
    assert run.exit_code == 0


@pytest.mark.slow
def test_cli_multirun_four_jobs_four_grouped_runs(tmp_path: Path) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_train(
        "-m",
        *CLI_FAST,
        "logger=wandb",
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
    # Each run is named by its job's overrides.
    for run in runs:
        penalty = run.config["model"]["penalty"]
        model = "wgangp" if penalty["_target_"].endswith("wgan_gp") else "dragan"
        assert f"model={model}" in run.name.split(",")
        assert f"model.penalty.weight={penalty['weight']}" in run.name.split(",")
    settings = {
        (run.config["model"]["penalty"]["_target_"], run.config["model"]["penalty"]["weight"])
        for run in runs
    }
    assert settings == {
        (f"lit_gp.penalties.{method}", weight)
        for method in ("wgan_gp", "dragan")
        for weight in (1, 10)
    }


@pytest.mark.slow
def test_cli_wandb_unreachable_server_falls_back_offline(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "WANDB_MODE": None,
        "WANDB_API_KEY": "a" * 40,  # a login, but the server below does not answer
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_INIT_TIMEOUT": "5",
        "WANDB_SILENT": "true",
    }
    result = run_train(*CLI_FAST, "logger=wandb", "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B: no online run" in result.stdout and "wandb sync" in result.stdout
    (run_dir,) = find_offline_runs(tmp_path / "run")
    assert read_run(run_dir).rows_with("train/critic_loss")


@pytest.mark.slow
def test_bf16_mixed_2000_generator_steps_stay_finite(compose_config, tmp_path: Path) -> None:
    # The paper's toy setup under bf16 autocast, wgan_gp, as long as the acceptance asks.
    cfg = compose_config(
        "trainer.precision=bf16-mixed",
        "generator_steps=2000",
        # One validation, at the end (the modes_covered below). Validation and the plots restore
        # the random state they draw, so the training is the same as with more of them; the toy
        # plot and the gradient-norm histograms are not what this test proves.
        "val_every_generator_steps=2000",
        "callbacks.toy_plot=null",
        "callbacks.gradient_norms=null",
        "model.generator.hidden_dim=512",
        "model.critic.hidden_dim=512",
        "data.num_train=100000",
        "data.batch_size=256",
        "model.num_eval_samples=2500",
        "optimized_metric=val/modes_covered",
    )
    modes_covered = train(cfg)
    module = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.generator_step == 2000
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert torch.isfinite(module.sample(2500)).all()
    assert modes_covered >= 6  # it learned, not merely stayed finite


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp", "ddp_spawn"])
def test_cli_ddp_run_one_directory_and_a_complete_last_checkpoint(
    trainer: str, tmp_path: Path
) -> None:
    result = run_train(
        *CLI_FAST, "logger=none", f"trainer={trainer}", "hydra.run.dir=run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [path.name for path in tmp_path.iterdir()] == ["run"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["lit_gp"]["generator_step"] == 2
    assert len(checkpoint["optimizer_states"]) == 2


@pytest.mark.slow
def test_cli_joblib_multirun_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    result = run_train(
        "-m",
        *CLI_FAST,
        "logger=none",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "num_threads=1",
        "model=wgangp,r1",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for job in ("0", "1"):
        checkpoint = torch.load(
            tmp_path / "sweep" / job / "checkpoints" / "last.ckpt", weights_only=True
        )
        assert checkpoint["lit_gp"]["generator_step"] == 2
    assert "Joblib.Parallel" in result.stdout + result.stderr


@pytest.mark.slow
def test_cli_optuna_search_over_the_penalty_weight(tmp_path: Path) -> None:
    result = run_train(
        "-m",
        *CLI_FAST,
        "logger=none",
        "hparams_search=penalty_weight",
        "hydra.sweeper.n_trials=3",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    optimization = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "model.penalty.weight" in optimization and "best_value" in optimization
    weights = [
        yaml_value(tmp_path / "sweep" / str(job) / ".hydra" / "overrides.yaml") for job in range(3)
    ]
    assert len(set(weights)) == 3 and all(0.01 <= weight <= 100 for weight in weights)


def yaml_value(overrides_file: Path) -> float:
    (line,) = [
        line for line in overrides_file.read_text().splitlines() if "model.penalty.weight=" in line
    ]
    return float(line.split("=")[1])


def test_slurm_launcher_config_composes(compose_config) -> None:
    compose_config("hydra/launcher=slurm")
    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240


# --- the saved config is what ran ------------------------------------------------------------


def resolved_saved_config(run_dir: Path) -> dict:
    """A run's ``.hydra/config.yaml`` resolved as in the run (``${hydra:...}`` from its
    ``.hydra/hydra.yaml``)."""
    setup_globals()  # Hydra's resolvers (hydra:, now:), as a Hydra run registers them
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_yaml = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = hydra_yaml  # what HydraConfig.get() reads (.hydra)
    try:
        return OmegaConf.to_container(saved, resolve=True)
    finally:
        HydraConfig.instance().cfg = previous


TASK_RUNS = {
    "gan": CLI_FAST,
    "classifier": [
        "model=gp_classifier",
        "data=digits",
        "debug=fast_classifier",
        "trainer.max_epochs=2",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_RUNS)
def test_cli_saved_config_is_what_ran(task: str, tmp_path: Path) -> None:
    result = run_train(*TASK_RUNS[task], "logger=csv", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    saved = resolved_saved_config(run)
    choices = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.choices
    assert choices.task == task

    # The hyperparameters the run logged are the saved config (Lightning adds the module's own
    # hyperparameters to the same file, under other keys).
    (hparams_file,) = (run / "csv").rglob("hparams.yaml")
    logged = yaml.safe_load(hparams_file.read_text())
    assert {key: logged[key] for key in saved} == saved
    # The module was built from the saved model config.
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hyperparameters = checkpoint["hyper_parameters"]
    for key, value in saved["model"].items():
        if key != "_target_":
            assert hyperparameters[key] == value, key
    # The printed config tree was saved beside it.
    assert "max_epochs" in (run / "config_tree.log").read_text()

    files = {path.relative_to(run).as_posix() for path in run.rglob("*") if path.is_file()}
    ran = {key.split("{")[0] for key in checkpoint["callbacks"]}
    if task == "classifier":
        # Trained for the saved number of epochs, tested; no generator, no GAN callbacks.
        assert saved["trainer"]["max_epochs"] == 2 and saved["test"] is True
        results = json.loads((run / "results.json").read_text())
        assert results["epochs"] == 2 and results["test_split"] == "val"
        assert "generator" not in saved["model"] and "generator" not in hyperparameters
        assert "generator_steps" not in saved
        assert set(saved["callbacks"]) == {"checkpoint", "nonfinite_guard"}
        assert ran == {"GANCheckpoint", "NonFiniteGuard"}
        assert not any(name.startswith("samples/") for name in files)
        assert [name for name in files if name.endswith(".ckpt")] == ["checkpoints/last.ckpt"]
    else:
        # Stopped by the configured generator-step limit; validated, plotted and saved at the
        # saved cadence; no final test.
        assert saved["trainer"]["max_epochs"] == -1 and saved["test"] is False
        assert saved["callbacks"]["generator_step_limit"]["max_generator_steps"] == 2
        assert checkpoint["lit_gp"]["generator_step"] == 2
        assert not (run / "results.json").exists()
        assert "samples/step_000002.png" in files
        assert "checkpoints/step=12.ckpt" in files  # 2 generator steps x (n_critic 5 + 1)


# --- failed jobs of a multirun -------------------------------------------------------------------


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(path for path in sweep.iterdir() if path.is_dir())


@pytest.mark.slow
def test_cli_multirun_records_failed_jobs_and_runs_the_others(tmp_path: Path) -> None:
    # Three jobs: a good learning rate, a bad value (exit 2 alone) and one that diverges at once
    # (a non-finite loss: exit 3 alone). Logged offline to W&B.
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_train(
        "-m",
        *CLI_FAST,
        "logger=wandb",
        "model.critic_optimizer.lr=1e-4,-1,1e+30",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    good, bad_value, diverged = _job_dirs(tmp_path / "sweep")
    assert (good / "checkpoints" / "last.ckpt").is_file()
    assert not (good / "error.txt").exists()
    bad_line = (bad_value / "error.txt").read_text().strip()
    assert bad_line.startswith("error: model.critic_optimizer")
    diverged_line = (diverged / "error.txt").read_text().strip()
    assert diverged_line.startswith("error: non-finite")
    # The report at the end names both failed jobs with their overrides and lines.
    report = result.stderr[result.stderr.index("error: 2 of 3 jobs failed") :].splitlines()
    assert report[1] == f"  sweep/1 (model.critic_optimizer.lr=-1): {bad_line}"
    assert report[2] == f"  sweep/2 (model.critic_optimizer.lr=1e+30): {diverged_line}"
    # The diverged job had started its W&B run: marked failed, the line in its summary. The bad
    # value stopped before any W&B run.
    assert not find_offline_runs(bad_value)
    (run_dir,) = find_offline_runs(diverged)
    run = read_run(run_dir)
    assert run.exit_code == 3 and run.summary["error"] == diverged_line
    (run_dir,) = find_offline_runs(good)
    assert read_run(run_dir).exit_code == 0


@pytest.mark.slow
def test_cli_optuna_search_goes_on_after_a_failed_trial(tmp_path: Path) -> None:
    # TPE (seed 1) draws the weights -1, 1, 10 in turn: the first trial fails, the search goes on.
    result = run_train(
        "-m",
        *CLI_FAST,
        "seed=1",
        "hparams_search=penalty_weight",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.params={model.penalty.weight:'choice(1,-1,10)'}",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    jobs = _job_dirs(tmp_path / "sweep")
    assert len(jobs) == 3
    weights = [yaml_value(job / ".hydra" / "overrides.yaml") for job in jobs]
    assert -1 in weights and {1, 10} & set(weights)
    for job, weight in zip(jobs, weights, strict=True):
        assert (job / "error.txt").exists() == (weight == -1)
        assert (job / "checkpoints" / "last.ckpt").exists() == (weight != -1)
    assert "Failed experiment" in result.stdout + result.stderr  # the sweeper marked it failed
    optimization = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert optimization["best_params"]["model.penalty.weight"] in (1, 10)
    assert "error: 1 of 3 jobs failed" in result.stderr


def test_a_failed_job_returns_what_optuna_records_as_failed() -> None:
    # hydra-optuna-sweeper tells a trial COMPLETE with float(return value), FAIL if that raises;
    # a NaN would make optuna's study.tell raise (and end the search).
    from lit_gp.jobs import FailedJob

    with pytest.raises(TypeError):
        float(FailedJob(2, "error: x: bad"))


def test_the_resolved_config_is_printed_as_a_tree_and_saved_on_rank_zero_only(
    compose_config, tmp_path: Path, capsys, monkeypatch
) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    train(compose_config("generator_steps=1"))
    printed = capsys.readouterr().out
    saved = (tmp_path / "config_tree.log").read_text()
    for text in (printed, saved):
        # Branches per group, values resolved (no ${...} left).
        assert "generator_step_limit" in text and "max_generator_steps: 1" in text
        assert "output_dir:" in text and "${" not in text
    assert f"output_dir: {tmp_path}" in saved
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    other = tmp_path / "rank1"
    train(compose_config("generator_steps=1", output_dir=other))
    assert "generator_step_limit" not in capsys.readouterr().out
    assert not (other / "config_tree.log").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # debug=fast sets the toy plot's sample counts; the callback stays off.
        (["callbacks=none"], ["GeneratorStepLimit"]),
        (
            ["callbacks.toy_plot=null"],
            [
                "GANCheckpoint",
                "NonFiniteGuard",
                "SampleGrid",
                "ImageMetrics",
                "GradientNormHistograms",
                "GeneratorStepProgressBar",
                "GeneratorStepLimit",
            ],
        ),
    ],
)
def test_debug_fast_leaves_switched_off_callbacks_off(overrides, expected, compose_config):
    from lit_gp.training import build_callbacks

    cfg = compose_config(*overrides, "debug=fast")
    assert [type(callback).__name__ for callback in build_callbacks(cfg.callbacks)] == expected
