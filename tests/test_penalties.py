"""Gradient penalties against hand-computable facts.

Most checks use critics whose input gradient is known in closed form: a linear critic
D(x) = w.x has grad D = w at every point, and a quadratic critic D(x) = 0.5 * sum(a * x^2) has
grad D = a * x. Expected values are written from the formulas, never from the code's output.
"""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lit_gp.errors import ConfigError
from lit_gp.penalties import (
    METHODS,
    check_options,
    dragan,
    r1,
    r2,
    wgan_div,
    wgan_gp,
    wgan_lp,
    zero_gp,
)

F64 = torch.float64
IMAGE = (3, 4, 4)


class LinearCritic(nn.Module):
    """D(x) = sum(w * x) per sample, so grad D = w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


class QuadraticCritic(nn.Module):
    """D(x) = 0.5 * sum(a * x^2) per sample, so grad D = a * x."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.a * x.pow(2)).flatten(1).sum(1)


class RecordingCritic(nn.Module):
    """D(x) = sum(x); keeps a copy of every input it is evaluated at."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=F64))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.scale * x.flatten(1).sum(1)


class ReluCritic(nn.Module):
    """D(x) = w . relu(x): zero input gradient wherever x < 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) @ self.w


class ZeroGradientCritic(nn.Module):
    """D(x) = sum(0 * w * x) + b: constant, but the parameters stay in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        self.b = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0 * self.w * x).sum(1) + self.b


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(batch: int, feature_shape: tuple[int, ...], seed: int = 0):
    g = _gen(seed)
    real = torch.randn(batch, *feature_shape, generator=g, dtype=F64)
    fake = torch.randn(batch, *feature_shape, generator=g, dtype=F64)
    return real, fake


def _image_w(entries: dict[tuple[int, int, int], float], fill: float = 0.0) -> torch.Tensor:
    w = torch.full(IMAGE, fill, dtype=F64)
    for index, value in entries.items():
        w[index] = value
    return w


# (w, ||w|| by hand). Norms below, above and far above 1, on flat and image-shaped inputs.
WEIGHTS = [
    pytest.param(torch.tensor([0.3, 0.4], dtype=F64), 0.5, id="flat-0.5"),
    pytest.param(torch.tensor([3.0, 4.0], dtype=F64), 5.0, id="flat-5"),
    pytest.param(torch.tensor([1.2, -1.6], dtype=F64), 2.0, id="flat-2"),
    pytest.param(_image_w({(0, 0, 0): 0.3, (2, 1, 3): -0.4}), 0.5, id="image-0.5"),
    pytest.param(_image_w({(0, 0, 0): 3.0, (1, 2, 3): 4.0}), 5.0, id="image-5"),
    pytest.param(_image_w({}, fill=0.25), math.sqrt(3.0), id="image-sqrt3"),  # 48 * 0.25^2 = 3
]

# name, options, loss(n), c(n) with d loss / d w = c(n) * w, points per sample of the batch.
CLOSED_FORMS = [
    pytest.param(
        "wgan_gp", {}, lambda n: 10 * (n - 1) ** 2, lambda n: 2 * 10 * (n - 1) / n, 1, id="wgan_gp"
    ),
    pytest.param(
        "wgan_gp",
        {"weight": 3.0},
        lambda n: 3 * (n - 1) ** 2,
        lambda n: 2 * 3 * (n - 1) / n,
        1,
        id="wgan_gp-w3",
    ),
    pytest.param(
        "wgan_lp",
        {"weight": 3.0},
        lambda n: 3 * max(0.0, n - 1) ** 2,
        lambda n: 2 * 3 * max(0.0, n - 1) / n,
        1,
        id="wgan_lp-w3",
    ),
    pytest.param(
        "zero_gp", {"weight": 3.0}, lambda n: 3 * n**2, lambda n: 2 * 3.0, 1, id="zero_gp-w3"
    ),
    pytest.param(
        "dragan",
        {"weight": 3.0, "c": 0.7},
        lambda n: 3 * (n - 1) ** 2,
        lambda n: 2 * 3 * (n - 1) / n,
        1,
        id="dragan-w3",
    ),
    pytest.param(
        "dragan",
        {"target": 0.5},
        lambda n: 10 * (n - 0.5) ** 2,
        lambda n: 2 * 10 * (n - 0.5) / n,
        1,
        id="dragan-t0.5",
    ),
    pytest.param("r1", {}, lambda n: 5 * n**2, lambda n: 10.0, 1, id="r1"),
    pytest.param("r1", {"gamma": 3.0}, lambda n: 1.5 * n**2, lambda n: 3.0, 1, id="r1-g3"),
    pytest.param("r2", {"gamma": 3.0}, lambda n: 1.5 * n**2, lambda n: 3.0, 1, id="r2-g3"),
    pytest.param("wgan_div", {}, lambda n: 2 * n**6, lambda n: 2 * 6 * n**4, 2, id="wgan_div"),
    pytest.param(
        "wgan_div",
        {"k": 0.5, "p": 3.0},
        lambda n: 0.5 * n**3,
        lambda n: 0.5 * 3 * n,
        2,
        id="wgan_div-k0.5-p3",
    ),
]


# --- 1. linear critic: grad D = w everywhere ---------------------------------------------------


@pytest.mark.parametrize(("w", "norm"), WEIGHTS)
@pytest.mark.parametrize(("name", "options", "loss_of", "coef_of", "points"), CLOSED_FORMS)
def test_linear_critic_loss_grad_norm_and_parameter_gradient(
    w, norm, name, options, loss_of, coef_of, points
):
    batch = 3
    real, fake = _data(batch, tuple(w.shape))
    critic = LinearCritic(w)

    result = METHODS[name](critic, real, fake, **options)

    assert result.loss.dim() == 0
    assert result.loss.item() == pytest.approx(loss_of(norm), rel=1e-10, abs=1e-12)
    assert result.grad_norm.shape == (points * batch,)
    assert not result.grad_norm.requires_grad
    torch.testing.assert_close(
        result.grad_norm, torch.full((points * batch,), norm, dtype=F64), rtol=1e-12, atol=1e-12
    )

    (grad_w,) = torch.autograd.grad(result.loss, critic.w)
    torch.testing.assert_close(grad_w, coef_of(norm) * w, rtol=1e-10, atol=1e-12)


def test_wgan_lp_is_zero_below_target_and_two_sided_gp_is_not():
    w = torch.tensor([0.3, 0.4], dtype=F64)  # ||w|| = 0.5 < 1
    real, fake = _data(4, (2,))
    lp = wgan_lp(LinearCritic(w), real, fake)
    gp = wgan_gp(LinearCritic(w), real, fake)
    assert lp.loss.item() == 0.0
    assert gp.loss.item() == pytest.approx(10 * 0.25)


def test_zero_weight_gives_zero_loss():
    w = torch.tensor([3.0, 4.0], dtype=F64)
    real, fake = _data(4, (2,))
    assert wgan_gp(LinearCritic(w), real, fake, weight=0).loss.item() == 0.0
    assert r1(LinearCritic(w), real, fake, gamma=0).loss.item() == 0.0


def test_plain_function_critic():
    # D(x) = 2 * sum(x) over 5 features: ||grad D|| = 2 * sqrt(5).
    real, fake = _data(4, (5,))
    result = wgan_gp(lambda x: 2 * x.sum(1), real, fake, weight=1.0)
    assert result.loss.item() == pytest.approx((2 * math.sqrt(5) - 1) ** 2)
    torch.testing.assert_close(result.grad_norm, torch.full((4,), 2 * math.sqrt(5), dtype=F64))


# --- 2. quadratic critic tells R1 from R2 ------------------------------------------------------

A = torch.tensor([1.0, 2.0], dtype=F64)
Q_REAL = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)  # a*x = [1,0], [0,2]: |.|^2 = 1, 4
Q_FAKE = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=F64)  # a*x = [3,0], [1,2]: |.|^2 = 9, 5


def test_r1_uses_real_and_r2_uses_fake():
    gamma = 4.0
    on_real = r1(QuadraticCritic(A), Q_REAL, Q_FAKE, gamma=gamma)
    on_fake = r2(QuadraticCritic(A), Q_REAL, Q_FAKE, gamma=gamma)

    assert on_real.loss.item() == pytest.approx(gamma / 2 * (1 + 4) / 2)  # 5
    assert on_fake.loss.item() == pytest.approx(gamma / 2 * (9 + 5) / 2)  # 14
    torch.testing.assert_close(on_real.grad_norm, torch.tensor([1.0, 2.0], dtype=F64))
    torch.testing.assert_close(on_fake.grad_norm, torch.tensor([3.0, math.sqrt(5)], dtype=F64))


def test_r1_parameter_gradient_on_quadratic_critic():
    # loss = gamma/2 * mean_i sum_j a_j^2 x_ij^2  ->  d/da_j = gamma * a_j * mean_i x_ij^2
    gamma = 4.0
    critic = QuadraticCritic(A)
    r1(critic, Q_REAL, Q_FAKE, gamma=gamma).loss.backward()
    expected = gamma * A * torch.tensor([(1 + 0) / 2, (0 + 1) / 2], dtype=F64)
    torch.testing.assert_close(critic.a.grad, expected)


def test_wgan_div_averages_over_real_and_fake():
    # norms at real and fake: 1, 2, 3, sqrt(5)
    p2 = wgan_div(QuadraticCritic(A), Q_REAL, Q_FAKE, k=1.0, p=2.0)
    assert p2.loss.item() == pytest.approx((1 + 4 + 9 + 5) / 4)
    p6 = wgan_div(QuadraticCritic(A), Q_REAL, Q_FAKE)  # k=2, p=6
    assert p6.loss.item() == pytest.approx(2 * (1 + 64 + 729 + 125) / 4)
    torch.testing.assert_close(p6.grad_norm, torch.tensor([1.0, 2.0, 3.0, math.sqrt(5)], dtype=F64))


# --- 3. the target option ----------------------------------------------------------------------


@pytest.mark.parametrize(("w", "norm"), WEIGHTS)
def test_wgan_gp_target_two(w, norm):
    real, fake = _data(3, tuple(w.shape))
    result = wgan_gp(LinearCritic(w), real, fake, target=2.0, weight=10.0)
    assert result.loss.item() == pytest.approx(10 * (norm - 2) ** 2, rel=1e-10, abs=1e-12)
    lp = wgan_lp(LinearCritic(w), real, fake, target=2.0, weight=10.0)
    assert lp.loss.item() == pytest.approx(10 * max(0.0, norm - 2) ** 2, rel=1e-10, abs=1e-12)


# --- 4. evaluation points ---------------------------------------------------------------------


def _patch_uniform(monkeypatch, per_sample: torch.Tensor, full_shape: tuple[int, ...]) -> None:
    """Make every U[0,1] draw deterministic: a (B,) draw returns ``per_sample``, a draw of the
    data's shape returns ones; any other draw is left alone."""
    original_rand = torch.rand

    def rand(*size, **kwargs):
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        if tuple(shape) == tuple(per_sample.shape):
            return per_sample.to(dtype=dtype)
        if tuple(shape) == full_shape:
            return torch.ones(full_shape, dtype=dtype)
        return original_rand(*size, **kwargs)

    def rand_like(tensor, **kwargs):
        return torch.ones_like(tensor, **kwargs)

    monkeypatch.setattr(torch, "rand", rand)
    monkeypatch.setattr(torch, "rand_like", rand_like)


