"""Adversarial losses as pure functions of critic scores (logits).

Each loss has a critic side ``critic(real_scores, fake_scores)`` and a generator side
``generator(fake_scores)`` (or ``generator(fake_scores, real_scores)`` for a loss that compares
generated with real samples, ``generator_needs_real``: the relativistic losses); any of them
can be combined with any gradient penalty. A new loss is one :class:`AdversarialLoss` passed to
:func:`register_loss` (then ``model.loss=<name>``), or any module-level AdversarialLoss named by
its dotted path (``model.loss=my_package.losses.MY_LOSS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hydra.utils import get_object
from torch import Tensor

from lit_gp.errors import ConfigError


def critic_auc(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """The probability that the critic scores a real sample above a generated one, over every
    real x generated pair of the batch (ties count one half): the area under its ROC curve,
    0.5 when it cannot tell them apart, 1 when it separates them. It depends only on the order
    of the scores, so it means the same for every loss and every scale of critic output.
    (torchmetrics' AUROC squashes unbounded scores through a sigmoid first, which ties large
    Wasserstein scores in float32.)"""
    real = real_scores.detach().float().reshape(-1, 1)
    fake = fake_scores.detach().float().reshape(1, -1)
    return (torch.sign(real - fake).mean() + 1) / 2


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


def relativistic_pairing_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[softplus(-(D(x_i) - D(G(z_i))))] over pairs (RpGAN; Jolicoeur-Martineau 2018, the loss
    of R3GAN, Huang et al. 2024): each real sample is compared with the generated one beside it."""
    return F.softplus(-(real_scores - fake_scores)).mean()


def relativistic_pairing_generator(fake_scores: Tensor, real_scores: Tensor) -> Tensor:
    """E[softplus(-(D(G(z_i)) - D(x_i)))] over pairs."""
    return F.softplus(-(fake_scores - real_scores)).mean()


def relativistic_average_critic(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """RaGAN (Jolicoeur-Martineau 2018): E[softplus(-(D(x) - E D(G(z))))] +
    E[softplus(D(G(z)) - E D(x))], each sample against the other side's batch mean."""
    return (
        F.softplus(-(real_scores - fake_scores.mean())).mean()
        + F.softplus(fake_scores - real_scores.mean()).mean()
    )


def relativistic_average_generator(fake_scores: Tensor, real_scores: Tensor) -> Tensor:
    """E[softplus(-(D(G(z)) - E D(x)))] + E[softplus(D(x) - E D(G(z)))]."""
    return (
        F.softplus(-(fake_scores - real_scores.mean())).mean()
        + F.softplus(real_scores - fake_scores.mean()).mean()
    )


@dataclass(frozen=True)
class AdversarialLoss:
    """A named pair of critic-side and generator-side losses.

    Attributes:
        name: what ``model.loss`` calls it.
        critic: ``critic(real_scores, fake_scores)``, the critic's loss.
        generator: ``generator(fake_scores)``, or ``generator(fake_scores, real_scores)`` when
            ``generator_needs_real``: the generator step then scores a real batch too.
        generator_needs_real: whether the generator side compares with real scores.
        gap_name: what E[D(real)] - E[D(fake)] is for this loss, the name it is logged under
            (``train/<gap_name>``, ``val/<gap_name>``): an estimate of the Wasserstein distance
            for the Wasserstein loss, only a gap between the critic's scores for the others.
    """

    name: str
    critic: Callable[[Tensor, Tensor], Tensor]
    generator: Callable[..., Tensor]
    generator_needs_real: bool = False
    gap_name: str = "critic_gap"
    # Whether the critic side compares sample i of the real batch with sample i of the fake
    # batch (so both batches must have the same size).
    paired: bool = False

    def generator_loss(self, fake_scores: Tensor, real_scores: Tensor | None = None) -> Tensor:
        """The generator's loss (``real_scores`` only read when ``generator_needs_real``)."""
        if self.generator_needs_real:
            return self.generator(fake_scores, real_scores)
        return self.generator(fake_scores)


LOSSES: dict[str, AdversarialLoss] = {}


def register_loss(loss: AdversarialLoss) -> AdversarialLoss:
    """Make ``loss`` available as ``model.loss=<loss.name>``; returns it."""
    LOSSES[loss.name] = loss
    return loss


WASSERSTEIN = register_loss(
    AdversarialLoss(
        "wasserstein", wasserstein_critic, wasserstein_generator, gap_name="wasserstein_estimate"
    )
)
NON_SATURATING = register_loss(
    AdversarialLoss("non_saturating", non_saturating_critic, non_saturating_generator)
)
HINGE = register_loss(AdversarialLoss("hinge", hinge_critic, hinge_generator))
RELATIVISTIC_PAIRING = register_loss(
    AdversarialLoss(
        "relativistic_pairing",
        relativistic_pairing_critic,
        relativistic_pairing_generator,
        generator_needs_real=True,
        paired=True,
    )
)
RELATIVISTIC_AVERAGE = register_loss(
    AdversarialLoss(
        "relativistic_average",
        relativistic_average_critic,
        relativistic_average_generator,
        generator_needs_real=True,
    )
)


def get_loss(name: str | AdversarialLoss) -> AdversarialLoss:
    """The adversarial loss called ``name`` (registered, or a dotted path to an
    AdversarialLoss); ConfigError naming the choices otherwise."""
    if isinstance(name, AdversarialLoss):
        return name
    if isinstance(name, str) and name in LOSSES:
        return LOSSES[name]
    if isinstance(name, str) and "." in name:
        try:
            loss = get_object(name)
        except Exception:
            loss = None
        if isinstance(loss, AdversarialLoss):
            return loss
    raise ConfigError(
        "loss",
        f"must be one of {', '.join(LOSSES)} or the dotted path of an AdversarialLoss, "
        f"got {name!r}",
    )
