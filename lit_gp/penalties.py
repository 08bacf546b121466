"""Gradient penalties: one mechanism, many named methods, each registered where it is defined.

Every penalty is "take the critic's input gradient at some points, then penalise its per-sample
L2 norm". The points come from a sampler (interpolates, real, fake, perturbed real, real and
fake); the norm goes through one shape (two-sided, one-sided, zero-centred, power). A named
method is one function decorated with :func:`register_penalty`, which declares everything the
rest of the package needs to know about it: where it is evaluated, which option scales it, the
gradient norm it pulls towards (for weight controllers) and the allowed values of its options.
The decorated function is called as ``name(critic, real, fake, **options)``.

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

from lit_gp.errors import ConfigError, check_number

Critic = Callable[[Tensor], Tensor]
# An option's check: (key, value) -> None, raising ConfigError on a bad value.
Rule = Callable[[str, Any], Any]


@dataclass(frozen=True)
class PenaltyResult:
    """What a penalty returns.

    ``loss`` is the weighted scalar penalty, differentiable with respect to the critic's
    parameters (double backward). ``grad_norm`` is the per-sample L2 norm of dD/dx over all
    non-batch dimensions at the evaluation points, detached (it is for logging).
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
    loss_scale: float | None = None,
) -> PenaltyResult:
    """weight * E[ f(||dD/dx||) ] at ``points`` with f(n) = |n - target|^power, or
    max(0, n - target)^power when ``one_sided``."""
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
    return PenaltyResult(
        loss=weight * per_point.mean(),
        grad_norm=squared_norm.detach().sqrt(),
        squared_norm=squared_norm,
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
    """

    name: str
    function: Callable[..., PenaltyResult]
    points: str
    scale: str
    norm_target: str | float
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rules: Mapping[str, Rule] = field(default_factory=dict)

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
) -> Callable[[Callable[..., PenaltyResult]], Callable[..., PenaltyResult]]:
    """Register a penalty. Decorates ``body(critic, points, *, <options>, [loss_scale])``, the
    penalty at given points, and returns the public ``name(critic, real, fake, *, <options>,
    allow_batch_norm=False, loss_scale=None)``, which checks its options and the critic, draws
    the points (``points``: a key of :data:`POINTS`; the sampler's options are options too) and
    passes ``loss_scale`` on when the body takes it.

    ``scale`` names the option the penalty is linear in, ``norm_target`` the option holding the
    norm it pulls towards or that norm as a number, ``rules`` the checks of the body's options
    (every option needs one).
    """
    if points not in POINTS:
        raise ValueError(f"points must be one of {', '.join(POINTS)}, got {points!r}")
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


@register_penalty(points="real", scale="gamma", norm_target=0.0, rules={"gamma": at_least(0)})
def r1(
    critic: Critic, points: Tensor, *, gamma: float = 10.0, loss_scale: float | None = None
) -> PenaltyResult:
    """R1 (Mescheder et al. 2018): (gamma / 2) * E_real[||grad D(x)||^2]."""
    return gradient_penalty(critic, points, weight=gamma / 2, target=0.0, loss_scale=loss_scale)


@register_penalty(points="fake", scale="gamma", norm_target=0.0, rules={"gamma": at_least(0)})
def r2(
    critic: Critic, points: Tensor, *, gamma: float = 10.0, loss_scale: float | None = None
) -> PenaltyResult:
    """R2 (Mescheder et al. 2018): (gamma / 2) * E_fake[||grad D(x)||^2]."""
    return gradient_penalty(critic, points, weight=gamma / 2, target=0.0, loss_scale=loss_scale)


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


# The built-in penalties by name (the registry also holds any registered elsewhere).
METHODS: dict[str, Callable[..., PenaltyResult]] = {
    name: REGISTRY[name].function
    for name in ("wgan_gp", "wgan_lp", "zero_gp", "dragan", "r1", "r2", "wgan_div")
}
