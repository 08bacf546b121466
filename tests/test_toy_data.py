"""Toy 2-D data: checked against the paper's formulas computed by hand."""

import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lit_gp.data import ToyDataModule, sample_toy
from lit_gp.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"

RING = torch.tensor(
    [
        [2 / 1.414 * math.cos(k * math.pi / 4), 2 / 1.414 * math.sin(k * math.pi / 4)]
        for k in range(8)
    ]
)
RING_STD = 0.02 / 1.414
GRID = torch.tensor([[x / 2.828, y / 2.828] for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)])
GRID_STD = 0.05 / 2.828


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same set of points, order ignored."""
    return torch.equal(torch.sort(a[:, 0])[0], torch.sort(b[:, 0])[0])


@pytest.mark.parametrize(
    ("dataset", "centers", "std"),
    [("gaussians8", RING, RING_STD), ("gaussians25", GRID, GRID_STD)],
)
def test_gaussian_mixture_matches_formula(dataset, centers, std):
    n = 20_000
    x = sample_toy(dataset, n, _gen())
    assert x.shape == (n, 2) and x.dtype == torch.float32

    dist, nearest = torch.cdist(x.double(), centers.double()).min(dim=1)
    # Neighbouring modes are > 30 std apart, and P(|N(0, I_2)| > 5) = exp(-12.5) ~ 4e-6.
    assert dist.max() < 5 * std

    k = len(centers)
    counts = torch.bincount(nearest, minlength=k).double()
    binom_sd = math.sqrt(n / k * (1 - 1 / k))
    assert (counts - n / k).abs().max() < 5 * binom_sd

    residual = x.double() - centers.double()[nearest]
    assert residual.mean(dim=0).abs().max() < 5 * std / math.sqrt(n)
    # Pooled per-coordinate std over 2n values: relative standard error ~ 1 / sqrt(4n) = 0.35 %.
    assert residual.std().item() == pytest.approx(std, rel=0.02)


def test_swissroll_shape_and_range():
    n = 5000
    x = sample_toy("swissroll", n, _gen())
    assert x.shape == (n, 2) and x.dtype == torch.float32
    # make_swiss_roll: t ~ U[1.5 pi, 4.5 pi], (x, z) = t (cos t, sin t) + N(0, 0.25^2), then / 7.5.
    radius = x.double().norm(dim=1)
    lo, hi, slack = 1.5 * math.pi / 7.5, 4.5 * math.pi / 7.5, 5 * 0.25 * math.sqrt(2) / 7.5
    assert radius.min() > lo - slack and radius.max() < hi + slack
    assert radius.min() < lo + 0.05 and radius.max() > hi - 0.05
    assert x.abs().max() < hi + slack
    # The radius is about t / 7.5 with t uniform: mean 3 pi / 7.5, std (3 pi / 7.5) / sqrt(12).
    assert radius.mean().item() == pytest.approx(3 * math.pi / 7.5, abs=0.02)
    assert radius.std().item() == pytest.approx(3 * math.pi / 7.5 / math.sqrt(12), abs=0.02)

    # Undo the scaling: noiseless points lie on the spiral radius = angle + 2 pi m. The radial
    # distance to the nearest arm is the noise along the radius, std 0.25 (arms are 2 pi apart).
    unscaled = x.double() * 7.5
    angle = torch.atan2(unscaled[:, 1], unscaled[:, 0])
    arms = angle[:, None] + 2 * math.pi * torch.arange(-1, 4)[None]
    offsets = unscaled.norm(dim=1)[:, None] - arms
    residual = offsets.gather(1, offsets.abs().argmin(dim=1, keepdim=True))
    assert residual.std().item() == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize("dataset", ["gaussians8", "gaussians25", "swissroll"])
def test_sample_toy_depends_only_on_generator(dataset):
    assert torch.equal(sample_toy(dataset, 500, _gen(3)), sample_toy(dataset, 500, _gen(3)))
    assert not torch.equal(sample_toy(dataset, 500, _gen(3)), sample_toy(dataset, 500, _gen(4)))


def test_module_modes_and_std():
    dm = ToyDataModule("gaussians8")
    assert dm.modes.shape == (8, 2)
    # Same set of 8 points, in any order.
    assert torch.cdist(dm.modes.double(), RING.double()).min(dim=1)[0].max() < 1e-6
    assert dm.mode_std == pytest.approx(RING_STD)
    assert dm.data_shape == (2,)

    dm = ToyDataModule("gaussians25")
    assert dm.modes.shape == (25, 2)
    assert torch.cdist(dm.modes.double(), GRID.double()).min(dim=1)[0].max() < 1e-6
    assert dm.mode_std == pytest.approx(GRID_STD)

    dm = ToyDataModule("swissroll")
    assert dm.modes is None and dm.mode_std is None


def test_loaders_yield_plain_tensors():
    dm = ToyDataModule("gaussians25", batch_size=64, num_train=1000, num_val=100, seed=1)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 1000 // 64
    assert all(isinstance(b, torch.Tensor) and b.shape == (64, 2) for b in train)
    assert all(b.dtype == torch.float32 for b in train)
    # Shuffled: the batches are not the stored order.
    assert not torch.equal(torch.cat(train), dm.train_data[: len(train) * 64])

    val = list(dm.val_dataloader())
    assert [b.shape[0] for b in val] == [64, 36]
    assert torch.equal(torch.cat(val), dm.val_data)
    assert dm.val_data.shape == (100, 2)


def test_same_seed_identical_different_seed_different():
    def make(seed):
        dm = ToyDataModule("gaussians8", batch_size=32, num_train=320, num_val=50, seed=seed)
        dm.setup("fit")
        return dm

    a, b, c = make(5), make(5), make(6)
    assert torch.equal(a.train_data, b.train_data)
    assert torch.equal(a.val_data, b.val_data)
    assert torch.equal(next(iter(a.train_dataloader())), next(iter(b.train_dataloader())))
    assert torch.equal(a.reference_samples(100), b.reference_samples(100))

    assert not _same_rows(a.train_data, c.train_data)
    assert not _same_rows(a.val_data, c.val_data)
    assert not torch.equal(a.reference_samples(100), c.reference_samples(100))


def test_train_val_reference_differ():
    # Equal sizes, so one shared RNG stream would give the same points.
    dm = ToyDataModule("gaussians8", batch_size=10, num_train=50, num_val=50, seed=5)
    dm.setup("fit")
    assert not _same_rows(dm.train_data, dm.val_data)
    assert not _same_rows(dm.reference_samples(50), dm.val_data)
    assert not _same_rows(dm.reference_samples(50), dm.train_data)


def test_reference_samples_independent_of_setup():
    fresh = ToyDataModule("swissroll", batch_size=16, num_train=64, num_val=16, seed=2)
    before = fresh.reference_samples(200)
    fresh.setup("fit")
    list(fresh.train_dataloader())
    assert torch.equal(fresh.reference_samples(200), before)
    assert before.shape == (200, 2) and before.dtype == torch.float32


def test_hparams_saved():
    dm = ToyDataModule("swissroll", batch_size=8, num_train=80, num_val=8, seed=3, num_workers=0)
    assert dict(dm.hparams) == {
        "dataset": "swissroll",
        "batch_size": 8,
        "num_train": 80,
        "num_val": 8,
        "seed": 3,
        "num_workers": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"dataset": "x"}, "dataset"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 300, "num_train": 200}, "batch_size"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_values_raise_config_error(kwargs, key):
    with pytest.raises(ConfigError) as err:
        ToyDataModule(**kwargs)
    assert err.value.key == key


def test_unknown_dataset_message():
    with pytest.raises(ConfigError, match="must be one of gaussians8, gaussians25, swissroll"):
        ToyDataModule("x")
    with pytest.raises(ConfigError):
        sample_toy("x", 10, _gen())
    with pytest.raises(ConfigError):
        sample_toy("gaussians8", 0, _gen())


@pytest.mark.parametrize("dataset", ["gaussians8", "gaussians25", "swissroll"])
def test_hydra_config_instantiates(dataset):
    # The data configs are global packages (their shared keys in conf/base/toy_data.yaml): the
    # data module's arguments sit under `data`.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        composed = compose("config", overrides=[f"data={dataset}", "seed=7"])
    GlobalHydra.instance().clear()
    data_config = composed.data
    cfg = OmegaConf.create({"seed": 7, "data": OmegaConf.to_container(data_config)})
    dm = instantiate(cfg.data)
    assert isinstance(dm, ToyDataModule)
    assert dm.dataset == dataset and dm.seed == 7 and dm.batch_size == 256
    defaults = {
        name: param.default
        for name, param in inspect.signature(ToyDataModule.__init__).parameters.items()
        if name != "self"
    }
    # Every constructor argument is spelled out in the yaml with its default.
    assert set(data_config) == {"_target_", *defaults}
    assert dict(dm.hparams) == {**defaults, "dataset": dataset, "seed": 7}


def test_the_grid_has_its_own_defaults_and_the_other_toy_sets_keep_the_papers(compose_config):
    grid = compose_config("model=wgangp", "data=gaussians25", fast=[])
    assert grid.generator_steps == 4000
    assert grid.model.critic_optimizer.lr == grid.model.generator_optimizer.lr == 2e-3
    assert grid.model.critic_scheduler.total_iters == 4000
    assert grid.model.generator.hidden_dim == grid.model.critic.hidden_dim == 128
    for data in ("gaussians8", "swissroll"):
        paper = compose_config("model=wgangp", f"data={data}", fast=[])
        assert paper.generator_steps == 3000
        assert paper.model.critic_optimizer.lr == paper.model.generator_optimizer.lr == 1e-4
        assert paper.model.generator.hidden_dim == paper.model.critic.hidden_dim == 512
    # R3GAN takes the grid's rate too (its cosine keeps its own end), and its own 2e-4 elsewhere;
    # the command line and experiments still win.
    for model in ("r3gan", "r3gan_fd"):
        r3gan_grid = compose_config(f"model={model}", "data=gaussians25", fast=[]).model
        assert r3gan_grid.critic_optimizer.lr == r3gan_grid.generator_optimizer.lr == 2e-3
        assert r3gan_grid.critic_scheduler[0].eta_min == 5e-5
        r3gan_ring = compose_config(f"model={model}", "data=gaussians8", fast=[]).model
        assert r3gan_ring.critic_optimizer.lr == r3gan_ring.generator_optimizer.lr == 2e-4
    assert compose_config("data=gaussians25", "generator_steps=10", fast=[]).generator_steps == 10
    quick = compose_config("data=gaussians25", "experiment=toy_quick", fast=[])
    assert quick.generator_steps == 700
