"""lit_gp: PyTorch Lightning modules for training with gradient penalties.

Public API:

- :class:`GANModule`: the GAN LightningModule (manual optimization, n_critic critic steps per
  generator step, any penalty from :mod:`lit_gp.penalties` and loss from :mod:`lit_gp.losses`).
- :mod:`lit_gp.penalties`: ``wgan_gp``, ``wgan_lp``, ``zero_gp``, ``dragan``, ``r1``, ``r2``,
  ``wgan_div``, the mechanism ``gradient_penalty`` they share and ``register_penalty``, which
  makes a new penalty usable as ``model.penalty._target_``.
- :mod:`lit_gp.losses`: Wasserstein, non-saturating and hinge adversarial losses
  (``AdversarialLoss`` and ``register_loss`` for new ones).
- :class:`ConfigError`: raised for a bad user value, naming the option.
"""

from lit_gp import losses, penalties
from lit_gp.config import register_resolvers
from lit_gp.errors import ConfigError
from lit_gp.gan import GANModule

register_resolvers()

__all__ = ["ConfigError", "GANModule", "losses", "penalties"]
