"""Hydra callbacks: reject a run into a folder that already contains a finished run."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

# Written last by a run, so its presence means the folder contains a finished run.
FINISHED_MARKER = "metrics.json"


class FinishedRunError(RuntimeError):
    pass


def check_run_dir(run_dir: str | Path, overwrite: bool) -> None:
    """Raise when `run_dir` contains a finished run, unless `overwrite` is true."""
    marker = Path(run_dir) / FINISHED_MARKER
    if marker.exists() and not overwrite:
        raise FinishedRunError(
            f"output folder '{run_dir}' already holds a finished run ({FINISHED_MARKER} exists); "
            "choose another hydra.run.dir, or pass overwrite=true to replace its results"
        )


class RejectFinishedRunDir(Callback):
    """Keep Hydra from writing its `.hydra/` files into a folder that contains a finished run.

    Hydra only warns when a callback raises, so this callback does not raise: it turns off the
    `.hydra/` config files of this launch, and the task function then stops with the error (see
    `run.run`). The old run's files stay as they were; Hydra's log file only gets lines appended.
    NOTE: in a multirun the job folders are known only once each job starts, after Hydra has
    written its files, so a job folder pinned to a finished run gets new `.hydra/` files there.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        # `hydra.run.dir` may use the `${hydra:...}` resolver, which reads this singleton.
        HydraConfig.instance().set_config(config)
        run_dir = OmegaConf.select(config, "hydra.run.dir", throw_on_resolution_failure=False)
        if run_dir is None:
            return
        try:
            check_run_dir(run_dir, bool(config.get("overwrite", False)))
        except FinishedRunError:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
