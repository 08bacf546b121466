"""Stacked digits (data=stacked_digits): three independent 8x8 digits as channels, 1,000 modes,
scored at validation by modes covered and KL from uniform (the StackedMNIST protocol)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import FAST_IMAGES
from test_resume import fit as fit_for_resume

from lit_gp import GANModule
from lit_gp.callbacks import StackedModes
from lit_gp.callbacks.stacked_modes import _shares
from lit_gp.data import DigitsDataModule, StackedDigitsDataModule
from lit_gp.metrics import ModeHistogram, StackedModeClassifier
from lit_gp.training import train

LOG_1000 = math.log(1000)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """One cache for the module (the digits classifier is trained once), never ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIT_GP_CACHE", str(cache))
        yield cache


def _scores(metric: ModeHistogram) -> tuple[float, float]:
    result = metric.compute()
    return float(result["modes_covered"]), float(result["mode_kl"])


# --- the metric --------------------------------------------------------------------------------


def test_all_samples_in_one_mode_cover_one_mode_with_kl_log_1000():
    metric = ModeHistogram(1000)
    metric.update(torch.full((37,), 421))
    modes, kl = _scores(metric)
    assert modes == 1
    # p = 1 on one mode: 1 * log(1 * 1000).
    assert kl == pytest.approx(LOG_1000, abs=1e-6)


def test_one_sample_per_mode_covers_1000_modes_with_kl_0():
    metric = ModeHistogram(1000)
    metric.update(torch.arange(1000).flip(0))
    modes, kl = _scores(metric)
    assert modes == 1000
    assert kl == pytest.approx(0.0, abs=1e-6)


def test_two_modes_half_and_half_have_kl_log_500():
    metric = ModeHistogram(1000)
    metric.update(torch.tensor([3, 999, 3]))
    metric.update(torch.tensor([999]))
    modes, kl = _scores(metric)
    assert modes == 2
    # 2 * 0.5 * log(0.5 * 1000) = log 500 = 6.2146.
    assert kl == pytest.approx(math.log(500), abs=1e-6)
    assert kl == pytest.approx(6.2146, abs=1e-4)


def test_uneven_histogram_kl_by_hand():
    metric = ModeHistogram(1000)
    metric.update(torch.tensor([0, 0, 0, 5]))
    modes, kl = _scores(metric)
    # 0.75 log 750 + 0.25 log 250 = 0.75 * 6.620073 + 0.25 * 5.521461 = 6.345416.
    assert modes == 2
    assert kl == pytest.approx(6.345416, abs=1e-5)


def test_histogram_states_sum_across_processes():
    """What DDP's reduction does (dist_reduce_fx="sum"): two ranks' histograms merged equal one
    histogram of all samples."""
    rank0, rank1, both = ModeHistogram(1000), ModeHistogram(1000), ModeHistogram(1000)
    rank0.update(torch.tensor([1, 2, 2]))
    rank1.update(torch.tensor([2, 7]))
    both.update(torch.tensor([1, 2, 2, 2, 7]))
    rank0.merge_state(rank1)
    assert torch.equal(rank0.counts, both.counts)
    assert _scores(rank0) == _scores(both)
    assert rank0._reductions["counts"].__name__ == "dim_zero_sum"
    # Each rank draws its share; the shares add up to the sample count.
    assert [_shares(26000, 3, rank) for rank in range(3)] == [8667, 8667, 8666]


def test_histogram_refuses_modes_out_of_range_and_reports_nan_without_samples():
    metric = ModeHistogram(1000)
    with pytest.raises(ValueError, match="0..999"):
        metric.update(torch.tensor([1000]))
    with pytest.raises(ValueError, match="integers"):
        metric.update(torch.tensor([1.0]))
    modes, kl = _scores(metric)
    assert modes == 0 and math.isnan(kl)


class _PixelDigit(torch.nn.Module):
    """A stand-in digit classifier: the digit is round(10 * pixel (0, 0))."""

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        digits = (images[:, 0, 0, 0] * 10).round().long()
        return torch.nn.functional.one_hot(digits, 10).float()


def test_channels_are_classified_in_order_into_100_d0_plus_10_d1_plus_d2():
    stacks = torch.zeros(3, 3, 8, 8)
    for row, digits in enumerate([(3, 0, 7), (0, 0, 0), (9, 8, 1)]):
        for channel, digit in enumerate(digits):
            stacks[row, channel, 0, 0] = digit / 10
    classifier = StackedModeClassifier(_PixelDigit())
    assert classifier(stacks).tolist() == [307, 0, 981]
    modes, confidence = classifier.predict(stacks)
    assert modes.tolist() == [307, 0, 981]
    # Logits one-hot: top probability e / (e + 9) = 0.23196 per channel, cubed 0.012482.
    assert confidence.tolist() == pytest.approx([0.012482] * 3, abs=1e-6)