@pytest.mark.parametrize("method", [wgan_gp, wgan_lp, zero_gp])
def test_interpolates_use_one_eps_per_sample(method):
    torch.manual_seed(0)
    batch = 6
    real = torch.ones(batch, *IMAGE, dtype=F64)
    fake = torch.zeros(batch, *IMAGE, dtype=F64)
    critic = RecordingCritic()
    method(critic, real, fake)

    (points,) = critic.inputs
    assert points.shape == real.shape
    eps = points.flatten(1)[:, 0]
    # x_hat_i = eps_i * 1 + (1 - eps_i) * 0 = eps_i everywhere in sample i
    torch.testing.assert_close(points, eps.view(-1, 1, 1, 1).expand_as(points), rtol=0, atol=0)
    assert ((eps >= 0) & (eps <= 1)).all()
    assert len(set(eps.tolist())) == batch  # a different eps for every sample


@pytest.mark.parametrize("method", [wgan_gp, wgan_lp, zero_gp])
def test_interpolates_formula_with_known_eps(method, monkeypatch):
    real, fake = _data(4, IMAGE)
    eps = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    _patch_uniform(monkeypatch, eps, tuple(real.shape))
    critic = RecordingCritic()
    method(critic, real, fake)

    (points,) = critic.inputs
    expected = torch.stack(
        [real[0] * 0 + fake[0], 0.25 * real[1] + 0.75 * fake[1], 0.5 * (real[2] + fake[2]), real[3]]
    )
    torch.testing.assert_close(points, expected)


