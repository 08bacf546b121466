"""The finite-difference estimator of R1 and R2 (``estimator="finite_difference"``) against
hand-computed expectations, and the registry's double-backward declaration.

The estimator of ||grad D(x)||^2 at a point x is s(x) = (1/K) sum_k (D(x + sigma u_k) - D(x))^2
/ sigma^2 with u_k ~ N(0, I). For a linear critic D(x) = w.x + b the difference quotient is w.u
exactly, so s(x) is a mean of K draws of (w.u)^2 = ||w||^2 chi^2_1: mean ||w||^2, variance
2 ||w||^4 per draw. Every Monte Carlo tolerance below is 5 standard errors computed from such a
variance (the runs are seeded, so each test is deterministic; 5 standard errors leave room for
other seeds).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lit_gp.errors import ConfigError
from lit_gp.penalties import (
    METHODS,
    REGISTRY,
    PenaltyMethod,
    check_options,
    gradient_penalty,
    r1,
    r2,
)

F64 = torch.float64


class LinearCritic(nn.Module):
    """D(x) = w.x + b per sample (over all non-batch dimensions): grad D = w everywhere."""

    def __init__(self, w: Tensor, b: float = 0.7) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.w).flatten(1).sum(1) + self.b


class QuadraticCritic(nn.Module):
    """D(x) = 0.5 x^T A x + b.x with symmetric A: grad D(x) = A x + b."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * ((x @ self.a) * x).sum(1) + x @ self.b


