"""What the GAN training step needs from a distributed (DDP) run.

Measured with 2 gloo processes (tests/test_ddp.py): with ``find_unused_parameters=True`` the
parameters after a few steps with 2 ranks x batch B equal those with 1 rank x batch 2B. Two DDP
settings do not work with the GAN step and are refused here:

- ``find_unused_parameters=False`` (Lightning's ``strategy="ddp"``): each critic step leaves the
  generator's parameters out of the graph and each generator step the critic's, so the first
  step stops with "parameters that were not used in producing the loss".
- ``static_graph=True``: the graph changes between the critic and the generator step (and with
  a lazy penalty between critic steps). In Lightning it stops with "Your training graph has
  changed in this iteration"; raw DDP silently keeps each rank's own gradients.

Every process also starts from the same seed (``seed_everything`` and Lightning's spawn launcher
give each rank the same torch RNG state), so without :func:`seed_per_rank` every rank draws the
same generator noise and penalty points.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy

from lit_gp.errors import ConfigError

_USE = "use trainer=ddp (strategy: ddp_find_unused_parameters_true)"


def check_strategy(trainer: Any) -> None:
    """Refuse a DDP strategy the GAN step cannot run under (see the module docstring).

    ``trainer`` is a ``lightning.Trainer``. Every DDPStrategy is checked (ddp_spawn, ddp_fork and
    ddp_notebook are DDPStrategy too); other strategies pass. Raises :class:`ConfigError` on
    ``trainer.strategy``. Call it from ``GANModule.setup``, on every rank before training.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return
    # DDPStrategy keeps the keyword arguments it passes to DistributedDataParallel here; the
    # registered names (ddp_find_unused_parameters_true, ...) set them too.
    options = getattr(strategy, "_ddp_kwargs", {}) or {}
    if options.get("static_graph", False):
        raise ConfigError(
            "trainer.strategy",
            "DDP with static_graph=True is not supported: the critic and generator steps use "
            "different parameters, so ranks stop or silently keep unaveraged gradients; " + _USE,
        )
    if not options.get("find_unused_parameters", False):
        raise ConfigError(
            "trainer.strategy",
            "DDP needs find_unused_parameters=True: each critic step leaves the generator's "
            "parameters unused and each generator step the critic's; " + _USE,
        )


def seed_per_rank(trainer: Any, step: int = 0) -> None:
    """Give every DDP rank but rank 0 its own torch random stream, derived from the current
    seed and the rank, so ranks draw different noise and penalty points.

    Call it once per fit on every rank after the nets are built (DDP broadcasts rank 0's
    parameters anyway). A single process keeps its stream unchanged.
    """
    if trainer.world_size <= 1 or trainer.global_rank == 0:
        return
    # The seed seed_everything set (PL_GLOBAL_SEED), not torch.initial_seed(): after a first call
    # that is already a derived seed, and a second fit would get another stream.
    base = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
    # A resumed run passes its step, so its streams are not the ones the run started with.
    sequence = np.random.SeedSequence(
        [base, trainer.global_rank, step] if step else [base, trainer.global_rank]
    )
    torch.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0]))
