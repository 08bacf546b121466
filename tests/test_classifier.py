"""The input-gradient regularized classifier: penalty and FGSM by hand on linear models, the
config tree (model=gp_classifier, regularizer presets, the comparison sweep), results.json and
the table script."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import QUIET, ROOT, RecordingLogger, run_train
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from wandb_records import find_offline_runs, read_run

import lit_gp.classifier as classifier_module
from lit_gp import ConfigError
from lit_gp.classifier import GradientPenaltyClassifier
from lit_gp.config import build
from lit_gp.nets import ConvClassifier, MLPClassifier
from lit_gp.training import train

_spec = importlib.util.spec_from_file_location(
    "regularizer_table", ROOT / "benchmarks" / "regularizer_table.py"
)
regularizer_table = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = regularizer_table  # dataclasses look their module up there
_spec.loader.exec_module(regularizer_table)

REGULARIZERS = ("none", "weight_decay", "dropout", "input_gradient")


def linear_net(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """z = W flatten(x) + b, no hidden layer."""
    linear = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), linear)


def linear_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 W (K=4 classes, 2x3 images), b, images (5, 1, 2, 3) and labels."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    images = torch.rand(5, 1, 2, 3, generator=generator, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 3, 1, 1, 2])
    return weight, bias, images, labels


# --- the penalty by hand ---------------------------------------------------------------------


def zero_sum_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The linear problem with W's rows centred, so that they sum to zero: the gradient of the
    sum of the logits is then 0 everywhere, with the same predictions (softmax ignores the
    shift), while the Jacobian dz/dx = W is not."""
    weight, bias, images, labels = linear_problem()
    return weight - weight.mean(dim=0), bias, images, labels


def test_sum_of_logits_is_blind_to_a_classifier_with_zero_sum_rows() -> None:
    # The defect the jacobian option replaces: a penalty on grad_x sum_k z_k is 0 for this net.
    weight, bias, images, _ = zero_sum_problem()
    net = linear_net(weight, bias)
    points = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(net(points).sum(), points)
    assert gradient.abs().max() < 1e-12
    with pytest.raises(ConfigError, match="softmax ignores a shift") as error:
        GradientPenaltyClassifier(net, penalty_weight=1.0, penalty_of="logits")
    assert error.value.key == "penalty_of"


@pytest.mark.parametrize("points", ["data", "interpolates"])
def test_jacobian_penalty_of_a_linear_model_is_the_frobenius_norm(points: str) -> None:
    # dz/dx = W at every point, so E_v ||W^T v||^2 = ||W||_F^2 (v ~ N(0, I)); over 20,000
    # samples the one-projection estimate has a relative standard deviation below 1%.
    weight, bias, _, _ = zero_sum_problem()
    torch.manual_seed(0)
    images = torch.rand(20_000, 1, 2, 3, dtype=torch.float64) * 2 - 1
    labels = torch.zeros(20_000, dtype=torch.long)
    module = GradientPenaltyClassifier(
        linear_net(weight, bias), penalty_weight=3.0, penalty_of="jacobian", penalty_points=points
    )
    result, _ = module.penalty(images, labels)
    frobenius = weight.pow(2).sum()
    torch.testing.assert_close(result.loss, 3.0 * frobenius, rtol=0.04, atol=0)
    # Per sample the gradient is W^T v: its squared norm averages ||W||_F^2 as well.
    torch.testing.assert_close(result.grad_norm.pow(2).mean(), frobenius, rtol=0.04, atol=0)
    # The double backward trains W towards a smaller Frobenius norm: d/dW of 3 ||W||_F^2 is 6 W.
    result.loss.backward()
    torch.testing.assert_close(module.net[1].weight.grad, 6.0 * weight, rtol=0.1, atol=0.05)


def test_jacobian_penalty_needs_target_zero() -> None:
    with pytest.raises(ConfigError) as error:
        GradientPenaltyClassifier(
            MLPClassifier((1, 2, 2), 2), penalty_of="jacobian", penalty_target=1.0
        )
    assert error.value.key == "penalty_target"


