"""Toy metrics: mode coverage and the Wasserstein estimate on hand-computable inputs."""

import math

import pytest
import torch

from lit_gp.data import sample_toy
from lit_gp.errors import ConfigError
from lit_gp.metrics import ModeCoverage, WassersteinEstimate

RING = torch.tensor([[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)])


def _coverage(samples: torch.Tensor, **kwargs) -> dict[str, float]:
    metric = ModeCoverage(RING, std=0.01, **kwargs)
    metric.update(samples)
    return {k: v.item() for k, v in metric.compute().items()}


def _items(metric: ModeCoverage) -> dict[str, float]:
    return {k: v.item() for k, v in metric.compute().items()}


def test_samples_exactly_at_five_of_eight_modes():
    samples = RING[[0, 1, 2, 3, 4]].repeat(20, 1)
    assert _coverage(samples) == {"modes_covered": 5.0, "high_quality_fraction": 1.0}


def test_far_samples_cover_nothing():
    samples = torch.full((100, 2), 50.0)
    assert _coverage(samples) == {"modes_covered": 0.0, "high_quality_fraction": 0.0}


def test_mode_below_min_fraction_not_covered():
    # 1000 samples: modes 0..6 get 141 or 142 each (991), mode 7 gets 9 = 0.9 % < 1 %.
    samples = torch.cat([RING[torch.arange(991) % 7], RING[7].repeat(9, 1)])
    assert _coverage(samples) == {"modes_covered": 7.0, "high_quality_fraction": 1.0}
    # Exactly 1 % is enough ("at least min_fraction").
    samples = torch.cat([RING[torch.arange(990) % 7], RING[7].repeat(10, 1)])
    assert _coverage(samples)["modes_covered"] == 8.0


def test_min_fraction_compares_ratio_exactly():
    # 7 / 100 is 0.07 exactly as a ratio, although 0.07 * 100 > 7 in floating point.
    samples = torch.cat([RING[0].repeat(7, 1), torch.full((93, 2), 50.0)])
    assert _coverage(samples, min_fraction=0.07)["modes_covered"] == 1.0


def test_quality_threshold_at_three_std():
    std = 0.01
    inside = RING[0] + torch.tensor([2.9 * std, 0.0])
    outside = RING[0] + torch.tensor([0.0, 3.1 * std])
    assert _coverage(inside[None])["high_quality_fraction"] == 1.0
    assert _coverage(outside[None])["high_quality_fraction"] == 0.0
    both = torch.stack([inside, outside])
    assert _coverage(both) == {"modes_covered": 1.0, "high_quality_fraction": 0.5}
    assert _coverage(outside[None], quality_stds=3.2)["high_quality_fraction"] == 1.0


def test_real_gaussians8_data():
    from lit_gp.data.toy import toy_mode_std, toy_modes

    n = 2500
    metric = ModeCoverage(toy_modes("gaussians8"), std=toy_mode_std("gaussians8"))
    metric.update(sample_toy("gaussians8", n, torch.Generator().manual_seed(0)))
    result = metric.compute()
    assert result["modes_covered"].item() == 8.0
    # |N(0, I_2)| is Rayleigh: P(radius <= 3) = 1 - exp(-9 / 2).
    expected = 1 - math.exp(-4.5)
    assert result["high_quality_fraction"].item() == pytest.approx(expected, abs=0.01)


def test_coverage_multi_batch_and_merge_equal_one_batch():
    gen = torch.Generator().manual_seed(0)
    samples = RING[torch.randint(0, 6, (300,), generator=gen)]
    samples = samples + 0.02 * torch.randn(300, 2, generator=gen)

    one = ModeCoverage(RING, std=0.01)
    one.update(samples)
    many = ModeCoverage(RING, std=0.01)
    for chunk in samples.split([1, 99, 200]):
        many.update(chunk)
    assert _items(many) == pytest.approx(_items(one))
    assert torch.equal(many.mode_counts, one.mode_counts)

    # merge_state uses dist_reduce_fx, i.e. what DDP ranks would do.
    left, right = ModeCoverage(RING, std=0.01), ModeCoverage(RING, std=0.01)
    left.update(samples[:120])
    right.update(samples[120:])
    left.merge_state(right)
    assert torch.equal(left.mode_counts, one.mode_counts)
    assert _items(left) == pytest.approx(_items(one))
    assert 0.0 < one.compute()["high_quality_fraction"].item() < 1.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"std": 0.0}, "std"),
        ({"std": 0.1, "quality_stds": -1.0}, "quality_stds"),
        ({"std": 0.1, "min_fraction": 0.0}, "min_fraction"),
        ({"std": 0.1, "min_fraction": 1.5}, "min_fraction"),
    ],
)
def test_coverage_bad_config(kwargs, key):
    with pytest.raises(ConfigError) as err:
        ModeCoverage(RING, **kwargs)
    assert err.value.key == key


def test_coverage_rejects_bad_samples_shape():
    with pytest.raises(ValueError):
        ModeCoverage(RING, std=0.1).update(torch.zeros(5, 3))


def test_wasserstein_constant_scores():
    metric = WassersteinEstimate()
    metric.update(torch.full((16, 1), 3.0), torch.full((8,), -1.5))
    assert metric.compute().item() == 4.5
    assert metric.compute().shape == ()


def test_wasserstein_multi_batch_equals_one_batch():
    # Real mean (1 + 2 + 3 + 4) / 4 = 2.5, fake mean (0 + 10 + 20) / 3 = 10.
    many = WassersteinEstimate()
    many.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[0.0]]))
    many.update(torch.tensor([[4.0]]), torch.tensor([10.0, 20.0]))
    assert many.compute().item() == pytest.approx(-7.5)

    one = WassersteinEstimate()
    one.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 10.0, 20.0]))
    assert one.compute().item() == pytest.approx(many.compute().item())


def test_wasserstein_rejects_ambiguous_shapes():
    with pytest.raises(ValueError):
        WassersteinEstimate().update(torch.zeros(4, 2), torch.zeros(4))


def test_wasserstein_1_by_hand() -> None:
    from lit_gp.metrics.toy import wasserstein_1

    square = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    # Each point moves up by 1: W1 = 1; the same points cost nothing, in any order.
    assert wasserstein_1(square, square + torch.tensor([0.0, 1.0])) == pytest.approx(1.0)
    assert wasserstein_1(square, square.flip(0)) == pytest.approx(0.0)
    # The optimal plan pairs (0,0)-(0,3) and (4,0)-(4,0): cost (3 + 0) / 2, not the crossed 2.5.
    assert wasserstein_1(
        torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([[0.0, 3.0], [4.0, 0.0]])
    ) == pytest.approx(1.5)


def test_swiss_roll_logs_its_w1_distance(compose_config, tmp_path) -> None:
    import json

    from lit_gp.training import train

    train(compose_config("data=swissroll"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/w1_distance"] > 0
    assert "val/modes_covered" not in metrics