def test_r1_r2_wgan_div_evaluate_at_the_samples():
    real, fake = _data(3, IMAGE)
    critic = RecordingCritic()
    r1(critic, real, fake)
    r2(critic, real, fake)
    wgan_div(critic, real, fake)
    at_real, at_fake, at_both = critic.inputs
    torch.testing.assert_close(at_real, real, rtol=0, atol=0)
    torch.testing.assert_close(at_fake, fake, rtol=0, atol=0)
    torch.testing.assert_close(at_both, torch.cat([real, fake]), rtol=0, atol=0)


def _half_zeros_half_fours(batch: int) -> torch.Tensor:
    """Every sample is half 0 and half 4: mean 2, population std exactly 2 (the sample std,
    2 * sqrt(n / (n - 1)), is not)."""
    real = torch.zeros(batch, *IMAGE, dtype=F64)
    real[..., :2] = 4.0
    return real


def test_dragan_one_alpha_per_sample_and_population_std(monkeypatch):
    real = _half_zeros_half_fours(4)
    fake = torch.zeros_like(real)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    _patch_uniform(monkeypatch, alpha, tuple(real.shape))  # u = 1 everywhere
    critic = RecordingCritic()
    dragan(critic, real, fake, c=0.5)

    (points,) = critic.inputs
    # x + alpha_i * c * std * u = x + alpha_i * 0.5 * 2 * 1
    shift = (0.5 * 2.0 * alpha).view(-1, 1, 1, 1).expand_as(real)
    torch.testing.assert_close(points - real, shift, rtol=0, atol=1e-12)


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_dragan_perturbation_is_bounded_by_c_std(c):
    torch.manual_seed(0)
    real = _half_zeros_half_fours(4)  # std = 2
    critic = RecordingCritic()
    dragan(critic, real, torch.zeros_like(real), c=c)

    (points,) = critic.inputs
    shift = points - real
    assert (shift >= 0).all()
    assert (shift <= c * 2.0 + 1e-12).all()
    assert shift.max() > c * 1.0  # scaled by std = 2, not 1
    # u is drawn per element: the shift varies inside a sample
    flat = shift.flatten(1)
    assert (flat.max(1).values > flat.min(1).values).all()


