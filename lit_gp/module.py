"""What lit_gp's LightningModules share: hyperparameters from specs, optimizers built once,
the data-shape check, the BatchNorm refusal, step logging and the checkpoint entry."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lit_gp.config import Spec, build, storable_hyperparameters
from lit_gp.errors import ConfigError
from lit_gp.penalties import find_batch_norm
from lit_gp.step_logs import log_pending_step_metrics

# The checkpoint entry every lit_gp module writes ("module" names the class that wrote it).
CHECKPOINT_KEY = "lit_gp"


def module_name(module_class: type) -> str:
    """``<module>.<QualName>`` of a class, as saved in checkpoints."""
    return f"{module_class.__module__}.{module_class.__qualname__}"


@contextlib.contextmanager
def evaluation(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (BatchNorm uses and keeps its running statistics, dropout is
    off), no gradients and torch's random stream untouched; each submodule's mode is restored."""
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        for submodule, training in modes.items():
            submodule.train(training)


def refuse_batch_norm(net: nn.Module, key: str, why: str) -> None:
    """ConfigError on ``key`` when ``net`` has a BatchNorm layer (it couples samples)."""
    layer = find_batch_norm(net)
    if layer is not None:
        raise ConfigError(
            key,
            f"has a BatchNorm layer ({layer}), which couples samples and breaks {why}; use "
            "LayerNorm or no normalization",
        )


class LitGPModule(L.LightningModule):
    """Base of :class:`lit_gp.GANModule` and :class:`lit_gp.classifier.GradientPenaltyClassifier`.

    Subclasses call :meth:`store_hyperparameters` with their arguments, build optimizers through
    :meth:`optimizer_factory`, and implement :meth:`probe_data_shape`, :meth:`checkpoint_state`
    and :meth:`load_checkpoint_state`. Training metrics go to ``self.pending_step_metrics``; they
    are handed to ``self.log`` only on the batches the loggers write (``lit_gp.step_logs``).
    """

    def __init__(self) -> None:
        super().__init__()
        # The latest step's training metrics, until a batch the loggers write.
        self.pending_step_metrics: dict[str, Tensor] | None = None

    # --- construction --------------------------------------------------------------------------

    def store_hyperparameters(self, arguments: Mapping[str, Any]) -> None:
        """Save the specs and plain values among ``arguments`` (objects are left out), so
        ``load_from_checkpoint`` rebuilds the module without the Hydra config."""
        self.save_hyperparameters(storable_hyperparameters(arguments))

    @staticmethod
    def optimizer_factory(
        spec: Callable[..., Any] | Spec | None, key: str, default: Spec | None = None
    ) -> Callable[..., Any] | None:
        """``params -> Optimizer`` (or ``optimizer -> LRScheduler``) from a spec, a callable, or
        ``default`` when None."""
        return build(spec or default, key, partial=True)

    # --- data ----------------------------------------------------------------------------------

    def probe_data_shape(self, data_shape: Sequence[int]) -> None:
        """Run the nets on a tiny batch of ``data_shape`` and refuse what does not fit
        (ConfigError naming the net). Called in eval mode without gradients."""

    def check_data_shape(self, data_shape: Sequence[int]) -> None:
        """Refuse nets that do not fit data of ``data_shape``, without changing any state: the
        nets run in eval mode (BatchNorm statistics untouched) and the random stream is
        restored."""
        with evaluation(self):
            self.probe_data_shape(tuple(data_shape))

    # --- step logging --------------------------------------------------------------------------

    def step_log_options(self, batch: Any) -> dict[str, Any]:
        """Extra ``self.log`` options for the step metrics of ``batch``."""
        return {}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # self.log is costly: only on the batches the loggers write, and the last (step_logs).
        self.pending_step_metrics = log_pending_step_metrics(
            self, self.pending_step_metrics, batch_idx, **self.step_log_options(batch)
        )

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """What the module adds to its checkpoint entry."""
        return {}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` saved."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The entry also tells train.py's resume check which module wrote the file.
        checkpoint[CHECKPOINT_KEY] = {
            "module": module_name(type(self)),
            **self.checkpoint_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = dict(checkpoint.get(CHECKPOINT_KEY, {}))
        saved = state.pop("module", None)
        if saved is not None and saved != module_name(type(self)):
            raise ConfigError("ckpt_path", f"was written by {saved}, not {module_name(type(self))}")
        self.load_checkpoint_state(state)