# --- the data module ---------------------------------------------------------------------------


def _digit_lookup(split: str) -> dict[bytes, set[int]]:
    """Integer pixels of every digit of ``split`` (as data=digits splits them) -> its labels."""
    images, labels = DigitsDataModule().real_images(split)
    pixels = ((images.double() + 1) * 8).round().to(torch.uint8)
    lookup: dict[bytes, set[int]] = {}
    for image, label in zip(pixels, labels.tolist(), strict=True):
        lookup.setdefault(image.numpy().tobytes(), set()).add(label)
    return lookup


def _channel_digits(stacks: torch.Tensor, lookup: dict[bytes, set[int]]) -> list[list[set[int]]]:
    """For each stack, the labels each channel could have: empty if the channel is not a digit
    image of the lookup."""
    pixels = ((stacks.double() + 1) * 8).round().to(torch.uint8)
    return [[lookup.get(channel.numpy().tobytes(), set()) for channel in stack] for stack in pixels]


def _check_stacks(stacks: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    assert stacks.dtype == torch.float32 and stacks.shape[1:] == (3, 8, 8)
    assert stacks.min() >= -1 and stacks.max() <= 1
    # Pixels are exactly the 17 levels 2 k / 16 - 1.
    assert torch.equal(((stacks + 1) * 8).round() / 8 - 1, stacks)
    lookup = _digit_lookup(split)
    for candidates, label in zip(_channel_digits(stacks, lookup), labels.tolist(), strict=True):
        assert all(candidates), f"a channel is not a {split} digit"
        d0, d1, d2 = label // 100, label // 10 % 10, label % 10
        assert d0 in candidates[0] and d1 in candidates[1] and d2 in candidates[2]


def test_batches_are_three_real_digits_of_their_split_with_matching_labels():
    dm = StackedDigitsDataModule(num_train=640, num_val=300, batch_size=64)
    assert dm.data_shape == (3, 8, 8) and dm.num_classes == 1000 and dm.max_level == 16
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 10
    _check_stacks(
        torch.cat([x for x, _ in train_batches]), torch.cat([y for _, y in train_batches]), "train"
    )
    val_batches = list(dm.val_dataloader())
    assert sum(len(y) for _, y in val_batches) == 300
    _check_stacks(
        torch.cat([x for x, _ in val_batches]), torch.cat([y for _, y in val_batches]), "val"
    )
    # Held-out stacks are made of held-out digits only (not of training digits).
    val_x, _ = dm.real_images("val")
    assert not any(all(c) for c in _channel_digits(val_x, _digit_lookup("train")))
    ref_x, ref_y = dm.reference_stacks(200, "val", stream=3)
    _check_stacks(ref_x, ref_y, "val")


def test_channels_are_independent_uniform_draws():
    dm = StackedDigitsDataModule(num_train=20000, batch_size=1000)
    batches = list(dm.train_dataloader())
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert len(labels) == 20000
    digits = torch.stack([labels // 100, labels // 10 % 10, labels % 10], dim=1)
    # Every pair of digits occurs in every pair of channels.
    for a, b in ((0, 1), (0, 2), (1, 2)):
        pairs = torch.bincount(10 * digits[:, a] + digits[:, b], minlength=100)
        assert (pairs > 0).all()
    # P(d0 == d1) = sum_k p_k^2 for independent channels, p_k = the training digits' class
    # shares (0.1000 at the defaults); its standard error over 20,000 stacks is 0.0021, the
    # tolerance 0.008 about 3.8 of them (dependent channels, e.g. one digit in all three, give 1).
    _, train_labels = DigitsDataModule().real_images("train")
    shares = torch.bincount(train_labels, minlength=10).double() / len(train_labels)
    expected = float((shares**2).sum())
    for a, b in ((0, 1), (0, 2), (1, 2)):
        same = float((digits[:, a] == digits[:, b]).double().mean())
        assert same == pytest.approx(expected, abs=0.008)
    # Each channel's digits follow the class shares (uniform over the 1,438 training images).
    for channel in range(3):
        counts = torch.bincount(digits[:, channel], minlength=10).double() / 20000
        assert torch.allclose(counts, shares, atol=0.012)
    # The same image in two channels: 1 / 1,438 = 0.0007 of stacks for independent draws.
    same_image = (images[:, 0] == images[:, 1]).flatten(1).all(1).double().mean()
    assert float(same_image) < 0.003


def test_epochs_are_fixed_by_seed_and_epoch_and_resume_mid_epoch():
    def epoch_batches(seed: int, epoch: int, state: dict | None = None) -> list[torch.Tensor]:
        dm = StackedDigitsDataModule(num_train=96, num_val=32, batch_size=16, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        if state is not None:
            loader.load_state_dict(state)
        return [x for x, _ in loader]

    first = epoch_batches(0, 0)
    assert len(first) == 6
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(0, 0), strict=True))
    # Another epoch, another seed: other stacks.
    assert not torch.equal(first[0], epoch_batches(0, 1)[0])
    assert not torch.equal(first[0], epoch_batches(1, 0)[0])
    # Resuming epoch 1 after its 4th batch delivers exactly its last two batches.
    epoch1 = epoch_batches(0, 1)
    resumed = epoch_batches(0, 0, {"epoch": 1, "batches": 4})
    assert len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, epoch1[4:], strict=True))
    # real_images("train") are the first epoch's stacks.
    dm = StackedDigitsDataModule(num_train=96, num_val=32, batch_size=16)
    assert torch.equal(dm.real_images("train")[0], torch.cat(first))


