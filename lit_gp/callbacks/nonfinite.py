"""Stop (or skip) an update before a non-finite loss, penalty or gradient reaches the weights."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lit_gp.errors import ConfigError, NonFiniteError, check_int

ACTIONS = ("stop", "skip")
REMEDIES = (
    "usual remedies: a lower learning rate, a larger penalty weight, trainer.precision=32-true, "
    "or callbacks.nonfinite_guard.action=skip to skip such updates"
)


def _parameters(optimizer: Any) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def first_nonfinite(named: dict[str, Tensor]) -> str | None:
    """The name of the first tensor with a NaN or infinite value, or None."""
    for name, value in named.items():
        if not bool(torch.isfinite(value).all()):
            return name
    return None


class NonFiniteGuard(L.Callback):
    """Check every update of a :class:`~lit_gp.GANModule` before the optimizer applies it.

    Before each optimizer step it checks the step's loss terms (``critic_loss`` and ``penalty``,
    or ``generator_loss``; the module's ``loss_terms``) and the gradients; before each batch, the
    real data. With ``action="stop"`` the first non-finite value raises
    :class:`~lit_gp.errors.NonFiniteError` naming the term and the generator step: the weights
    were never updated with it, and no checkpoint is written on the way out, so ``last.ckpt``
    stays the last good state. With ``action="skip"`` the update is dropped (its gradients
    cleared, so the optimizer leaves those weights and its moments alone), counted in
    ``train/nonfinite_skips``, and the run stops once more than ``max_skips`` were skipped.

    The checks cost one device synchronisation per optimizer step. Under ``16-mixed`` the
    GradScaler already skips updates with non-finite gradients (and lowers its scale), so only
    the data is checked there.
    """

    def __init__(self, action: str = "stop", max_skips: int = 100, check_data: bool = True):
        if action not in ACTIONS:
            raise ConfigError("action", f"must be one of {', '.join(ACTIONS)}, got {action!r}")
        check_int("max_skips", max_skips, minimum=0)
        if not isinstance(check_data, bool):
            raise ConfigError("check_data", f"must be true or false, got {check_data!r}")
        self.action = action
        self.max_skips = max_skips
        self.check_data = check_data
        self.skips = 0

    # --- what is checked ------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.check_data:
            return
        data = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(data, Tensor) and data.is_floating_point():
            if not bool(torch.isfinite(data).all()):
                raise NonFiniteError(
                    f"data: training batch {batch_idx} of epoch {trainer.current_epoch} holds NaN "
                    "or infinite values; check the data set (and its transforms)"
                )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        if _grad_scaler(trainer) is not None:
            return
        terms: dict[str, Tensor] = dict(getattr(pl_module, "loss_terms", {}) or {})
        parameters = _parameters(optimizer)
        checked = list(terms.values())
        if parameters:
            checked.append(torch.nn.utils.get_total_norm([p.grad for p in parameters]))
        if not checked or bool(torch.isfinite(torch.stack([t.float() for t in checked])).all()):
            return
        term = first_nonfinite(terms) or f"gradient of the {_net_name(pl_module, optimizer)}"
        where = _where(pl_module, optimizer)
        if self.action == "skip" and self.skips < self.max_skips:
            self.skips += 1
            for parameter in parameters:
                parameter.grad = None
            print(f"warning: non-finite {term} {where}: update skipped ({self.skips} so far)")
            return
        limit = f" (after skipping {self.skips}, the limit)" if self.action == "skip" else ""
        raise NonFiniteError(f"non-finite {term} {where}{limit}; {REMEDIES}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.action == "skip" and self.skips:
            pl_module.log("train/nonfinite_skips", float(self.skips), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"skips": self.skips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skips = int(state_dict.get("skips", 0))


def _grad_scaler(trainer: L.Trainer) -> Any:
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def _net_name(pl_module: L.LightningModule, optimizer: Any) -> str:
    optimizers = pl_module.optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    names = getattr(pl_module, "optimizer_names", ())
    for index, candidate in enumerate(optimizers):
        if getattr(candidate, "optimizer", candidate) is optimizer and index < len(names):
            return names[index]
    return "model"


def _where(pl_module: L.LightningModule, optimizer: Any) -> str:
    step = getattr(pl_module, "generator_step", None)
    name = _net_name(pl_module, optimizer)
    if step is None:
        return f"in the {name} update"
    return f"in the {name} update at generator step {step}"
