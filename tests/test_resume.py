"""Bitwise resume: a run interrupted at any batch and resumed ends with exactly the parameters
of an uninterrupted run (CPU), through Lightning in-process and through train.py killed by a
signal."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT

from lit_gp import GANModule, random_state
from lit_gp.callbacks import GANCheckpoint, GeneratorStepLimit
from lit_gp.checkpoint_io import AtomicCheckpointIO
from lit_gp.data import DigitsDataModule, ToyDataModule

MLP_NETS = {
    "generator": {"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 16},
    "critic": {"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 16},
}
DCGAN_NETS = {
    "generator": {
        "_target_": "lit_gp.nets.DCGANGenerator",
        "image_shape": [1, 8, 8],
        "dim": 4,
        "latent_dim": 8,
    },
    "critic": {"_target_": "lit_gp.nets.DCGANCritic", "image_shape": [1, 8, 8], "dim": 4},
}


CONTROLLERS = {
    "pi": {"_target_": "lit_gp.penalty_weights.ProportionalIntegral"},
    "lagrangian": {"_target_": "lit_gp.penalty_weights.AugmentedLagrangian"},
    # A decade per 64 samples: the weight moves by a visible factor at every penalized step.
    "auc": {"_target_": "lit_gp.penalty_weights.AUCTarget", "samples_per_decade": 64},
    "balance": {"_target_": "lit_gp.penalty_weights.GradientBalance"},
}


def every_kind_of_state(nets: dict, controller: str = "pi") -> GANModule:
    """A module with all the training state there is: n_critic cycle, lazy penalty phase,
    adaptive weight, EMA, learning-rate schedules."""
    if controller == "several_terms":
        return several_terms(nets)
    return GANModule(
        **nets,
        penalty={"_target_": "lit_gp.penalties.wgan_gp", "weight": 1.0, "every": 2},
        n_critic=2,
        ema_decay=0.9,
        weight_controller=CONTROLLERS[controller],
        critic_scheduler={"_target_": "torch.optim.lr_scheduler.LinearLR", "total_iters": 8},
        generator_scheduler={"_target_": "torch.optim.lr_scheduler.LinearLR", "total_iters": 8},
        num_eval_samples=64,
    )


def several_terms(nets: dict) -> GANModule:
    """R3GAN's kind of state: two penalty terms (one lazy with an adaptive weight and a weight
    schedule, one finite-difference estimate that draws its own noise), the relativistic pairing
    loss, and a learning-rate and a beta2 schedule on each optimizer."""
    cosine = {"_target_": "lit_gp.schedules.Cosine", "start": 1.0, "end": 0.1, "steps": 8}
    schedulers = [
        {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 8, "eta_min": 1e-5},
        {
            "_target_": "lit_gp.schedules.Beta2Schedule",
            "schedule": {**cosine, "start": 0.9, "end": 0.99},
        },
    ]
    return GANModule(
        **nets,
        penalty={
            "gp": {
                "_target_": "lit_gp.penalties.wgan_gp",
                "weight": 1.0,
                "every": 2,
                "schedule": cosine,
                "weight_controller": CONTROLLERS["pi"],
            },
            "r2": {
                "_target_": "lit_gp.penalties.r2",
                "gamma": 1.0,
                "estimator": "finite_difference",
                "sigma": 0.05,
            },
        },
        loss="relativistic_pairing",
        n_critic=2,
        ema_decay=0.9,
        critic_scheduler=schedulers,
        generator_scheduler=schedulers,
        num_eval_samples=64,
        critic_optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.0, 0.9]},
        generator_optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.0, 0.9]},
    )


def fit(module, datamodule, root: Path, steps: int, every_batch: bool = False, ckpt_path=None):
    callbacks: list = [GeneratorStepLimit(steps)]
    if every_batch:
        # every_n_train_steps=1 saves after every batch (each batch takes 1 or 2 optimizer steps).
        callbacks.append(
            GANCheckpoint(
                dirpath=root / "checkpoints",
                filename="{step}",
                every_n_train_steps=1,
                save_top_k=-1,
                save_on_signal=False,
            )
        )
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=every_batch,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        # Validation (which draws samples) between the saves: it must not shift the RNG.
        val_check_interval=4,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


def full_state(module: GANModule) -> dict[str, torch.Tensor]:
    """Parameters, buffers, EMA and the adaptive weight's state (its weight trajectory)."""
    state = {key: value.clone() for key, value in module.state_dict().items()}
    for term in module.penalty_terms:
        prefix = "weight_controller" if len(module.penalty_terms) == 1 else term.name
        for key, value in term.controller.state_dict().items():
            state[f"{prefix}.{key}"] = torch.tensor(math.nan if value is None else value)
    for index, optimizer in enumerate(module.optimizers()):
        state[f"optimizer{index}.beta2"] = torch.tensor(optimizer.param_groups[0]["betas"][1])
        state[f"optimizer{index}.lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
    return state


def assert_bitwise_equal(expected: dict, module: GANModule, name: str) -> None:
    state = full_state(module)
    assert state.keys() == expected.keys()
    # torch.equal(nan, nan) is False; an unset controller state is stored as NaN.
    different = [
        key
        for key, value in state.items()
        if not torch.equal(value, expected[key])
        and not (value.isnan() & expected[key].isnan()).all()
    ]
    assert not different, f"resuming from {name} changed {different}"


def checkpoints_in_order(root: Path) -> list[Path]:
    paths = (root / "checkpoints").glob("step=*.ckpt")
    return sorted(paths, key=lambda path: int(path.stem.split("=")[1]))


@pytest.mark.parametrize(
    ("nets", "make_data", "controller"),
    [
        # 3 batches per epoch: resumes land mid-epoch, at epoch ends and mid n_critic cycle.
        (MLP_NETS, lambda: ToyDataModule(batch_size=16, num_train=48, num_val=32), "pi"),
        (MLP_NETS, lambda: ToyDataModule(batch_size=16, num_train=48, num_val=32), "lagrangian"),
        (MLP_NETS, lambda: ToyDataModule(batch_size=16, num_train=48, num_val=32), "auc"),
        (MLP_NETS, lambda: ToyDataModule(batch_size=16, num_train=48, num_val=32), "balance"),
        # Dequantization noise is drawn per batch from the restored RNG.
        (DCGAN_NETS, lambda: DigitsDataModule(batch_size=256, dequantize=True), "pi"),
        (
            MLP_NETS,
            lambda: ToyDataModule(batch_size=16, num_train=48, num_val=32),
            "several_terms",
        ),
    ],
    ids=[
        "toy_pi",
        "toy_lagrangian",
        "toy_auc",
        "toy_balance",
        "digits_dequantized",
        "several_terms",
    ],
)
def test_resume_from_every_batch_is_bitwise_identical(
    nets, make_data, controller, tmp_path: Path
) -> None:
    steps = 8
    L.seed_everything(0, verbose=False)
    reference = fit(
        every_kind_of_state(nets, controller), make_data(), tmp_path, steps, every_batch=True
    )
    expected = full_state(reference)
    assert expected[
        {
            "pi": "weight_controller.deviation",
            "lagrangian": "weight_controller.multiplier",
            "auc": "weight_controller.log_weight",
            "balance": "weight_controller.log_weight",
            "several_terms": "gp.deviation",
        }[controller]
    ].isfinite()
    checkpoints = checkpoints_in_order(tmp_path)
    assert len(checkpoints) == steps * 2  # one per batch (n_critic = 2)

    for path in checkpoints:
        # Another seed: everything must come from the checkpoint.
        L.seed_everything(123, verbose=False)
        resumed = fit(
            every_kind_of_state(nets, controller),
            make_data(),
            tmp_path / "resumed",
            steps,
            ckpt_path=path,
        )
        assert resumed.generator_step == steps
        assert_bitwise_equal(expected, resumed, path.name)


def test_resume_without_the_random_state_differs(tmp_path: Path, monkeypatch) -> None:
    """The control: the bitwise test above can fail (noise and penalty points must come from
    the checkpoint)."""
    steps = 4
    L.seed_everything(0, verbose=False)
    data = lambda: ToyDataModule(batch_size=16, num_train=48, num_val=32)  # noqa: E731
    reference = fit(every_kind_of_state(MLP_NETS), data(), tmp_path, steps, every_batch=True)
    expected = full_state(reference)
    monkeypatch.setattr(random_state, "restore", lambda state: None)
    L.seed_everything(123, verbose=False)
    path = checkpoints_in_order(tmp_path)[2]
    resumed = fit(every_kind_of_state(MLP_NETS), data(), tmp_path / "r", steps, ckpt_path=path)
    with pytest.raises(AssertionError, match="changed"):
        assert_bitwise_equal(expected, resumed, path.name)


# --- through train.py, killed by a signal ------------------------------------------------------

RUN = [
    "generator_steps=120",
    "val_every_generator_steps=20",
    "model.n_critic=2",
    "model.generator.hidden_dim=32",
    "model.critic.hidden_dim=32",
    "model.ema_decay=0.9",
    "model.penalty.every=2",
    "weight_controller=pi",
    "data.num_train=1000",
    "data.batch_size=64",
    "model.num_eval_samples=64",
    "callbacks.toy_plot.num_samples=64",
    "callbacks.toy_plot.grid_size=8",
    "logger=csv",
    "+trainer.enable_progress_bar=false",
]


def start_train(cwd: Path, *overrides: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RUN, *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def last_checkpoints(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)


def wait_for_first_checkpoint(process: subprocess.Popen, cwd: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not last_checkpoints(cwd):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def final_parameters(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted_parameters(tmp_path_factory) -> dict[str, torch.Tensor]:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    code, stderr = finished(start_train(cwd))
    assert code == 0, stderr
    (path,) = last_checkpoints(cwd)
    return final_parameters(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_signal",
    [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
    ids=["SIGTERM", "SIGINT", "SIGKILL"],
)
def test_train_killed_and_resumed_matches_uninterrupted_run(
    kill_signal, uninterrupted_parameters, tmp_path: Path
) -> None:
    expected = uninterrupted_parameters

    cwd = tmp_path / "interrupted"
    process = start_train(cwd)
    wait_for_first_checkpoint(process, cwd)
    process.send_signal(kill_signal)
    code, stderr = finished(process)
    if kill_signal != signal.SIGKILL:
        # Handled: the batch finishes, last.ckpt is written, exit status 128 + signal.
        assert code == 128 + kill_signal, stderr
        (line,) = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
        assert f"{kill_signal.name} at generator step" in line and "ckpt_path=last" in line
        assert "Traceback" not in stderr
        interrupted_at = torch.load(last_checkpoints(cwd)[0], weights_only=True)["lit_gp"]
        assert 0 < interrupted_at["generator_step"] < 120
    else:
        assert code == -signal.SIGKILL

    # The same command plus ckpt_path=last finds the interrupted run and finishes it.
    time.sleep(1.1)  # a new Hydra output directory (named by the second)
    code, stderr = finished(start_train(cwd, "ckpt_path=last"))
    assert code == 0, stderr
    first, resumed_path = last_checkpoints(cwd)
    resumed = final_parameters(resumed_path)
    assert resumed.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not different
    # The interrupted run's own checkpoint is left as it was.
    assert torch.load(first, weights_only=True)["lit_gp"]["generator_step"] < 120


# --- checkpoint files ---------------------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch):
    module = fit(
        every_kind_of_state(MLP_NETS), ToyDataModule(batch_size=16, num_train=48), tmp_path, 2
    )
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": module.state_dict(), "marker": 1}, path)

    def half_then_disk_full(obj, file, *args, **kwargs):
        file.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"state_dict": {}, "marker": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["marker"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["last.ckpt"]


def test_train_config_writes_checkpoints_atomically(compose_config) -> None:
    from lit_gp.config import build

    trainer = build(compose_config().trainer, "trainer")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- ckpt_path=last and the W&B run id ----------------------------------------------------------


def _fake_run(root: Path, name: str, overrides: list[str], mtime: float) -> Path:
    (root / name / ".hydra").mkdir(parents=True)
    (root / name / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {item}\n" for item in overrides)
    )
    last = root / name / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"checkpoint")
    os.utime(last, (mtime, mtime))
    return last


def test_last_is_the_newest_run_with_the_same_overrides(tmp_path: Path) -> None:
    from lit_gp.errors import ConfigError
    from lit_gp.resume import latest_checkpoint

    outputs = tmp_path / "outputs"
    older = _fake_run(outputs, "day/09-00-00", ["model=r1", "seed=1"], 1_000)
    newer = _fake_run(outputs, "day/10-00-00", ["seed=1", "model=r1", "ckpt_path=x"], 2_000)
    _fake_run(outputs, "day/11-00-00", ["model=r1", "seed=2"], 3_000)  # other overrides
    here = tmp_path / "outputs" / "day" / "12-00-00"
    wanted = ["model=r1", "seed=1", "ckpt_path=last"]
    assert latest_checkpoint(here, [outputs], wanted) == newer
    os.utime(older, (4_000, 4_000))
    assert latest_checkpoint(here, [outputs], wanted) == older
    with pytest.raises(ConfigError, match="no earlier run with these overrides"):
        latest_checkpoint(here, [outputs], ["model=r2"])


def test_checkpoints_remember_the_wandb_run_and_resume_it_online(
    compose_config, tmp_path: Path, monkeypatch
) -> None:
    from lit_gp import wandb_utils
    from lit_gp.training import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(compose_config("logger=wandb"))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run_id = run_dir.name.rsplit("-", 1)[1]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert wandb_utils.saved_wandb_run_id(torch.load(last, weights_only=True)) == run_id

    # Online, the logger is built to continue that run.
    built = {}

    class Logger:
        experiment = None

    def fake_build(spec, key, **kwargs):
        built.update(kwargs)
        return Logger()

    monkeypatch.setattr(wandb_utils, "choose_wandb_mode", lambda save_dir: "online")
    monkeypatch.setattr(wandb_utils, "build", fake_build)
    wandb_utils.make_logger(compose_config("logger=wandb").logger, resume_run_id=run_id)
    assert built["id"] == run_id and built["resume"] == "allow"


def test_auto_resumes_when_a_run_exists_and_starts_afresh_otherwise(
    compose_config, tmp_path: Path, monkeypatch
) -> None:
    from hydra.core.hydra_config import HydraConfig

    from lit_gp.resume import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("ckpt_path=auto", output_dir=tmp_path / "outputs" / "day" / "10-00-00")
    # The run roots come from the config (paths.run_roots), under the directory train.py ran in.
    roots = list(cfg.paths.run_roots)
    assert roots == [str(tmp_path / "outputs"), str(tmp_path / "multirun")]
    assert resolve_checkpoint("auto", roots) is None
    overrides = list(HydraConfig.get().overrides.task)
    assert "ckpt_path=auto" in overrides
    earlier = _fake_run(tmp_path / "outputs", "day/09-00-00", overrides, 1_000)
    assert resolve_checkpoint("auto", roots) == str(earlier)
    assert resolve_checkpoint("last", roots) == str(earlier)
    # Runs elsewhere are found when the roots say so.
    elsewhere = _fake_run(tmp_path / "archive", "day/11-00-00", overrides, 2_000)
    assert resolve_checkpoint("last", roots) == str(earlier)
    assert resolve_checkpoint("last", [*roots, tmp_path / "archive"]) == str(elsewhere)


# --- what a checkpoint can resume ---------------------------------------------------------------

CLASSIFIER = ["model=gp_classifier", "data=digits", "trainer.max_epochs=1"]
GAN_MODULE = "lit_gp.gan.GANModule"
CLASSIFIER_MODULE = "lit_gp.classifier.GradientPenaltyClassifier"


def _without_module_entry(path: Path, to: Path) -> Path:
    """The checkpoint as written before lit_gp checkpoints named their module."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["lit_gp"].pop("module", None)
    torch.save(checkpoint, to)
    return to


def test_a_checkpoint_of_the_other_module_is_refused_naming_its_writer(
    compose_config, tmp_path: Path
) -> None:
    from conftest import QUIET

    from lit_gp.errors import ConfigError
    from lit_gp.training import train

    train(compose_config("generator_steps=1", output_dir=tmp_path / "gan"))
    train(compose_config(*CLASSIFIER, output_dir=tmp_path / "classifier", fast=QUIET))
    gan = tmp_path / "gan" / "checkpoints" / "last.ckpt"
    classifier = tmp_path / "classifier" / "checkpoints" / "last.ckpt"
    legacy_gan = _without_module_entry(gan, tmp_path / "legacy_gan.ckpt")
    legacy_classifier = _without_module_entry(classifier, tmp_path / "legacy_classifier.ckpt")
    for path, writer in ((classifier, CLASSIFIER_MODULE), (legacy_classifier, CLASSIFIER_MODULE)):
        with pytest.raises(ConfigError) as error:
            train(compose_config("generator_steps=1", f"ckpt_path={path}"))
        assert error.value.key == "ckpt_path"
        assert f"written by a {writer}, this run trains a {GAN_MODULE}" in error.value.message
    for path in (gan, legacy_gan):
        with pytest.raises(ConfigError) as error:
            train(compose_config(*CLASSIFIER, f"ckpt_path={path}", fast=QUIET))
        assert error.value.key == "ckpt_path"
        message = f"written by a {GAN_MODULE}, this run trains a {CLASSIFIER_MODULE}"
        assert message in error.value.message
    # Each resumes its own kind (the classifier to a second epoch).
    train(
        compose_config(
            *CLASSIFIER[:2],
            "trainer.max_epochs=2",
            f"ckpt_path={classifier}",
            output_dir=tmp_path / "classifier2",
            fast=QUIET,
        )
    )
    resumed = torch.load(tmp_path / "classifier2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2  # epochs done: one before the resume, one after


CONTROLLER_CLASSES = {
    "fixed": "none",
    "pi": "lit_gp.penalty_weights.ProportionalIntegral",
    "lagrangian": "lit_gp.penalty_weights.AugmentedLagrangian",
}


@pytest.mark.parametrize(
    ("first", "second"), [("pi", "lagrangian"), ("fixed", "pi"), ("lagrangian", "fixed")]
)
def test_switching_the_weight_controller_on_resume_is_refused(
    first: str, second: str, compose_config, tmp_path: Path
) -> None:
    from lit_gp.errors import ConfigError
    from lit_gp.training import train

    train(compose_config("generator_steps=1", f"weight_controller={first}", output_dir=tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as error:
        train(
            compose_config(
                "generator_steps=1",
                f"weight_controller={second}",
                f"ckpt_path={last}",
                output_dir=tmp_path / "resumed",
            )
        )
    assert error.value.key == "ckpt_path"
    assert "other model.weight_controller._target_" in error.value.message
    assert f"({CONTROLLER_CLASSES[first]} there, {CONTROLLER_CLASSES[second]} here)" in (
        error.value.message
    )
    assert not (tmp_path / "resumed" / "checkpoints").exists()


def test_the_same_weight_controller_with_other_gains_resumes(compose_config, tmp_path: Path):
    from lit_gp.training import train

    train(compose_config("generator_steps=2", "weight_controller=pi", output_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    train(
        compose_config(
            "generator_steps=2",
            "weight_controller=pi",
            "model.weight_controller.kp=0.5",
            f"ckpt_path={last}",
            output_dir=tmp_path / "b",
        )
    )
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
