"""What ``train.py`` runs: instantiate data, model, callbacks, logger and trainer from a composed
Hydra config, fit, finish the W&B run, return the optimized metric."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lit_gp.callbacks.step_limit import GeneratorStepLimit
from lit_gp.classifier import GradientPenaltyClassifier, classifier_run_config, final_test
from lit_gp.config import build, plain
from lit_gp.data.images import ImageReadError
from lit_gp.errors import ConfigError, TrainingInterrupted, check_int, first_line
from lit_gp.gan import GANModule
from lit_gp.wandb_utils import (
    RememberWandbRun,
    choose_wandb_mode,
    define_generator_step_axis,
    finish_wandb,
    mark_wandb_preempting,
    offline_hint,
)

log = logging.getLogger(__name__)

# Lightning warns when an epoch has fewer batches than log_every_n_steps (8x8 digits: 22 batches
# of 64); its logging counts batches across epochs, so nothing is lost.
warnings.filterwarnings("ignore", message="The number of training batches .* logging interval")


def _checkpoint_shape(model_spec: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint fixes: the nets and optimizer classes (their tensors would not load
    otherwise) and the schedulers (their saved state overrides new arguments, so e.g. a longer
    linear decay would silently keep the old one). A new learning rate is fine."""
    shape: dict[str, Any] = {}
    for key in ("generator", "critic", "critic_scheduler", "generator_scheduler"):
        shape[key] = model_spec.get(key)
    for key in ("critic_optimizer", "generator_optimizer"):
        shape[f"{key}._target_"] = (model_spec.get(key) or {}).get("_target_")
    return shape


def check_run_keys(cfg: DictConfig) -> None:
    """The top-level keys of ``conf/config.yaml``, checked before anything is built (the configs
    interpolate them, so a bad value would otherwise surface under another key)."""
    check_int("seed", cfg.get("seed"), 0, 2**32 - 1)
    check_int("generator_steps", cfg.get("generator_steps"), 1)
    check_int("val_every_generator_steps", cfg.get("val_every_generator_steps"), 1)
    if cfg.get("num_threads") is not None:
        check_int("num_threads", cfg.get("num_threads"), 1)


# Where Hydra puts runs by default (hydra.run.dir, hydra.sweep.dir), relative to the directory
# train.py is started in; ``ckpt_path=last`` looks there.
RUN_ROOTS = ("outputs", "multirun")


def check_output_dir(arguments: list[str]) -> None:
    """Refuse, before Hydra starts, an output folder that cannot be created: Hydra would fail
    with a traceback while making it. Checks the literal part of ``hydra.run.dir`` /
    ``hydra.sweep.dir`` (before any ``${...}``) or Hydra's default roots."""
    multirun = "-m" in arguments or "--multirun" in arguments
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = RUN_ROOTS[1] if multirun else RUN_ROOTS[0]
    for argument in arguments:
        name, _, value = argument.lstrip("+").partition("=")
        if name == key:
            folder = value.split("${")[0] or "."
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ConfigError(key, f"cannot create the output folder {path}: {existing} {problem}")


def _without_checkpoint(overrides: Any) -> list[str]:
    return sorted(str(item) for item in overrides if not str(item).startswith("ckpt_path="))


def latest_checkpoint(output_dir: Path, search_roots: list[Path], overrides: list[str]) -> Path:
    """``checkpoints/last.ckpt`` of the newest run started with the same overrides (ignoring
    ``ckpt_path``): this run's own directory, or a run under ``search_roots``."""
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


