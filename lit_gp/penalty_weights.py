"""Adaptive penalty weights: controllers that set how strongly the gradient penalty acts.

A controller sits between the penalty and the critic's loss. At every critic step that computes
the penalty, :meth:`WeightController.loss` turns the penalty's :class:`PenaltyResult` into the
term added to the critic loss, and :meth:`WeightController.update` then moves the controller's
state with the gradient norms just measured. ``weight`` is the number to watch (logged as
``train/penalty_weight``). The state is a few floats, saved in checkpoints.

``ProportionalIntegral`` and ``AugmentedLagrangian`` hold the gradient norm at the penalty's norm
target, so they refuse the zero-centred penalties (R1, R2, zero-GP, WGAN-div), whose target 0 no
weight can hold. ``AUCTarget``, ``NormRatio`` and ``GradientBalance`` read other signals (the
critic's AUC, ‖∇D‖ off the penalty's points, the balance of the critic's two gradients).

The penalty itself is computed with its configured weight (``weight``, ``gamma`` or ``k``), its
*initial* weight here; every penalty is linear in it, so a controller can rescale it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_gp.errors import ConfigError, check_number
from lit_gp.losses import critic_auc
from lit_gp.penalties import PenaltyResult


@dataclass
class Measurements:
    """What a controller may read of a critic step besides the penalty's result: the critic's
    scores of the real and generated batches and, for a controller that asks for it
    (``needs_free_grad_norm``), the per-sample ‖∇D‖ at the data the penalty leaves free (the
    generated batch for R1, the real batch for R2)."""

    real_scores: Tensor
    fake_scores: Tensor
    free_grad_norm: Tensor | None = None
    # For a controller that asks (``needs_parameter_gradients``): the gradients of the
    # adversarial loss and of the penalty at unit weight on the critic's output layer's weight.
    adversarial_gradient: Tensor | None = None
    penalty_gradient: Tensor | None = None


class WeightController:
    """Base class: a fixed weight (the configured one), never updated.

    A controller that moves the weight reads one number per critic step from the penalty,
    :meth:`signal` (a mean over the batch), and moves its state with :meth:`apply`. The two are
    apart so that a data-parallel run can average the signal over its ranks first, and every
    rank then moves the same state to the same weight (:meth:`update` does both in one process).
    """

    # Whether the controller needs a penalty with a non-zero norm target (it holds the norm there).
    needs_norm_target = False
    # Whether it reads ‖∇D‖ at the data the penalty leaves free (Measurements.free_grad_norm).
    needs_free_grad_norm = False
    # Whether it reads the adversarial loss's and the penalty's gradients on the critic's output
    # layer (Measurements.adversarial_gradient, penalty_gradient).
    needs_parameter_gradients = False

    def __init__(self) -> None:
        self.initial_weight = 1.0
        self.norm_target = 1.0
        self.every = 1

    def bind(
        self, initial_weight: float, norm_target: float = 1.0, penalty: str = "", every: int = 1
    ) -> None:
        """Called once by the penalty term with the penalty's configured weight, the gradient
        norm the penalty pulls towards, its name (for messages) and its lazy interval (the
        controller moves once per ``every`` critic steps)."""
        if self.needs_norm_target and norm_target == 0:
            name = type(self).__name__
            raise ConfigError(
                "weight_controller",
                f"{name} holds ||grad D|| at the penalty's norm target, but {penalty or 'this'} "
                "is zero-centred (it pulls the norm to 0, a target no weight can hold: the "
                "weight would only grow); use a fixed weight (weight_controller=fixed) or a "
                "penalty with a target (wgan_gp, wgan_lp, dragan)",
            )
        self.initial_weight = float(initial_weight)
        self.norm_target = float(norm_target)
        self.every = int(every)

    @property
    def weight(self) -> float:
        return self.initial_weight

    def loss(self, result: PenaltyResult) -> Tensor:
        """The term added to the critic loss for a penalty computed at the initial weight."""
        return result.loss

    def signal(self, result: PenaltyResult, measured: Measurements | None = None) -> Tensor | None:
        """The batch's measurement the controller moves on (a 0-dim tensor), or None when it
        does not move; ``measured``: the step's other measurements."""
        return None

    def apply(self, signal: float) -> None:
        """Move the state with a measurement (averaged over data-parallel ranks)."""

    def update(
        self,
        result: PenaltyResult,
        reduce: Callable[[Tensor], Tensor] | None = None,
        measured: Measurements | None = None,
    ) -> None:
        """Move the state after a critic step that computed the penalty; ``reduce`` averages
        the signal over data-parallel ranks (None: one process); ``measured``: the step's
        critic scores (and free-point gradient norms, when asked for)."""
        signal = self.signal(result, measured)
        if signal is None:
            return
        if reduce is not None:
            signal = reduce(signal)
        self.apply(float(signal))

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