def test_dragan_with_c_zero_evaluates_at_real():
    real = _half_zeros_half_fours(2)
    critic = RecordingCritic()
    dragan(critic, real, torch.zeros_like(real), c=0.0)
    torch.testing.assert_close(critic.inputs[0], real, rtol=0, atol=0)


# --- 5. finite at zero input gradient ---------------------------------------------------------

ALL_CALLS = [pytest.param(name, {}, id=name) for name in METHODS] + [
    pytest.param("wgan_div", {"p": 1.0}, id="wgan_div-p1"),
    pytest.param("wgan_div", {"p": 1.5}, id="wgan_div-p1.5"),
    pytest.param("wgan_lp", {"target": 0.0}, id="wgan_lp-t0"),
]


@pytest.mark.parametrize("critic_cls", [ReluCritic, ZeroGradientCritic])
@pytest.mark.parametrize(("name", "options"), ALL_CALLS)
def test_finite_at_zero_input_gradient(critic_cls, name, options):
    g = _gen(1)
    # far below zero: DRAGAN's shift (<= 0.5 * std ~ 0.05) keeps the points negative
    real = -5 + 0.1 * torch.randn(4, 3, generator=g)
    fake = -5 + 0.1 * torch.randn(4, 3, generator=g)
    critic = critic_cls()

    result = METHODS[name](critic, real, fake, **options)
    result.loss.backward()

    assert torch.isfinite(result.loss)
    assert (result.grad_norm == 0).all()
    grads = [p.grad for p in critic.parameters() if p.grad is not None]
    assert grads, "the penalty did not reach the critic's parameters"
    for grad in grads:
        assert torch.isfinite(grad).all()


