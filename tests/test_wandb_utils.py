"""W&B helpers, checked against real offline runs read back from their .wandb files."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import wandb
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from wandb.sdk import wandb_setup
from wandb_records import find_offline_runs, read_run

from lit_gp.wandb_utils import choose_wandb_mode, define_generator_step_axis, finish_wandb


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline, silent W&B confined to tmp_path; every run finished afterwards."""
    # Set through monkeypatch so the WANDB_MODE that WandbLogger(offline=True) writes into
    # os.environ is rolled back too instead of leaking into later tests.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield tmp_path
    finish_wandb()


def _logger(save_dir: Path) -> WandbLogger:
    return WandbLogger(save_dir=str(save_dir), offline=True, project="lit_gp_test")


def test_logged_metrics_and_hyperparams_read_back(offline_wandb: Path) -> None:
    logger = _logger(offline_wandb)
    long_text = "x" * 80_000  # spans three 32 KiB blocks: FIRST/MIDDLE/LAST records
    logger.log_hyperparams(
        {"lr": 1e-4, "n_critic": 5, "penalty": {"weight": 10.0}, "notes": long_text}
    )
    define_generator_step_axis(logger)
    logger.log_metrics({"train/critic_loss": 1.5, "train/generator_step": 3}, step=10)
    logger.log_metrics({"val/w1": 0.25}, step=12)
    finish_wandb()

    (run_dir,) = find_offline_runs(offline_wandb)
    run = read_run(run_dir)
    assert run.exit_code == 0
    assert run.project == "lit_gp_test"
    assert run.config == {
        "lr": 1e-4,
        "n_critic": 5,
        "penalty": {"weight": 10.0},
        "notes": long_text,
    }

    (train_row,) = run.rows_with("train/critic_loss")
    assert train_row["train/critic_loss"] == 1.5
    assert train_row["train/generator_step"] == 3
    assert train_row["trainer/global_step"] == 10
    # step_sync put the last generator step on the val row, which did not log it
    (val_row,) = run.rows_with("val/w1")
    assert val_row["val/w1"] == 0.25
    assert val_row["train/generator_step"] == 3
    assert run.summary["train/critic_loss"] == 1.5

    step_metrics = {m["glob_name"]: m["step_metric"] for m in run.metrics if m["glob_name"]}
    for pattern in ("train/*", "val/*", "*"):
        assert step_metrics[pattern] == "train/generator_step"


def test_finish_wandb_separates_consecutive_runs(offline_wandb: Path) -> None:
    first = _logger(offline_wandb)
    first.log_metrics({"train/critic_loss": 1.0}, step=0)
    first_id = first.experiment.id
    finish_wandb()
    assert wandb.run is None
    finish_wandb()  # nothing open: a no-op

    second = _logger(offline_wandb)
    second.log_metrics({"train/critic_loss": 2.0}, step=0)
    assert second.experiment.id != first_id
    finish_wandb()

    runs = [read_run(path) for path in find_offline_runs(offline_wandb)]
    assert sorted(run.run_id for run in runs) == sorted([first_id, second.experiment.id])
    for run in runs:
        assert len(run.rows_with("train/critic_loss")) == 1


def test_define_generator_step_axis_ignores_other_loggers(tmp_path: Path) -> None:
    define_generator_step_axis(CSVLogger(str(tmp_path)))
    define_generator_step_axis(None)


@pytest.fixture
def no_wandb_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_choose_wandb_mode_offline_without_login(
    no_wandb_login: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_dir = no_wandb_login / "logs"
    assert choose_wandb_mode(str(save_dir)) == "offline"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert "wandb sync" in lines[0]
    assert f"{save_dir}/wandb/offline-run-*" in lines[0]


def test_choose_wandb_mode_online_with_key(
    no_wandb_login: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    assert choose_wandb_mode(str(no_wandb_login)) == "online"
    assert capsys.readouterr().out == ""


def test_choose_wandb_mode_online_with_netrc(no_wandb_login: Path) -> None:
    host = urlsplit(wandb_setup.singleton().settings.base_url).netloc
    netrc = Path.home() / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'b' * 40}\n")
    netrc.chmod(0o600)
    assert choose_wandb_mode(str(no_wandb_login)) == "online"


@pytest.mark.parametrize("mode", ["disabled", "offline", "online"])
def test_choose_wandb_mode_respects_env(
    no_wandb_login: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("WANDB_MODE", mode)
    assert choose_wandb_mode(str(no_wandb_login)) == mode


def test_a_failed_block_marks_its_run_failed_with_the_line_in_its_summary(
    offline_wandb: Path,
) -> None:
    from lit_gp.errors import NonFiniteError
    from lit_gp.jobs import describe_failure
    from lit_gp.wandb_utils import wandb_run_closed

    with pytest.raises(NonFiniteError), wandb_run_closed(describe_failure):
        _logger(offline_wandb).log_metrics({"train/critic_loss": 1.0}, step=0)
        raise NonFiniteError("non-finite penalty in the critic update at generator step 4")
    assert wandb.run is None
    with wandb_run_closed(describe_failure):
        _logger(offline_wandb).log_metrics({"train/critic_loss": 2.0}, step=0)
    assert wandb.run is None

    runs = sorted(
        (read_run(path) for path in find_offline_runs(offline_wandb)),
        key=lambda run: run.exit_code,
    )
    assert [run.exit_code for run in runs] == [0, 3]
    assert "error" not in runs[0].summary
    assert runs[1].summary["error"] == (
        "error: non-finite penalty in the critic update at generator step 4"
    )