class ProportionalIntegral(WeightController):
    """A PI controller on the logarithm of the weight that keeps the gradient norm at its target.

    The measured error is the mean deviation of the per-sample gradient norms from ``target``
    (null: the penalty's own norm target, e.g. wgan_gp's ``target``) beyond a ``tolerance``,
    smoothed over steps with an exponential average (``smoothing``)::

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

    needs_norm_target = True

    def __init__(
        self,
        target: float | None = None,
        tolerance: float = 0.1,
        kp: float = 1.0,
        ki: float = 0.01,
        smoothing: float = 0.9,
        min_weight: float = 1e-4,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__()
        self.target = None if target is None else check_number("target", target, 0)
        self.tolerance = check_number("tolerance", tolerance, 0)
        self.kp = check_number("kp", kp, 0)
        self.ki = check_number("ki", ki, 0)
        self.smoothing = check_number("smoothing", smoothing, 0, 1, strict_maximum=True)
        self.min_weight = check_number("min_weight", min_weight, 0, strict=True)
        self.max_weight = check_number("max_weight", max_weight, 0, strict=True)
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

    @property
    def held_norm(self) -> float:
        """The gradient norm held: ``target``, or the penalty's norm target when it is null."""
        return self.norm_target if self.target is None else self.target

    def signal(self, result: PenaltyResult, measured: Measurements | None = None) -> Tensor:
        return (result.grad_norm.float() - self.held_norm).abs().mean()

    def apply(self, signal: float) -> None:
        measured = signal  # mean |norm - target| over the batch (and ranks)
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

    needs_norm_target = True

    def __init__(
        self,
        target: float | None = None,
        multiplier_lr: float | None = None,
        initial_multiplier: float = 0.0,
    ) -> None:
        super().__init__()
        self.target = None if target is None else check_number("target", target, 0)
        self.multiplier_lr = (
            None if multiplier_lr is None else check_number("multiplier_lr", multiplier_lr, 0)
        )
        self.multiplier = check_number("initial_multiplier", initial_multiplier)

    @property
    def weight(self) -> float:
        return self.multiplier

    def _constraint(self, result: PenaltyResult) -> Tensor:
        if result.squared_norm is None:
            raise ConfigError(
                "weight_controller", "needs a penalty that returns its squared gradient norms"
            )
        target = self.norm_target if self.target is None else self.target
        return result.squared_norm.mean() - target**2

    def loss(self, result: PenaltyResult) -> Tensor:
        constraint = self._constraint(result)
        return self.multiplier * constraint + 0.5 * self.initial_weight * constraint.pow(2)

    def signal(self, result: PenaltyResult, measured: Measurements | None = None) -> Tensor:
        with torch.no_grad():
            return self._constraint(result)

    def apply(self, signal: float) -> None:
        if not math.isfinite(signal):
            return
        step = self.initial_weight if self.multiplier_lr is None else self.multiplier_lr
        self.multiplier += step * signal

    def state_dict(self) -> dict[str, float]:
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.multiplier = float(state.get("multiplier", self.multiplier))


