"""GradientNormHistograms: ||grad D|| at real, generated and penalty points at every validation,
as scalars for every logger and histograms on W&B, without touching the training run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import RecordingLogger
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from wandb_records import find_offline_runs, read_run

from lit_gp import GANModule
from lit_gp.callbacks import GeneratorStepLimit, GradientNormHistograms
from lit_gp.callbacks.gradient_norms import input_gradient_norms, penalty_points
from lit_gp.data import ToyDataModule
from lit_gp.errors import ConfigError
from lit_gp.wandb_utils import GENERATOR_STEP_KEY, finish_wandb

W = torch.tensor([0.6, -2.0])
GENERATOR = {"_target_": "lit_gp.nets.MLPGenerator", "hidden_dim": 16}
CRITIC = {"_target_": "lit_gp.nets.MLPCritic", "hidden_dim": 16}
# Two terms at points of their own (interpolates, perturbed real data) and two at real and
# generated data, which add no key.
SEVERAL_TERMS = {
    "gp": {"_target_": "lit_gp.penalties.wgan_gp", "weight": 0.1},
    "dragan": {"_target_": "lit_gp.penalties.dragan", "weight": 1.0, "c": 0.5},
    "r1": {"_target_": "lit_gp.penalties.r1", "gamma": 1.0},
    "r2": {"_target_": "lit_gp.penalties.r2", "gamma": 1.0},
}
KINDS = {"real", "fake", "interpolates", "perturbed_real"}


class LinearCritic(nn.Module):
    """D(x) = w.x + b: grad D = w at every point."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.w + self.b


def _module(critic: nn.Module | dict = CRITIC, penalty=SEVERAL_TERMS, **kwargs) -> GANModule:
    return GANModule(
        generator=GENERATOR,
        critic=critic,
        penalty=penalty,
        loss="non_saturating",
        n_critic=2,
        num_eval_samples=256,
        **kwargs,
    )


def _data() -> ToyDataModule:
    return ToyDataModule(batch_size=32, num_train=320, num_val=96)


def _fit(
    tmp_path: Path,
    module: GANModule,
    callbacks: list[L.Callback],
    generator_steps: int = 4,
    logger=False,
) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=-1,
        logger=logger,
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=2 * module.n_critic,  # every 2 generator steps
        callbacks=[GeneratorStepLimit(generator_steps), *callbacks],
    )
    trainer.fit(module, datamodule=_data())
    return trainer


def test_a_linear_critic_has_norm_w_at_every_kind_of_point(tmp_path: Path) -> None:
    module = _module(LinearCritic(W))
    callback = GradientNormHistograms(num_samples=64)
    trainer = _fit(tmp_path, module, [callback])
    expected = float(torch.linalg.vector_norm(W))
    means = {
        key.removeprefix("val/grad_norm_mean/"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("val/grad_norm_mean/")
    }
    assert set(means) == KINDS
    # The critic trained: w moved, and the norms follow the trained w.
    trained = float(torch.linalg.vector_norm(module.critic.w.detach()))
    assert trained != expected
    for value in means.values():
        assert value == pytest.approx(trained, rel=1e-6)

    # Per sample, exactly ||w|| (the gradient of w.x is w itself).
    critic = LinearCritic(W)
    real = torch.randn(50, 2)
    module.critic = critic
    norms = GradientNormHistograms().measure(module, real)
    assert set(norms) == KINDS
    for values in norms.values():
        assert values.shape == (50,)
        assert torch.equal(values, torch.full_like(values, expected))
    # Only the input gradient: the critic's parameters get none.
    assert all(parameter.grad is None for parameter in critic.parameters())


def test_penalty_points_use_each_terms_sampler_and_options() -> None:
    module = _module()
    real, fake = torch.randn(40, 2), torch.randn(40, 2) + 5
    points = penalty_points(module, real, fake)
    assert set(points) == {"interpolates", "perturbed_real"}
    # interpolates lie between their real and fake sample; DRAGAN's points near real data,
    # within c * std(real) of it (c = 0.5).
    t = (points["interpolates"] - fake) / (real - fake)
    assert torch.allclose(t[:, 0], t[:, 1], atol=1e-4) and ((t >= 0) & (t <= 1)).all()
    shift = (points["perturbed_real"] - real).abs()
    assert (shift <= 0.5 * real.std(correction=0) + 1e-6).all()
    # R1 and R2 only: no points besides real and generated data.
    r3 = _module(penalty={k: SEVERAL_TERMS[k] for k in ("r1", "r2")})
    assert penalty_points(r3, real, fake) == {}
    assert penalty_points(_module(penalty=None), real, fake) == {}


def test_norms_inside_inference_mode_match_a_plain_autograd_grad() -> None:
    critic = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    points = torch.randn(10, 3)
    x = points.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(x).sum(), x)
    with torch.inference_mode():
        inside = input_gradient_norms(critic, points.clone(), chunk_size=4)
    assert torch.allclose(inside, gradient.norm(dim=1))


def test_training_is_unchanged_by_the_callback(tmp_path: Path) -> None:
    def trained(callbacks: list[L.Callback]) -> list[Tensor]:
        torch.manual_seed(0)
        module = _module()
        _fit(tmp_path, module, callbacks, generator_steps=5)
        return [parameter.detach().clone() for parameter in module.parameters()]

    plain = trained([])
    measured = trained([GradientNormHistograms(num_samples=64)])
    assert len(plain) == len(measured)
    for a, b in zip(plain, measured, strict=True):
        assert torch.equal(a, b)


def test_without_wandb_only_the_means_are_logged(tmp_path: Path) -> None:
    logger = RecordingLogger()
    _fit(tmp_path, _module(), [GradientNormHistograms(num_samples=64)], logger=logger)
    rows = [row for row in logger.rows if any(k.startswith("val/grad_norm") for k in row)]
    assert [row[GENERATOR_STEP_KEY] for row in rows] == [2, 4]
    for row in rows:
        assert {k for k in row if k.startswith("val/grad_norm")} == {
            f"val/grad_norm_mean/{kind}" for kind in KINDS
        }
        assert all(isinstance(row[f"val/grad_norm_mean/{kind}"], float) for kind in KINDS)


def test_histograms_reach_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # rolls back what offline=True sets
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lit_gp_test")
    try:
        _fit(
            tmp_path,
            _module(),
            [GradientNormHistograms(num_samples=64, bins=16)],
            logger=logger,
        )
    finally:
        finish_wandb()

    (run_dir,) = find_offline_runs(tmp_path)
    run = read_run(run_dir)
    for kind in KINDS:
        rows = run.rows_with(f"val/grad_norm/{kind}")
        # At generator steps 2 and 4, on the generator-step axis.
        assert [row[GENERATOR_STEP_KEY] for row in rows] == [2, 4], kind
        histogram = rows[0][f"val/grad_norm/{kind}"]
        assert histogram["_type"] == "histogram"
        assert len(histogram["values"]) == 16 and sum(histogram["values"]) == 64
        assert len(histogram["bins"]) == 17
    # The means are ordinary W&B metrics too.
    assert len(run.rows_with("val/grad_norm_mean/interpolates")) == 2


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="num_samples"):
        GradientNormHistograms(num_samples=0)
    with pytest.raises(ConfigError, match="bins"):
        GradientNormHistograms(bins=513)