class RecordingNet(nn.Module):
    """Two logits, (sum x, 0); keeps every input it is evaluated at."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.detach().clone())
        total = self.scale * images.flatten(1).sum(dim=1)
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def test_interpolates_lie_between_pairs_of_samples() -> None:
    torch.manual_seed(0)
    images = torch.tensor([0.2, 0.8]).repeat(32).view(-1, 1, 1, 1)
    net = RecordingNet()
    module = GradientPenaltyClassifier(
        net, penalty_weight=1.0, penalty_of="jacobian", penalty_points="interpolates"
    )
    result, logits = module.penalty(images, torch.zeros(64, dtype=torch.long))
    assert logits is None  # the cross-entropy needs its own pass on the data
    (points,) = net.inputs
    points = points.flatten()
    assert bool(((points >= 0.2 - 1e-6) & (points <= 0.8 + 1e-6)).all())
    # One eps per sample: pairs of 0.2 and 0.8 land strictly between, at different places.
    inside = points[(points > 0.21) & (points < 0.79)]
    assert len(inside) > 10 and len(set(inside.tolist())) == len(inside)


def test_loss_penalty_of_a_linear_model_matches_the_hand_gradient() -> None:
    weight, bias, images, labels = linear_problem()
    weight.requires_grad_(True)
    module = GradientPenaltyClassifier(linear_net(weight.detach(), bias), penalty_weight=2.0)
    result, logits = module.penalty(images, labels)

    # grad_x CE(W x + b, y) = W^T (softmax(z) - onehot(y)), per sample, without autograd on x.
    z = images.flatten(1) @ weight.T + bias
    gradients = (z.softmax(dim=1) - F.one_hot(labels, 4).double()) @ weight
    expected = 2.0 * gradients.pow(2).sum(dim=1).mean()
    torch.testing.assert_close(result.grad_norm, gradients.detach().norm(dim=1))
    torch.testing.assert_close(result.loss, expected.detach())
    # The forward pass of the penalty is the batch's: its logits serve the cross-entropy.
    torch.testing.assert_close(logits, z.detach())

    # The double backward trains W like the derivative of the hand formula.
    result.loss.backward()
    (expected_grad,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(module.net[1].weight.grad, expected_grad)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_one_forward_pass_per_step_on_data_two_on_interpolates() -> None:
    weight, bias, images, labels = linear_problem()
    calls = []
    for options in (
        {"penalty_weight": 0.0},
        {"penalty_weight": 1.0},
        {"penalty_weight": 1.0, "penalty_of": "jacobian", "penalty_points": "interpolates"},
    ):
        module = GradientPenaltyClassifier(linear_net(weight, bias), **options)
        count = []
        module.net.register_forward_hook(lambda *args, count=count: count.append(1))
        loss = module.training_step((images, labels), 0)
        loss.backward()
        calls.append(len(count))
    assert calls == [1, 1, 2]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_weight_zero_does_no_double_backward(monkeypatch) -> None:
    weight, bias, images, labels = linear_problem()
    module = GradientPenaltyClassifier(linear_net(weight, bias), penalty_weight=0.0)

    def fail(*args, **kwargs):
        raise AssertionError("the penalty was computed at weight 0")

    monkeypatch.setattr(classifier_module, "gradient_penalty", fail)
    assert module.penalty(images, labels) == (None, None)
    loss = module.training_step((images, labels), 0)
    torch.testing.assert_close(loss, F.cross_entropy(module.net(images), labels))


def _fit_on_fixed_batches(
    module: L.LightningModule, data: TensorDataset, **trainer_options
) -> L.Trainer:
    options = {"max_epochs": 1, "logger": False, **trainer_options}
    trainer = L.Trainer(
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        **options,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=8, shuffle=False))
    return trainer


def _train_and_record(log_every_n_steps: int) -> tuple[list[dict], dict[str, float]]:
    """The logger's rows with training metrics, and trainer.callback_metrics at the end."""
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(56, 1, 4, 4) * 2 - 1, torch.randint(0, 3, (56,)))
    module = GradientPenaltyClassifier(MLPClassifier((1, 4, 4), 3, hidden_dim=16))
    logger = RecordingLogger()
    trainer = _fit_on_fixed_batches(
        module, data, max_epochs=2, logger=logger, log_every_n_steps=log_every_n_steps
    )
    # train/time_s is wall-clock time, different in every run.
    final = {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key != "train/time_s"
    }
    return [row for row in logger.rows if "train/loss" in row], final


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")
@pytest.mark.parametrize("log_every_n_steps", [3, 50, 0])
def test_training_metrics_reach_the_loggers_at_their_cadence_unchanged(
    log_every_n_steps: int,
) -> None:
    # 2 epochs of 7 batches, written every 3 batches: the module logs on batches 3, 6, 9, 12
    # and the last (which the loggers do not write); rows and final metrics equal those of a run
    # that logs every batch.
    every_batch, every_batch_final = _train_and_record(1)
    assert len(every_batch) == 14
    rows, final = _train_and_record(log_every_n_steps)
    if log_every_n_steps == 3:
        assert rows == [every_batch[2], every_batch[5], every_batch[8], every_batch[11]]
    else:
        assert rows == []
    assert final == every_batch_final
    assert "train/loss" in final


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")
@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_weight_zero_trains_like_plain_cross_entropy(weight: float) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(32, 1, 4, 4) * 2 - 1, torch.randint(0, 3, (32,)))
    net = MLPClassifier((1, 4, 4), 3, hidden_dim=16)
    plain = copy.deepcopy(net)
    module = GradientPenaltyClassifier(copy.deepcopy(net), penalty_weight=weight)
    _fit_on_fixed_batches(module, data)

    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3)
    for images, labels in DataLoader(data, batch_size=8, shuffle=False):
        optimizer.zero_grad()
        F.cross_entropy(plain(images), labels).backward()
        optimizer.step()
    same = all(
        torch.allclose(a, b, atol=1e-7, rtol=0)
        for a, b in zip(module.net.parameters(), plain.parameters(), strict=True)
    )
    assert same == (weight == 0.0)


