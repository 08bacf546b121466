"""Adaptive penalty weights: controllers that set how strongly the gradient penalty acts.

A controller sits between the penalty and the critic's loss. At every critic step that computes
the penalty, :meth:`WeightController.loss` turns the penalty's :class:`PenaltyResult` into the
term added to the critic loss, and :meth:`WeightController.update` then moves the controller's
state with the gradient norms just measured. ``weight`` is the number to watch (logged as
``train/penalty_weight``). The state is a few floats, saved in checkpoints.

The penalty itself is computed with its configured weight (``weight``, ``gamma`` or ``k``), its
*initial* weight here; every penalty is linear in it, so a controller can rescale it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lit_gp.errors import ConfigError
from lit_gp.penalties import PenaltyResult


def _check_number(key: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
        or (strict and value == minimum)
    ):
        relation = ">" if strict else ">="
        raise ConfigError(key, f"must be a finite number {relation} {minimum}, got {value!r}")
    return float(value)


class WeightController:
    """Base class: a fixed weight (the configured one), never updated."""

    def __init__(self) -> None:
        self.initial_weight = 1.0

    def bind(self, initial_weight: float) -> None:
        """Called once by the GANModule with the penalty's configured weight."""
        self.initial_weight = float(initial_weight)

    @property
    def weight(self) -> float:
        return self.initial_weight

    def loss(self, result: PenaltyResult) -> Tensor:
        """The term added to the critic loss for a penalty computed at the initial weight."""
        return result.loss

    def update(self, result: PenaltyResult) -> None:
        """Move the state after a critic step that computed the penalty."""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


class ProportionalIntegral(WeightController):
    """A PI controller on the logarithm of the weight that keeps the gradient norm at its target.

    The measured error is the mean deviation of the per-sample gradient norms from ``target``
    beyond a ``tolerance``, smoothed over steps with an exponential average (``smoothing``)::

        d_t = smoothing * d_{t-1} + (1 - smoothing) * mean_i |‖∇D(x̂_i)‖ − target|
        e_t = d_t − tolerance
        I_t = I_{t-1} + e_t          (not while the weight sits at a bound: anti-windup)
        weight_t = clamp(initial_weight * exp(kp * e_t + ki * I_t), min_weight, max_weight)

    The weight rises while the norms deviate by more than the tolerance and falls back while
    they hold, so a weight that starts too low or too high moves to the one the critic needs.
    Log-space control makes a step change the weight by a factor, the right scale for a quantity
    searched over decades. The idea follows PI control of a loss weight as in ControlVAE (Shao
    et al. 2020, which holds a VAE's KL at a set point), applied to the gradient norm as in
    adaptive gradient-penalty schemes.
    """

    def __init__(
        self,
        target: float = 1.0,
        tolerance: float = 0.1,
        kp: float = 1.0,
        ki: float = 0.01,
        smoothing: float = 0.9,
        min_weight: float = 1e-4,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__()
        self.target = _check_number("target", target)
        self.tolerance = _check_number("tolerance", tolerance)
        self.kp = _check_number("kp", kp)
        self.ki = _check_number("ki", ki)
        self.smoothing = _check_number("smoothing", smoothing)
        if self.smoothing >= 1:
            raise ConfigError("smoothing", f"must be < 1, got {smoothing!r}")
        self.min_weight = _check_number("min_weight", min_weight, strict=True)
        self.max_weight = _check_number("max_weight", max_weight, strict=True)
        if self.max_weight < self.min_weight:
            raise ConfigError(
                "max_weight", f"must be >= min_weight ({min_weight}), got {max_weight}"
            )
        self.deviation: float | None = None
        self.integral = 0.0
        self.log_scale = 0.0

    @property
    def weight(self) -> float:
        return self._clamp(self.initial_weight * math.exp(self.log_scale))

    def _clamp(self, weight: float) -> float:
        return min(max(weight, self.min_weight), self.max_weight)

    def loss(self, result: PenaltyResult) -> Tensor:
        return result.loss * (self.weight / self.initial_weight if self.initial_weight else 0.0)

    def update(self, result: PenaltyResult) -> None:
        measured = float((result.grad_norm.float() - self.target).abs().mean())
        if not math.isfinite(measured):
            return  # a non-finite norm is the non-finite guard's business, not a control signal
        if self.deviation is None:
            self.deviation = measured
        else:
            self.deviation = self.smoothing * self.deviation + (1 - self.smoothing) * measured
        error = self.deviation - self.tolerance
        integral = self.integral + error
        unclamped = self.initial_weight * math.exp(self.kp * error + self.ki * integral)
        saturated = (unclamped > self.max_weight and error > 0) or (
            unclamped < self.min_weight and error < 0
        )
        if not saturated:
            self.integral = integral
        self.log_scale = self.kp * error + self.ki * self.integral

    def state_dict(self) -> dict[str, float]:
        return {
            "deviation": self.deviation,
            "integral": self.integral,
            "log_scale": self.log_scale,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.deviation = state.get("deviation")
        self.integral = float(state.get("integral", 0.0))
        self.log_scale = float(state.get("log_scale", 0.0))


class AugmentedLagrangian(WeightController):
    """An augmented-Lagrangian multiplier on the constraint E[‖∇D(x̂)‖²] = target² (Fisher GAN,
    Mroueh & Sercu 2017; Sobolev GAN, Mroueh et al. 2018), at the penalty's points.

    With c = mean_i ‖∇D(x̂_i)‖² − target² (a differentiable batch estimate), the critic minimizes
    its adversarial loss plus ::

        λ c + (ρ / 2) c²

    and after each step the multiplier follows the method of multipliers, λ ← λ + η c with
    η = ``multiplier_lr`` (default ρ). ρ is the penalty's configured weight (``weight``,
    ``gamma`` or ``k``), so a sweep over the initial weight sweeps ρ; λ starts at
    ``initial_multiplier``. ``weight`` (the logged value) is λ: the price the constraint has
    reached. Unlike the fixed penalties, this one uses the preset only for its points (for
    ``wgan_gp``: interpolates between real and fake).
    """

    def __init__(
        self,
        target: float = 1.0,
        multiplier_lr: float | None = None,
        initial_multiplier: float = 0.0,
    ) -> None:
        super().__init__()
        self.target = _check_number("target", target)
        self.multiplier_lr = (
            None if multiplier_lr is None else _check_number("multiplier_lr", multiplier_lr)
        )
        self.multiplier = _check_number("initial_multiplier", initial_multiplier, -math.inf)

    @property
    def weight(self) -> float:
        return self.multiplier

    def _constraint(self, result: PenaltyResult) -> Tensor:
        if result.squared_norm is None:
            raise ConfigError(
                "weight_controller", "needs a penalty that returns its squared gradient norms"
            )
        return result.squared_norm.mean() - self.target**2

    def loss(self, result: PenaltyResult) -> Tensor:
        constraint = self._constraint(result)
        return self.multiplier * constraint + 0.5 * self.initial_weight * constraint.pow(2)

    def update(self, result: PenaltyResult) -> None:
        with torch.no_grad():
            constraint = float(self._constraint(result))
        if not math.isfinite(constraint):
            return
        step = self.initial_weight if self.multiplier_lr is None else self.multiplier_lr
        self.multiplier += step * constraint

    def state_dict(self) -> dict[str, float]:
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.multiplier = float(state.get("multiplier", self.multiplier))
