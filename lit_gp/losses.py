"""Adversarial losses as pure functions of critic scores (logits).

Each loss has a critic side ``critic(real_scores, fake_scores)`` and a generator side
``generator(fake_scores)``; any of them can be combined with any gradient penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from lit_gp.errors import ConfigError


def wasserstein_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[D(fake)] - E[D(real)] (Arjovsky et al. 2017)."""
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator(fake_scores: Tensor) -> Tensor:
    """-E[D(fake)]."""
    return -fake_scores.mean()


def non_saturating_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Logistic loss: E[softplus(-D(real))] + E[softplus(D(fake))] (Goodfellow et al. 2014)."""
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def non_saturating_generator(fake_scores: Tensor) -> Tensor:
    """E[softplus(-D(fake))], the non-saturating generator loss."""
    return F.softplus(-fake_scores).mean()


def hinge_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[relu(1 - D(real))] + E[relu(1 + D(fake))] (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_generator(fake_scores: Tensor) -> Tensor:
    """-E[D(fake)]."""
    return -fake_scores.mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """A named pair of critic-side and generator-side losses."""

    name: str
    critic: Callable[[Tensor, Tensor], Tensor]
    generator: Callable[[Tensor], Tensor]


LOSSES: dict[str, AdversarialLoss] = {
    "wasserstein": AdversarialLoss("wasserstein", wasserstein_critic, wasserstein_generator),
    "non_saturating": AdversarialLoss(
        "non_saturating", non_saturating_critic, non_saturating_generator
    ),
    "hinge": AdversarialLoss("hinge", hinge_critic, hinge_generator),
}


def get_loss(name: str) -> AdversarialLoss:
    """The adversarial loss called ``name``; ConfigError naming the choices otherwise."""
    if name not in LOSSES:
        raise ConfigError("loss", f"must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name]