def _fit(root: Path, steps: int, ckpt_path: Path | None = None, every_batch: bool = False):
    nets = {
        "generator": {
            "_target_": "lit_gp.nets.DCGANGenerator",
            "image_shape": [3, 8, 8],
            "dim": 4,
            "latent_dim": 8,
        },
        "critic": {"_target_": "lit_gp.nets.DCGANCritic", "image_shape": [3, 8, 8], "dim": 4},
    }
    module = GANModule(
        **nets,
        penalty={"_target_": "lit_gp.penalties.wgan_gp", "weight": 1.0},
        n_critic=2,
        num_eval_samples=16,
    )
    # 3 batches per epoch: resumes land mid-epoch and at epoch ends; dequantization noise too.
    data = StackedDigitsDataModule(num_train=48, num_val=16, batch_size=16, dequantize=True)
    # test_resume's Trainer: checkpoints after every batch, validation between them.
    return fit_for_resume(module, data, root, steps, every_batch=every_batch, ckpt_path=ckpt_path)


def test_resume_from_any_batch_is_bitwise_identical(tmp_path: Path):
    steps = 5
    L.seed_everything(0, verbose=False)
    expected = _fit(tmp_path, steps, every_batch=True).state_dict()
    checkpoints = sorted(
        (tmp_path / "checkpoints").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1])
    )
    assert len(checkpoints) == 2 * steps
    # After batches 3 (epoch end, mid n_critic cycle), 4 (mid-epoch, after a generator step),
    # 5 (mid-epoch, mid-cycle) and 6 (epoch end, after a generator step).
    for path in checkpoints[2:6]:
        L.seed_everything(123, verbose=False)
        resumed = _fit(tmp_path / "resumed", steps, ckpt_path=path).state_dict()
        changed = [key for key in expected if not torch.equal(expected[key], resumed[key])]
        assert not changed, f"resuming from {path.name} changed {changed}"


# --- the callback: the real-data reference and a collapsed generator ---------------------------


class _Module:
    """What the callback needs of a LightningModule: ``sample(n)``, ``device``, ``log_dict``."""

    def __init__(self, sample) -> None:
        self.sample = sample
        self.device = torch.device("cpu")
        self.logged: dict[str, float] = {}

    def log_dict(self, logs, **kwargs) -> None:
        self.logged.update({key: float(value) for key, value in logs.items()})


def _validate(callback: StackedModes, dm: StackedDigitsDataModule, module: _Module) -> dict:
    trainer = SimpleNamespace(datamodule=dm, world_size=1, global_rank=0, sanity_checking=False)
    callback.setup(trainer, module, "fit")
    callback.on_validation_epoch_end(trainer, module)
    return module.logged


