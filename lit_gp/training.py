"""What ``train.py`` runs: build data, model, callbacks, logger and trainer from the composed
Hydra config, fit, test when the task says so, return the optimized metric.

Everything a run does is in the config that Hydra saved (``.hydra/config.yaml``): the task group
(``conf/task/``) chose the trainer settings, the callbacks and ``test``. Resuming is in
:mod:`lit_gp.resume`, the logger factory in :mod:`lit_gp.wandb_utils`, how a job ends in
:mod:`lit_gp.jobs`.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf

from lit_gp.config import build
from lit_gp.config_tree import print_config_tree
from lit_gp.data.images import ImageReadError
from lit_gp.errors import ConfigError, check_int
from lit_gp.jobs import describe_failure
from lit_gp.resume import check_checkpoint, resolve_checkpoint
from lit_gp.wandb_utils import (
    define_generator_step_axis,
    is_wandb_spec,
    logger_callbacks,
    make_logger,
    saved_wandb_run_id,
    wandb_run_closed,
)

log = logging.getLogger(__name__)

# Lightning warns when an epoch has fewer batches than log_every_n_steps (8x8 digits: 22 batches
# of 64); its logging counts batches across epochs, so nothing is lost.
warnings.filterwarnings("ignore", message="The number of training batches .* logging interval")


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model, test it when ``cfg.test``; return ``cfg.optimized_metric`` (for
    sweeps) or None."""
    check_run_keys(cfg)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), cfg.paths.run_roots)
    checkpoint = check_checkpoint(ckpt_path, cfg.model)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads") is not None:
        torch.set_num_threads(cfg.num_threads)
    datamodule = build(cfg.data, "data")
    # The module builds its own nets, penalty and optimizers from the specs, so it can save them
    # as hyperparameters and load from a checkpoint without this config.
    model = build(cfg.model, "model", recursive=False)
    check_data_shape(model, datamodule)
    callbacks = build_callbacks(cfg.get("callbacks"))
    # Once the config is known to build (a bad value stops above with its one line).
    print_config_tree(cfg, cfg.paths.output_dir)

    with wandb_run_closed(describe_failure):
        logger = make_logger(cfg.get("logger"), saved_wandb_run_id(checkpoint))
        callbacks += logger_callbacks(logger)
        trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=logger)
        log_hyperparameters(logger, cfg)
        fit(trainer, model, datamodule, ckpt_path)
        # callback_metrics, not the module: under ddp_spawn the fit ran in other processes.
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if cfg.get("test"):
            metrics.update(test(trainer, model, datamodule))
        log.info("finished: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        write_final_metrics(metrics, trainer)
    return optimized_metric(cfg.get("optimized_metric"), metrics)


# --- the steps of train() ----------------------------------------------------------------------


def check_run_keys(cfg: DictConfig) -> None:
    """The top-level keys, checked before anything is built (the configs interpolate them, so a
    bad value would otherwise surface under another key). ``generator_steps`` and
    ``val_every_generator_steps`` belong to ``task=gan``."""
    check_int("seed", cfg.get("seed"), 0, 2**32 - 1)
    for key in ("generator_steps", "val_every_generator_steps"):
        if key in cfg:
            check_int(key, cfg.get(key), 1)
    if cfg.get("num_threads") is not None:
        check_int("num_threads", cfg.get("num_threads"), 1)
    if OmegaConf.is_missing(cfg, "image_shape"):
        # task=classifier requires it (image_shape: ???); the toy data configs do not set it.
        raise ConfigError(
            "data",
            "the classifier needs labelled image data (data=digits, mnist, fashion_mnist, "
            "cifar10); this data config sets no image_shape",
        )


def check_data_shape(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Refuse, before training, a model whose nets do not fit the data's samples."""
    data_shape = getattr(datamodule, "data_shape", None)
    if data_shape is None:
        return
    try:
        model.check_data_shape(data_shape)
    except ConfigError as error:
        raise error.with_prefix("model") from None


def build_callbacks(specs: DictConfig | None) -> list[L.Callback]:
    """The configured callbacks (``cfg.callbacks``, a mapping of name to spec). An entry that is
    null, or holds options without a ``_target_``, is switched off: ``debug=fast`` sets the
    sample counts of the GAN callbacks, which leaves such an entry behind for a callback that
    ``callbacks=none`` or an experiment switched off."""
    return [
        build(spec, f"callbacks.{name}")
        for name, spec in (specs or {}).items()
        if spec is not None and "_target_" in spec
    ]


def log_hyperparameters(logger: Any, cfg: DictConfig) -> None:
    """Log the resolved config as the run's hyperparameters; on W&B also plot every metric
    against the generator step when the task asks for it (``generator_step_axis``)."""
    if not logger:
        return
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if cfg.get("generator_step_axis") and is_wandb_spec(cfg.logger):
        define_generator_step_axis(logger)


def fit(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: str | None,
) -> None:
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except ImageReadError as error:
        # Raised while loading a batch, where the data module's key has no prefix yet.
        raise error.with_prefix("data") from None


def test(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule
) -> dict[str, float]:
    """Test the fitted ``model`` (``test/*`` metrics; the classifier writes its
    ``results_file``) on the data module's test split, or on its validation split when it has
    none (the image data modules have train and val only), recording the split in
    ``model.test_split``; return the metrics."""
    if is_overridden("test_dataloader", datamodule):
        model.test_split = "test"
        trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        model.test_split = "val"
        trainer.test(model, dataloaders=datamodule.val_dataloader(), verbose=False)
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


def write_final_metrics(metrics: dict[str, float], trainer: L.Trainer) -> None:
    """The final metrics as ``<run dir>/metrics.json`` (rank zero), so scripts can tabulate a
    sweep without a logger."""
    if not trainer.is_global_zero:
        return
    path = Path(trainer.default_root_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=1) + "\n")


def optimized_metric(name: str | None, metrics: dict[str, float]) -> float | None:
    """The value of ``optimized_metric`` (what a sweeper optimizes), or None without one."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(
            "optimized_metric", f"{name!r} was not logged; logged: {', '.join(sorted(metrics))}"
        )
    return metrics[name]
