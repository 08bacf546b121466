"""W&B rows agree on their steps: image rows and metric rows of one generator step carry the same
generator step and the same ``trainer/global_step``, read back from an offline run."""

from __future__ import annotations

from pathlib import Path

import pytest
from wandb_records import find_offline_runs, read_run

from lit_gp.training import train
from lit_gp.wandb_utils import GENERATOR_STEP_KEY

N_CRITIC = 3
IMAGE_KEY = "val/samples"


@pytest.mark.slow
def test_image_and_metric_rows_share_generator_step_and_lightning_step(
    compose_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # 3 generator steps of 3 critic steps; validation and the toy figure at generator step 2
    # (drawn in on_train_batch_end) and at the end, step 3 (drawn in on_train_end); training
    # rows at every generator step.
    cfg = compose_config(
        "logger=wandb",
        f"model.n_critic={N_CRITIC}",
        "generator_steps=3",
        "val_every_generator_steps=2",
        f"trainer.log_every_n_steps={N_CRITIC}",
    )
    train(cfg)
    (run_dir,) = find_offline_runs(tmp_path)
    run = read_run(run_dir)
    assert run.exit_code == 0

    # Every row is on the generator-step axis, and W&B plots every key against it.
    assert all(GENERATOR_STEP_KEY in row for row in run.history), run.history
    axes = {metric["glob_name"]: metric["step_metric"] for metric in run.metrics}
    assert axes["*"] == axes["val/*"] == axes["train/*"] == GENERATOR_STEP_KEY

    image_rows = run.rows_with(IMAGE_KEY)
    metric_rows = [row for row in run.history if IMAGE_KEY not in row]
    assert [row[GENERATOR_STEP_KEY] for row in image_rows] == [2, 3]
    for row in image_rows:
        step = row[GENERATOR_STEP_KEY]
        # The right generator step: the one the picture was drawn at.
        assert row[IMAGE_KEY]["captions"] == [f"generator step {step}"]
        same_step = [other for other in metric_rows if other[GENERATOR_STEP_KEY] == step]
        assert any("train/critic_loss" in other for other in same_step)
        assert any("val/wasserstein_estimate" in other for other in same_step)
        # Metric rows carry Lightning's batch count: generator step g ends at batch
        # N_CRITIC * g - 1 (0-based), not at optimizer step (N_CRITIC + 1) * g.
        lightning_steps = {other["trainer/global_step"] for other in same_step}
        assert lightning_steps == {N_CRITIC * step - 1}, same_step
        if "trainer/global_step" in row:
            assert row["trainer/global_step"] == N_CRITIC * step - 1, (row, same_step)