def test_real_held_out_stacks_cover_over_990_modes_with_26000_samples(cache_dir: Path):
    """The real-data reference the callback computes at setup: 26,000 held-out stacks scored
    with the digits classifier. Measured at the defaults: 1000 modes, KL 0.058. Expected for
    true labels: KL(shares^3 || uniform) = 0.042 from the held-out digits' uneven class shares
    plus the histogram's sampling noise, about 999 / 52,000 = 0.019 (a simulation: 0.061)."""
    dm = StackedDigitsDataModule()
    callback = StackedModes(num_samples=26000)
    trainer = SimpleNamespace(datamodule=dm, world_size=1, global_rank=0, sanity_checking=False)
    callback.setup(trainer, _Module(None), "fit")
    assert callback.real_scores["modes_covered"] > 990
    assert callback.real_scores["mode_kl"] < 0.1
    # Measured: 0.891.
    assert callback.real_scores["mode_confidence"] > 0.8
    # The protocol's blind spot: uniform pixel noise covers most modes too (measured: 920 of
    # 1000 with 10,000 samples, 984 with 26,000; KL 0.56, 0.54); only the confidence (measured:
    # 0.27) tells it from digits.
    noise = torch.rand(10000, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_scores = callback.score(noise)
    assert noise_scores["modes_covered"] > 850 and noise_scores["mode_kl"] > 0.3
    assert noise_scores["mode_confidence"] < 0.5
    # acc^3 estimates the share of real stacks classified right in all three channels.
    assert callback.digit_accuracy > 0.9
    pool, pool_modes = dm.reference_stacks(5000, "val", stream=1)
    right = float((callback.classifier(pool) == pool_modes).double().mean())
    assert right == pytest.approx(callback.stack_accuracy, abs=0.02)
    # The classifier is data=digits' feature classifier, cached once.
    assert len(list(cache_dir.glob("digits_classifier_*.pt"))) == 1


def test_real_stacks_as_generator_cover_the_expected_number_of_modes(cache_dir: Path):
    """2,600 real held-out stacks through the validation path (3 generator calls of at most
    1,000). Uniform modes would cover 1000 (1 - (1 - 1/1000)^2600) = 925.8 on average; with the
    held-out digits' class shares (0.078-0.125) a multinomial simulation gives 905 +- 8 modes and
    KL 0.256 +- 0.011 (of which KL(shares^3 || uniform) = 0.042 is the shares' own)."""
    dm = StackedDigitsDataModule()
    pool, _ = dm.reference_stacks(2600, "val", stream=1)
    offset = 0

    def sample(n: int) -> torch.Tensor:
        nonlocal offset
        offset += n
        return pool[offset - n : offset]

    callback = StackedModes(num_samples=2600)
    logs = _validate(callback, dm, _Module(sample))
    assert offset == 2600
    # About 4 standard deviations either side (classifier errors move a few samples).
    assert 870 < logs["val/modes_covered"] < 940
    assert 0.2 < logs["val/mode_kl"] < 0.32
    assert logs["val/stack_classifier_accuracy"] == pytest.approx(callback.digit_accuracy**3)


def test_a_generator_of_one_fixed_stack_covers_one_mode(cache_dir: Path):
    dm = StackedDigitsDataModule()
    stack = dm.real_images("val", 1)[0]
    module = _Module(lambda n: stack.expand(n, -1, -1, -1))
    callback = StackedModes(num_samples=2600)
    logs = _validate(callback, dm, module)
    assert logs["val/modes_covered"] == 1
    assert logs["val/mode_kl"] == pytest.approx(LOG_1000, abs=1e-5)
    # Every sample has the stack's own confidence.
    _, confidence = callback.classifier.predict(stack)
    assert logs["val/mode_confidence"] == pytest.approx(float(confidence), rel=1e-5)


def test_the_callback_does_nothing_for_other_data(cache_dir: Path):
    module = _Module(lambda n: torch.zeros(n, 1, 8, 8))
    assert _validate(StackedModes(), DigitsDataModule(), module) == {}


# --- end to end --------------------------------------------------------------------------------


def test_training_on_stacked_digits_logs_modes_covered_and_mode_kl(
    compose_config, cache_dir: Path, tmp_path: Path
):
    cfg = compose_config(
        "model=wgangp",
        "data=stacked_digits",
        "data.num_train=256",
        "data.num_val=64",
        "callbacks.stacked_modes.num_samples=500",
        "optimized_metric=val/modes_covered",
        fast=FAST_IMAGES,
    )
    assert cfg.image_shape == [3, 8, 8]
    modes = train(cfg)
    assert modes is not None and 1 <= modes <= 500
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["val/mode_kl"] <= LOG_1000 + 1e-5
    assert metrics["val/modes_covered"] == modes
    assert 0.8 < metrics["val/stack_classifier_accuracy"] < 1
    assert 0 < metrics["val/mode_confidence"] <= 1
    model = GANModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.sample(2).shape == (2, 3, 8, 8)


def test_the_digit_split_and_classifier_are_those_of_data_digits(cache_dir: Path):
    stacked, digits = StackedDigitsDataModule(seed=3), DigitsDataModule(seed=3)
    for split in ("train", "val"):
        for ours, theirs in zip(
            stacked.digits.real_images(split), digits.real_images(split), strict=True
        ):
            assert torch.equal(ours, theirs)
