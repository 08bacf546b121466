"""Train with a gradient penalty: compose the Hydra config, instantiate, fit.

python train.py model=wgangp
python train.py model=gp_classifier data=digits
python train.py -m model=wgangp,dragan model.penalty.weight=1,10
python train.py debug=fast

A failure ends a run with one line (exit 2 for a bad value, 3 for a non-finite loss); in a
multirun the failed job is recorded and the others run (lit_gp/jobs.py).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from lit_gp.jobs import run_job
from lit_gp.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    return run_job(train, cfg)


if __name__ == "__main__":
    main()
