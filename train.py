"""Train a GAN with a gradient penalty: compose the Hydra config, instantiate, fit.

python train.py model=wgangp
python train.py -m model=wgangp,dragan model.penalty.weight=1,10
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from lit_gp.errors import ConfigError, NonFiniteError, TrainingInterrupted
from lit_gp.training import check_output_dir, train

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except ConfigError as error:
        # A user error: one line naming the key, no traceback, non-zero exit.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as error:
        # The weights were not updated with it and no checkpoint was written on the way out.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
    except TrainingInterrupted as stop:
        print(
            f"interrupted: {stop}; resume with the same command plus ckpt_path=last",
            file=sys.stderr,
        )
        sys.exit(stop.exit_status)


if __name__ == "__main__":
    try:
        check_output_dir(sys.argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
