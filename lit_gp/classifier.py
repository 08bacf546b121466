"""Gradient penalties beyond GANs: a classifier trained with cross-entropy plus an input-gradient
penalty ("double backpropagation", Drucker & LeCun 1992; Ross & Doshi-Velez 2018).

The penalty is :func:`lit_gp.penalties.gradient_penalty` of a per-sample score s(x):
``weight * E[(||grad_x s(x)|| - target)^2]`` (``weight * E||grad_x s(x)||^2`` at target 0), with

- ``penalty_of="loss"``: s(x) = cross-entropy of the sample with its true label (its gradient is
  minus the gradient of the true class's log-probability);
- ``penalty_of="jacobian"``: s(x) = v . z(x), the logits z projected on a random direction
  v ~ N(0, I) drawn per sample and step, so that E_v ||grad_x s||^2 = ||dz/dx||_F^2: an unbiased
  one-projection estimate of the input Jacobian's squared Frobenius norm (Hoffman et al. 2019,
  "Robust Learning with Jacobian Regularization"); needs no label, target 0 only;

at ``penalty_points="data"`` (the batch) or ``"interpolates"`` (eps x + (1 - eps) x[perm], one
eps per sample; jacobian only, since a point between two samples has no label).

(The gradient of the *sum* of the logits, offered before as ``penalty_of="logits"``, constrains
nothing: softmax ignores a shift of all logits, so a net can drive that gradient to zero, e.g.
last-layer rows summing to zero, without changing a single prediction.)

``python train.py model=gp_classifier data=digits`` runs it: the model config selects
``task=classifier`` (``conf/task/classifier.yaml``: trainer by epochs, callbacks, no GAN nets,
a final test that writes ``results_file``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gp.config import Spec, build, call_factory
from lit_gp.errors import ConfigError, check_int, check_number, first_line
from lit_gp.module import LitGPModule, refuse_batch_norm
from lit_gp.penalties import PenaltyResult, gradient_penalty, input_gradient
from lit_gp.penalties import interpolates as interpolate

DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.Adam", "lr": 1e-3}
PENALTY_OF = ("loss", "jacobian")
PENALTY_POINTS = ("data", "interpolates")
# Seed of the evaluation noise (val/accuracy_noise): the same noise at every evaluation, so the
# metric moves only with the model, and the training random streams are never touched.
EVAL_SEED = 0


def _check_choice(key: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose largest logit is the label's."""
    return (logits.argmax(dim=1) == labels).float().mean()