# --- 6. configuration checks --------------------------------------------------------------------


def _bn_critic() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _nested_bn_critic() -> nn.Module:
    body = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    return nn.Sequential(nn.Sequential(body), nn.Linear(2 * 2 * 2, 1))


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize(("make_critic", "shape"), [(_bn_critic, (2,)), (_nested_bn_critic, IMAGE)])
def test_batch_norm_is_refused_unless_allowed(name, make_critic, shape):
    torch.manual_seed(0)
    real = torch.randn(4, *shape)
    fake = torch.randn(4, *shape)
    with pytest.raises(ConfigError) as excinfo:
        METHODS[name](make_critic(), real, fake)
    assert excinfo.value.key == "critic"
    assert "BatchNorm" in str(excinfo.value)

    result = METHODS[name](make_critic(), real, fake, allow_batch_norm=True)
    assert torch.isfinite(result.loss)


BAD_VALUES = [
    (wgan_gp, "weight", -1.0),
    (wgan_gp, "target", -1.0),
    (wgan_lp, "weight", -0.5),
    (wgan_lp, "target", -2.0),
    (zero_gp, "weight", -1.0),
    (dragan, "weight", -1.0),
    (dragan, "c", -0.1),
    (dragan, "target", -1.0),
    (r1, "gamma", -1.0),
    (r2, "gamma", -10.0),
    (wgan_div, "k", -2.0),
    (wgan_div, "p", 0.5),
]