class RecordingCritic(nn.Module):
    """Wraps a critic and keeps every input it is called with (the tensor objects themselves)."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x)
        return self.critic(x)


# A symmetric A and a b, with tr(A) = 4.5 and ||A||_F^2 = 4 + 1 + 2.25 + 2 * 0.25 + 2 * 0.09
# = 7.93: the bias sigma^2 / 4 * (tr(A)^2 + 2 ||A||_F^2) = sigma^2 / 4 * 36.11.
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 1.5]], dtype=F64)
B = torch.tensor([0.5, -1.0, 0.25], dtype=F64)
CURVATURE = 4.5**2 + 2 * 7.93  # tr(A)^2 + 2 ||A||_F^2


def _fd(method, critic, real, fake, **options):
    return method(critic, real, fake, estimator="finite_difference", **options)


# --- linear critic: unbiased --------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "directions"), [(64, 256), (4096, 1)])
def test_linear_critic_estimate_averages_to_the_squared_weight_norm(batch, directions):
    torch.manual_seed(0)
    w = torch.tensor([0.6, -1.2, 2.0], dtype=F64)  # ||w||^2 = 0.36 + 1.44 + 4 = 5.8
    squared = 5.8
    gamma = 4.0
    real = torch.randn(batch, 3, dtype=F64)
    result = _fd(
        r1, LinearCritic(w), real, torch.zeros_like(real), gamma=gamma, directions=directions
    )

    # The loss is gamma/2 times the mean of batch * directions draws of (w.u)^2.
    standard_error = math.sqrt(2) * squared**2 / math.sqrt(batch * directions)
    assert result.loss.item() == pytest.approx(
        gamma / 2 * squared, abs=5 * gamma / 2 * standard_error
    )
    # ... and the exact R1 of a linear critic is gamma/2 * ||w||^2 at every point.
    exact = r1(LinearCritic(w), real, torch.zeros_like(real), gamma=gamma).loss.item()
    assert exact == pytest.approx(gamma / 2 * squared, rel=1e-12)
    assert abs(result.loss.item() - exact) <= 5 * gamma / 2 * standard_error

    assert result.squared_norm.shape == (batch,)
    assert result.squared_norm.requires_grad
    assert not result.grad_norm.requires_grad
    torch.testing.assert_close(result.grad_norm, result.squared_norm.detach().sqrt())
    if directions > 1:
        # Each sample's own estimate: a mean of 256 draws, standard error sqrt(2/256) ||w||^2.
        per_sample = math.sqrt(2 / directions) * squared**2
        assert (result.squared_norm - squared).abs().max().item() <= 5 * per_sample


def test_the_estimate_is_the_difference_quotient_at_the_drawn_directions():
    """One call on x itself (the very tensor), one call on all K*B perturbed points; the
    directions u = (x' - x) / sigma are standard normal, independent per sample and direction;
    and the estimate is mean_k (w.u_k)^2, computed here by hand from the recorded points."""
    torch.manual_seed(1)
    batch, directions, sigma = 32, 64, 0.05
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64)  # image-shaped samples (2, 2)
    real = torch.randn(batch, 2, 2, dtype=F64)
    critic = RecordingCritic(LinearCritic(w))
    result = _fd(r1, critic, real, torch.zeros_like(real), sigma=sigma, directions=directions)

    at_x, shifted = critic.inputs
    assert at_x is real
    assert shifted.shape == (directions * batch, 2, 2)
    u = (shifted.view(directions, batch, 2, 2) - real) / sigma
    # N(0, 1) entries: mean 0 and variance 1 within 5 standard errors (n = 8192 entries).
    n = u.numel()
    assert abs(u.mean().item()) <= 5 / math.sqrt(n)
    assert abs(u.var().item() - 1) <= 5 * math.sqrt(2 / n)
    # Independent per sample and per direction: no two directions or samples share a draw.
    flat = u.reshape(directions * batch, 4)
    assert torch.unique(flat[:, 0]).numel() == directions * batch
    by_hand = ((u * w).sum((2, 3)) ** 2).mean(0)  # (w.u_k)^2 averaged over k, per sample
    torch.testing.assert_close(result.squared_norm, by_hand, rtol=1e-9, atol=1e-9)


def test_a_cached_score_of_x_saves_the_critic_pass():
    """A caller may hand the penalty a critic that answers the real batch from its cache: the
    estimator asks for D(x) on the tensor it received, so only the perturbed pass runs."""
    torch.manual_seed(2)
    w = torch.tensor([3.0, 4.0], dtype=F64)
    inner = RecordingCritic(LinearCritic(w))
    real = torch.randn(16, 2, dtype=F64)
    cached = inner(real)
    inner.inputs.clear()

    def critic(x: Tensor) -> Tensor:
        return cached if x is real else inner(x)

    result = _fd(r1, critic, real, torch.zeros_like(real), directions=4)
    assert [x.shape for x in inner.inputs] == [(64, 2)]
    assert torch.isfinite(result.loss)


# --- quadratic critic: the sigma^2 bias -----------------------------------------------------------


def _quadratic_points(repeats: int) -> Tensor:
    # Four distinct points, each repeated: the repeats give independent estimates at one point.
    points = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [-2.0, 0.5, 1.0], [0.3, 2.0, -1.5]], dtype=F64
    )
    return points.repeat_interleave(repeats, dim=0)


def test_quadratic_critic_estimate_has_the_curvature_bias():
    r"""For D(x) = 0.5 x^T A x + b.x and g = A x + b:

        (D(x + sigma u) - D(x)) / sigma = g.u + (sigma / 2) u^T A u,

    squared: (g.u)^2 + sigma (g.u)(u^T A u) + sigma^2 / 4 (u^T A u)^2. The middle term is odd in
    u (u -> -u flips its sign), so its mean is 0; E[(g.u)^2] = ||g||^2 and, for symmetric A,
    E[(u^T A u)^2] = tr(A)^2 + 2 ||A||_F^2. So

        E[s(x)] = ||A x + b||^2 + sigma^2 / 4 * (tr(A)^2 + 2 ||A||_F^2)

    exactly, for any sigma. At sigma = 0.5 the bias is 36.11 / 16 = 2.26, far outside the noise.
    """
    torch.manual_seed(3)
    sigma, repeats = 0.5, 256
    points = _quadratic_points(repeats)
    result = _fd(r1, QuadraticCritic(A, B), points, points, sigma=sigma, directions=64)

    estimates = result.squared_norm.detach().view(4, repeats)
    gradients = points.view(4, repeats, 3)[:, 0] @ A + B
    true_squared = (gradients**2).sum(1)
    bias = sigma**2 / 4 * CURVATURE
    assert bias == pytest.approx(2.256875)
    # The repeats of a point are independent: their spread gives the standard error.
    means = estimates.mean(1)
    standard_errors = estimates.std(1) / math.sqrt(repeats)
    assert ((means - (true_squared + bias)).abs() <= 5 * standard_errors).all()
    # The bias is visible: without it the estimate would miss by far more than the noise.
    assert ((means - true_squared).abs() > 5 * standard_errors).all()


def test_quadratic_critic_small_sigma_matches_exact_r1():
    torch.manual_seed(4)
    gamma, batch, directions = 2.0, 256, 64
    points = torch.randn(batch, 3, dtype=F64)
    critic = QuadraticCritic(A, B)
    exact = r1(critic, points, points, gamma=gamma)
    fd = _fd(r1, critic, points, points, gamma=gamma, sigma=1e-3, directions=directions)

    # Each draw (g_i.u)^2 has variance 2 ||g_i||^4; the loss is gamma/2 times the mean over the
    # batch of means over K draws. The bias, 1e-6 / 4 * 36.11, is far below that noise.
    squared = exact.squared_norm.detach()
    standard_error = gamma / 2 * math.sqrt((2 * squared**2).sum().item() / directions) / batch
    assert abs(fd.loss.item() - exact.loss.item()) <= 5 * standard_error
    assert 1e-6 / 4 * CURVATURE < 0.01 * standard_error


# --- the loss trains the critic through both calls -----------------------------------------------


def test_linear_critic_parameter_gradient_matches_exact_r1_in_expectation():
    """loss = gamma/2 * mean_{i,k} (w.u_ik)^2 (b cancels), so d loss / d w = gamma * mean u (w.u)
    with mean gamma * w, the exact R1's gradient; per draw, component j of u (w.u) has variance
    ||w||^2 + w_j^2 (E[u u^T (w.u)^2] = ||w||^2 I + 2 w w^T). d loss / d b is exactly 0, which
    holds only if the gradient flows through both D(x) and D(x + sigma u)."""
    torch.manual_seed(5)
    gamma, batch, directions = 3.0, 128, 128
    w = torch.tensor([0.6, -1.2, 2.0], dtype=F64)
    real = torch.randn(batch, 3, dtype=F64)

    exact_critic = LinearCritic(w)
    r1(exact_critic, real, real, gamma=gamma).loss.backward()
    torch.testing.assert_close(exact_critic.w.grad, gamma * w)

    critic = LinearCritic(w)
    _fd(r1, critic, real, real, gamma=gamma, directions=directions).loss.backward()
    draws = batch * directions
    standard_errors = gamma * torch.sqrt((w.pow(2).sum() + w.pow(2)) / draws)
    assert ((critic.w.grad - gamma * w).abs() <= 5 * standard_errors).all()
    assert critic.b.grad is not None
    assert critic.b.grad.abs().item() < 1e-9


# --- R1 on real, R2 on fake --------------------------------------------------------------------


def test_r1_uses_the_real_batch_and_r2_the_fake_batch():
    torch.manual_seed(6)
    batch, directions, sigma = 64, 64, 1e-3
    real = 0.1 * torch.randn(batch, 3, dtype=F64)  # ||A x + b||^2 near ||b||^2 = 1.3125
    fake = 3.0 + torch.randn(batch, 3, dtype=F64)  # ||A x + b||^2 around 50
    critic = RecordingCritic(QuadraticCritic(A, B))

    on_real = _fd(r1, critic, real, fake, gamma=2.0, sigma=sigma, directions=directions)
    assert critic.inputs[0] is real
    on_fake = _fd(r2, critic, real, fake, gamma=2.0, sigma=sigma, directions=directions)
    assert critic.inputs[2] is fake
    for result, points in ((on_real, real), (on_fake, fake)):
        squared = ((points @ A + B) ** 2).sum(1)
        standard_error = math.sqrt((2 * squared**2).sum().item() / directions) / batch
        assert abs(result.loss.item() - squared.mean().item()) <= 5 * standard_error
    assert on_fake.loss.item() > 10 * on_real.loss.item()


# --- no double backward ---------------------------------------------------------------------------


class _LinearOnce(torch.autograd.Function):
    """x @ w whose backward cannot itself be differentiated (a critic with no double backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, w = ctx.saved_tensors
        return grad[:, None] * w, x.T @ grad


class OnceDifferentiableCritic(nn.Module):
    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: Tensor) -> Tensor:
        return _LinearOnce.apply(x, self.w)


def test_finite_difference_needs_no_double_backward(monkeypatch):
    torch.manual_seed(7)
    w = torch.tensor([0.6, -1.2, 2.0], dtype=F64)
    real = torch.randn(64, 3, dtype=F64)

    # The exact R1 differentiates the critic's backward, which once_differentiable cuts off
    # from the graph: its loss cannot reach the parameters.
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        r1(OnceDifferentiableCritic(w), real, real).loss.backward()

    # The finite-difference R1 takes no input gradient at all (torch.autograd.grad would raise)
    # and trains through the critic's ordinary backward.
    def no_input_gradient(*args, **kwargs):
        raise AssertionError("the finite-difference estimator called torch.autograd.grad")

    monkeypatch.setattr(torch.autograd, "grad", no_input_gradient)
    for method in (r1, r2):
        critic = OnceDifferentiableCritic(w)
        result = _fd(method, critic, real, real, gamma=2.0, directions=64)
        result.loss.backward()
        # E[d loss / d w] = gamma * w (see the linear critic's test): 5 standard errors.
        standard_errors = 2.0 * torch.sqrt((w.pow(2).sum() + w.pow(2)) / (64 * 64))
        assert ((critic.w.grad - 2.0 * w).abs() <= 5 * standard_errors).all()


# --- the exact estimator is unchanged ---------------------------------------------------------


@pytest.mark.parametrize("method", [r1, r2])
def test_exact_estimator_is_bit_for_bit_the_gradient_penalty(method):
    torch.manual_seed(8)
    critic = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    points = real if method is r1 else fake
    reference = gradient_penalty(critic, points, weight=1.5, target=0.0)
    for options in ({}, {"estimator": "exact"}, {"estimator": "exact", "sigma": 5.0}):
        result = method(critic, real, fake, gamma=3.0, **options)
        assert torch.equal(result.loss, reference.loss)
        assert torch.equal(result.grad_norm, reference.grad_norm)


# --- precision -----------------------------------------------------------------------------------


def test_bf16_autocast_difference_is_taken_in_float32():
    torch.manual_seed(9)
    critic = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert critic(real).dtype == torch.bfloat16
        result = _fd(r1, critic, real, fake, sigma=0.5, directions=4)
    assert result.loss.dtype == torch.float32
    assert result.grad_norm.dtype == torch.float32
    assert torch.isfinite(result.loss)


# --- options -------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("sigma", 0, "must be a finite number > 0, got 0"),
    ("sigma", -1, "must be a finite number > 0, got -1"),
    ("sigma", float("nan"), "must be a finite number"),
    ("directions", 0, "must be an integer >= 1, got 0"),
    ("directions", 1.5, "must be an integer >= 1, got 1.5"),
    ("directions", True, "must be an integer >= 1, got True"),
    ("estimator", "central", "must be one of exact, finite_difference, got 'central'"),
]


