"""Gradient penalties: one mechanism, many named methods.

Every penalty is "take the critic's input gradient at some points, then penalise its per-sample
L2 norm". The points come from a sampler (interpolates, real, fake, perturbed real); the norm goes
through one shape (two-sided, one-sided, zero-centred, power). The named methods below are thin
presets of :func:`gradient_penalty` with the signature ``name(critic, real, fake, **options)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lit_gp.errors import ConfigError

Critic = Callable[[Tensor], Tensor]


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


# --- checks ---------------------------------------------------------------------------------


def _non_negative(value: float) -> bool:
    return value >= 0


def _at_least_one(value: float) -> bool:
    return value >= 1


# Allowed values of every option any preset takes; one table so the GANModule can refuse a bad
# config before training and the functions refuse it when called directly.
_OPTION_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "weight": (_non_negative, "must be >= 0"),
    "gamma": (_non_negative, "must be >= 0"),
    "k": (_non_negative, "must be >= 0"),
    "c": (_non_negative, "must be >= 0"),
    "target": (_non_negative, "must be >= 0"),
    "p": (_at_least_one, "must be >= 1 (smaller powers have no finite gradient at zero)"),
}


def _check_values(options: Mapping[str, Any]) -> None:
    for name, value in options.items():
        if name == "allow_batch_norm" and not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        if name not in _OPTION_RULES:
            continue
        rule, allowed = _OPTION_RULES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not rule(value):
            raise ConfigError(name, f"{allowed}, got {value!r}")


def check_options(method: Callable[..., PenaltyResult], options: Mapping[str, Any]) -> None:
    """Refuse unknown option names and out-of-range values for a named penalty.

    Raises :class:`ConfigError` with the option name as key.
    """
    parameters = inspect.signature(method).parameters
    # loss_scale is passed at run time by the GANModule (fp16 mixed precision), not configured.
    allowed = [name for name in parameters if name not in ("critic", "real", "fake", "loss_scale")]
    for name in options:
        if name not in allowed:
            raise ConfigError(
                name,
                f"unknown option of {method.__name__}; allowed: {', '.join(allowed)}",
            )
    _check_values(options)


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


# --- the mechanism ---------------------------------------------------------------------------


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


# --- named methods ---------------------------------------------------------------------------


def wgan_gp(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """WGAN-GP (Gulrajani et al. 2017): weight * E[(||grad D(x_hat)|| - target)^2] on
    x_hat = eps * real + (1 - eps) * fake, one eps per sample."""
    _check_values({"weight": weight, "target": target})
    check_critic(critic, allow_batch_norm)
    return gradient_penalty(
        critic, interpolates(real, fake), weight=weight, target=target, loss_scale=loss_scale
    )


def wgan_lp(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """WGAN-LP (Petzka et al. 2018), one-sided: weight * E[max(0, ||grad D(x_hat)|| - target)^2]
    on interpolates."""
    _check_values({"weight": weight, "target": target})
    check_critic(critic, allow_batch_norm)
    return gradient_penalty(
        critic,
        interpolates(real, fake),
        weight=weight,
        target=target,
        one_sided=True,
        loss_scale=loss_scale,
    )


def zero_gp(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    weight: float = 10.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """Zero-centred GP on interpolates (Thanh-Tung et al. 2019): weight * E[||grad D(x_hat)||^2]."""
    _check_values({"weight": weight})
    check_critic(critic, allow_batch_norm)
    return gradient_penalty(
        critic, interpolates(real, fake), weight=weight, target=0.0, loss_scale=loss_scale
    )


def dragan(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    weight: float = 10.0,
    c: float = 0.5,
    target: float = 1.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """DRAGAN (Kodali et al. 2017): weight * E[(||grad D(x_hat)|| - target)^2] on real data
    perturbed by c * std(real) * U[0, 1] noise, as in the official code."""
    _check_values({"weight": weight, "c": c, "target": target})
    check_critic(critic, allow_batch_norm)
    return gradient_penalty(
        critic, perturbed_real(real, c), weight=weight, target=target, loss_scale=loss_scale
    )


def r1(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    gamma: float = 10.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """R1 (Mescheder et al. 2018): (gamma / 2) * E_real[||grad D(x)||^2]."""
    _check_values({"gamma": gamma})
    check_critic(critic, allow_batch_norm)
    return gradient_penalty(critic, real, weight=gamma / 2, target=0.0, loss_scale=loss_scale)


def r2(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    gamma: float = 10.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """R2 (Mescheder et al. 2018): (gamma / 2) * E_fake[||grad D(x)||^2]."""
    _check_values({"gamma": gamma})
    check_critic(critic, allow_batch_norm)
    return gradient_penalty(critic, fake, weight=gamma / 2, target=0.0, loss_scale=loss_scale)


def wgan_div(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    *,
    k: float = 2.0,
    p: float = 6.0,
    allow_batch_norm: bool = False,
    loss_scale: float | None = None,
) -> PenaltyResult:
    """WGAN-div (Wu et al. 2018): k * E[||grad D(x)||^p] over the real and the fake samples."""
    _check_values({"k": k, "p": p})
    check_critic(critic, allow_batch_norm)
    points = torch.cat([real, fake.to(real.dtype)])
    return gradient_penalty(critic, points, weight=k, target=0.0, power=p, loss_scale=loss_scale)


METHODS: dict[str, Callable[..., PenaltyResult]] = {
    method.__name__: method for method in (wgan_gp, wgan_lp, zero_gp, dragan, r1, r2, wgan_div)
}
