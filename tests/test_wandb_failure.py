"""W&B failing mid-run: training goes on, nothing logged is lost (the .wandb file before the
failure, a CSV after it)."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
from wandb_records import find_offline_runs, read_run

from lit_gp.training import train


def wandb_service_pids() -> list[int]:
    """This process's wandb-core children (from /proc: no psutil needed)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and "wandb" in name:
            pids.append(int(stat.parent.name))
    return pids


class KillWandbService(L.Callback):
    """SIGKILL wandb's service process after the given generator step (as the OOM killer
    would)."""

    def __init__(self, after_generator_step: int) -> None:
        self.after_generator_step = after_generator_step
        self.killed: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self.killed or pl_module.generator_step != self.after_generator_step:
            return
        self.killed = wandb_service_pids()
        assert self.killed, "no wandb service process to kill"
        for pid in self.killed:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_training_survives_a_dead_wandb_service(compose_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        "logger=wandb",
        "generator_steps=6",
        "val_every_generator_steps=2",
        "trainer.log_every_n_steps=1",
        "+callbacks.kill_wandb._target_=test_wandb_failure.KillWandbService",
        "+callbacks.kill_wandb.after_generator_step=3",
    )
    train(cfg)
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("W&B: logging failed")]
    assert "training goes on" in line

    # Trained to the end.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "val/wasserstein_estimate" in metrics
    # The .wandb file has what the service wrote before it died (possibly nothing: it buffers).
    (run_dir,) = find_offline_runs(tmp_path)
    in_wandb_file = read_run(run_dir).rows_with("train/critic_loss")
    assert all(row["train/generator_step"] <= 3 for row in in_wandb_file)
    # The fallback CSV has every row, from the first generator step to the last.
    with open(tmp_path / "wandb_fallback" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    steps = set(float(row["train/generator_step"]) for row in rows if row.get("train/critic_loss"))
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert any(row.get("val/wasserstein_estimate") for row in rows)