# --- refusals --------------------------------------------------------------------------------


def test_interpolates_need_the_jacobian() -> None:
    with pytest.raises(ConfigError, match="no label") as error:
        GradientPenaltyClassifier(MLPClassifier((1, 2, 2), 2), penalty_points="interpolates")
    assert error.value.key == "penalty_points"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"penalty_weight": -1.0}, "penalty_weight"),
        ({"penalty_weight": True}, "penalty_weight"),
        ({"penalty_weight": float("inf")}, "penalty_weight"),
        ({"penalty_target": -0.5}, "penalty_target"),
        ({"penalty_of": "gradient"}, "penalty_of"),
        ({"penalty_points": "fake"}, "penalty_points"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"fgsm_epsilon": float("nan")}, "fgsm_epsilon"),
        ({"num_classes": 1}, "num_classes"),
        ({"results_file": ""}, "results_file"),
        ({"optimizer": {"_target_": "torch.optim.Adam", "lr": -1.0}}, "optimizer"),
        ({"scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR"}}, "scheduler"),
        ({"net": {"_target_": "lit_gp.nets.MLPClassifier", "image_shape": [1, 2]}}, "net"),
    ],
)
def test_bad_values_are_refused_naming_the_key(options: dict, key: str) -> None:
    arguments = {"net": MLPClassifier((1, 2, 2), 2), **options}
    with pytest.raises(ConfigError) as error:
        GradientPenaltyClassifier(**arguments)
    assert error.value.key.startswith(key)


def test_batch_norm_is_refused_under_the_penalty_only() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="BatchNorm") as error:
        GradientPenaltyClassifier(net, penalty_weight=1.0)
    assert error.value.key == "net"
    GradientPenaltyClassifier(net, penalty_weight=0.0)


def test_net_that_does_not_fit_the_data_is_refused() -> None:
    module = GradientPenaltyClassifier(MLPClassifier((1, 8, 8), 10), num_classes=10)
    module.check_data_shape((1, 8, 8))
    with pytest.raises(ConfigError, match="cannot classify") as error:
        module.check_data_shape((1, 4, 4))
    assert error.value.key == "net"
    with pytest.raises(ConfigError, match="num_classes is 3"):
        GradientPenaltyClassifier(MLPClassifier((1, 8, 8), 10), num_classes=3).check_data_shape(
            (1, 8, 8)
        )


# --- evaluation by hand ----------------------------------------------------------------------


