"""The short summary every train() run ends with: quality figures, length and wall time, and where
the pictures, the checkpoint, the metrics and the W&B run are."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from lit_gp.training import format_number, quality_figures, train


def _summary(caplog: pytest.LogCaptureFixture) -> str:
    (text,) = [
        record.getMessage()
        for record in caplog.records
        if record.name == "lit_gp.training" and record.getMessage().startswith("run finished")
    ]
    return text


def _line(text: str, label: str) -> str:
    (line,) = [line for line in text.splitlines() if line.strip().startswith(label)]
    return line.strip().removeprefix(label).strip()


def _figures(text: str) -> dict[str, float]:
    return {key: float(value.replace(",", "")) for key, value in re.findall(r"(\S+)=(\S+)", text)}


def test_a_run_ends_with_a_summary_naming_its_files_and_figures(
    compose_config, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # paths are shown relative to the working directory
    run_dir = tmp_path / "run"
    cfg = compose_config(output_dir=run_dir)
    # Lightning's console logger does not propagate to the root logger, where caplog listens.
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            train(cfg)
    finally:
        lightning_logger.removeHandler(caplog.handler)
    text = _summary(caplog)
    assert text.splitlines()[0].startswith("run finished: 3 generator steps in ")
    assert len(text.splitlines()) <= 7  # short

    # The quality figures are the final metrics', those of metrics.json.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures = _figures(_line(text, "quality"))
    assert set(figures) == {"val/modes_covered", "val/high_quality_fraction"}
    for key, value in figures.items():
        assert value == pytest.approx(metrics[key], rel=1e-3, abs=1e-12)

    checkpoint = Path(_line(text, "checkpoint"))
    assert not checkpoint.is_absolute()
    assert checkpoint.resolve() == (run_dir / "checkpoints" / "last.ckpt").resolve()
    assert checkpoint.is_file()
    pictures = _line(text, "pictures")
    folder, latest = re.fullmatch(r"(\S+)/ \(latest: (\S+)\)", pictures).groups()
    assert Path(folder).resolve() == (run_dir / "samples").resolve()
    assert latest == "step_000003.png" and (Path(folder) / latest).is_file()
    assert Path(_line(text, "metrics")).resolve() == (run_dir / "metrics.json").resolve()
    assert "W&B off" in text  # debug=fast: logger=none

    # It replaced the long line of every metric; metrics.json keeps them all (and the run's
    # length under generator_step, as before).
    assert not any(r.getMessage().startswith("finished:") for r in caplog.records)
    assert metrics["generator_step"] == metrics["train/generator_step"] == 3
    assert "train/critic_loss" in metrics
    # Lightning's advertisement is gone; its other lines stay.
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("GPU available") for message in messages)
    assert not any("💡" in message or "litlogger" in message for message in messages)


def test_an_offline_wandb_run_is_named_with_its_sync_command(
    compose_config, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        train(compose_config("logger=wandb", "callbacks.toy_plot=null"))
    text = _summary(caplog)
    wandb_line = _line(text, "W&B")
    folder, command = re.fullmatch(
        r"offline run (\S+); upload it with: (wandb sync \S+)", wandb_line
    ).groups()
    assert Path(folder).is_dir() and Path(folder).name.startswith("offline-run-")
    assert list(Path(folder).glob("run-*.wandb"))
    assert command == f"wandb sync {folder}"
    # No toy figure: no pictures line.
    assert "pictures" not in text


def test_a_csv_logger_names_its_file(
    compose_config, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        train(compose_config("logger=csv"))
    path = Path(_line(_summary(caplog), "W&B off").removeprefix("metrics CSV").strip())
    assert path.name == "metrics.csv" and path.is_file()


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (  # toy mixtures
            {
                "val/high_quality_fraction": 0.9,
                "val/modes_covered": 8.0,
                "val/wasserstein_estimate": 0.1,
                "train/critic_loss": 1.0,
            },
            ["val/modes_covered", "val/high_quality_fraction"],
        ),
        (  # stacked digits
            {"val/mode_kl": 0.2, "val/modes_covered": 990.0, "val/mode_confidence": 0.8},
            ["val/modes_covered", "val/mode_kl"],
        ),
        (  # image data
            {
                "val/kid_digits_classifier": 0.01,
                "val/fid_digits_classifier": 12.0,
                "val/min_class_fraction": 0.08,
            },
            ["val/fid_digits_classifier", "val/kid_digits_classifier"],
        ),
        (  # the classifier's test
            {"test/accuracy_fgsm": 0.5, "test/accuracy": 0.97, "val/accuracy": 0.96},
            ["test/accuracy", "test/accuracy_fgsm"],
        ),
        # nothing curated: the critic's estimate
        ({"val/wasserstein_estimate": 0.3, "train/penalty": 0.1}, ["val/wasserstein_estimate"]),
        ({"train/penalty": 0.1}, []),
    ],
    ids=["toy", "stacked", "images", "classifier", "fallback", "none"],
)
def test_quality_figures_are_a_short_curated_list(metrics, expected) -> None:
    assert list(quality_figures(metrics)) == expected


def test_numbers_are_formatted_for_people() -> None:
    assert format_number(8.0) == "8"
    assert format_number(3000.0) == "3,000"
    assert format_number(0.923999) == "0.924"
    assert format_number(12.345678) == "12.35"
