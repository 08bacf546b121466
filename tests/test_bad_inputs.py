"""The catalogue of bad inputs, through the real entry point: each gets one clear line (naming
the key), a non-zero exit, no traceback, and nothing written over.

All cases run once, two at a time, in a module fixture; each parametrized test checks its own.
They run train.py through tests/cli_runner.py (one start-up, a forked process per case).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_runner import run_many
from conftest import ROOT
from image_fixtures import write_image_folder
from test_gan import make_trainer

from lit_gp import GANModule
from lit_gp.data import ToyDataModule

QUICK = ["logger=none", "generator_steps=2", "+trainer.enable_progress_bar=false"]


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    # Text the one "error:" line must hold (the key first); None: Hydra's own message.
    expected: str
    exit_code: int = 2
    hydra_message: bool = False


def _inputs(root: Path) -> dict[str, Path]:
    """Files and folders the cases point at (written in the real formats)."""
    root.mkdir(parents=True)
    paths = {name: root / name for name in ("empty", "no_mnist", "no_cifar", "a_file")}
    for name in ("empty", "no_mnist", "no_cifar"):
        paths[name].mkdir()
    paths["a_file"].write_text("not a folder")
    broken = root / "broken_images"
    write_image_folder(broken, n=3)
    (broken / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths["broken_images"] = broken

    # A real GAN checkpoint, written with other nets than the default config's.
    module = GANModule(
        generator={"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 8},
        critic={"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 8},
    )
    trainer = make_trainer(root, generator_steps=1)
    trainer.fit(module, datamodule=ToyDataModule(batch_size=16, num_train=64, num_val=16))
    paths["other_nets"] = root / "other_nets.ckpt"
    trainer.save_checkpoint(paths["other_nets"])
    data = paths["other_nets"].read_bytes()
    paths["truncated"] = root / "truncated.ckpt"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["not_lit_gp"] = root / "classifier.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, paths["not_lit_gp"])
    return paths


def _cases(paths: dict[str, Path]) -> list[Case]:
    return [
        # Unknown group options: Hydra lists the allowed ones.
        Case("unknown model", ("model=wgan_gpp",), "Could not find 'model/wgan_gpp'", 1, True),
        Case("unknown data", ("data=imagenet",), "Could not find 'data/imagenet'", 1, True),
        # Types and ranges of numeric keys.
        Case("negative weight", ("model.penalty.weight=-1",), "model.penalty.weight"),
        Case("weight not a number", ("model.penalty.weight=abc",), "model.penalty.weight"),
        Case("n_critic zero", ("model.n_critic=0",), "model.n_critic"),
        Case("n_critic fraction", ("model.n_critic=2.5",), "model.n_critic"),
        Case("batch size zero", ("data.batch_size=0",), "data.batch_size"),
        Case("negative steps", ("generator_steps=-5",), "generator_steps"),
        Case("seed not a number", ("seed=abc",), "seed"),
        Case("num_threads zero", ("num_threads=0",), "num_threads"),
        Case("validation every 0", ("val_every_generator_steps=0",), "val_every_generator_steps"),
        Case("negative learning rate", ("model.critic_optimizer.lr=-1",), "model.critic_optimizer"),
        Case("ema decay 1.5", ("model.ema_decay=1.5",), "model.ema_decay"),
        Case(
            "controller bound",
            ("weight_controller=pi", "model.weight_controller.max_weight=-1"),
            "model.weight_controller.max_weight",
        ),
        Case("unknown loss", ("model.loss=squared",), "model.loss"),
        Case("fp16 without scaler", ("trainer.precision=16-true",), "trainer.precision"),
        Case(
            "unknown guard action",
            ("callbacks.nonfinite_guard.action=ignore",),
            "callbacks.nonfinite_guard.action",
        ),
        # Data that does not fit the nets.
        Case("image size", ("data=digits", "image_shape=[1,28,28]"), "model.generator"),
        Case("channel count", ("data=digits", "image_shape=[3,8,8]"), "model.generator"),
        Case("toy nets on images", ("data=digits", "nets=mlp"), "model.generator"),
        # Bad data.
        Case(
            "NaN in data",
            ("data._target_=bad_data.ToyWithNaN",),
            "data: training batch 0 of epoch 0 holds NaN",
            3,
        ),
        Case(
            "empty image folder", ("data=image_folder", f"data.root={paths['empty']}"), "data.root"
        ),
        Case(
            "unreadable image",
            (
                "data=image_folder",
                f"data.root={paths['broken_images']}",
                "image_shape=[3,8,8]",
                "data.batch_size=2",
                "callbacks.image_metrics=null",
            ),
            "data.root",
        ),
        Case(
            "MNIST missing offline", ("data=mnist", f"data.root={paths['no_mnist']}"), "data.root"
        ),
        Case(
            "CIFAR-10 missing offline",
            ("data=cifar10", f"data.root={paths['no_cifar']}"),
            "data.root",
        ),
        # Checkpoints.
        Case("checkpoint missing", ("ckpt_path=/nonexistent/last.ckpt",), "ckpt_path"),
        Case("checkpoint truncated", (f"ckpt_path={paths['truncated']}",), "ckpt_path"),
        Case("checkpoint of another model", (f"ckpt_path={paths['not_lit_gp']}",), "ckpt_path"),
        Case("checkpoint of other nets", (f"ckpt_path={paths['other_nets']}",), "ckpt_path"),
        Case("no run to resume", ("ckpt_path=last",), "ckpt_path: last"),
        # Output folder.
        Case("output under a file", (f"hydra.run.dir={paths['a_file']}/run",), "hydra.run.dir"),
    ]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> dict[str, tuple[Case, subprocess.CompletedProcess, Path]]:
    root = tmp_path_factory.mktemp("bad_inputs")
    paths = _inputs(root / "inputs")
    before = {path: _digest(path) for path in (root / "inputs").rglob("*") if path.is_file()}
    cases = _cases(paths)
    folders = [root / f"case{index}" for index in range(len(cases))]
    for folder in folders:
        folder.mkdir()
    env = {
        "PYTHONWARNINGS": "ignore",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    results = run_many(
        [([*QUICK, *case.overrides], folder) for case, folder in zip(cases, folders, strict=True)],
        env=env,
    )
    # Nothing the cases pointed at was changed.
    after = {path: _digest(path) for path in before}
    assert after == before
    return {
        case.name: (case, result, folder)
        for case, result, folder in zip(cases, results, folders, strict=True)
    }


CASE_NAMES = [
    case.name
    for case in _cases(
        {
            key: Path(key)
            for key in (
                "empty",
                "no_mnist",
                "no_cifar",
                "a_file",
                "broken_images",
                "other_nets",
                "truncated",
                "not_lit_gp",
            )
        }
    )
]


def test_the_catalogue_has_at_least_20_cases() -> None:
    assert len(CASE_NAMES) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gets_one_clear_line(name: str, catalogue) -> None:
    case, result, cwd = catalogue[name]
    output = result.stdout + result.stderr
    assert result.returncode == case.exit_code, output
    assert "Traceback" not in output, output
    if case.hydra_message:
        assert case.expected in output
        assert "Available options" in output
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output
        assert errors[0].startswith(f"error: {case.expected}") or case.expected in errors[0], (
            errors[0]
        )
    # No checkpoint was written (none of these runs got to train).
    assert not list(cwd.rglob("*.ckpt"))
