"""Sending metrics and media to the experiment logger (W&B when configured)."""

from __future__ import annotations

import logging
from pathlib import Path

from pytorch_lightning.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)


def log_metrics(logger: Logger, metrics: dict) -> None:
    logger.log_metrics({k: v for k, v in metrics.items() if v is not None})


def log_media(logger: Logger, out_dir: Path, fewshot_records, before, after, samples) -> None:
    """Log few-shot images, before/after videos and frame grids; only W&B takes media."""
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    fewshot = sorted((out_dir / "fewshot").glob("*.png"))
    payload: dict = {"fewshot/images": [wandb.Image(str(p), caption=p.stem) for p in fewshot]}
    for phase_name, phase in (("before", before), ("after", after)):
        captions = [f"{s.prompt} [{s.watched.key}]" for s in samples]
        if phase.video_paths:
            payload[f"videos/{phase_name}"] = [wandb.Video(str(p), caption=c, format="mp4")
                                               for p, c in zip(phase.video_paths, captions)]
            payload[f"frame_grids/{phase_name}"] = [wandb.Image(str(p), caption=c)
                                                    for p, c in zip(phase.grid_paths, captions)]
        if phase.image_grid_path is not None:
            payload[f"images/{phase_name}"] = wandb.Image(str(phase.image_grid_path))
    logger.experiment.log(payload)


def finish(logger: Logger | None, status: str = "success") -> None:
    """Flush the logger (CSVLogger writes only on save) and close a W&B run, so that the next job
    of a multirun in this process starts its own."""
    if logger is None:
        return
    logger.save()
    logger.finalize(status)
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
