"""Values that change over training as a function of the generator step.

A :class:`Schedule` maps the generator step to a number. A penalty term's ``schedule``
multiplies its weight (R3GAN's gamma decays on a cosine to a tenth: ``Cosine(start=1, end=0.1,
steps=...)``); :class:`Beta2Schedule` sets Adam's beta2 from one (R3GAN's 0.9 -> 0.99). Learning
rates use torch's own schedulers (``torch.optim.lr_scheduler.CosineAnnealingLR`` is R3GAN's lr
decay). A schedule holds no state of its own: it is a pure function of the generator step, which
checkpoints keep, so a resumed run continues it exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lit_gp.errors import ConfigError, check_int, check_number


class Schedule:
    """A value as a function of the generator step; the base class is the constant 1."""

    def __call__(self, step: int) -> float:
        return 1.0


class Constant(Schedule):
    """``value`` at every step."""

    def __init__(self, value: float = 1.0) -> None:
        check_number("value", value)
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value


class _Decay(Schedule):
    def __init__(self, start: float, end: float, steps: int) -> None:
        check_number("start", start)
        check_number("end", end)
        check_int("steps", steps)
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def progress(self, step: int) -> float:
        """How far along the schedule ``step`` is, from 0 to 1 (1 from ``steps`` on)."""
        return min(max(step, 0), self.steps) / self.steps


class Linear(_Decay):
    """From ``start`` at step 0 to ``end`` at step ``steps`` in a straight line, then ``end``."""

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self.progress(step)


class Cosine(_Decay):
    """From ``start`` at step 0 to ``end`` at step ``steps`` on half a cosine, then ``end``:
    ``end + (start - end) * (1 + cos(pi * t / steps)) / 2``, R3GAN's ``cosine_decay_with_warmup``
    without warm-up (and torch's CosineAnnealingLR for one half period)."""

    def __call__(self, step: int) -> float:
        decay = 0.5 * (1 + math.cos(math.pi * self.progress(step)))
        return self.end + (self.start - self.end) * decay


def check_schedule(schedule: Any, key: str = "schedule") -> Schedule:
    """``schedule`` if it is a Schedule (None: the constant 1), else a ConfigError on ``key``."""
    if schedule is None:
        return Schedule()
    if not isinstance(schedule, Schedule):
        kind = type(schedule).__name__
        raise ConfigError(key, f"must be a lit_gp.schedules.Schedule, got {kind}")
    return schedule


class Beta2Schedule(LRScheduler):
    """Sets Adam's (or AdamW's) beta2 from ``schedule`` at every step; leaves the learning rate
    alone, so it combines with any learning-rate scheduler on the same optimizer. Stepped once
    per generator step like the module's other schedulers; its state is the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
        self.schedule = check_schedule(schedule)
        for group in optimizer.param_groups:
            if "betas" not in group:
                raise ConfigError(
                    "schedule", f"Beta2Schedule needs an optimizer with betas, got {optimizer}"
                )
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        beta2 = self.schedule(self.last_epoch)
        if not 0 <= beta2 < 1:
            raise ConfigError("schedule", f"gives beta2 = {beta2}, outside [0, 1)")
        for group in self.optimizer.param_groups:
            group["betas"] = (group["betas"][0], beta2)
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        # The schedule is rebuilt from the config; only plain values go into checkpoints.
        return {
            key: value
            for key, value in super().state_dict().items()
            if key not in ("schedule", "optimizer")
        }
