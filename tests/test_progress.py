"""GeneratorStepProgressBar: one bar over the run's generator steps, with integer steps and an
ETA, through real fits of a tiny GAN."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest

from lit_gp import GANModule
from lit_gp.callbacks import GeneratorStepLimit, GeneratorStepProgressBar
from lit_gp.callbacks.progress import format_value
from lit_gp.data import ToyDataModule
from lit_gp.errors import ConfigError

NETS = {
    "generator": {"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 16},
    "critic": {"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 16},
}
GENERATOR_STEPS = 7
N_CRITIC = 3


def _module() -> GANModule:
    return GANModule(
        **NETS,
        penalty={"_target_": "lit_gp.penalties.wgan_gp", "weight": 10},
        n_critic=N_CRITIC,
        num_eval_samples=256,
    )


def _data() -> ToyDataModule:
    # 5 batches of 32 per epoch: a run crosses several epochs, which must not reset the bar.
    return ToyDataModule(batch_size=32, num_train=160, num_val=64)


def _fit(tmp_path: Path, bar: GeneratorStepProgressBar, steps: int = GENERATOR_STEPS) -> L.Trainer:
    module = _module()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        # Validation at generator step 3 and 6: the bar then shows the toy figures.
        val_check_interval=3 * N_CRITIC,
        callbacks=[GeneratorStepLimit(steps), bar],
    )
    trainer.fit(module, datamodule=_data())
    return trainer


def test_counts_generator_steps_of_the_run_across_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bar = GeneratorStepProgressBar(total_generator_steps=GENERATOR_STEPS)
    trainer = _fit(tmp_path, bar)
    assert trainer.current_epoch > 1  # 21 critic batches of 5 per epoch
    train_bar = bar.train_progress_bar
    assert train_bar.total == GENERATOR_STEPS
    assert train_bar.n == GENERATOR_STEPS
    assert train_bar.desc.startswith("generator step")

    # The postfix holds the validation's figures, integers without a decimal point.
    postfix = train_bar.postfix
    assert "modes_covered=" in postfix and "high_quality_fraction=" in postfix
    assert not re.search(r"=\d+\.0+(,|$)", postfix), postfix
    assert "generator_step" not in postfix and "v_num" not in postfix

    # What the terminal saw: steps out of the total and the time left ([elapsed<remaining, ...]).
    shown = capsys.readouterr().out.replace("\r", "\n")
    assert f"{GENERATOR_STEPS}/{GENERATOR_STEPS} [" in shown
    assert re.search(rf"\d+/{GENERATOR_STEPS} \[\d\d:\d\d<\d\d:\d\d", shown)
    assert "step/s" in shown
    assert not re.search(r"generator_step=\d+\.0", shown)


def test_total_comes_from_the_generator_step_limit_without_a_configured_one(
    tmp_path: Path,
) -> None:
    bar = GeneratorStepProgressBar()
    _fit(tmp_path, bar, steps=4)
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (4, 4)


def test_a_sparse_refresh_rate_still_ends_on_the_last_step(tmp_path: Path) -> None:
    bar = GeneratorStepProgressBar(total_generator_steps=GENERATOR_STEPS, refresh_rate=5)
    _fit(tmp_path, bar)
    assert bar.train_progress_bar.n == GENERATOR_STEPS


def test_a_resumed_run_starts_the_bar_at_its_generator_step(tmp_path: Path) -> None:
    first = GeneratorStepProgressBar(total_generator_steps=6)
    trainer = _fit(tmp_path, first, steps=3)
    checkpoint = tmp_path / "three.ckpt"
    trainer.save_checkpoint(checkpoint)

    bar = GeneratorStepProgressBar(total_generator_steps=6)
    module = _module()
    resumed = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[GeneratorStepLimit(6), bar],
    )
    resumed.fit(module, datamodule=_data(), ckpt_path=checkpoint)
    # tqdm's rate (and ETA) counts from `initial`: the steps of this session.
    assert bar.train_progress_bar.initial == 3
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (6, 6)


def test_values_are_formatted_for_people() -> None:
    import torch

    assert format_value(torch.tensor(8.0)) == "8"
    assert format_value(158.0) == "158"
    assert format_value(0.92444) == "0.924"
    assert format_value(float("nan")) == "nan"
    assert format_value("abc") == "abc"


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="total_generator_steps"):
        GeneratorStepProgressBar(total_generator_steps=0)
    with pytest.raises(ConfigError, match="refresh_rate"):
        GeneratorStepProgressBar(refresh_rate=-1)


def test_train_py_runs_show_it_and_enable_progress_bar_false_removes_it(compose_config) -> None:
    from lit_gp.training import build_callbacks

    cfg = compose_config("generator_steps=40")
    assert cfg.callbacks.progress_bar.total_generator_steps == 40
    (bar,) = [
        callback
        for callback in build_callbacks(cfg.callbacks)
        if isinstance(callback, GeneratorStepProgressBar)
    ]
    assert bar.total_generator_steps == 40
    # debug=fast (the tests' runs) sets trainer.enable_progress_bar=false: no bar, so Lightning
    # does not refuse the combination.
    assert cfg.trainer.enable_progress_bar is False
    built = build_callbacks(cfg.callbacks, cfg.trainer.enable_progress_bar)
    assert not any(isinstance(callback, GeneratorStepProgressBar) for callback in built)
