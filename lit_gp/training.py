"""What ``train.py`` runs: build data, model, callbacks, logger and trainer from the composed
Hydra config, fit, test when the task says so, return the optimized metric.

Everything a run does is in the config that Hydra saved (``.hydra/config.yaml``): the task group
(``conf/task/``) chose the trainer settings, the callbacks and ``test``. Resuming is in
:mod:`lit_gp.resume`, the logger factory in :mod:`lit_gp.wandb_utils`, how a job ends in
:mod:`lit_gp.jobs`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf

from lit_gp.config import build
from lit_gp.config_tree import print_config_tree
from lit_gp.data.images import ImageReadError
from lit_gp.errors import ConfigError, check_int
from lit_gp.jobs import describe_failure
from lit_gp.resume import check_checkpoint, resolve_checkpoint
from lit_gp.wandb_utils import (
    GENERATOR_STEP_KEY,
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
# Lightning 2.6 builds torch's deprecated LeafSpec on every fit (Lightning issue 21326, fixed
# upstream): a FutureWarning about Lightning's code that a user can do nothing about.
warnings.filterwarnings(
    "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
)


class _WithoutLightningTips(logging.Filter):
    """Drops Lightning's advertisements (the litlogger and litmodels tips, "💡 Tip: ...") from
    its console log; its other lines (devices, warnings) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


# rank_zero_info's logger (lightning.pytorch.utilities.rank_zero), which the tips go through.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_WithoutLightningTips())


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model, test it when ``cfg.test``; return ``cfg.optimized_metric`` (for
    sweeps) or None."""
    started = time.perf_counter()
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
    callbacks = build_callbacks(cfg.get("callbacks"), cfg.trainer.get("enable_progress_bar", True))
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
        if GENERATOR_STEP_KEY in metrics:
            # metrics.json has always named the run's length generator_step.
            metrics.setdefault("generator_step", metrics[GENERATOR_STEP_KEY])
        metrics_file = write_final_metrics(metrics, trainer)
        # Before the W&B run is finished: where it went.
        summary = RunSummary.collect(trainer, logger, metrics, metrics_file, started)
    # After W&B's own end-of-run printout, so that it is what a run ends with.
    if trainer.is_global_zero:
        log.info("%s", summary.text())
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


def build_callbacks(specs: DictConfig | None, progress_bar: bool = True) -> list[L.Callback]:
    """The configured callbacks (``cfg.callbacks``, a mapping of name to spec). An entry that is
    null, or holds options without a ``_target_``, is switched off: ``debug=fast`` sets the
    sample counts of the GAN callbacks, which leaves such an entry behind for a callback that
    ``callbacks=none`` or an experiment switched off. Without ``progress_bar``
    (``trainer.enable_progress_bar=false``) a configured progress bar is left out too (Lightning
    refuses the two together)."""
    callbacks = [
        build(spec, f"callbacks.{name}")
        for name, spec in (specs or {}).items()
        if spec is not None and "_target_" in spec
    ]
    if not progress_bar:
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    return callbacks


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


def write_final_metrics(metrics: dict[str, float], trainer: L.Trainer) -> Path | None:
    """The final metrics as ``<run dir>/metrics.json`` (rank zero), so scripts can tabulate a
    sweep without a logger; returns the file (None on other ranks)."""
    if not trainer.is_global_zero:
        return None
    path = Path(trainer.default_root_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=1) + "\n")
    return path


def optimized_metric(name: str | None, metrics: dict[str, float]) -> float | None:
    """The value of ``optimized_metric`` (what a sweeper optimizes), or None without one."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(
            "optimized_metric", f"{name!r} was not logged; logged: {', '.join(sorted(metrics))}"
        )
    return metrics[name]


# --- the run summary ---------------------------------------------------------------------------

# The figures a run's summary reports, in this order (fnmatch patterns over the final metrics):
# toy mixtures, stacked digits, FID/KID of image data, the classifier's test accuracies.
QUALITY_KEYS = (
    "val/modes_covered",
    "val/high_quality_fraction",
    "val/mode_kl",
    "val/fid_*",
    "val/kid_*",
    "test/accuracy*",
)
# When none of those was logged (no metric callback): the critic's view of the held-out data.
FALLBACK_QUALITY_KEYS = ("val/wasserstein_estimate", "val/critic_gap", "val/accuracy*")