def one_dimensional(boundary: float) -> nn.Module:
    """Two classes of 1-pixel images: z = (0, x - boundary), class 1 iff x > boundary."""
    return linear_net(torch.tensor([[0.0], [1.0]]), torch.tensor([0.0, -boundary]))


def test_fgsm_flips_exactly_the_points_within_epsilon_of_the_boundary() -> None:
    module = GradientPenaltyClassifier(one_dimensional(0.0), fgsm_epsilon=0.1, noise_std=0.0)
    module.eval()
    x = torch.tensor([-0.35, -0.05, 0.05, 0.15, 0.6, -0.98]).view(-1, 1, 1, 1)
    y = torch.tensor([0, 0, 1, 1, 1, 1])  # the last one is misclassified already
    with torch.inference_mode():  # as Lightning evaluates
        metrics = module.evaluate(x, y)
    assert metrics["accuracy"].item() == pytest.approx(5 / 6)
    # FGSM moves every point 0.1 away from its label: -0.05 -> 0.05 and 0.05 -> -0.05 flip.
    assert metrics["accuracy_fgsm"].item() == pytest.approx(3 / 6)
    assert metrics["accuracy_noise"].item() == pytest.approx(5 / 6)  # noise_std 0
    # |dCE/dx| = |sigmoid(x) - y| for this model.
    expected = (torch.sigmoid(x.flatten()) - y.float()).abs().mean()
    assert metrics["input_grad_norm"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_fgsm_images_are_clamped_to_the_pixel_range() -> None:
    # Boundary just outside the range: 0.95 + 0.1 = 1.05 would cross it, the clamp stops at 1.
    module = GradientPenaltyClassifier(one_dimensional(1.02), fgsm_epsilon=0.1)
    module.eval()
    metrics = module.evaluate(torch.tensor([0.95]).view(1, 1, 1, 1), torch.tensor([0]))
    assert metrics["accuracy"].item() == 1.0
    assert metrics["accuracy_fgsm"].item() == 1.0


def test_noise_accuracy_uses_the_same_noise_at_every_evaluation() -> None:
    module = GradientPenaltyClassifier(one_dimensional(0.0), noise_std=1.0)
    module.eval()
    x = torch.linspace(-1, 1, 64).view(-1, 1, 1, 1)
    y = (x.flatten() > 0).long()
    first = module.evaluate(x, y)["accuracy_noise"]
    assert 0.5 < first.item() < 1.0  # noise of std 1 flips some points
    module.on_validation_epoch_start()
    state = torch.get_rng_state()
    assert module.evaluate(x, y)["accuracy_noise"] == first
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream untouched


# --- nets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_nets_are_sized_by_the_image_shape(shape: tuple[int, int, int]) -> None:
    images = torch.rand(3, *shape)
    for net in (MLPClassifier(shape, 10, hidden_dim=16), ConvClassifier(shape, 10, width=4)):
        assert net(images).shape == (3, 10)


def test_dropout_sits_before_the_last_layers_and_is_checked() -> None:
    mlp = MLPClassifier((1, 8, 8), 10, num_layers=2, dropout=0.3)
    kinds = [type(layer).__name__ for layer in mlp.net]
    assert kinds[-1] == "Linear" and kinds.count("Dropout") == 2
    assert kinds.index("Dropout") > kinds.index("MaskedReLU")
    conv = ConvClassifier((1, 8, 8), 10, dropout=0.3)
    assert [type(layer).__name__ for layer in conv.net][-2:] == ["Dropout", "Linear"]
    assert not any(isinstance(layer, nn.Dropout) for layer in MLPClassifier((1, 8, 8), 10).net)
    for make in (MLPClassifier, ConvClassifier):
        with pytest.raises(ConfigError) as error:
            make((1, 8, 8), 10, dropout=1.0)
        assert error.value.key == "dropout"


# --- configs and runs ------------------------------------------------------------------------


def test_the_model_config_selects_the_classifier_task(compose_config) -> None:
    # What ran is what Hydra composed (and saved): no Python rewrite in between.
    cfg = compose_config("model=gp_classifier", "data=digits", fast=QUIET)
    assert "generator" not in cfg.model and "critic" not in cfg.model
    assert "generator_steps" not in cfg and "val_every_generator_steps" not in cfg
    assert list(cfg.callbacks) == ["checkpoint", "nonfinite_guard"]
    assert cfg.callbacks.checkpoint.every_n_train_steps is None
    assert cfg.callbacks.checkpoint.save_top_k == 0 and cfg.callbacks.checkpoint.save_last
    assert cfg.trainer.max_epochs == 30
    assert cfg.trainer.check_val_every_n_epoch == 1 and cfg.trainer.val_check_interval == 1.0
    assert cfg.trainer.log_every_n_steps == 10
    assert cfg.num_threads == 1 and cfg.test is True
    assert HydraConfig.get().runtime.choices.task == "classifier"
    kept = compose_config(
        "model=gp_classifier", "data=digits", "trainer.max_epochs=3", "num_threads=2", fast=QUIET
    )
    assert kept.trainer.max_epochs == 3 and kept.num_threads == 2
    # A GAN model runs the GAN task.
    gan = compose_config("data=digits", fast=QUIET)
    assert HydraConfig.get().runtime.choices.task == "gan"
    assert gan.test is False and gan.trainer.max_epochs == -1
    assert gan.model.generator._target_ == "lit_gp.nets.DCGANGenerator"
    assert "generator_step_limit" in gan.callbacks


def test_classifier_needs_image_data(compose_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="labelled image data") as error:
        train(compose_config("model=gp_classifier", fast=QUIET))
    assert error.value.key == "data"
    assert not (tmp_path / "checkpoints").exists()


def test_bad_config_value_names_the_model_key(compose_config) -> None:
    cfg = compose_config(
        "model=gp_classifier", "data=digits", "model.penalty_points=interpolates", fast=QUIET
    )
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert error.value.key == "model.penalty_points"


def test_trains_from_the_config_and_writes_results(compose_config, tmp_path: Path) -> None:
    cfg = compose_config(
        "model=gp_classifier",
        "data=digits",
        "trainer.max_epochs=2",
        "logger=csv",
        "optimized_metric=val/accuracy",
        fast=["+trainer.enable_progress_bar=false"],
    )
    value = train(cfg)
    assert 0.5 < value <= 1.0

    # Ended by max_epochs (no generator-step limit): 2 epochs of 1437 // 64 = 22 batches.
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["epochs"] == 2 and results["global_step"] == 44
    assert results["test_split"] == "val"
    assert results["train/time_s"] > 0
    assert results["test/accuracy"] == pytest.approx(value)  # the same split, the same model
    # The test metrics are those of the final weights (last.ckpt) on the validation split,
    # recomputed here batch by batch (the noise restarts from its seed at every evaluation).
    module = GradientPenaltyClassifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    module.eval()
    module.on_test_epoch_start()
    datamodule = build(cfg.data, "data")
    datamodule.setup("test")
    sums: dict[str, float] = {}
    count = 0
    for batch in datamodule.val_dataloader():
        images, labels = datamodule.on_after_batch_transfer(batch, 0)
        for name, metric in module.evaluate(images, labels).items():
            sums[name] = sums.get(name, 0.0) + float(metric) * len(labels)
        count += len(labels)
    assert count == 359  # the validation split: 20% of the 1,797 digits
    for name, total in sums.items():
        assert results[f"test/{name}"] == pytest.approx(total / count, rel=1e-5), name

    (metrics_file,) = tmp_path.glob("csv/**/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    val = [float(row["val/accuracy"]) for row in rows if row.get("val/accuracy")]
    assert len(val) == 2 and val[-1] == pytest.approx(value)
    logged = {key for row in rows for key, entry in row.items() if entry}
    assert {"train/loss", "train/cross_entropy", "train/penalty", "train/grad_norm_mean"} <= logged
    assert {"train/time_s", "val/accuracy_fgsm", "test/accuracy_noise"} <= logged

    module = GradientPenaltyClassifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.penalty_weight == cfg.model.penalty_weight
    assert module.train_time_s == pytest.approx(results["train/time_s"])


def test_default_run_reaches_90_percent(compose_config, tmp_path: Path) -> None:
    cfg = compose_config(
        "model=gp_classifier", "data=digits", "optimized_metric=val/accuracy", fast=QUIET
    )
    assert train(cfg) > 0.9
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 30


def _compose_with_hydra(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_comparison_sweeps_four_regularizers_times_three_seeds() -> None:
    cfg = _compose_with_hydra("experiment=regularizer_comparison")
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    jobs = {tuple(sorted(job)) for job in batch}
    assert len(batch) == len(jobs) == 12
    assert jobs == {
        tuple(sorted([f"regularizer={name}", f"seed={seed}"]))
        for name in REGULARIZERS
        for seed in range(3)
    }


@pytest.mark.parametrize("name", REGULARIZERS)
def test_each_regularizer_preset_turns_on_exactly_one(name: str) -> None:
    cfg = _compose_with_hydra("experiment=regularizer_comparison", f"regularizer={name}")
    model = cfg.model
    on = {
        "weight_decay": model.optimizer.weight_decay > 0,
        "dropout": model.net.dropout > 0,
        "input_gradient": model.penalty_weight > 0,
    }
    assert [key for key, value in on.items() if value] == ([] if name == "none" else [name])
    assert model.optimizer._target_ == "torch.optim.AdamW" and model.optimizer.lr == 1e-3
    assert cfg.data._target_ == "lit_gp.data.DigitsDataModule"
    assert cfg.trainer.max_epochs == 30
    module = build(model, "model", recursive=False)
    assert isinstance(module, GradientPenaltyClassifier)


def _fake_run(root: Path, job: str, regularizer: str, seed: int, accuracy: float) -> None:
    job_dir = root / job
    (job_dir / ".hydra").mkdir(parents=True)
    overrides = [f"regularizer={regularizer}", f"seed={seed}", "experiment=regularizer_comparison"]
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    results = {
        "test/accuracy": accuracy,
        "test/accuracy_noise": accuracy - 0.1,
        "test/accuracy_fgsm": accuracy - 0.3,
        "test/input_grad_norm": 0.5 + seed,
        "train/time_s": 10.0 * (seed + 1),
        "test_split": "val",
        "noise_std": 0.3,
        "fgsm_epsilon": 0.1,
    }
    (job_dir / "results.json").write_text(json.dumps(results))


def test_table_script_averages_over_seeds(tmp_path: Path, capsys) -> None:
    _fake_run(tmp_path, "0", "input_gradient", 0, 0.95)
    _fake_run(tmp_path, "1", "none", 0, 0.90)
    _fake_run(tmp_path, "2", "none", 1, 0.92)
    assert regularizer_table.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| regularizer | seeds | test accuracy (%) | noise σ=0.3 (%)")
    assert "FGSM ε=0.1 (%)" in lines[0]
    # none first (the fixed order), mean ± sample std over its two seeds: std(90, 92) = 1.414.
    assert (
        lines[2]
        == "| none | 2 (0,1) | 91.0 ± 1.4 | 81.0 ± 1.4 | 61.0 ± 1.4 | 1.000 ± 0.707 | 15.0 ± 7.1 |"
    )
    assert lines[3] == "| input_gradient | 1 (0) | 95.0 | 85.0 | 65.0 | 0.500 | 10.0 |"
    assert "val split" in lines[-1]
    assert regularizer_table.main([str(tmp_path / "missing")]) == 2


def test_comparison_smoke_multirun_through_the_entry_point(tmp_path: Path) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_train(
        "-m",
        "experiment=regularizer_comparison",
        "regularizer=none,input_gradient",
        "seed=0",
        "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    job_dirs = sorted(path for path in (tmp_path / "sweep").iterdir() if path.is_dir())
    assert len(job_dirs) == 2
    runs = [read_run(run_dir) for job_dir in job_dirs for run_dir in find_offline_runs(job_dir)]
    assert len(runs) == 2 and {run.group for run in runs} == {"sweep"}
    for job_dir in job_dirs:
        results = json.loads((job_dir / "results.json").read_text())
        assert math.isfinite(results["test/accuracy"]) and results["epochs"] == 1
    table = regularizer_table.table(regularizer_table.find_runs(tmp_path / "sweep"))
    assert "| none | 1 (0) |" in table and "| input_gradient | 1 (0) |" in table
