"""Gradient penalties: one mechanism, many named methods, each registered where it is defined.

Every penalty is "take the critic's input gradient at some points, then penalise its per-sample
L2 norm". The points come from a sampler (interpolates, real, fake, perturbed real, real and
fake); the norm goes through one shape (two-sided, one-sided, zero-centred, power) and one
reduction over the batch (the mean, or the maximum for MaxGP). A named method is one function
decorated with :func:`register_penalty`, which declares everything the rest of the package needs
to know about it: where it is evaluated, which option scales it, the gradient norm it pulls
towards (for weight controllers), the allowed values of its options and whether it needs the
double backward (a penalty on an input gradient taken with ``create_graph=True``; torch.compile
refuses it). The decorated function is called as ``name(critic, real, fake, **options)``.

The zero-centred penalties R1 and R2 have a second estimator of ||grad D(x)||^2 that needs no
double backward (``estimator="finite_difference"``, see :func:`finite_difference_penalty`): the
mean over random directions u ~ N(0, I) of (D(x + sigma u) - D(x))^2 / sigma^2, trained by an
ordinary backward through both critic calls.

A new penalty is that one function plus a ``conf/model/<name>.yaml`` naming it as
``model.penalty._target_``; nothing else has to change (``tests/test_registry.py`` proves it).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lit_gp.errors import ConfigError, check_int, check_number

Critic = Callable[[Tensor], Tensor]
# An option's check: (key, value) -> None, raising ConfigError on a bad value.
Rule = Callable[[str, Any], Any]


@dataclass(frozen=True)
class PenaltyResult:
    """What a penalty returns.

    ``loss`` is the weighted scalar penalty, differentiable with respect to the critic's
    parameters (through the double backward, or for the finite-difference estimator through
    the critic's ordinary backward). ``grad_norm`` is the per-sample L2 norm of dD/dx over all
    non-batch dimensions at the evaluation points, detached (it is for logging; the
    finite-difference estimator gives the square root of its estimate of the squared norm).
    ``squared_norm`` is the per-sample squared norm still in the graph, for penalty-weight
    controllers that build their own term from it (an augmented Lagrangian).
    """

    loss: Tensor
    grad_norm: Tensor
    squared_norm: Tensor | None = None


# --- option rules ------------------------------------------------------------------------------


def at_least(minimum: float) -> Rule:
    """A rule: a finite number >= ``minimum``."""
    return functools.partial(_check_at_least, minimum=minimum)


def _check_at_least(key: str, value: Any, minimum: float) -> None:
    check_number(key, value, minimum)


def greater_than(minimum: float) -> Rule:
    """A rule: a finite number > ``minimum``."""
    return functools.partial(_check_greater_than, minimum=minimum)


def _check_greater_than(key: str, value: Any, minimum: float) -> None:
    check_number(key, value, minimum, strict=True)


def integer_at_least(minimum: int) -> Rule:
    """A rule: an integer >= ``minimum`` (bools and floats such as 1.0 refused)."""
    return functools.partial(_check_integer_at_least, minimum=minimum)


def _check_integer_at_least(key: str, value: Any, minimum: int) -> None:
    check_int(key, value, minimum)


def one_of(*choices: str) -> Rule:
    """A rule: one of the strings ``choices``."""
    return functools.partial(_check_one_of, choices=choices)


def _check_one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")


# --- critics ---------------------------------------------------------------------------------


def find_batch_norm(critic: Critic) -> str | None:
    """Name of the first BatchNorm layer inside ``critic``, or None."""
    if not isinstance(critic, nn.Module):
        return None
    for name, module in critic.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return name or type(module).__name__
    return None


def check_critic(critic: Critic, allow_batch_norm: bool = False) -> None:
    """Refuse a critic with BatchNorm: it couples the samples of a batch, so the per-sample
    input gradient (and therefore every per-sample penalty) is wrong."""
    if allow_batch_norm:
        return
    layer = find_batch_norm(critic)
    if layer is not None:
        raise ConfigError(
            "critic",
            f"has a BatchNorm layer ({layer}), which couples samples and breaks per-sample "
            "gradient penalties; use LayerNorm or no normalization, or set "
            "allow_batch_norm=true to accept it",
        )


# --- evaluation points -----------------------------------------------------------------------


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) tensor to broadcast over every non-batch dimension of ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def interpolates(real: Tensor, fake: Tensor) -> Tensor:
    """eps * real + (1 - eps) * fake with one eps ~ U[0, 1] per sample."""
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    eps = per_sample(torch.rand(real.shape[0], device=real.device, dtype=real.dtype), real)
    # Under autocast the generator's output is bf16 while the data stays fp32.
    return torch.lerp(fake.to(real.dtype), real, eps)


def random_directions(points: Tensor, directions: int) -> Tensor:
    """``directions`` draws u ~ N(0, I) of the shape of ``points``: (directions, *points.shape),
    independent per sample and direction (the finite-difference estimator's u_k)."""
    return torch.randn((directions, *points.shape), device=points.device, dtype=points.dtype)


def perturbed_real(real: Tensor, c: float = 0.5) -> Tensor:
    """DRAGAN's points (official code): x + alpha * (x_p - x) with x_p = x + c * std(x) * u,
    u ~ U[0, 1] per element, std over the whole batch, one alpha ~ U[0, 1] per sample."""
    noise = c * real.std(correction=0) * torch.rand_like(real)
    alpha = per_sample(torch.rand(real.shape[0], device=real.device, dtype=real.dtype), real)
    return real + alpha * noise


def _at_interpolates(real: Tensor, fake: Tensor) -> Tensor:
    return interpolates(real, fake)


def _at_real(real: Tensor, fake: Tensor) -> Tensor:
    return real


def _at_fake(real: Tensor, fake: Tensor) -> Tensor:
    return fake.to(real.dtype)


def _at_real_and_fake(real: Tensor, fake: Tensor) -> Tensor:
    return torch.cat([real, fake.to(real.dtype)])


def _at_perturbed_real(real: Tensor, fake: Tensor, *, c: float = 0.5) -> Tensor:
    return perturbed_real(real, c)


# The samplers a registered penalty names as its points: (real, fake, **point options) -> x_hat.
# Generated samples are cast to the data's dtype: under bf16 autocast the generator's output is
# bf16, and its input gradient and norm would otherwise be computed in bf16 too.
POINTS: dict[str, Callable[..., Tensor]] = {
    "interpolates": _at_interpolates,
    "real": _at_real,
    "fake": _at_fake,
    "real_and_fake": _at_real_and_fake,
    "perturbed_real": _at_perturbed_real,
}
# The rules of the samplers' own options (DRAGAN's perturbation size).
POINT_RULES: dict[str, Rule] = {"c": at_least(0)}


# --- the mechanism ---------------------------------------------------------------------------


def input_gradient(critic: Critic, points: Tensor, loss_scale: float | None = None) -> Tensor:
    """dD/dx at ``points``, kept in the graph so a penalty on it trains the critic.

    With fp16 mixed precision the gradient is taken of the output times ``loss_scale`` (the
    GradScaler's current scale, so small gradients do not underflow in fp16) and divided by it
    again before anyone takes its norm (PyTorch AMP docs, "Gradient penalty").
    """
    points = points.detach().requires_grad_(True)
    output = critic(points).sum()
    # Scaled like the mean loss the GradScaler is built for (scale / B per output): the full
    # scale on every output, 2**16 at Lightning's start, is above fp16's largest number.
    factor = None if loss_scale is None else loss_scale / points.shape[0]
    if factor is not None:
        output = output * factor
    (gradient,) = torch.autograd.grad(output, points, create_graph=True)
    if factor is not None:
        gradient = gradient / factor
    return gradient


def gradient_penalty(
    critic: Critic,
    points: Tensor,
    *,
    weight: float,
    target: float = 1.0,
    one_sided: bool = False,
    power: float = 2.0,
    reduction: str = "mean",
    loss_scale: float | None = None,
) -> PenaltyResult:
    """weight * E[ f(||dD/dx||) ] at ``points`` with f(n) = |n - target|^power, or
    max(0, n - target)^power when ``one_sided``; ``reduction="max"`` takes the maximum over the
    batch instead of the mean E (MaxGP)."""
    if reduction not in ("mean", "max"):
        raise ValueError(f"reduction must be mean or max, got {reduction!r}")
    gradient = input_gradient(critic, points, loss_scale).flatten(1)
    squared_norm = gradient.pow(2).sum(dim=1)
    if target == 0 and power == 2:
        # ||g||^2 needs no square root, so it stays exact and smooth at g = 0.
        per_point = squared_norm
    else:
        # vector_norm's backward is defined as 0 at a zero vector; a hand-written sqrt would
        # give NaN there in the double backward (pytorch#2534).
        norm = torch.linalg.vector_norm(gradient, dim=1)
        deviation = norm - target
        if one_sided:
            deviation = deviation.clamp(min=0)
        per_point = deviation.abs().pow(power)
    # The maximum's backward reaches the largest point only (ties share it evenly).
    reduced = per_point.mean() if reduction == "mean" else per_point.max()
    return PenaltyResult(
        loss=weight * reduced,
        grad_norm=squared_norm.detach().sqrt(),
        squared_norm=squared_norm,
    )


def finite_difference_penalty(
    critic: Critic,
    points: Tensor,
    *,
    weight: float,
    sigma: float = 0.01,
    directions: int = 1,
) -> PenaltyResult:
    """weight * E_x[s(x)], a zero-centred penalty whose ||grad D(x)||^2 is estimated without
    the input gradient (approximate R1 of Lin et al. 2025, "Diffusion Adversarial Post-Training
    for One-Step Video Generation"):

        s(x) = (1 / K) sum_k (D(x + sigma u_k) - D(x))^2 / sigma^2,  u_k ~ N(0, I),

    K = ``directions`` draws of the shape of x, independent per sample and direction. For a
    linear critic E[s(x)] = ||grad D||^2 exactly; a curved critic adds a bias of order sigma^2
    (for D = 0.5 x^T A x + b.x it is sigma^2 / 4 * (tr(A)^2 + 2 ||A||_F^2)). The loss trains
    the critic through both D(x) and D(x + sigma u) with an ordinary backward: no double
    backward, so it also runs under torch.compile and with critics that have none.

    D(x) is ``critic(points)`` called with the very tensor received (a caller may hand in a
    critic that returns the scores it already computed for that tensor, so D(x) costs no
    extra pass), and the K * B perturbed points go through the critic in one further call. A
    critic with several outputs per sample is scored by their sum, as the exact penalty's
    input gradient is. ``points`` should not require grad (data, or detached samples).

    The difference is taken in (at least) float32. Under bf16 autocast the critic's outputs
    carry about 3 significant digits (8 bits; fp16 about 3.3), so a difference of size
    sigma * ||grad D|| with sigma = 0.01 drowns in the rounding of D itself: use a much larger
    sigma there (the bias above grows as sigma^2) or train the critic in 32-true.
    """
    batch = points.shape[0]
    noise = random_directions(points, directions)
    shifted_points = (points.unsqueeze(0) + sigma * noise).flatten(0, 1)
    # Two separate calls: D(x) on the very tensor received (a cache may answer it), then every
    # perturbed point at once.
    scores = critic(points)
    shifted_scores = critic(shifted_points)
    dtype = torch.promote_types(scores.dtype, torch.float32)
    base = scores.to(dtype).reshape(batch, -1).sum(1)
    shifted = shifted_scores.to(dtype).reshape(directions, batch, -1).sum(2)
    estimate = ((shifted - base) / sigma).pow(2).mean(0)
    return PenaltyResult(
        loss=weight * estimate.mean(),
        grad_norm=estimate.detach().clamp(min=0).sqrt(),
        squared_norm=estimate,
    )


# --- the registry ------------------------------------------------------------------------------

# Keywords every registered penalty takes besides its options: the module passes loss_scale at
# run time (fp16 mixed precision), allow_batch_norm opts out of the BatchNorm refusal.
_RUNTIME_KEYWORDS = ("loss_scale",)


@dataclass(frozen=True)
class PenaltyMethod:
    """What the registry knows about a named penalty.

    Attributes:
        name: the function's name, also its ``conf/model/<name>.yaml``.
        function: the public callable ``function(critic, real, fake, **options)``.
        points: the key of :data:`POINTS` it is evaluated at.
        scale: the option the penalty is linear in (``weight``, ``gamma``, ``k``); weight
            controllers start from its value and rescale the loss.
        norm_target: the gradient norm the penalty pulls towards: an option's name (``target``)
            or a number (0 for the zero-centred penalties). Controllers that hold the norm at a
            target take it from here.
        defaults: every option's default value (the body's and the sampler's).
        rules: every option's check.
        double_backward: whether the penalty differentiates an input gradient (taken with
            ``create_graph=True``), which torch.compile refuses: a bool, or a function of the
            options (defaults filled in) for a penalty whose estimator is an option.
    """

    name: str
    function: Callable[..., PenaltyResult]
    points: str
    scale: str
    norm_target: str | float
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rules: Mapping[str, Rule] = field(default_factory=dict)
    double_backward: bool | Callable[[Mapping[str, Any]], bool] = True

    def check(self, options: Mapping[str, Any]) -> None:
        """Refuse unknown option names and out-of-range values (ConfigError on the option)."""
        allowed = [*self.defaults, "allow_batch_norm"]
        for name, value in options.items():
            if name not in allowed:
                raise ConfigError(
                    name, f"unknown option of {self.name}; allowed: {', '.join(allowed)}"
                )
            if name == "allow_batch_norm":
                _check_bool(name, value)
            elif name in self.rules:
                self.rules[name](name, value)

    def option(self, name: str, options: Mapping[str, Any]) -> Any:
        """The value of option ``name`` in ``options``, or its default."""
        return options.get(name, self.defaults.get(name))

    def scale_value(self, options: Mapping[str, Any]) -> float:
        """The configured value of the scale option (the penalty's initial weight)."""
        return float(self.option(self.scale, options))

    def needs_double_backward(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether the penalty with these options (missing ones at their defaults) takes a
        double backward; code that compiles the critic refuses those."""
        if callable(self.double_backward):
            return bool(self.double_backward({**self.defaults, **(options or {})}))
        return bool(self.double_backward)

    def target_value(self, options: Mapping[str, Any]) -> float:
        """The gradient norm the penalty pulls towards, with these options."""
        if isinstance(self.norm_target, str):
            return float(self.option(self.norm_target, options))
        return float(self.norm_target)


# Every registered penalty by name (the built-in ones and any a user registers).
REGISTRY: dict[str, PenaltyMethod] = {}


def _keyword_defaults(function: Callable[..., Any], skip: tuple[str, ...]) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in skip
    }


def register_penalty(
    *,
    points: str,
    scale: str,
    norm_target: str | float,
    rules: Mapping[str, Rule],
    double_backward: bool | Callable[[Mapping[str, Any]], bool] = True,
) -> Callable[[Callable[..., PenaltyResult]], Callable[..., PenaltyResult]]:
    """Register a penalty. Decorates ``body(critic, points, *, <options>, [loss_scale])``, the
    penalty at given points, and returns the public ``name(critic, real, fake, *, <options>,
    allow_batch_norm=False, loss_scale=None)``, which checks its options and the critic, draws
    the points (``points``: a key of :data:`POINTS`; the sampler's options are options too) and
    passes ``loss_scale`` on when the body takes it.

    ``scale`` names the option the penalty is linear in, ``norm_target`` the option holding the
    norm it pulls towards or that norm as a number, ``rules`` the checks of the body's options
    (every option needs one). ``double_backward`` declares whether the body differentiates an
    input gradient (:func:`input_gradient`, ``create_graph=True``): True (the default, as for
    every penalty built on :func:`gradient_penalty`), False, or a function of the options with
    their defaults filled in (R1 and R2: only with ``estimator="exact"``); read it through
    :meth:`PenaltyMethod.needs_double_backward`.
    """
    if points not in POINTS:
        raise ValueError(f"points must be one of {', '.join(POINTS)}, got {points!r}")
    if not (isinstance(double_backward, bool) or callable(double_backward)):
        raise ValueError(f"double_backward must be a bool or callable, got {double_backward!r}")
    sampler = POINTS[points]

    def decorate(body: Callable[..., PenaltyResult]) -> Callable[..., PenaltyResult]:
        body_defaults = _keyword_defaults(body, _RUNTIME_KEYWORDS)
        point_defaults = _keyword_defaults(sampler, ())
        defaults = {**body_defaults, **point_defaults}
        all_rules = {**rules, **{name: POINT_RULES[name] for name in point_defaults}}
        unchecked = set(defaults) - set(all_rules)
        if unchecked or scale not in defaults:
            raise ValueError(
                f"{body.__name__}: every option needs a rule (missing: {sorted(unchecked)}) and "
                f"the scale option {scale!r} must be one of its options"
            )
        takes_loss_scale = "loss_scale" in inspect.signature(body).parameters

        @functools.wraps(body)
        def penalty(
            critic: Critic,
            real: Tensor,
            fake: Tensor,
            *,
            allow_batch_norm: bool = False,
            loss_scale: float | None = None,
            **options: Any,
        ) -> PenaltyResult:
            method.check({**options, "allow_batch_norm": allow_batch_norm})
            check_critic(critic, allow_batch_norm)
            at = sampler(real, fake, **{k: v for k, v in options.items() if k in point_defaults})
            body_options = {k: v for k, v in options.items() if k in body_defaults}
            if takes_loss_scale:
                body_options["loss_scale"] = loss_scale
            return body(critic, at, **body_options)

        # The public signature, for help() and for option checks of plain callables.
        parameters = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for name in ("critic", "real", "fake")
        ] + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for name, default in {**defaults, "allow_batch_norm": False, "loss_scale": None}.items()
        ]
        penalty.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        method = PenaltyMethod(
            name=body.__name__,
            function=penalty,
            points=points,
            scale=scale,
            norm_target=norm_target,
            defaults=defaults,
            rules=all_rules,
            double_backward=double_backward,
        )
        penalty.penalty_method = method  # type: ignore[attr-defined]
        REGISTRY[method.name] = method
        return penalty

    return decorate


def method_of(function: Any) -> PenaltyMethod | None:
    """The registry entry of a registered penalty (or of a ``functools.partial`` of one)."""
    return getattr(getattr(function, "func", function), "penalty_method", None)


def check_options(method: Callable[..., PenaltyResult], options: Mapping[str, Any]) -> None:
    """Refuse unknown option names and out-of-range values for a registered penalty.

    Raises :class:`ConfigError` with the option name as key.
    """
    entry = method_of(method)
    if entry is None:
        raise ValueError(f"{method!r} is not a registered penalty")
    entry.check(options)


# --- named methods ---------------------------------------------------------------------------


@register_penalty(
    points="interpolates",
    scale="weight",
    norm_target="target",
    rules={"weight": at_least(0), "target": at_least(0)},
)
def wgan_gp(
    critic: Critic,
    points: Tensor,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """WGAN-GP (Gulrajani et al. 2017): weight * E[(||grad D(x_hat)|| - target)^2] on
    x_hat = eps * real + (1 - eps) * fake, one eps per sample."""
    return gradient_penalty(critic, points, weight=weight, target=target, loss_scale=loss_scale)


@register_penalty(
    points="interpolates",
    scale="weight",
    norm_target="target",
    rules={"weight": at_least(0), "target": at_least(0)},
)
def wgan_lp(
    critic: Critic,
    points: Tensor,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """WGAN-LP (Petzka et al. 2018), one-sided: weight * E[max(0, ||grad D(x_hat)|| - target)^2]
    on interpolates."""
    return gradient_penalty(
        critic, points, weight=weight, target=target, one_sided=True, loss_scale=loss_scale
    )


@register_penalty(
    points="interpolates", scale="weight", norm_target=0.0, rules={"weight": at_least(0)}
)
def zero_gp(
    critic: Critic, points: Tensor, *, weight: float = 10.0, loss_scale: float | None = None
) -> PenaltyResult:
    """Zero-centred GP on interpolates (Thanh-Tung et al. 2019): weight * E[||grad D(x_hat)||^2]."""
    return gradient_penalty(critic, points, weight=weight, target=0.0, loss_scale=loss_scale)


@register_penalty(
    points="perturbed_real",
    scale="weight",
    norm_target="target",
    rules={"weight": at_least(0), "target": at_least(0)},
)
def dragan(
    critic: Critic,
    points: Tensor,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """DRAGAN (Kodali et al. 2017): weight * E[(||grad D(x_hat)|| - target)^2] on real data
    perturbed by c * std(real) * U[0, 1] noise (option ``c``, default 0.5), as in the official
    code."""
    return gradient_penalty(critic, points, weight=weight, target=target, loss_scale=loss_scale)


# The options of the zero-centred penalties on the samples (R1, R2): the estimator of
# ||grad D(x)||^2 and, for the finite-difference one, its step and number of directions.
ESTIMATORS = ("exact", "finite_difference")
_ZERO_CENTRED_RULES: dict[str, Rule] = {
    "gamma": at_least(0),
    "estimator": one_of(*ESTIMATORS),
    "sigma": greater_than(0),
    "directions": integer_at_least(1),
}


def _exact_estimator(options: Mapping[str, Any]) -> bool:
    # Anything but the finite-difference estimator counts as exact (the safe answer).
    return options.get("estimator") != "finite_difference"


def _zero_centred(
    critic: Critic,
    points: Tensor,
    *,
    gamma: float,
    estimator: str,
    sigma: float,
    directions: int,
    loss_scale: float | None,
) -> PenaltyResult:
    """(gamma / 2) * E[||grad D(x)||^2] at ``points``, exact or by finite differences."""
    if estimator == "finite_difference":
        # No input gradient is taken, so there is nothing for an fp16 loss scale to protect.
        return finite_difference_penalty(
            critic, points, weight=gamma / 2, sigma=sigma, directions=directions
        )
    return gradient_penalty(critic, points, weight=gamma / 2, target=0.0, loss_scale=loss_scale)


@register_penalty(
    points="real",
    scale="gamma",
    norm_target=0.0,
    rules=_ZERO_CENTRED_RULES,
    double_backward=_exact_estimator,
)
def r1(
    critic: Critic,
    points: Tensor,
    *,
    gamma: float = 10.0,
    estimator: str = "exact",
    sigma: float = 0.01,
    directions: int = 1,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """R1 (Mescheder et al. 2018): (gamma / 2) * E_real[||grad D(x)||^2].

    ``estimator="exact"`` takes the input gradient (double backward); ``"finite_difference"``
    estimates ||grad D(x)||^2 by the mean over ``directions`` draws u ~ N(0, I) of
    (D(x + sigma u) - D(x))^2 / sigma^2 with no double backward (approximate R1, Lin et al.
    2025; see :func:`finite_difference_penalty`, including its warning on bf16). ``sigma`` and
    ``directions`` are ignored by the exact estimator.
    """
    return _zero_centred(
        critic,
        points,
        gamma=gamma,
        estimator=estimator,
        sigma=sigma,
        directions=directions,
        loss_scale=loss_scale,
    )


@register_penalty(
    points="fake",
    scale="gamma",
    norm_target=0.0,
    rules=_ZERO_CENTRED_RULES,
    double_backward=_exact_estimator,
)
def r2(
    critic: Critic,
    points: Tensor,
    *,
    gamma: float = 10.0,
    estimator: str = "exact",
    sigma: float = 0.01,
    directions: int = 1,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """R2 (Mescheder et al. 2018): (gamma / 2) * E_fake[||grad D(x)||^2], with the estimators
    of :func:`r1`."""
    return _zero_centred(
        critic,
        points,
        gamma=gamma,
        estimator=estimator,
        sigma=sigma,
        directions=directions,
        loss_scale=loss_scale,
    )


def _power_at_least_one(key: str, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1:
        raise ConfigError(
            key, f"must be >= 1 (smaller powers have no finite gradient at zero), got {value!r}"
        )
    check_number(key, value, 1)


@register_penalty(
    points="real_and_fake",
    scale="k",
    norm_target=0.0,
    rules={"k": at_least(0), "p": _power_at_least_one},
)
def wgan_div(
    critic: Critic,
    points: Tensor,
    *,
    k: float = 2.0,
    p: float = 6.0,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """WGAN-div (Wu et al. 2018): k * E[||grad D(x)||^p] over the real and the fake samples."""
    return gradient_penalty(critic, points, weight=k, target=0.0, power=p, loss_scale=loss_scale)


@register_penalty(
    points="interpolates", scale="weight", norm_target=0.0, rules={"weight": at_least(0)}
)
def max_gp(
    critic: Critic, points: Tensor, *, weight: float = 10.0, loss_scale: float | None = None
) -> PenaltyResult:
    """MaxGP (Zhou et al. 2019, "Lipschitz Generative Adversarial Nets"): weight *
    max_i ||grad D(x_hat_i)||^2 over the batch, on interpolates x_hat = eps * real +
    (1 - eps) * fake with one eps per sample, as StudioGAN's ``cal_maxgrad_penalty``
    (POSTECH-CVLab/PyTorch-StudioGAN, src/utils/losses.py). Default weight 10: StudioGAN has no
    default for ``maxgp_lambda`` ("N/A" in src/config.py) and sets 10.0 in its MaxGP config
    src/configs/CIFAR10/LGAN.yaml (with the vanilla, i.e. non-saturating, loss and its default
    of 5 critic steps)."""
    return gradient_penalty(
        critic, points, weight=weight, target=0.0, reduction="max", loss_scale=loss_scale
    )


# The built-in penalties by name (the registry also holds any registered elsewhere).
METHODS: dict[str, Callable[..., PenaltyResult]] = {
    name: REGISTRY[name].function
    for name in ("wgan_gp", "wgan_lp", "zero_gp", "dragan", "r1", "r2", "wgan_div", "max_gp")
}