def quality_figures(metrics: dict[str, float]) -> dict[str, float]:
    """The final quality figures of ``metrics`` worth a newcomer's glance (:data:`QUALITY_KEYS`,
    else :data:`FALLBACK_QUALITY_KEYS`), in that order."""
    for patterns in (QUALITY_KEYS, FALLBACK_QUALITY_KEYS):
        chosen = {
            key: metrics[key]
            for pattern in patterns
            for key in sorted(fnmatch.filter(metrics, pattern))
        }
        if chosen:
            return chosen
    return {}


def format_number(value: float) -> str:
    """``8`` for a whole number, 4 significant digits otherwise."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (shorter, and what a
    user types), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class RunSummary:
    """What a finished run reports last (logged at INFO, so also in ``train.log``): its quality
    figures, its length and wall time, and where its pictures, checkpoint, metrics and W&B run
    are."""

    quality: dict[str, float] = field(default_factory=dict)
    length: str = ""
    samples: Path | None = None
    latest_picture: Path | None = None
    checkpoint: Path | None = None
    metrics_file: Path | None = None
    tracking: str = ""
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def collect(
        cls,
        trainer: L.Trainer,
        logger: Any,
        metrics: dict[str, float],
        metrics_file: Path | None,
        started: float,
    ) -> RunSummary:
        root = Path(trainer.default_root_dir)
        samples = root / "samples"
        pictures = sorted(samples.glob("step_*.png")) if samples.is_dir() else []
        return cls(
            quality=quality_figures(metrics),
            length=_run_length(trainer, metrics),
            samples=samples if samples.is_dir() else None,
            latest_picture=pictures[-1] if pictures else None,
            checkpoint=_last_checkpoint(trainer),
            metrics_file=metrics_file,
            tracking=tracking_line(logger),
            started=started,
        )

    def text(self) -> str:
        seconds = time.perf_counter() - self.started
        lines = [f"run finished: {self.length} in {seconds:.{1 if seconds < 10 else 0}f} s"]
        if self.quality:
            figures = "  ".join(f"{k}={format_number(v)}" for k, v in self.quality.items())
            lines.append(f"  quality     {figures}")
        if self.samples is not None:
            latest = f" (latest: {self.latest_picture.name})" if self.latest_picture else ""
            lines.append(f"  pictures    {_shown(self.samples)}{os.sep}{latest}")
        if self.checkpoint is not None:
            lines.append(f"  checkpoint  {_shown(self.checkpoint)}")
        if self.metrics_file is not None:
            lines.append(f"  metrics     {_shown(self.metrics_file)}")
        lines.append(f"  {self.tracking}")
        return "\n".join(lines)


def _run_length(trainer: L.Trainer, metrics: dict[str, float]) -> str:
    if GENERATOR_STEP_KEY in metrics:
        steps = metrics[GENERATOR_STEP_KEY]
        return f"{format_number(steps)} generator step{'' if steps == 1 else 's'}"
    epochs = trainer.current_epoch
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"


def _last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The run's ``last.ckpt``, if one was written."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}.ckpt"
            if path.is_file():
                return path
    return None


def tracking_line(logger: Any) -> str:
    """Where the run's metrics went: the W&B run's address, or its offline folder and the
    command that uploads it, or the CSV file; ``W&B off`` without a logger."""
    if isinstance(logger, WandbLogger):
        fallback = getattr(logger, "fallback", None)
        if fallback is not None:
            csv_file = Path(fallback.log_dir) / "metrics.csv"
            return f"W&B         failed during the run; every metric is in {_shown(csv_file)}"
        try:
            run = logger.experiment
            if getattr(run, "offline", False):
                sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
                if sync_dir:
                    folder = _shown(Path(sync_dir))
                    return f"W&B         offline run {folder}; upload it with: wandb sync {folder}"
            # Only online: an offline run warns that it has no URL.
            elif getattr(run, "url", None):
                return f"W&B         {run.url}"
        except Exception:
            return "W&B         no run"
        return "W&B         disabled"
    if isinstance(logger, CSVLogger):
        return f"W&B off     metrics CSV {_shown(Path(logger.log_dir) / 'metrics.csv')}"
    if logger:
        return f"W&B off     logger {type(logger).__name__}"
    return "W&B off     (logger=none)"