class GradientPenaltyClassifier(LitGPModule):
    """Supervised classification with cross-entropy plus an input-gradient penalty.

    ``net``, ``optimizer`` and ``scheduler`` are objects or Hydra-style specs (mappings with
    ``_target_``). Specs and plain values are saved as hyperparameters, so
    ``GradientPenaltyClassifier.load_from_checkpoint(path)`` rebuilds the module without the
    Hydra config; objects must be passed again.

    Args:
        net: maps images (B, C, H, W) to logits (B, num_classes). No BatchNorm when the penalty
            is on (it couples the samples, so the gradient would not be per sample).
        num_classes: the logits' size; checked against the net and the data module's
            ``num_classes``. None: taken from the net's output, unchecked.
        penalty_weight: weight of the penalty; 0 turns it off (no double backward at all).
        penalty_target: the norm the gradients are pulled to (0: plain squared norm).
        penalty_of: ``"loss"`` (per-sample cross-entropy) or ``"jacobian"`` (random projection
            of the logits: the input Jacobian's squared Frobenius norm in expectation; target 0).
        penalty_points: ``"data"`` or ``"interpolates"`` (only with ``penalty_of="jacobian"``).
        optimizer: ``params -> Optimizer`` (default Adam, lr 1e-3); weight decay comes through it
            (e.g. ``torch.optim.AdamW`` with ``weight_decay``).
        scheduler: ``optimizer -> LRScheduler`` stepped once per epoch, or None.
        noise_std: standard deviation of the Gaussian input noise for ``*/accuracy_noise``
            (noisy images are clamped to [-1, 1]).
        fgsm_epsilon: step of the FGSM attack for ``*/accuracy_fgsm``:
            ``clamp(x + eps * sign(grad_x CE(x, y)), -1, 1)`` (Goodfellow et al. 2015).
        results_file: file, relative to the trainer's ``default_root_dir`` (the Hydra run
            directory), that receives the final test metrics and the training time as JSON
            after :meth:`Trainer.test`; None writes nothing.

    Logs ``train/loss``, ``train/cross_entropy``, ``train/penalty`` (0 without a penalty),
    ``train/grad_norm_mean`` (mean per-sample norm of the penalized gradient, when the penalty
    is on), ``train/time_s`` (training wall time so far, validation excluded, every epoch), and
    per validation / test epoch ``val/`` or ``test/`` + ``accuracy``, ``accuracy_noise``,
    ``accuracy_fgsm`` and ``input_grad_norm`` (mean per-sample ||grad_x CE(x, y)||).
    """

    def __init__(
        self,
        net: nn.Module | Spec,
        num_classes: int | None = None,
        penalty_weight: float = 0.0,
        penalty_target: float = 0.0,
        penalty_of: str = "loss",
        penalty_points: str = "data",
        optimizer: Callable[..., torch.optim.Optimizer] | Spec | None = None,
        scheduler: Callable[..., Any] | Spec | None = None,
        noise_std: float = 0.3,
        fgsm_epsilon: float = 0.1,
        results_file: str | None = "results.json",
    ) -> None:
        super().__init__()
        arguments = dict(
            net=net,
            num_classes=num_classes,
            penalty_weight=penalty_weight,
            penalty_target=penalty_target,
            penalty_of=penalty_of,
            penalty_points=penalty_points,
            optimizer=optimizer,
            scheduler=scheduler,
            noise_std=noise_std,
            fgsm_epsilon=fgsm_epsilon,
            results_file=results_file,
        )
        self.store_hyperparameters(arguments)

        self.penalty_weight = check_number("penalty_weight", penalty_weight, 0)
        self.penalty_target = check_number("penalty_target", penalty_target, 0)
        if penalty_of == "logits":
            raise ConfigError(
                "penalty_of",
                "logits is no longer offered: softmax ignores a shift of all logits, so the "
                "gradient of their sum can vanish without changing any prediction; use jacobian "
                "(the input Jacobian's Frobenius norm) or loss",
            )
        self.penalty_of = _check_choice("penalty_of", penalty_of, PENALTY_OF)
        self.penalty_points = _check_choice("penalty_points", penalty_points, PENALTY_POINTS)
        if self.penalty_points == "interpolates" and self.penalty_of == "loss":
            raise ConfigError(
                "penalty_points",
                "interpolates needs penalty_of=jacobian: a point between two samples has no "
                "label, so it has no cross-entropy",
            )
        if self.penalty_of == "jacobian" and self.penalty_target != 0:
            raise ConfigError(
                "penalty_target",
                "must be 0 with penalty_of=jacobian (one random projection estimates the "
                f"squared Frobenius norm, not the norm), got {penalty_target!r}",
            )
        self.noise_std = check_number("noise_std", noise_std, 0)
        self.fgsm_epsilon = check_number("fgsm_epsilon", fgsm_epsilon, 0)
        if num_classes is not None:
            check_int("num_classes", num_classes, 2)
        self.num_classes = num_classes
        if results_file is not None and (not isinstance(results_file, str) or not results_file):
            raise ConfigError("results_file", f"must be a file name or null, got {results_file!r}")
        self.results_file = results_file

        self.net = build(net, "net")
        if not isinstance(self.net, nn.Module):
            raise ConfigError("net", f"must be a torch.nn.Module, got {type(self.net).__name__}")
        if self.penalty_weight > 0:
            refuse_batch_norm(self.net, "net", "the per-sample input-gradient penalty")

        self._optimizer_factory = self.optimizer_factory(optimizer, "optimizer", DEFAULT_OPTIMIZER)
        self._scheduler_factory = self.optimizer_factory(scheduler, "scheduler")
        # Build them once now, so a bad learning rate stops before training starts.
        self.configure_optimizers()

        # Training wall time without validation; saved in checkpoints so a resumed run adds up.
        self.train_time_s = 0.0
        self.test_split: str | None = None
        self._clock: float | None = None
        self._time_at_start = 0.0
        self._validation_s = 0.0
        self._validation_clock: float | None = None
        self._eval_generator: torch.Generator | None = None

    # --- setup ---------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = call_factory(self._optimizer_factory, "optimizer", self.net.parameters())
        if self._scheduler_factory is None:
            return optimizer
        scheduler = call_factory(self._scheduler_factory, "scheduler", optimizer)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def probe_data_shape(self, data_shape: Sequence[int]) -> None:
        """Refuse a net that does not give ``num_classes`` logits per image of ``data_shape``."""
        try:
            logits = self.net(torch.zeros(2, *data_shape, device=self.device))
        except RuntimeError as error:
            message = f"cannot classify data of shape {tuple(data_shape)}: {first_line(error)}"
            raise ConfigError("net", message) from None
        if logits.dim() != 2 or logits.shape[0] != 2:
            raise ConfigError("net", f"must give logits of shape (B, classes), gave {logits.shape}")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ConfigError(
                "net",
                f"gives {logits.shape[1]} logits per sample, num_classes is {self.num_classes}",
            )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and self.num_classes not in (None, data_classes):
            raise ConfigError(
                "num_classes", f"is {self.num_classes}, the data has {data_classes} classes"
            )
        data_shape = getattr(datamodule, "data_shape", None)
        if data_shape is not None:
            self.check_data_shape(data_shape)

    # --- the penalty ---------------------------------------------------------------------------

    def penalty(self, images: Tensor, labels: Tensor) -> tuple[PenaltyResult | None, Tensor | None]:
        """The input-gradient penalty on a batch, or None when ``penalty_weight`` is 0.

        Also returns the logits of ``images`` when the penalty's forward pass produced them
        (``penalty_points="data"``), so the cross-entropy needs no second forward pass.
        """
        if self.penalty_weight == 0:
            return None, None
        on_data = self.penalty_points == "data"
        if on_data:
            points = images
        else:
            points = interpolate(images, images[torch.randperm(images.shape[0])])
        seen: dict[str, Tensor] = {}

        def score(x: Tensor) -> Tensor:
            logits = self.net(x)
            seen["logits"] = logits
            if self.penalty_of == "loss":
                return F.cross_entropy(logits, labels, reduction="none")
            # One direction per sample, a fresh one every step: E_v ||grad (v . z)||^2 is the
            # squared Frobenius norm of dz/dx.
            direction = torch.randn(logits.shape, device=logits.device, dtype=logits.dtype)
            return (logits * direction.detach()).sum(dim=1)

        result = gradient_penalty(
            score, points, weight=self.penalty_weight, target=self.penalty_target
        )
        return result, seen["logits"] if on_data else None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = batch
        result, logits = self.penalty(images, labels)
        if logits is None:
            logits = self.net(images)
        cross_entropy = F.cross_entropy(logits, labels)
        loss = cross_entropy if result is None else cross_entropy + result.loss
        logs = {
            "train/loss": loss.detach(),
            "train/cross_entropy": cross_entropy.detach(),
            "train/penalty": torch.zeros(()) if result is None else result.loss.detach(),
        }
        if result is not None:
            logs["train/grad_norm_mean"] = result.grad_norm.mean()
        self.pending_step_metrics = logs
        return loss

    def step_log_options(self, batch: Any) -> dict[str, Any]:
        return {"batch_size": len(batch[0])}

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per-batch means of the evaluation metrics (clean, noisy and FGSM accuracy, input
        gradient norm of the cross-entropy), with the net as it is (call ``eval()`` first for
        evaluation without dropout). Works under ``torch.inference_mode``."""
        # Lightning evaluates under inference mode; the FGSM step needs an input gradient.
        with torch.inference_mode(False), torch.enable_grad():
            images, labels = images.clone(), labels.clone()
            seen: dict[str, Tensor] = {}

            def loss(x: Tensor) -> Tensor:
                seen["logits"] = self.net(x)
                return F.cross_entropy(seen["logits"], labels, reduction="none")

            gradient = input_gradient(loss, images).detach()
            logits = seen["logits"].detach()
        with torch.no_grad():
            noise = torch.randn(
                images.shape,
                generator=self._noise_generator(),
                device=images.device,
                dtype=images.dtype,
            )
            noisy = (images + self.noise_std * noise).clamp(-1, 1)
            adversarial = (images + self.fgsm_epsilon * gradient.sign()).clamp(-1, 1)
            return {
                "accuracy": accuracy(logits, labels),
                "accuracy_noise": accuracy(self.net(noisy), labels),
                "accuracy_fgsm": accuracy(self.net(adversarial), labels),
                "input_grad_norm": torch.linalg.vector_norm(gradient.flatten(1), dim=1).mean(),
            }

    def _noise_generator(self) -> torch.Generator:
        if self._eval_generator is None:
            self._eval_generator = torch.Generator(device=self.device).manual_seed(EVAL_SEED)
        return self._eval_generator

    def _log_evaluation(self, batch: Any, prefix: str) -> None:
        images, labels = batch
        metrics = self.evaluate(images, labels)
        self.log_dict(
            {f"{prefix}/{name}": value for name, value in metrics.items()},
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
        )

    def on_validation_epoch_start(self) -> None:
        self._eval_generator = None

    def on_test_epoch_start(self) -> None:
        self._eval_generator = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._log_evaluation(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._log_evaluation(batch, "test")

    # --- training time -------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._clock = time.perf_counter()
        self._time_at_start = self.train_time_s
        self._validation_s = 0.0

    def on_validation_start(self) -> None:
        self._validation_clock = time.perf_counter()

    def on_validation_end(self) -> None:
        if self._clock is not None and self._validation_clock is not None:
            self._validation_s += time.perf_counter() - self._validation_clock
        self._validation_clock = None

    def _update_time(self) -> None:
        if self._clock is not None:
            elapsed = time.perf_counter() - self._clock - self._validation_s
            self.train_time_s = self._time_at_start + elapsed

    def on_train_epoch_end(self) -> None:
        # After the epoch's validation (Lightning validates before this hook).
        self._update_time()
        self.log("train/time_s", self.train_time_s, on_step=False, on_epoch=True)

    def on_train_end(self) -> None:
        # The time stays the last epoch's, as logged and checkpointed (the rest is teardown).
        self._clock = None

    # --- results -------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """The final test metrics (``test/*``), training time and length, the split tested and
        the robustness settings, as plain JSON values."""
        metrics = self.trainer.callback_metrics
        return {
            **{name: float(value) for name, value in metrics.items() if name.startswith("test/")},
            "train/time_s": self.train_time_s,
            "epochs": self.current_epoch,
            "global_step": self.global_step,
            "test_split": self.test_split,
            "noise_std": self.noise_std,
            "fgsm_epsilon": self.fgsm_epsilon,
        }

    def on_test_end(self) -> None:
        if self.results_file is None or not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / self.results_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results(), indent=2, sort_keys=True) + "\n")

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        return {"train_time_s": self.train_time_s}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.train_time_s = float(state.get("train_time_s", 0.0))
