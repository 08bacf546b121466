"""What ``train.py`` runs: instantiate data, model, callbacks, logger and trainer from a composed
Hydra config, fit, finish the W&B run, return the optimized metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lit_gp.callbacks.step_limit import GeneratorStepLimit
from lit_gp.config import build
from lit_gp.errors import ConfigError, first_line
from lit_gp.wandb_utils import choose_wandb_mode, define_generator_step_axis, finish_wandb

log = logging.getLogger(__name__)

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


def check_checkpoint(path: str | None) -> None:
    """Refuse a resume path that is missing or is not a lit_gp checkpoint, before training."""
    if path is None:
        return
    if not Path(path).is_file():
        raise ConfigError("ckpt_path", f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = f"{path} is not a readable checkpoint ({first_line(error)})"
        raise ConfigError("ckpt_path", message) from None
    if not isinstance(checkpoint, dict) or "lit_gp" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} is not a lit_gp GANModule checkpoint")


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


def make_logger(cfg: DictConfig) -> Any:
    """The configured logger, or False for ``logger=none``. W&B never prompts: without a login it
    logs offline (one line says how to sync)."""
    spec = cfg.get("logger")
    if not spec:
        return False
    if spec.get("_target_") != WANDB_LOGGER:
        return build(spec, "logger")
    overrides: dict[str, Any] = {
        key: value
        for key, value in _wandb_run_names(_hydra_config()).items()
        if spec.get(key) is None
    }
    # WandbLogger(offline=True) sets WANDB_MODE=dryrun for the whole process, and wandb 0.31
    # then still asks for a login; wandb.init(mode="offline") does not.
    mode = "offline" if spec.get("offline") else choose_wandb_mode(spec.get("save_dir") or ".")
    overrides["offline"] = False
    if mode in ("offline", "disabled"):
        overrides["mode"] = mode
    logger = build(spec, "logger", **overrides)
    if mode == "online":
        try:
            logger.experiment  # noqa: B018 (starts the run now, so a dead network shows here)
        except Exception as error:
            print(f"W&B: could not start an online run ({first_line(error)}); logging offline")
            logger = build(spec, "logger", **overrides, mode="offline")
    return logger


def save_final_checkpoint(trainer: L.Trainer) -> None:
    """Write ``last.ckpt`` at the end of training. ModelCheckpoint only writes it with a periodic
    save (or when nothing was saved), so a run ending between saves would leave a stale one."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.save_last or callback.dirpath is None:
        return
    trainer.save_checkpoint(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}.ckpt")


def _generator_step_limit(generator_steps: Any) -> GeneratorStepLimit:
    try:
        return GeneratorStepLimit(generator_steps)
    except ConfigError as error:
        raise ConfigError("generator_steps", error.message) from None


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model; return ``cfg.optimized_metric`` (for sweeps) or None."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_checkpoint(cfg.get("ckpt_path"))
    datamodule = build(cfg.data, "data")
    # The module builds its own nets, penalty and optimizers from the specs, so it can save them
    # as hyperparameters and load from a checkpoint without this config.
    model = build(cfg.model, "model", recursive=False)
    callbacks = [
        build(spec, f"callbacks.{name}")
        for name, spec in (cfg.get("callbacks") or {}).items()
        if spec is not None
    ]
    callbacks.append(_generator_step_limit(cfg.generator_steps))
    optimized_metric = cfg.get("optimized_metric")

    try:
        logger = make_logger(cfg)
        trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=logger)
        if logger:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            define_generator_step_axis(logger)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        save_final_checkpoint(trainer)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        summary = ", ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))
        log.info("finished at generator step %d: %s", model.generator_step, summary)
    finally:
        finish_wandb()

    if optimized_metric:
        if optimized_metric not in metrics:
            raise ConfigError(
                "optimized_metric",
                f"{optimized_metric!r} was not logged; logged: {', '.join(sorted(metrics))}",
            )
        return metrics[optimized_metric]
    return None
