"""Resuming a run: find the checkpoint (``ckpt_path=last|auto|<path>``) and refuse, before
training, one that this config cannot continue."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from lit_gp.config import plain
from lit_gp.errors import ConfigError, first_line
from lit_gp.module import module_name

log = logging.getLogger(__name__)

# Model arguments a checkpoint fixes, compared whole: the nets (their tensors would not load
# otherwise) and the schedulers (their saved state overrides new arguments, so e.g. a longer
# linear decay would silently keep the old one).
_FIXED_SPECS = (
    "generator",
    "critic",
    "net",
    "critic_scheduler",
    "generator_scheduler",
    "scheduler",
)
# Model arguments whose class a checkpoint fixes: the optimizers (their state would not load into
# another class) and the weight controller (another one would start from scratch, silently dropping
# the saved state). A new learning rate or controller gain is fine.
_FIXED_CLASSES = ("critic_optimizer", "generator_optimizer", "optimizer", "weight_controller")


def _checkpoint_shape(model_spec: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint fixes of a model spec (or of a checkpoint's saved hyperparameters)."""
    shape: dict[str, Any] = {key: model_spec.get(key) for key in _FIXED_SPECS}
    for key in _FIXED_CLASSES:
        spec = model_spec.get(key)
        shape[f"{key}._target_"] = spec.get("_target_") if isinstance(spec, dict) else spec
    return shape


def saved_module(checkpoint: dict[str, Any]) -> str | None:
    """The LightningModule class that wrote a lit_gp checkpoint: its ``lit_gp.module`` entry, or
    for checkpoints written before that entry existed, what the saved hyperparameters show (a
    GAN saves ``generator`` and ``critic``, the classifier ``net``); None if neither tells."""
    entry = checkpoint.get("lit_gp")
    if isinstance(entry, dict) and entry.get("module"):
        return str(entry["module"])
    hyperparameters = checkpoint.get("hyper_parameters") or {}
    if "generator" in hyperparameters and "critic" in hyperparameters:
        return "lit_gp.gan.GANModule"
    if "net" in hyperparameters:
        return "lit_gp.classifier.GradientPenaltyClassifier"
    return None


def _wanted_module(model_cfg: DictConfig) -> str | None:
    try:
        return module_name(get_class(str(model_cfg.get("_target_"))))
    except Exception:
        return None  # building the model will report it


def _without_checkpoint(overrides: Iterable[Any]) -> list[str]:
    return sorted(str(item) for item in overrides if not str(item).startswith("ckpt_path="))


def latest_checkpoint(output_dir: Path, search_roots: Iterable[Path], overrides: list[str]) -> Path:
    """``checkpoints/last.ckpt`` of the newest run started with the same overrides (ignoring
    ``ckpt_path``): this run's own directory, or a run under ``search_roots``."""
    search_roots = list(search_roots)
    wanted = _without_checkpoint(overrides)
    candidates = []
    own = output_dir / "checkpoints" / "last.ckpt"
    if own.is_file():
        candidates.append(own)
    for root in search_roots:
        if not root.is_dir():
            continue
        for saved in root.glob("**/.hydra/overrides.yaml"):
            last = saved.parent.parent / "checkpoints" / "last.ckpt"
            try:
                same = _without_checkpoint(OmegaConf.load(saved)) == wanted
            except Exception:
                continue
            if same and last.is_file():
                candidates.append(last)
    if not candidates:
        roots = ", ".join(str(root) for root in search_roots)
        raise ConfigError(
            "ckpt_path",
            f"last: no earlier run with these overrides has a checkpoints/last.ckpt (searched "
            f"{output_dir} and {roots}); pass the checkpoint's path instead",
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def resolve_checkpoint(ckpt_path: Any, run_roots: Iterable[Any] = ()) -> str | None:
    """The checkpoint to resume from: a path as given; ``last``, resolved by
    :func:`latest_checkpoint` over this run's directory and ``run_roots`` (``paths.run_roots``:
    the folders of earlier runs); or ``auto``, the same when such a run exists and a fresh start
    otherwise (one command for a job that may be preempted and requeued). ``last`` and ``auto``
    need a Hydra run, to know the overrides."""
    if ckpt_path is None or str(ckpt_path) not in ("last", "auto"):
        return ckpt_path
    if not HydraConfig.initialized():
        raise ConfigError(
            "ckpt_path", f"{ckpt_path} needs a Hydra run (train.py); pass a path instead"
        )
    hydra_config = HydraConfig.get()
    cwd = Path(hydra_config.runtime.cwd)
    try:
        path = latest_checkpoint(
            Path(hydra_config.runtime.output_dir),
            [cwd / str(root) for root in run_roots],
            list(hydra_config.overrides.task),
        )
    except ConfigError:
        if str(ckpt_path) == "auto":
            log.info("ckpt_path=auto: no earlier run with these overrides, starting afresh")
            return None
        raise
    log.info("resuming from %s", path)
    return str(path)


def check_checkpoint(path: str | None, model_cfg: DictConfig) -> dict[str, Any] | None:
    """Refuse a resume path that is missing, is not a lit_gp checkpoint, was written by another
    module (a GAN checkpoint for a classifier or the reverse), or with other nets, optimizers,
    schedulers or weight controller than ``model_cfg`` describes, before training; return the
    loaded checkpoint (memory-mapped), or None without a path."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError("ckpt_path", f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        message = f"{path} is not a readable checkpoint ({first_line(error)})"
        raise ConfigError("ckpt_path", message) from None
    if not isinstance(checkpoint, dict) or "lit_gp" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} is not a lit_gp checkpoint")
    written_by, wanted = saved_module(checkpoint), _wanted_module(model_cfg)
    if written_by is not None and wanted is not None and written_by != wanted:
        raise ConfigError(
            "ckpt_path",
            f"{path} was written by a {written_by}, this run trains a {wanted} (model."
            "_target_); resume it with the model config that wrote it",
        )
    saved = _checkpoint_shape(checkpoint.get("hyper_parameters") or {})
    wanted_shape = _checkpoint_shape(plain(model_cfg))
    differing = [f"model.{key}" for key, value in wanted_shape.items() if saved[key] != value]
    if differing:
        raise ConfigError(
            "ckpt_path",
            f"{path} was written with other {', '.join(differing)}"
            f"{_class_change(saved, wanted_shape)}; repeat the overrides of the run that wrote it "
            "(see its .hydra/overrides.yaml)",
        )
    return checkpoint


def _class_change(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """`` (X there, Y here)`` for a changed weight controller, whose state a resume would drop."""
    key = "weight_controller._target_"
    if saved[key] == wanted[key]:
        return ""
    return f" ({saved[key] or 'none'} there, {wanted[key] or 'none'} here)"
