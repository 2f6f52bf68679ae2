"""Hydra callbacks: refuse to run into a folder that already holds a finished run."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Written last by a run, so its presence means the folder holds a finished run.
FINISHED_MARKER = "metrics.json"


class FinishedRunError(RuntimeError):
    pass


def check_run_dir(run_dir: str | Path, overwrite: bool) -> None:
    """Raise when `run_dir` holds a finished run, unless `overwrite` is true."""
    marker = Path(run_dir) / FINISHED_MARKER
    if marker.exists() and not overwrite:
        raise FinishedRunError(
            f"output folder '{run_dir}' already holds a finished run ({FINISHED_MARKER} exists); "
            "choose another hydra.run.dir, or pass overwrite=true to replace its results"
        )


class RejectFinishedRunDir(Callback):
    """Check the run folder before Hydra writes its `.hydra/` files into it.

    A single run is checked in `on_run_start`, before anything is written. In a multirun the job
    folders are known only per job, so the task function checks them again (see `run.run`).
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        # `hydra.run.dir` may use the `${hydra:...}` resolver, which reads this singleton.
        HydraConfig.instance().set_config(config)
        run_dir = OmegaConf.select(config, "hydra.run.dir", throw_on_resolution_failure=False)
        if run_dir is not None:
            check_run_dir(run_dir, bool(config.get("overwrite", False)))
