"""What the GAN minimizes, with no Lightning in it: penalty terms and the two phases' losses.

Following stylegan2-ada's ``training/loss.py``, the math of a step is kept apart from the loop
that applies it (``lit_gp.gan.GANModule``):

- :class:`PenaltyTerm` is everything about one penalty in the critic's objective: the penalty
  function with its options, its lazy interval (``every``), its weight controller, the loss
  scale it needs under fp16 mixed precision, the values it logs and its checkpoint state.
- :class:`GANObjective` gives the critic's loss (adversarial loss plus every due penalty term)
  and the generator's loss for given nets and batches.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import get_method
from torch import Tensor, nn

from lit_gp import penalties
from lit_gp.config import Spec, build, is_spec, plain
from lit_gp.errors import ConfigError, check_int
from lit_gp.losses import AdversarialLoss, critic_auc
from lit_gp.penalties import PenaltyResult
from lit_gp.penalty_weights import Measurements, WeightController
from lit_gp.schedules import Schedule, check_schedule

Critic = Callable[[Tensor], Tensor]
Reduce = Callable[[Tensor], Tensor]


def _takes_loss_scale(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "loss_scale" in parameters or any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()
    )


# The data a penalty at one side of the data leaves free (see PenaltyTerm.free_points).
FREE_POINTS = {"real": "fake", "fake": "real"}


def free_gradient_norm(critic: Critic, points: Tensor) -> Tensor:
    """Per-sample ‖∇D‖ at ``points``, detached: one first-order input-gradient pass (nothing
    here trains the critic)."""
    points = points.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(critic(points).sum(), points)
    return torch.linalg.vector_norm(gradient.flatten(1), dim=1).detach()


def output_layer_weight(critic: Critic) -> Tensor:
    """The weight matrix of the critic's last layer: its last parameter with two or more
    dimensions (the output Linear of every critic in :mod:`lit_gp.nets`)."""
    module = critic.critic if isinstance(critic, ScoredCritic) else critic
    if not isinstance(module, nn.Module):
        raise ConfigError("weight_controller", "needs a critic that is a torch.nn.Module")
    weights = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    if not weights:
        raise ConfigError("weight_controller", "needs a critic with a weight matrix to train")
    return weights[-1]


def output_layer_gradient(weight: Tensor, loss: Tensor, scale: float = 1.0) -> Tensor:
    """∂loss/∂W for the weight matrix W of the critic's last layer (:func:`output_layer_weight`),
    detached (the graph is kept for the step's backward). ``scale`` multiplies the loss first,
    so that an fp16 loss scale keeps the gradient from underflowing, and is divided out again."""
    (gradient,) = torch.autograd.grad(loss * scale, weight, retain_graph=True, allow_unused=True)
    if gradient is None:
        return torch.zeros_like(weight).detach()
    return (gradient / scale).detach()


# Keys of a penalty term's spec that are not options of the penalty function.
TERM_KEYS = ("every", "schedule", "weight_controller")


def _penalty_from_spec(spec: Spec) -> tuple[Callable[..., PenaltyResult], int]:
    """The registered penalty of a ``{_target_: <penalty>, every: k, **options}`` spec with its
    options bound, and its interval k, after checking the name and every option."""
    target = spec.get("_target_", "")
    try:
        function = get_method(target)
    except Exception:
        function = None
    method = penalties.method_of(function)
    if method is None:
        names = ", ".join(f"lit_gp.penalties.{name}" for name in penalties.REGISTRY)
        raise ConfigError(
            "_target_", f"must be a registered penalty ({names}, ...), got {target!r}"
        )
    options = {
        key: value
        for key, value in plain(spec).items()
        if not key.startswith("_") and key not in ("schedule", "weight_controller")
    }
    every = options.pop("every", 1)
    check_int("every", every)
    method.check(options)
    return functools.partial(function, **options), every


class PenaltyTerm:
    """One penalty in the critic's objective.

    Args:
        function: ``function(critic, real, fake[, loss_scale=...]) -> PenaltyResult``: a
            registered penalty with its options bound (``functools.partial``) or any callable
            with that signature.
        every: lazy regularization (StyleGAN2): the penalty on every k-th critic step only,
            its loss multiplied by k so that the average stays the same.
        controller: the weight controller (None: the configured weight, fixed).
        name: the term's name, for messages, logs and checkpoints (default: the penalty's name).
        schedule: a factor on the weight as a function of the generator step
            (:mod:`lit_gp.schedules`; None: 1). It multiplies whatever the controller sets, and
            it is a pure function of the generator step, which checkpoints keep.
    """

    def __init__(
        self,
        function: Callable[..., PenaltyResult],
        every: int = 1,
        controller: WeightController | None = None,
        name: str | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        check_int("every", every)
        self.function = function
        self.every = every
        self.schedule = check_schedule(schedule)
        self.method = penalties.method_of(function)
        self.name = name or (self.method.name if self.method else "penalty")
        # A term named in the config logs under its name even when it is the only one.
        self.named = name is not None
        self.options: dict[str, Any] = dict(getattr(function, "keywords", {}) or {})
        self.takes_loss_scale = _takes_loss_scale(function)
        self.controller = WeightController() if controller is None else controller
        if not isinstance(self.controller, WeightController):
            raise ConfigError(
                "weight_controller", "must be a lit_gp.penalty_weights.WeightController"
            )
        if self.method is None:
            # A plain callable: its weight is its own business, and it declares no norm target.
            self.controller.bind(1.0, 1.0, self.name, every)
        else:
            self.controller.bind(
                self.method.scale_value(self.options),
                self.method.target_value(self.options),
                self.name,
                every,
            )
        # The data the penalty leaves free, for a controller that compares ‖∇D‖ there with ‖∇D‖
        # at the penalty's points (R1 acts on the real batch: the generated one is free).
        self.free_points = FREE_POINTS.get(self.method.points) if self.method else None
        if self.controller.needs_free_grad_norm and self.free_points is None:
            raise ConfigError(
                "weight_controller",
                f"{type(self.controller).__name__} compares ‖∇D‖ at the data {self.name} acts "
                "on with the data it leaves free, so it needs a penalty at the real or at the "
                "generated batch (r1, r2)",
            )
        # The latest values to log, kept between lazy steps.
        self.logs: dict[str, Tensor] = {}
        self.result: PenaltyResult | None = None
        self.measured: Measurements | None = None

    @classmethod
    def from_spec(
        cls,
        penalty: Callable[..., PenaltyResult] | Spec,
        controller: WeightController | Spec | None = None,
        name: str | None = None,
        key: str = "penalty",
    ) -> PenaltyTerm:
        """A term from a penalty spec (``{_target_, every, schedule, weight_controller,
        **options}``) or callable, and the controller to use when the spec names none;
        ConfigErrors name ``<key>.<option>`` or ``weight_controller.<option>``."""
        every, schedule = 1, None
        if is_spec(penalty):
            if penalty.get("weight_controller") is not None:
                controller = penalty["weight_controller"]
                controller_key = f"{key}.weight_controller"
            else:
                controller_key = "weight_controller"
            try:
                schedule = build(penalty.get("schedule"), "schedule")
                function, every = _penalty_from_spec(penalty)
                term_controller = build(controller, controller_key)
                return cls(function, every, term_controller, name, schedule)
            except ConfigError as error:
                if error.key.startswith(controller_key):
                    raise
                raise error.with_prefix(key) from None
        return cls(penalty, every, build(controller, "weight_controller"), name, schedule)

    @property
    def allows_batch_norm(self) -> bool:
        return bool(self.options.get("allow_batch_norm", False))

    def check_loss_scaling(self, scaled: bool) -> None:
        """Refuse, before training, a penalty that cannot take the loss scale fp16 needs."""
        if scaled and not self.takes_loss_scale:
            raise ConfigError(
                "penalty",
                f"{self.name} takes no loss_scale keyword, which 16-mixed needs to keep its "
                "input gradient from underflowing; give it a loss_scale=None keyword passed to "
                "lit_gp.penalties.input_gradient, or train in bf16-mixed or 32-true",
            )

    def due(self, critic_step: int) -> bool:
        """Whether the penalty is computed at this critic step (lazy regularization)."""
        return critic_step % self.every == 0

    @property
    def needs_double_backward(self) -> bool:
        """Whether the penalty differentiates an input gradient (torch.compile cannot); an
        unregistered callable is assumed to."""
        return self.method is None or self.method.needs_double_backward(self.options)

    def loss(
        self,
        critic: Critic,
        real: Tensor,
        fake: Tensor,
        loss_scale: float | None = None,
        generator_step: int = 0,
        scores: tuple[Tensor, Tensor] | None = None,
        adversarial: Tensor | None = None,
    ) -> Tensor:
        """The term added to the critic's loss at a step where it is due (the penalty through
        the controller, times the schedule's factor at ``generator_step``, times ``every``);
        also keeps the result, what the controller measures (the critic's (real, generated)
        ``scores`` of the step, ‖∇D‖ at the free batch and the output layer's gradients of
        the ``adversarial`` loss and the penalty when it asks), and the values to log."""
        if self.takes_loss_scale and loss_scale is not None:
            result = self.function(critic, real, fake, loss_scale=loss_scale)
        else:
            result = self.function(critic, real, fake)
        factor = self.schedule(generator_step)
        term = (self.every * factor) * self.controller.loss(result)
        self.result = result
        self.measured = None
        if scores is not None:
            free_grad_norm = None
            if self.controller.needs_free_grad_norm:
                free = real if self.free_points == "real" else fake
                free_grad_norm = free_gradient_norm(critic, free)
            self.measured = Measurements(scores[0].detach(), scores[1].detach(), free_grad_norm)
            if self.controller.needs_parameter_gradients:
                if adversarial is None:
                    raise ValueError(f"{self.name}'s weight controller needs the adversarial loss")
                scale = 1.0 if loss_scale is None else float(loss_scale)
                weight = output_layer_weight(critic)
                self.measured.adversarial_gradient = output_layer_gradient(
                    weight, adversarial, scale
                )
                # The penalty at unit weight: it was computed at the controller's initial one.
                self.measured.penalty_gradient = output_layer_gradient(
                    weight, result.loss, scale
                ) / float(self.controller.initial_weight)
        norm = result.grad_norm
        self.logs = {
            "penalty": (term / self.every).detach(),
            "penalty_weight": torch.tensor(float(self.controller.weight) * factor),
            "grad_norm_mean": norm.mean(),
            "grad_norm_max": norm.max(),
            "grad_norm_fraction_above_1": (norm > 1).float().mean(),
            # Distance from the 1-Lipschitz ideal, whatever the penalty's own target.
            "grad_norm_deviation": (norm - 1).abs().mean(),
        }
        return term

    def update(self, reduce: Reduce | None = None) -> None:
        """After the critic's optimizer step: move the weight controller with the result of
        this step's penalty (averaged over data-parallel ranks by ``reduce``)."""
        if self.result is not None:
            self.controller.update(self.result, reduce, self.measured)
        self.result = None
        self.measured = None

    def state_dict(self) -> dict[str, Any]:
        controller = type(self.controller)
        return {
            "controller": f"{controller.__module__}.{controller.__qualname__}",
            "state": self.controller.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        controller = type(self.controller)
        current = f"{controller.__module__}.{controller.__qualname__}"
        saved = state.get("controller", current)
        if saved != current:
            raise ConfigError(
                "weight_controller",
                f"the checkpoint's {self.name} penalty was trained with {saved}, this run asks "
                f"for {current}; resuming would reset its weight: repeat the run's "
                "weight_controller",
            )
        self.controller.load_state_dict(dict(state.get("state", {})))


def build_penalty_terms(
    penalty: Callable[..., PenaltyResult] | Spec | None,
    weight_controller: WeightController | Spec | None = None,
) -> list[PenaltyTerm]:
    """The penalty terms of a model's ``penalty`` setting: None (no penalty), a callable, one
    spec (``{_target_: lit_gp.penalties.r1, ...}``), or several by name
    (``{r1: {_target_: ...}, r2: {_target_: ...}}``; a name set to null drops that term).
    ``weight_controller`` controls every term whose spec names no ``weight_controller`` of its
    own (each term gets its own instance)."""
    if penalty is None:
        named: dict[str, Any] = {}
    elif is_spec(penalty) and "_target_" not in penalty:
        named = {str(name): spec for name, spec in penalty.items() if spec is not None}
        for name, spec in named.items():
            if not (callable(spec) or (is_spec(spec) and "_target_" in spec)):
                raise ConfigError(
                    f"penalty.{name}",
                    "must be a penalty spec with a _target_ (e.g. lit_gp.penalties.r1) or null",
                )
        if len(named) > 1 and weight_controller is not None and not is_spec(weight_controller):
            raise ConfigError(
                "weight_controller",
                "one controller object cannot control several penalties; give a spec, which "
                "builds one controller per penalty",
            )
    else:
        return [PenaltyTerm.from_spec(penalty, weight_controller)]
    terms = [
        PenaltyTerm.from_spec(spec, weight_controller, name=name, key=f"penalty.{name}")
        for name, spec in named.items()
    ]
    if not terms and weight_controller is not None:
        raise ConfigError("weight_controller", "needs a penalty to control")
    return terms


class ScoredCritic(nn.Module):
    """The critic, remembering the scores it already gave this step's real and fake batches.

    Called on one of those very tensors (the same object), it returns the scores from the
    adversarial pass instead of scoring again: a penalty that needs D at the data points (the
    finite-difference estimator) then costs no extra forward pass, and its gradient flows
    through the same graph. Any other input is scored by the critic.
    """

    def __init__(self, critic: Critic, scored: Sequence[tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.critic = critic
        self.scored = list(scored)

    def forward(self, inputs: Tensor) -> Tensor:
        for batch, scores in self.scored:
            if inputs is batch:
                return scores
        return self.critic(inputs)


@dataclass
class CriticStep:
    """What the critic phase computed: the loss to minimize and the detached values around it."""

    loss: Tensor
    # Every loss term, detached (for lit_gp.callbacks.NonFiniteGuard).
    terms: dict[str, Tensor] = field(default_factory=dict)
    # The values to log, keys without the train/ prefix.
    logs: dict[str, Tensor] = field(default_factory=dict)


class GANObjective:
    """The critic's and the generator's losses: an adversarial loss plus penalty terms.

    Args:
        loss: the adversarial loss.
        terms: the penalty terms of the critic's objective.
        fused_critic_pass: score real and fake samples in one critic call on their
            concatenation (same numbers for a critic that scores each sample on its own).
    """

    def __init__(
        self,
        loss: AdversarialLoss,
        terms: Sequence[PenaltyTerm] = (),
        fused_critic_pass: bool = True,
    ) -> None:
        self.adversarial_loss = loss
        self.terms = list(terms)
        self.fused_critic_pass = fused_critic_pass

    def score(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """Critic scores of a real and a fake batch, in one call when ``fused_critic_pass``."""
        fake = fake.to(real.dtype)
        if not self.fused_critic_pass:
            return critic(real), critic(fake)
        scores = critic(torch.cat([real, fake]))
        return scores[: real.shape[0]], scores[real.shape[0] :]

    def critic_loss(
        self,
        critic: Critic,
        real: Tensor,
        fake: Tensor,
        critic_step: int,
        loss_scale: float | None = None,
        generator_step: int = 0,
    ) -> CriticStep:
        """The critic's loss on a real and a (detached) fake batch at critic step
        ``critic_step``: the adversarial loss plus every penalty term due at that step (with
        its schedule at ``generator_step``)."""
        fake = fake.to(real.dtype)
        real_scores, fake_scores = self.score(critic, real, fake)
        adversarial = self.adversarial_loss.critic(real_scores, fake_scores)
        step = CriticStep(
            loss=adversarial,
            terms={"critic_loss": adversarial.detach()},
            logs={
                "critic_loss": adversarial.detach(),
                self.adversarial_loss.gap_name: (real_scores.mean() - fake_scores.mean()).detach(),
                "critic_auc": critic_auc(real_scores, fake_scores),
            },
        )
        scored = ScoredCritic(critic, [(real, real_scores), (fake, fake_scores)])
        for term in self.terms:
            if term.due(critic_step):
                penalty = term.loss(
                    scored,
                    real,
                    fake,
                    loss_scale,
                    generator_step,
                    scores=(real_scores, fake_scores),
                    adversarial=adversarial,
                )
                step.loss = step.loss + penalty
                step.terms[self._key(term, "penalty")] = term.logs["penalty"]
            # The latest penalty statistics, also on steps that skip a lazy penalty.
            step.logs.update({self._key(term, key): value for key, value in term.logs.items()})
        return step

    def _key(self, term: PenaltyTerm, key: str) -> str:
        # One unnamed penalty logs under plain names (train/penalty); named or several penalties
        # under their own names (train/penalty/r1).
        if len(self.terms) == 1 and not term.named:
            return key
        return f"{key}/{term.name}"

    def after_critic_step(self, reduce: Reduce | None = None) -> None:
        """Move every weight controller with the step just taken."""
        for term in self.terms:
            term.update(reduce)

    def generator_loss(
        self, critic: Critic, fake: Tensor, real: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's loss for generated samples ``fake`` (in the graph) and, for a loss
        that compares with real samples, the real batch ``real``; and the values to log."""
        if self.adversarial_loss.generator_needs_real:
            if real is None:
                raise ValueError(f"the {self.adversarial_loss.name} loss needs a real batch")
            real_scores, fake_scores = self.score(critic, real, fake)
            loss = self.adversarial_loss.generator_loss(fake_scores, real_scores.detach())
        else:
            loss = self.adversarial_loss.generator_loss(critic(fake))
        return loss, {"generator_loss": loss.detach()}