def resolve_checkpoint(ckpt_path: Any) -> str | None:
    """The checkpoint to resume from: a path as given; ``last``, resolved by
    :func:`latest_checkpoint`; or ``auto``, the same when such a run exists and a fresh start
    otherwise (one command for a job that may be preempted and requeued). ``last`` and ``auto``
    need a Hydra run, to know the overrides."""
    if ckpt_path is None or str(ckpt_path) not in ("last", "auto"):
        return ckpt_path
    hydra_config = _hydra_config()
    if hydra_config is None:
        raise ConfigError(
            "ckpt_path", f"{ckpt_path} needs a Hydra run (train.py); pass a path instead"
        )
    cwd = Path(hydra_config.runtime.cwd)
    try:
        path = latest_checkpoint(
            Path(hydra_config.runtime.output_dir),
            [cwd / root for root in RUN_ROOTS],
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
    """Refuse a resume path that is missing, is not a lit_gp checkpoint, or was written with
    other nets or optimizers than ``model_cfg`` describes, before training; return the loaded
    checkpoint (memory-mapped), or None without a path."""
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
        raise ConfigError("ckpt_path", f"{path} is not a lit_gp GANModule checkpoint")
    saved = _checkpoint_shape(checkpoint.get("hyper_parameters") or {})
    wanted = _checkpoint_shape(plain(model_cfg))
    differing = [
        f"model.{key}" for key, value in wanted.items() if key in saved and saved[key] != value
    ]
    if differing:
        raise ConfigError(
            "ckpt_path",
            f"{path} was written with other {', '.join(differing)}; repeat the overrides of the "
            "run that wrote it (see its .hydra/overrides.yaml)",
        )
    return checkpoint


def _hydra_config() -> DictConfig | None:
    return HydraConfig.get() if HydraConfig.initialized() else None


def _wandb_run_names(hydra_config: DictConfig | None) -> dict[str, str]:
    """Group a sweep's runs on W&B and name each run by its overrides."""
    if hydra_config is None or hydra_config.mode != RunMode.MULTIRUN:
        return {}
    sweep = str(hydra_config.sweep.dir).strip("/").replace("/", "_")
    names = {"group": sweep}
    if hydra_config.job.override_dirname:
        names["name"] = hydra_config.job.override_dirname
    return names


def _is_wandb(spec: DictConfig) -> bool:
    try:
        return issubclass(get_class(spec.get("_target_", "")), WandbLogger)
    except Exception:
        return False


def saved_wandb_run_id(checkpoint: dict[str, Any] | None) -> str | None:
    """The W&B run id a checkpoint was written under (see RememberWandbRun), or None."""
    if checkpoint is None:
        return None
    run_id = checkpoint.get("wandb_run_id")
    return str(run_id) if run_id else None


def make_logger(cfg: DictConfig, resume_run_id: str | None = None) -> Any:
    """The configured logger, or False for ``logger=none``. W&B never prompts: without a login
    (or when the server does not answer) it logs offline and one line says how to sync. Online,
    ``resume_run_id`` (from the checkpoint a run resumes) continues that W&B run."""
    spec = cfg.get("logger")
    if not spec:
        return False
    if not _is_wandb(spec):
        return build(spec, "logger")
    overrides: dict[str, Any] = {
        key: value
        for key, value in _wandb_run_names(_hydra_config()).items()
        if spec.get(key) is None
    }
    save_dir = spec.get("save_dir") or "."
    # WandbLogger(offline=True) sets WANDB_MODE=dryrun for the whole process, and wandb 0.31
    # then still asks for a login; wandb.init(mode="offline") does not.
    mode = "offline" if spec.get("offline") else choose_wandb_mode(save_dir)
    overrides["offline"] = False
    if mode in ("offline", "disabled"):
        overrides["mode"] = mode
    if mode == "online" and resume_run_id and spec.get("id") is None:
        overrides.update(id=resume_run_id, resume="allow")
    logger = build(spec, "logger", **overrides)
    if mode == "online":
        try:
            logger.experiment  # noqa: B018 (starts the run now, so a dead network shows here)
        except Exception as error:
            print(f"W&B: no online run ({first_line(error)}), {offline_hint(save_dir)}")
            overrides.pop("resume", None)
            overrides.pop("id", None)
            logger = build(spec, "logger", **overrides, mode="offline")
    return logger


def write_final_metrics(metrics: dict[str, float], trainer: L.Trainer) -> None:
    """The final metrics as ``<run dir>/metrics.json`` (rank zero), so scripts can tabulate a
    sweep without a logger."""
    if not trainer.is_global_zero:
        return
    path = Path(trainer.default_root_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=1) + "\n")


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model; return ``cfg.optimized_metric`` (for sweeps) or None."""
    # A classifier run drops the GAN nets, callbacks and generator-step cadence (no-op for GANs).
    cfg = classifier_run_config(cfg)
    check_run_keys(cfg)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"))
    checkpoint = check_checkpoint(ckpt_path, cfg.model)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads") is not None:
        torch.set_num_threads(cfg.num_threads)
    datamodule = build(cfg.data, "data")
    # The module builds its own nets, penalty and optimizers from the specs, so it can save them
    # as hyperparameters and load from a checkpoint without this config.
    model: GANModule = build(cfg.model, "model", recursive=False)
    data_shape = getattr(datamodule, "data_shape", None)
    if data_shape is not None:
        try:
            model.check_data_shape(data_shape)
        except ConfigError as error:
            raise error.with_prefix("model") from None
    callbacks = [
        build(spec, f"callbacks.{name}")
        for name, spec in (cfg.get("callbacks") or {}).items()
        if spec is not None
    ]
    if isinstance(model, GANModule):
        callbacks.append(GeneratorStepLimit(cfg.generator_steps))
    optimized_metric = cfg.get("optimized_metric")

    exit_code = 1
    try:
        logger = make_logger(cfg, saved_wandb_run_id(checkpoint))
        if isinstance(logger, WandbLogger):
            callbacks.append(RememberWandbRun(logger))
        trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=logger)
        if logger:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            if isinstance(model, GANModule):
                define_generator_step_axis(logger)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except ImageReadError as error:
            # Raised while loading a batch, where the data module's key has no prefix yet.
            raise error.with_prefix("data") from None
        # callback_metrics, not the module: under ddp_spawn the fit ran in other processes.
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if isinstance(model, GradientPenaltyClassifier):
            metrics.update(final_test(trainer, model, datamodule))
        summary = ", ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))
        log.info("finished: %s", summary)
        write_final_metrics(metrics, trainer)
        exit_code = 0
    except TrainingInterrupted as stop:
        exit_code = stop.exit_status
        if stop.signal_name == "SIGTERM":
            mark_wandb_preempting()
        raise
    finally:
        # Always finish: WandbLogger never does, and the next job of a multirun would reuse the
        # run. A failed job is marked failed on W&B.
        finish_wandb(exit_code)

    if optimized_metric:
        if optimized_metric not in metrics:
            raise ConfigError(
                "optimized_metric",
                f"{optimized_metric!r} was not logged; logged: {', '.join(sorted(metrics))}",
            )
        return metrics[optimized_metric]
    return None
