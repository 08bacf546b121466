"""The generator's moving average (lit_gp.ema): warm-up values by hand, the first generator
forgotten, resume and the option's contract."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lit_gp import ConfigError
from lit_gp.ema import averaged_generator


class Scalar(nn.Module):
    """One parameter and one buffer, set by hand (the buffer to the parameter's negative)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("running", torch.zeros((), dtype=torch.float64))

    def set(self, value: float) -> None:
        with torch.no_grad():
            self.weight.fill_(value)
            self.running.fill_(-value)


def feed(averaged: AveragedModel, module: Scalar, values: list[float]) -> list[float]:
    """Set ``module`` to each value in turn and update the average; the averages after each."""
    out = []
    for value in values:
        module.set(value)
        averaged.update_parameters(module)
        out.append(float(averaged.module.weight.detach()))
        assert float(averaged.module.running) == -out[-1]  # buffers are averaged alike
    return out


def test_first_updates_are_the_hand_computed_warmup() -> None:
    module = Scalar()
    averaged = averaged_generator(module, 0.9)
    # The first update copies; the update adding the (n + 1)-th value uses
    # d = min(0.9, (1 + n) / (10 + n)): 2/11, then 3/12.
    #   e0 = 4
    #   e1 = 2/11 * 4 + 9/11 * 2 = 26/11
    #   e2 = 3/12 * 26/11 + 9/12 * (-1) = 26/44 - 33/44 = -7/44
    got = feed(averaged, module, [4.0, 2.0, -1.0])
    assert got == pytest.approx([4.0, 26 / 11, -7 / 44], rel=1e-12)
    assert int(averaged.n_averaged) == 3


def test_decay_grows_to_the_configured_one() -> None:
    # With decay 0.5 the warm-up decay (1 + n) / (10 + n) reaches 0.5 at n = 8 (9/18); from
    # there on the configured decay holds (10/19 > 0.5 is capped).
    values = [3.0, -1.0, 2.0, 0.5, 4.0, -2.0, 1.0, 0.0, 5.0, -3.0, 2.5, 1.5]
    expected = [values[0]]
    for n, value in enumerate(values[1:], start=1):
        decay = min(0.5, (1 + n) / (10 + n))
        expected.append(decay * expected[-1] + (1 - decay) * value)
    module = Scalar()
    assert feed(averaged_generator(module, 0.5), module, values) == pytest.approx(
        expected, rel=1e-12, abs=1e-15
    )
    # The last two updates used exactly 0.5: e11 = (e10 + 1.5) / 2, e10 = (e9 + 2.5) / 2.
    assert expected[-1] == pytest.approx((expected[-2] + 1.5) / 2)
    assert expected[-2] == pytest.approx((expected[-3] + 2.5) / 2)


@pytest.mark.parametrize("updates", [100, 5000])
def test_the_first_generator_is_forgotten_with_warmup_not_without(updates: int) -> None:
    # The average is linear in the values: start at 1, then feed zeros, and the average is the
    # first value's weight.
    values = [1.0] + [0.0] * updates

    # The defect: a plain EMA of decay 0.9999 keeps 0.9999 ** t of the first generator (0.99
    # after 100 updates, 0.61 after 5,000, a typical first validation).
    module = Scalar()
    plain = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True)
    plain_weight = feed(plain, module, values)[-1]
    assert plain_weight == pytest.approx(0.9999**updates, rel=1e-9)
    assert plain_weight > 0.6

    # With the warm-up the weight is prod_{n=1..t} (1 + n) / (10 + n) (all below 0.9999 for
    # t < 89,990), which telescopes to 10! (t + 1)! / (t + 10)! = 10! / ((t + 2) ... (t + 10))
    # < 10! / (t + 2) ** 9: below 3.1e-12 after 100 updates.
    module = Scalar()
    warm_weight = feed(averaged_generator(module, 0.9999), module, values)[-1]
    telescoped = math.factorial(10) * math.factorial(updates + 1) / math.factorial(updates + 10)
    assert warm_weight == pytest.approx(telescoped, rel=1e-9)
    assert warm_weight < math.factorial(10) / (updates + 2) ** 9
    if updates == 100:
        assert warm_weight < 3.1e-12


def _generator() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _step(generator: nn.Module) -> None:
    """A stand-in for a generator update: move the weights, update BatchNorm's statistics."""
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(torch.randn_like(parameter))
    generator.train()(torch.randn(8, 3))


def test_resumed_average_continues_bitwise() -> None:
    torch.manual_seed(0)
    generator = _generator()
    averaged = averaged_generator(generator, 0.999)
    for _ in range(5):
        _step(generator)
        averaged.update_parameters(generator)
    # A checkpoint holds the state dict only; the warm-up must follow from it (n_averaged).
    resumed = averaged_generator(_generator(), 0.999)
    resumed.load_state_dict(averaged.state_dict())
    for _ in range(5):
        _step(generator)
        averaged.update_parameters(generator)
        resumed.update_parameters(generator)
    assert int(resumed.n_averaged) == 10
    for name, value in averaged.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    # Not the generator itself: the BatchNorm statistics are averaged as well.
    assert not torch.equal(averaged.module[1].running_mean, generator[1].running_mean)


def test_contract() -> None:
    generator = _generator()
    assert averaged_generator(generator, None) is None
    for bad in (1.0, -0.1, float("nan"), "0.9", True):
        with pytest.raises(ConfigError) as error:
            averaged_generator(generator, bad)
        assert error.value.key == "ema_decay"
    averaged = averaged_generator(generator, 0)
    assert isinstance(averaged, AveragedModel) and averaged.use_buffers
    assert not any(parameter.requires_grad for parameter in averaged.parameters())
    assert averaged.module is not generator
    # Picklable (ddp_spawn pickles the module), and the copy averages alike.
    copy = pickle.loads(pickle.dumps(averaged))
    _step(generator)
    averaged.update_parameters(generator)
    copy.update_parameters(generator)
    for name, value in averaged.state_dict().items():
        assert torch.equal(copy.state_dict()[name], value), name
