"""ToyPlot with a real Trainer, a fake GAN module and a tiny 2-D datamodule."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from wandb_records import find_offline_runs, read_run

from lit_gp.callbacks import ToyPlot, toy_plot
from lit_gp.errors import ConfigError
from lit_gp.wandb_utils import finish_wandb

N_CRITIC = 2  # the fake module takes a generator step every N_CRITIC batches


class FakeGAN(pl.LightningModule):
    """Only what ToyPlot relies on: critic, sample(n), generator_step."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.critic = nn.Linear(dim, 1)
        self.generator_step = 0
        self.critic_modes_seen_in_training: set[bool] = set()

    def sample(self, n: int) -> Tensor:
        with torch.no_grad():
            return torch.randn(n, self.critic.in_features, device=self.device)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        self.critic_modes_seen_in_training.add(self.critic.training)
        if (batch_idx + 1) % N_CRITIC == 0:
            self.generator_step += 1
        return self.critic(batch[0]).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class PointsData(pl.LightningDataModule):
    def __init__(self, dim: int = 2, with_reference: bool = True) -> None:
        super().__init__()
        self.points = torch.randn(64, dim) * 2
        if not with_reference:
            self.reference_samples = None  # type: ignore[assignment]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.points), batch_size=4)

    def reference_samples(self, n: int) -> Tensor:
        return self.points[torch.randint(len(self.points), (n,))]


def _fit(
    tmp_path: Path, max_steps: int, callback: ToyPlot, data: PointsData | None = None, **kw
) -> FakeGAN:
    data = data or PointsData()
    module = FakeGAN(dim=data.points.shape[1])
    trainer = pl.Trainer(
        max_steps=max_steps,
        callbacks=[callback],
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=kw.pop("logger", False),
        **kw,
    )
    trainer.fit(module, datamodule=data)
    return module


def _pngs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "samples").glob("*.png"))


def test_draws_every_n_generator_steps_and_at_the_end(tmp_path: Path) -> None:
    # 10 batches -> generator steps 1..5; every 2 -> steps 2 and 4, then 5 at the end.
    module = _fit(tmp_path, 10, ToyPlot(every_n_generator_steps=2, num_samples=50, grid_size=16))
    assert module.generator_step == 5
    assert _pngs(tmp_path) == ["step_000002.png", "step_000004.png", "step_000005.png"]
    for name in _pngs(tmp_path):
        with Image.open(tmp_path / "samples" / name) as image:
            image.verify()
        with Image.open(tmp_path / "samples" / name) as image:
            assert image.format == "PNG"
            assert image.width > 0 and image.height > 0
    # the callback put the critic back in training mode after each drawing
    assert module.critic_modes_seen_in_training == {True}
    assert module.critic.training


def test_final_step_already_drawn_is_not_redrawn(tmp_path: Path) -> None:
    _fit(tmp_path, 8, ToyPlot(every_n_generator_steps=2, num_samples=20, grid_size=8))
    assert _pngs(tmp_path) == ["step_000002.png", "step_000004.png"]


def test_plotting_does_not_change_training(tmp_path: Path) -> None:
    def trained_weight(callbacks: list[ToyPlot]) -> Tensor:
        torch.manual_seed(0)
        module = FakeGAN()
        data = PointsData()
        trainer = pl.Trainer(
            max_steps=6,
            callbacks=callbacks,
            default_root_dir=str(tmp_path),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=data)
        return module.critic.weight.detach().clone()

    plain = trained_weight([])
    plotted = trained_weight([ToyPlot(every_n_generator_steps=1, num_samples=20, grid_size=8)])
    assert torch.equal(plain, plotted)


@pytest.mark.parametrize(
    "data", [PointsData(dim=3), PointsData(with_reference=False)], ids=["3d", "no_reference"]
)
def test_does_nothing_without_2d_reference_samples(tmp_path: Path, data: PointsData) -> None:
    _fit(tmp_path, 4, ToyPlot(every_n_generator_steps=1, num_samples=20, grid_size=8), data)
    assert not (tmp_path / "samples").exists()


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="every_n_generator_steps"):
        ToyPlot(every_n_generator_steps=0)
    with pytest.raises(ConfigError, match="grid_size"):
        ToyPlot(grid_size=1)


def test_logs_image_to_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # rolls back what offline=True sets
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lit_gp_test")
    try:
        _fit(
            tmp_path,
            8,
            ToyPlot(every_n_generator_steps=2, num_samples=20, grid_size=8),
            logger=logger,
            log_every_n_steps=1,
        )
    finally:
        finish_wandb()

    (run_dir,) = find_offline_runs(tmp_path)
    rows = read_run(run_dir).rows_with("val/samples")
    assert [row["train/generator_step"] for row in rows] == [2, 4]
    # Lightning's batch count, as on the metric rows (n_critic 2: batch 2g - 1 at generator step
    # g), not trainer.global_step (optimizer steps: 3 per generator step).
    assert [row["trainer/global_step"] for row in rows] == [3, 7]
    image = rows[0]["val/samples"]
    assert image["_type"] == "images/separated"
    assert image["count"] == 1
    assert image["captions"] == ["generator step 2"]
    # the PNG itself was written into the run directory under the logged name
    assert (run_dir / "files" / image["filenames"][0]).stat().st_size > 0


def test_gradient_norm_field_of_a_linear_critic_is_its_weight_norm(tmp_path: Path) -> None:
    # The figure's second panel: ||grad D|| over the plotted grid. For D(x) = w.x + b it is ||w||
    # everywhere; the critic is left in training mode and gets no parameter gradient.
    module = FakeGAN()
    data = PointsData()
    trainer = pl.Trainer(default_root_dir=str(tmp_path), logger=False)
    trainer.datamodule = data  # what _evaluate reads
    plot = ToyPlot(num_samples=20, grid_size=8)
    xx, yy, zz, gg, real, fake = plot._evaluate(trainer, module)
    assert gg.shape == xx.shape == zz.shape == (8, 8)
    expected = float(torch.linalg.vector_norm(module.critic.weight.detach()))
    assert np.allclose(gg, expected, rtol=1e-6)
    assert module.critic.training
    assert all(parameter.grad is None for parameter in module.critic.parameters())
    image = toy_plot._render(xx, yy, zz, gg, real, fake, step=3)
    assert image.width >= 1.8 * image.height  # two panels side by side


@pytest.mark.parametrize(("scale", "marked"), [(1.0, True), (0.1, False)])
def test_the_norm_one_contour_is_marked_where_the_field_crosses_it(
    scale: float, marked: bool
) -> None:
    # ||grad D|| of D(x) = scale * ||x||^2 / 2 is scale * ||x||: it crosses 1 inside the plotted
    # square [-2, 2]^2 for scale 1, nowhere for scale 0.1.
    xs = np.linspace(-2, 2, 41)
    xx, yy = np.meshgrid(xs, xs)
    gg = scale * np.hypot(xx, yy)
    fig = Figure()
    ax = fig.add_subplot()
    toy_plot._draw_gradient_norms(fig, ax, xx, yy, gg, np.zeros((3, 2)))
    assert ("red: = 1" in ax.get_title()) is marked
    levels = [list(getattr(c, "levels", [])) for c in ax.collections]
    assert ([1.0] in levels) is marked
    if not marked:
        assert "all below 1" in ax.get_title()
