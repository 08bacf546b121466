"""The resolved run config, printed as a tree at start and saved beside the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rich
import rich.console
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

# Printed first, in this order; the other top-level keys follow in the config's order.
ORDER = ("model", "data", "trainer", "callbacks", "logger", "paths")
FILE_NAME = "config_tree.log"


def _text(cfg: DictConfig, key: str) -> str:
    """``cfg[key]`` resolved as YAML; as written when it does not resolve (the error, naming the
    key, comes when the value is used)."""
    try:
        value = cfg[key]
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_yaml(value, resolve=True)
        return str(value)
    except Exception:
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_yaml(node, resolve=False)
        return str(node._value())


def config_tree(cfg: DictConfig, order: Sequence[str] = ORDER) -> rich.tree.Tree:
    """A rich tree with one branch per top-level key of ``cfg``, each holding its resolved YAML."""
    tree = rich.tree.Tree("config", style="dim", guide_style="dim")
    keys = [key for key in order if key in cfg]
    keys += [key for key in cfg if key not in keys]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        text = _text(cfg, key)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", word_wrap=True))
    return tree


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_dir: str | Path | None = None) -> None:
    """Print ``cfg`` resolved as a tree (rank zero only) and save the same text as
    ``<save_dir>/config_tree.log``."""
    tree = config_tree(cfg)
    rich.print(tree)
    if save_dir is not None:
        path = Path(save_dir) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            # Wide, so that long values (paths) stay on one line.
            rich.console.Console(file=handle, width=200).print(tree)