class LogWeight(WeightController):
    """Base of the controllers whose state is the weight's logarithm alone: log10 of the weight,
    kept within [``min_weight``, ``max_weight``] (nothing winds up), starting at the configured
    weight, which must be > 0 (the penalty is computed at it and rescaled by factors)."""

    def __init__(self, min_weight: float = 1e-4, max_weight: float = 1e4) -> None:
        super().__init__()
        self.min_weight = check_number("min_weight", min_weight, 0, strict=True)
        self.max_weight = check_number("max_weight", max_weight, 0, strict=True)
        if self.max_weight < self.min_weight:
            raise ConfigError(
                "max_weight", f"must be >= min_weight ({min_weight}), got {max_weight}"
            )
        self.log_weight: float | None = None  # log10 of the weight; None: the initial weight

    def bind(
        self, initial_weight: float, norm_target: float = 1.0, penalty: str = "", every: int = 1
    ) -> None:
        super().bind(initial_weight, norm_target, penalty, every)
        if self.initial_weight <= 0:
            raise ConfigError(
                "weight_controller",
                f"{type(self).__name__} moves the weight by factors, so "
                f"{penalty or 'the penalty'}'s initial weight must be > 0, got {initial_weight}",
            )

    @property
    def weight(self) -> float:
        if self.log_weight is None:
            return min(max(self.initial_weight, self.min_weight), self.max_weight)
        return 10.0**self.log_weight

    def _clamped_log(self, log_weight: float) -> float:
        return min(max(log_weight, math.log10(self.min_weight)), math.log10(self.max_weight))

    def loss(self, result: PenaltyResult) -> Tensor:
        return result.loss * (self.weight / self.initial_weight)

    def state_dict(self) -> dict[str, float]:
        return {"log_weight": self.log_weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        saved = state.get("log_weight")
        self.log_weight = None if saved is None else float(saved)


class SignSteps(LogWeight):
    """Moves log10(weight) by a fixed step towards a target, ADA's update (Karras et al. 2020,
    which moves its augmentation probability so): after every critic step that computes the
    penalty, with n the real samples since the last move (batch x lazy interval x ranks)::

        log10 weight += direction * n / samples_per_decade,  clamped to [min, max]

    where ``direction`` is +1, -1 or 0 from the signal (:meth:`direction`). The weight crosses
    a decade in ``samples_per_decade`` samples, whatever it starts from: 40,000 lets it cross
    the four decades 0.01-100 in 160,000 samples, a quarter of the shortest run it is meant for
    (``experiment=r1_digits``: 10,000 steps of 64).
    """

    def __init__(
        self,
        samples_per_decade: float = 40_000,
        min_weight: float = 1e-4,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__(min_weight, max_weight)
        self.samples_per_decade = check_number(
            "samples_per_decade", samples_per_decade, 0, strict=True
        )
        self.samples = 0  # real samples behind the latest signal

    def _count(self, measured: Measurements) -> None:
        world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        self.samples = measured.real_scores.shape[0] * self.every * world

    def direction(self, signal: float) -> int:
        """+1 (stronger), -1 (weaker) or 0 for a signal averaged over the ranks."""
        raise NotImplementedError

    def apply(self, signal: float) -> None:
        if not math.isfinite(signal):
            return
        step = self.direction(signal) * self.samples / self.samples_per_decade
        self.log_weight = self._clamped_log(math.log10(self.weight) + step)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


class AUCTarget(SignSteps):
    """Holds the critic's AUC at ``target`` by :class:`SignSteps`: stronger while the critic
    separates real from generated samples better than the target, weaker while it separates
    them worse (direction = sign(AUC - target)).

    The signal is the critic's AUC on the step's batches, the probability that it scores a real
    sample above a generated one (:func:`lit_gp.losses.critic_auc`, averaged over data-parallel
    ranks). It means the same for every penalty, loss and data scale (it depends only on the
    order of the scores), and it needs no norm target, so zero-centred penalties are fine.
    """

    def __init__(
        self,
        target: float = 0.75,
        samples_per_decade: float = 40_000,
        min_weight: float = 1e-4,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__(samples_per_decade, min_weight, max_weight)
        self.target = check_number("target", target, 0, 1)

    def signal(self, result: PenaltyResult, measured: Measurements | None = None) -> Tensor:
        if measured is None:
            raise ValueError("AUCTarget needs the critic's scores of the step")
        self._count(measured)
        return critic_auc(measured.real_scores, measured.fake_scores)

    def direction(self, signal: float) -> int:
        # sign(0) = 0: a critic exactly at the target leaves the weight where it is.
        return _sign(signal - self.target)


class NormRatio(SignSteps):
    """Holds the ratio of ‖∇D‖ at the data a zero-centred penalty leaves free to ‖∇D‖ at the
    data it flattens (for R1: generated over real) at ``target`` by :class:`SignSteps`: a
    penalty that flattens the critic where it acts far more than elsewhere is too strong
    (weaker while the ratio is above the target), one that leaves it as steep there as
    elsewhere too weak (direction = sign(log ratio - log target)).

    The ratio has no units (the critic's output scale and the data's cancel). It needs ‖∇D‖ at
    the free batch, one more input-gradient pass of the critic (first order, no double
    backward) per penalized step, and a penalty evaluated at one side of the data (R1, R2).
    """

    needs_free_grad_norm = True

    def __init__(
        self,
        target: float = 1.5,
        samples_per_decade: float = 40_000,
        min_weight: float = 1e-4,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__(samples_per_decade, min_weight, max_weight)
        self.target = check_number("target", target, 0, strict=True)

    def signal(self, result: PenaltyResult, measured: Measurements | None = None) -> Tensor:
        if measured is None or measured.free_grad_norm is None:
            raise ValueError("NormRatio needs the gradient norms at the free points")
        self._count(measured)
        # The log of the ratio of means, so that averaging over ranks is symmetric in the two.
        free = measured.free_grad_norm.float().mean()
        held = result.grad_norm.float().mean()
        return torch.log(free) - torch.log(held)

    def direction(self, signal: float) -> int:
        return -_sign(signal - math.log(self.target))


class GradientBalance(LogWeight):
    """Sets the weight so that the penalty pulls on the critic's output layer ``balance`` times
    as hard as the adversarial loss does: the adaptive weight of Esser et al. 2021 ("Taming
    Transformers", which balances a GAN loss against a reconstruction loss so), here between
    the critic's two losses. With g_adv and g_pen the gradients of the adversarial loss and of
    the penalty at unit weight on the weight matrix of the critic's last layer::

        w* = balance * ‖g_adv‖ / (‖g_pen‖ + 1e-12),  clamped to [min, max]
        log w ← smoothing * log w + (1 − smoothing) * log w*

    A weight too strong for the critic's optimizer (the penalty's gradient swamping the
    adversarial one, so that Adam's normalized step is all penalty) is brought down as surely
    as one too weak is brought up, and the initial weight is forgotten within a few tens of
    penalized steps (smoothing 0.9: its share is 0.9^n). It works for every penalty and loss.
    Measuring g_pen costs one more backward pass through the penalty's gradient graph (first
    order in the parameters) per penalized step; g_adv is nearly free.

    Measured (README, "Adaptive penalty weight"): the adversarial gradient vanishes as the
    generator matches the data, so on the toy sets the weight drifts to its floor late in every
    run; it is the best of the five designs there by the worst start, not a solution.
    """

    needs_parameter_gradients = True

    def __init__(
        self,
        balance: float = 0.1,
        smoothing: float = 0.9,
        min_weight: float = 1e-4,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__(min_weight, max_weight)
        self.balance = check_number("balance", balance, 0, strict=True)
        self.smoothing = check_number("smoothing", smoothing, 0, 1, strict_maximum=True)

    def signal(self, result: PenaltyResult, measured: Measurements | None = None) -> Tensor:
        """The two gradients as the rows of one tensor: averaged over data-parallel ranks they
        are the joint batch's gradients (each loss is a mean over the batch), so the weight
        moves as in one process with the whole batch."""
        if (
            measured is None
            or measured.adversarial_gradient is None
            or measured.penalty_gradient is None
        ):
            raise ValueError("GradientBalance needs the output layer's gradients")
        return torch.stack(
            [measured.adversarial_gradient.flatten(), measured.penalty_gradient.flatten()]
        ).float()

    def update(
        self,
        result: PenaltyResult,
        reduce: Callable[[Tensor], Tensor] | None = None,
        measured: Measurements | None = None,
    ) -> None:
        gradients = self.signal(result, measured)
        if reduce is not None:
            gradients = reduce(gradients)
        adversarial, penalty = (float(norm) for norm in torch.linalg.vector_norm(gradients, dim=1))
        # log10 w* = log10(balance ‖g_adv‖ / ‖g_pen‖), guarded against zero gradients.
        self.apply(math.log10(self.balance * adversarial + 1e-30) - math.log10(penalty + 1e-12))

    def apply(self, signal: float) -> None:
        if not math.isfinite(signal):
            return
        current = math.log10(self.weight)
        self.log_weight = self.smoothing * current + (1 - self.smoothing) * self._clamped_log(
            signal
        )