@pytest.mark.parametrize(("method", "option", "value"), BAD_VALUES)
def test_bad_option_values_raise_config_error(method, option, value):
    real, fake = _data(2, (2,))
    critic = LinearCritic(torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(ConfigError) as excinfo:
        method(critic, real, fake, **{option: value})
    assert excinfo.value.key == option

    with pytest.raises(ConfigError) as excinfo:
        check_options(method, {option: value})
    assert excinfo.value.key == option


def test_check_options_refuses_unknown_names():
    with pytest.raises(ConfigError) as excinfo:
        check_options(wgan_gp, {"gamma": 10.0})
    assert excinfo.value.key == "gamma"
    with pytest.raises(ConfigError) as excinfo:
        check_options(r1, {"weight": 10.0})
    assert excinfo.value.key == "weight"
    with pytest.raises(ConfigError) as excinfo:
        check_options(wgan_div, {"critic": None})
    assert excinfo.value.key == "critic"


@pytest.mark.parametrize(
    ("method", "options"),
    [
        (wgan_gp, {}),
        (wgan_gp, {"weight": 5.0, "target": 1}),
        (wgan_lp, {"weight": 0, "target": 2.0}),
        (zero_gp, {"weight": 1.0}),
        (dragan, {"weight": 10.0, "c": 0.5, "target": 1.0, "allow_batch_norm": True}),
        (r1, {"gamma": 0.1}),
        (r2, {"gamma": 10}),
        (wgan_div, {"k": 2.0, "p": 6.0}),
        (wgan_div, {"p": 1}),
    ],
)
def test_check_options_accepts_valid_options(method, options):
    check_options(method, options)


# --- 7. double backward reaches the critic's parameters -----------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)


def test_wgan_gp_loss_trains_every_parameter_that_shapes_the_gradient():
    critic = _mlp()
    real, fake = _data(8, (2,))
    wgan_gp(critic, real, fake).loss.backward()

    first, _, last = critic
    for param in (first.weight, first.bias, last.weight):
        assert param.grad is not None
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0
    # the output bias does not change dD/dx, so the penalty has no gradient for it
    assert last.bias.grad is None or (last.bias.grad == 0).all()


@pytest.mark.parametrize("name", ["wgan_gp", "r1", "wgan_div"])
def test_penalty_parameter_gradient_matches_finite_differences(name):
    critic = _mlp()
    real, fake = _data(3, (2,))
    names = [n for n, _ in critic.named_parameters()]
    start = tuple(p.detach().clone().requires_grad_(True) for p in critic.parameters())

    def loss(*params):
        torch.manual_seed(123)  # the same interpolation points on every call
        params_by_name = dict(zip(names, params, strict=True))
        return METHODS[name](
            lambda x: functional_call(critic, params_by_name, (x,)), real, fake
        ).loss

    assert torch.autograd.gradcheck(loss, start)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bf16_autocast_penalty_is_finite_and_matches_fp32(name):
    # Under autocast the generator's output is bf16 while the data stays fp32.
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    real = torch.randn(32, 2)
    fake = torch.randn(32, 2)
    method = METHODS[name]
    torch.manual_seed(1)
    reference = method(critic, real, fake).loss
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(critic, real, fake.bfloat16()).loss
    loss.backward()
    assert torch.isfinite(loss)
    # The output bias does not change dD/dx, so it gets no gradient from a penalty.
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in critic.parameters())
    torch.testing.assert_close(loss.float(), reference, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_scale_is_undone_before_the_norm(name):
    # A GradScaler-style scale of 1024: if the input gradient were not divided by it again,
    # the penalty would change by a factor of up to 1024^p.
    critic = LinearCritic(torch.tensor([0.6, 1.7], dtype=F64))
    real, fake = _data(8, (2,))
    torch.manual_seed(3)
    plain = METHODS[name](critic, real, fake)
    torch.manual_seed(3)
    scaled = METHODS[name](critic, real, fake, loss_scale=1024.0)
    torch.testing.assert_close(scaled.loss, plain.loss)
    torch.testing.assert_close(scaled.grad_norm, plain.grad_norm)


def test_loss_scale_is_not_a_config_option():
    with pytest.raises(ConfigError) as error:
        check_options(wgan_gp, {"loss_scale": 2.0})
    assert error.value.key == "loss_scale"


def test_loss_scale_of_lightnings_start_does_not_overflow_fp16():
    # Lightning's GradScaler starts at 2**16, above fp16's largest number (65504). A critic that
    # computes in fp16 must still give a finite input gradient and the unscaled penalty.
    w = torch.tensor([0.6, 1.7])

    def fp16_critic(x: torch.Tensor) -> torch.Tensor:
        return (x.half() * w.half()).sum(1).float()

    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    result = r1(fp16_critic, real, fake, gamma=2.0, loss_scale=2.0**16)
    assert torch.isfinite(result.loss)
    torch.testing.assert_close(result.loss, (w.half().float() ** 2).sum(), rtol=1e-3, atol=1e-3)


# --- precision of the norm and loss scaling ----------------------------------------------------


@pytest.mark.parametrize("name", ["r1", "r2", "wgan_gp", "wgan_div"])
def test_bf16_autocast_takes_the_norm_in_the_datas_precision(name):
    # Under bf16-mixed the generator's output is bf16 and the data fp32: the points are cast to
    # the data's dtype, so the input gradient and its norm are float32 for every preset (R2 on
    # the generated samples once took its norm in bf16).
    critic = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = METHODS[name](critic, real, fake.bfloat16())
    assert result.grad_norm.dtype == torch.float32


class UnderflowingCritic(nn.Module):
    """D(x) = sum(a * b * x) computed in float16 with a = b = 1e-4 (both normal fp16 numbers):
    dD/dx = a * b = 1e-8 per element, below fp16's smallest subnormal (6e-8), so an unscaled
    backward through it gives exactly 0."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1e-4))
        self.b = nn.Parameter(torch.tensor(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.half() * self.a.half()) * self.b.half()).sum(1).float()


def test_loss_scale_keeps_an_underflowing_input_gradient():
    critic = UnderflowingCritic()
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    unscaled = r1(critic, real, fake, gamma=2.0)
    assert (unscaled.grad_norm == 0).all()  # the defect loss scaling exists for
    scaled = r1(critic, real, fake, gamma=2.0, loss_scale=2.0**16)
    # ||grad D|| = sqrt(2) * a * b with a, b as fp16 stores them.
    a = torch.tensor(1e-4).half().float()
    expected = math.sqrt(2) * float(a * a)
    torch.testing.assert_close(scaled.grad_norm, torch.full((8,), expected), rtol=2e-2, atol=0)
