"""GANs on images: EMA of the generator, sample grids, FID/KID with a classifier extractor, and
the image data sets trained end to end through train.py's code path."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import FAST_IMAGES, QUIET, run_train
from image_fixtures import write_cifar10, write_image_folder, write_mnist
from PIL import Image
from torch import Tensor, nn

from lit_gp import ConfigError, GANModule
from lit_gp.callbacks import ImageMetrics, SampleGrid, image_metrics
from lit_gp.callbacks.sample_grid import image_grid
from lit_gp.data import DigitsDataModule
from lit_gp.metrics import features
from lit_gp.training import train


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Feature classifiers are cached under tmp_path, never in the user's ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIT_GP_CACHE", str(cache))
    return cache


# --- configuration -----------------------------------------------------------------------------


def test_wgangp_on_digits_composes_dcgan_nets_and_image_penalty_weight(compose_config) -> None:
    cfg = compose_config("model=wgangp", "data=digits", fast=QUIET)
    assert cfg.model.generator._target_ == "lit_gp.nets.DCGANGenerator"
    assert cfg.model.critic._target_ == "lit_gp.nets.DCGANCritic"
    assert list(cfg.model.generator.image_shape) == [1, 8, 8]
    # The toy value 0.1 belongs to the toy data sets only.
    assert cfg.model.penalty.weight == 10
    assert compose_config("model=wgangp", fast=QUIET).model.penalty.weight == 0.1


def test_nets_override_and_experiments_compose(compose_config) -> None:
    cfg = compose_config("data=digits", "nets=resnet", fast=QUIET)
    assert cfg.model.critic._target_ == "lit_gp.nets.ResNetCritic"
    paper = compose_config("experiment=wgangp_cifar10_resnet", fast=QUIET)
    assert paper.model.critic._target_ == "lit_gp.nets.ResNetCritic"
    assert list(paper.image_shape) == [3, 32, 32]
    assert paper.model.critic_optimizer.lr == 2e-4
    assert list(paper.model.critic_optimizer.betas) == [0.0, 0.9]
    assert paper.model.generator_scheduler.total_iters == 100_000
    assert (paper.data.batch_size, paper.model.generator_batch_size) == (64, 128)
    assert (paper.model.n_critic, paper.model.penalty.weight) == (5, 10)
    digits = compose_config("experiment=wgangp_digits", fast=QUIET)
    assert digits.model.generator._target_ == "lit_gp.nets.DCGANGenerator"
    assert (digits.generator_steps, digits.model.penalty.weight, digits.model.ema_decay) == (
        9000,
        10,
        0.999,
    )
    r1_digits = compose_config("experiment=r1_digits", fast=QUIET)
    assert (r1_digits.model.penalty.gamma, r1_digits.model.n_critic) == (1, 1)
    r1 = compose_config("experiment=r1_cifar10", fast=QUIET)
    assert (r1.model.penalty._target_, r1.model.loss) == ("lit_gp.penalties.r1", "non_saturating")


# --- training end to end ------------------------------------------------------------------------


def _image_logs(metrics: dict[str, Tensor], name: str) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if name in key}


def test_wgangp_digits_trains_and_logs_fid_kid_and_class_statistics(
    compose_config, tmp_path: Path
) -> None:
    cfg = compose_config("model=wgangp", "data=digits", fast=FAST_IMAGES)
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    model = GANModule.load_from_checkpoint(last, map_location="cpu")
    samples = model.sample(5)
    assert samples.shape == (5, 1, 8, 8)
    assert samples.min() >= -1 and samples.max() <= 1
    # Sample grids: real images once, generated ones at step 2 and at the end.
    pngs = sorted(path.name for path in (tmp_path / "samples").glob("*.png"))
    assert pngs == ["real_000000.png", "step_000002.png", "step_000003.png"]
    # The classifier was trained once and cached.
    assert len(list((tmp_path / "cache").glob("digits_classifier_*.pt"))) == 1


def test_image_metrics_reach_the_run_summary(compose_config) -> None:
    cfg = compose_config("model=r1", "data=digits", fast=FAST_IMAGES)
    # train() returns the optimized metric from the trainer's callback metrics.
    with_fid = cfg.copy()
    with_fid.optimized_metric = "val/fid_digits_classifier"
    fid = train(with_fid)
    assert fid is not None and fid > 0


@pytest.mark.parametrize(
    ("data", "writer", "nets", "shape"),
    [
        ("mnist", write_mnist, "dcgan", (1, 28, 28)),
        ("fashion_mnist", lambda root: write_mnist(root, folder="FashionMNIST"), "dcgan", None),
        ("cifar10", write_cifar10, "resnet", (3, 32, 32)),
    ],
)
def test_torchvision_data_sets_train_end_to_end_on_fixture_files(
    compose_config, tmp_path: Path, data: str, writer, nets: str, shape
) -> None:
    root = tmp_path / "data"
    writer(root)
    cfg = compose_config(
        "model=wgangp",
        f"data={data}",
        f"nets={nets}",
        f"data.root={root}",
        "optimized_metric=val/kid_" + data + "_classifier",
        fast=FAST_IMAGES,
    )
    kid = train(cfg)
    assert kid is not None and torch.isfinite(torch.tensor(kid))
    model = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    samples = model.sample(3)
    if shape is not None:
        assert samples.shape == (3, *shape)
    assert samples.abs().max() <= 1


def test_missing_data_files_stop_with_one_line(tmp_path: Path) -> None:
    result = run_train(
        "data=mnist", f"data.root={tmp_path / 'nowhere'}", "logger=none", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: data.root:") and "MNIST" in line


# --- EMA ---------------------------------------------------------------------------------------


class _Images(L.LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 4, 4, generator=generator) * 2 - 1
        self.batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.images, torch.zeros(len(self.images))),
            batch_size=self.batch_size,
        )


class _TinyGenerator(nn.Module):
    latent_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh())

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise).view(-1, 1, 4, 4)


class _TinyCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(16, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.flatten(1)).squeeze(1)


class _RecordGenerator(L.Callback):
    """The generator's parameters after every generator step."""

    def __init__(self) -> None:
        self.snapshots: list[list[Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.generator_step > len(self.snapshots):
            self.snapshots.append([p.detach().clone() for p in pl_module.generator.parameters()])


def _tiny_module(**kwargs) -> GANModule:
    torch.manual_seed(0)
    return GANModule(_TinyGenerator(), _TinyCritic(), n_critic=1, **kwargs)


def _fit(module: GANModule, steps: int, tmp_path: Path, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=2 * steps,  # n_critic = 1: one critic and one generator step per batch
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=_Images())
    return trainer


def test_ema_is_the_exponential_average_of_the_generator_steps(tmp_path: Path) -> None:
    decay = 0.75
    module = _tiny_module(ema_decay=decay)
    recorder = _RecordGenerator()
    _fit(module, 4, tmp_path, recorder)
    assert len(recorder.snapshots) == 4
    # By hand: the first average is the first step's weights, then e <- d e + (1 - d) p with
    # the warm-up decay d = min(decay, (1 + n) / (10 + n)) after n steps (lit_gp.ema).
    expected = recorder.snapshots[0]
    for n, snapshot in enumerate(recorder.snapshots[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p for e, p in zip(expected, snapshot, strict=True)]
    averaged = list(module.generator_ema.module.parameters())
    for got, want in zip(averaged, expected, strict=True):
        torch.testing.assert_close(got, want)
    # ... and it is not simply the generator.
    assert not torch.equal(averaged[0], module.generator.net[0].weight)
    # Samples come from the average.
    noise = torch.randn(2, 3)
    torch.testing.assert_close(module.sample(noise=noise), module.generator_ema.module(noise))


def test_ema_is_restored_from_checkpoints(tmp_path: Path) -> None:
    module = _tiny_module(ema_decay=0.9)
    trainer = _fit(module, 3, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = GANModule.load_from_checkpoint(
        path, generator=_TinyGenerator(), critic=_TinyCritic()
    )
    for name, value in module.generator_ema.state_dict().items():
        assert torch.equal(restored.generator_ema.state_dict()[name], value), name
    assert int(restored.generator_ema.n_averaged) == 3
    noise = torch.randn(4, 3)
    assert torch.equal(restored.sample(noise=noise), module.sample(noise=noise))


def test_no_ema_by_default_and_bad_decay_refused() -> None:
    assert _tiny_module().generator_ema is None
    for bad in (1.0, -0.1, "0.9", True):
        with pytest.raises(ConfigError) as error:
            _tiny_module(ema_decay=bad)
        assert error.value.key == "ema_decay"


def test_generator_batch_size(tmp_path: Path) -> None:
    sizes: list[int] = []
    module = _tiny_module(generator_batch_size=5)
    module.generator.register_forward_hook(lambda _m, inputs, _o: sizes.append(len(inputs[0])))
    _fit(module, 1, tmp_path)
    # The critic step draws one fake per real image (8), the generator step 5.
    assert sizes == [8, 5]


# --- sample grid -------------------------------------------------------------------------------


def test_image_grid_layout_by_hand() -> None:
    # Two 2x2 images, -1 (black) and 1 (white), one row: enlarged x16 to 32 px, 2 px padding.
    images = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    grid = image_grid(images, nrow=2)
    assert grid.size == (2 + 2 * (32 + 2), 2 + 32 + 2)
    array = np.asarray(grid.convert("L"))
    assert array[2 + 5, 2 + 5] == 0  # inside the first image
    assert array[2 + 5, 2 + 34 + 5] == 255  # inside the second


def test_sample_grid_uses_the_same_noise_every_time(tmp_path: Path) -> None:
    module = _tiny_module()
    grid = SampleGrid(every_n_generator_steps=2, num_samples=4, nrow=2)
    _fit(module, 4, tmp_path, grid)
    names = sorted(path.name for path in (tmp_path / "samples").glob("*.png"))
    assert names == ["step_000002.png", "step_000004.png"]
    # The final picture is the final generator applied to the fixed noise.
    expected = image_grid(module.sample(noise=grid.noise), nrow=2)
    assert list(Image.open(tmp_path / "samples" / "step_000004.png").getdata()) == list(
        expected.getdata()
    )
    assert torch.equal(grid.load_state_dict(grid.state_dict()) or grid.noise, grid.noise)


# --- FID / KID / class statistics --------------------------------------------------------------


class _ReplayGenerator(nn.Module):
    """A "generator" that returns real digits of chosen classes, to check the metrics by hand."""

    latent_dim = 1

    def __init__(self, images: Tensor) -> None:
        super().__init__()
        self.images = images
        self.position = 0

    def forward(self, noise: Tensor) -> Tensor:
        index = torch.arange(self.position, self.position + len(noise)) % len(self.images)
        self.position += len(noise)
        return self.images[index]


class _StubModule(L.LightningModule):
    def __init__(self, images: Tensor) -> None:
        super().__init__()
        self.generator = _ReplayGenerator(images)
        self.logged: dict[str, float] = {}

    def sample(self, n: int) -> Tensor:
        return self.generator(torch.zeros(n, 1))

    def log_dict(self, values, **kwargs) -> None:
        self.logged.update({key: float(value) for key, value in values.items()})


class _Trainer:
    sanity_checking = False

    def __init__(self, datamodule) -> None:
        self.datamodule = datamodule


def _metrics_on(images: Tensor, datamodule: DigitsDataModule, num_samples: int) -> dict:
    callback = ImageMetrics(num_samples=num_samples, kid_subset_size=50, classifier_epochs=5)
    module = _StubModule(images)
    trainer = _Trainer(datamodule)
    callback.setup(trainer, module, "fit")
    callback.on_validation_epoch_end(trainer, module)
    return module.logged


def test_metrics_by_hand_on_real_digits() -> None:
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    train_images, train_labels = datamodule.real_images("train")
    val_images, _ = datamodule.real_images("val")
    n = 350
    # The "generator" replays the very training images FID compares with: FID(X, X) = 0.
    same = _metrics_on(train_images[:n], datamodule, n)
    assert abs(same["val/fid_digits_classifier"]) < 1e-3
    # Held-out real digits: the classifier finds every class and is confident, and KID (an
    # unbiased estimate, needing samples independent of the reference) is near 0.
    held_out = _metrics_on(val_images[:n], datamodule, n)
    assert held_out["val/min_class_fraction"] > 0.05
    assert held_out["val/mean_top_probability"] > 0.8
    # Only the digits 0-4: classes 5-9 get (almost) nothing, and FID and KID grow.
    half = _metrics_on(train_images[train_labels < 5][:n], datamodule, n)
    assert half["val/min_class_fraction"] < 0.01
    assert half["val/fid_digits_classifier"] > 5 * held_out["val/fid_digits_classifier"]
    assert half["val/kid_digits_classifier"] > 10 * abs(held_out["val/kid_digits_classifier"])


def test_feature_classifier_is_cached(_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    train_split, val_split = datamodule.real_images("train"), datamodule.real_images("val")
    first, accuracy = features.cached_classifier("digits", train_split, val_split, 10, epochs=5)
    assert accuracy > 0.9
    assert len(list(_cache_dir.glob("digits_classifier_*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(features, "train_classifier", no_training)
    second, cached_accuracy = features.cached_classifier(
        "digits", train_split, val_split, 10, epochs=5
    )
    assert cached_accuracy == accuracy
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Other settings are another classifier, not a stale cache hit.
    monkeypatch.undo()
    monkeypatch.setenv("LIT_GP_CACHE", str(_cache_dir))
    features.cached_classifier("digits", train_split, val_split, 10, epochs=1)
    assert len(list(_cache_dir.glob("digits_classifier_*.pt"))) == 2


def test_image_metrics_refuse_bad_arguments_and_unlabelled_data() -> None:
    for kwargs, key in [
        ({"features": "vgg"}, "features"),
        ({"num_samples": 1}, "num_samples"),
        ({"kid_subset_size": 0}, "kid_subset_size"),
    ]:
        with pytest.raises(ConfigError) as error:
            ImageMetrics(**kwargs)
        assert error.value.key == key

    class Unlabelled:
        name = "image_folder"
        num_classes = None
        data_shape = (3, 8, 8)

        def setup(self, stage):
            pass

    with pytest.raises(ConfigError) as error:
        ImageMetrics(features="classifier").setup(
            _Trainer(Unlabelled()), _StubModule(torch.zeros(1, 3, 8, 8)), "fit"
        )
    assert error.value.key == "callbacks.image_metrics.features"
    assert "labels" in error.value.message


class _UnlabelledImages:
    name = "image_folder"
    num_classes = None
    data_shape = (3, 8, 8)

    def setup(self, stage: str) -> None:
        pass

    def real_images(self, split: str, n: int) -> tuple[Tensor, None]:
        return torch.rand(n, *self.data_shape, generator=torch.Generator().manual_seed(0)), None


def test_auto_features_without_labels_or_the_fid_extra_skip_the_metrics_with_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_metrics, "fid_extra_installed", lambda: False)
    callback, module = ImageMetrics(), _StubModule(torch.zeros(4, 3, 8, 8))
    trainer = _Trainer(_UnlabelledImages())
    with caplog.at_level("WARNING", logger=image_metrics.__name__):
        callback.setup(trainer, module, "fit")
        callback.setup(trainer, module, "fit")  # warned once, not per call
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "image_folder" in warnings[0] and "lit_gp[fid]" in warnings[0]
    callback.on_validation_epoch_end(trainer, module)
    assert module.logged == {}


def test_auto_features_without_labels_use_inception_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class MeanColour(nn.Module):  # stands in for the Inception network (no weights offline)
        def __init__(self) -> None:
            super().__init__()
            self.num_features = 3

        def forward(self, images: Tensor) -> Tensor:
            return images.float().mean((2, 3))

    monkeypatch.setattr(image_metrics, "fid_extra_installed", lambda: True)
    monkeypatch.setattr(image_metrics, "InceptionFeatures", MeanColour)
    images = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    callback = ImageMetrics(num_samples=40, kid_subset_size=10, kid_subsets=2)
    module, trainer = _StubModule(images), _Trainer(_UnlabelledImages())
    callback.setup(trainer, module, "fit")
    callback.on_validation_epoch_end(trainer, module)
    assert set(module.logged) == {"val/fid_inception", "val/kid_inception"}
    assert module.logged["val/fid_inception"] >= 0


def test_image_folder_trains_from_the_readme_command_without_extras(
    compose_config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The README's image_folder command with nothing but the base install: no labels and no
    # torch-fidelity, so features=auto leaves FID out instead of refusing to start.
    monkeypatch.setattr(image_metrics, "fid_extra_installed", lambda: False)
    root = tmp_path / "images"
    write_image_folder(root, n=24)
    cfg = compose_config(
        "data=image_folder", f"data.root={root}", "image_shape=[3,8,8]", fast=FAST_IMAGES
    )
    with caplog.at_level("WARNING", logger=image_metrics.__name__):
        train(cfg)
    assert any("no FID/KID for image_folder" in record.getMessage() for record in caplog.records)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "val/wasserstein_estimate" in metrics
    assert not any(key.startswith(("val/fid", "val/kid")) for key in metrics)
    model = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.sample(2).shape == (2, 3, 8, 8)


def test_inception_features_need_the_fid_extra_and_the_weights() -> None:
    # Here torch-fidelity is not installed (or its weights cannot be downloaded offline): one
    # ConfigError naming the option, raised when the callback is built, before training.
    with pytest.raises(ConfigError) as error:
        ImageMetrics(features="inception")
    assert error.value.key == "features"
    assert "lit_gp[fid]" in error.value.message or "weights" in error.value.message


def test_sample_grids_and_real_images_reach_wandb(
    compose_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wandb_records import find_offline_runs, read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config(
        "model=wgangp",
        "data=digits",
        "logger=wandb",
        f"logger.save_dir={tmp_path}",
        "logger.project=lit_gp_test",
        fast=FAST_IMAGES,
    )
    train(cfg)
    (run_dir,) = find_offline_runs(tmp_path)
    run = read_run(run_dir)
    grids = run.rows_with("val/samples")
    assert [row["train/generator_step"] for row in grids] == [2, 3]
    assert grids[0]["val/samples"]["captions"] == ["generator step 2"]
    (real,) = run.rows_with("val/real_samples")
    assert real["val/real_samples"]["captions"] == ["real images"]
    fid_rows = run.rows_with("val/fid_digits_classifier")
    assert [row["train/generator_step"] for row in fid_rows] == [2, 3]
    assert all("val/min_class_fraction" in row for row in fid_rows)
