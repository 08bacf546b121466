"""W&B helpers: pick a mode without prompting, close runs, plot against generator steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import wandb

GENERATOR_STEP_KEY = "train/generator_step"


def _has_stored_credentials() -> bool:
    """Whether wandb would find credentials (env, netrc, settings files) without prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        from wandb.errors import AuthenticationError
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # older wandb: its own non-prompting lookup lives on wandb.api
        return bool(wandb.api.api_key)

    try:
        host = wandb_setup.singleton().settings.base_url
        # The same lookup wandb.init does (session, WANDB_API_KEY / identity token file, netrc,
        # settings files), minus the prompt and without storing the result in the session.
        auth = wbauth.authenticate_session(
            host=host, source="lit_gp", prompt=False, update_session=False
        )
    except AuthenticationError:
        # A key exists but is malformed: go online so wandb.init reports the real problem
        # instead of us silently logging offline.
        return True
    except Exception:
        # A private wandb API that changed shape: logging offline is the safe answer.
        return False
    return auth is not None


def choose_wandb_mode(save_dir: str | os.PathLike[str]) -> str:
    """Return the mode a ``WandbLogger`` should run in, never prompting for a login.

    ``WANDB_MODE`` wins if set. Otherwise ``"online"`` when wandb finds stored credentials, else
    ``"offline"`` with one printed line explaining how to upload the run later.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if _has_stored_credentials():
        return "online"
    print(f"W&B: no login found, {offline_hint(save_dir)}")
    return "offline"


def offline_hint(save_dir: str | os.PathLike[str]) -> str:
    """Where an offline run goes and how to upload it."""
    wandb_dir = Path(save_dir) / "wandb"
    return (
        f"logging offline to {wandb_dir}; upload later with: wandb sync {wandb_dir}/offline-run-*"
    )


def finish_wandb(exit_code: int | None = None) -> None:
    """Finish the active W&B run, if any.

    ``WandbLogger`` reuses an open run and never finishes it, so without this consecutive jobs of
    a Hydra multirun in one process would all log into the first job's run.
    """
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


class RememberWandbRun(L.Callback):
    """Store the W&B run id in every checkpoint (``checkpoint["wandb_run_id"]``), so a resumed
    run continues the same W&B run instead of starting a new one."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        run_id = self.logger.version
        if run_id:
            checkpoint["wandb_run_id"] = str(run_id)


def mark_wandb_preempting() -> None:
    """Tell W&B the active run was preempted (it shows as such, not as crashed)."""
    if wandb.run is not None:
        wandb.mark_preempting()


def define_generator_step_axis(logger: Any) -> None:
    """Make W&B plot every metric (``train/*``, ``val/*`` and the rest) against the generator step.

    Lightning's ``global_step`` counts every optimizer step (critic and generator), so with
    ``n_critic`` critic updates it runs ``n_critic + 1`` times faster than training progresses.
    ``trainer/global_step`` is still logged on every row. No-op for loggers other than
    ``WandbLogger``.
    """
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    run.define_metric(GENERATOR_STEP_KEY)
    # "*" is redefined too: WandbLogger already mapped "*" to trainer/global_step, and wandb-core
    # picks among overlapping globs in random (Go map) order, so without it a val/* key would land
    # on either axis (measured: 1-2 of 8 keys got the generator step).
    for pattern in ("train/*", "val/*", "*"):
        # step_sync fills in the last generator step on rows that lack it (e.g. an image row).
        run.define_metric(pattern, step_metric=GENERATOR_STEP_KEY, step_sync=True)