@pytest.mark.parametrize("method", [r1, r2])
@pytest.mark.parametrize(("key", "value", "message"), BAD_OPTIONS)
def test_bad_finite_difference_options_raise_config_error(method, key, value, message):
    real = torch.randn(4, 2, dtype=F64)
    critic = LinearCritic(torch.tensor([1.0, 0.0], dtype=F64))
    options = {"estimator": "finite_difference", key: value}
    with pytest.raises(ConfigError) as error:
        method(critic, real, real, **options)
    assert error.value.key == key
    assert message in str(error.value)
    assert str(error.value).startswith(f"{key}: ")

    entry = REGISTRY[method.__name__]
    with pytest.raises(ConfigError) as error:
        entry.check(options)
    assert error.value.key == key
    with pytest.raises(ConfigError) as error:
        check_options(method, options)
    assert error.value.key == key


def test_good_finite_difference_options_are_accepted():
    for name in ("r1", "r2"):
        REGISTRY[name].check(
            {"gamma": 1.0, "estimator": "finite_difference", "sigma": 1e-3, "directions": 4}
        )
        REGISTRY[name].check({"estimator": "exact"})


# --- the registry's double-backward declaration ---------------------------------------------------


def test_needs_double_backward():
    assert REGISTRY["wgan_gp"].needs_double_backward({"weight": 1.0})
    assert REGISTRY["max_gp"].needs_double_backward({})
    for name in ("r1", "r2"):
        method = REGISTRY[name]
        assert method.needs_double_backward({})  # the default estimator is exact
        assert method.needs_double_backward({"estimator": "exact", "gamma": 1.0})
        assert not method.needs_double_backward({"estimator": "finite_difference"})
        assert not method.needs_double_backward(
            {"estimator": "finite_difference", "sigma": 0.1, "directions": 2}
        )
    # Every built-in penalty but the finite-difference R1/R2 differentiates an input gradient.
    assert all(REGISTRY[name].needs_double_backward({}) for name in METHODS)
    # A plain declaration is stored as given.
    method = PenaltyMethod(
        name="no_gradient",
        function=lambda critic, real, fake: None,
        points="real",
        scale="weight",
        norm_target=0.0,
        defaults={"weight": 1.0},
        double_backward=False,
    )
    assert not method.needs_double_backward({"weight": 2.0})
