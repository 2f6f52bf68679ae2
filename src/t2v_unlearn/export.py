"""Saving the unlearned encoder as a plain `CLIPTextModel` folder, with a record of what made it."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from t2v_unlearn.io import atomic_directory, write_json_atomic

log = logging.getLogger(__name__)

PROVENANCE_FILE = "unlearning.json"
# Provenance key of `fingerprint_module` of the text encoder before unlearning. Loaders that swap the
# unlearned encoder into another model compare it with that model's own encoder.
BASE_FINGERPRINT_KEY = "base_text_encoder_fingerprint"
_PACKAGES = ("t2v-unlearn", "torch", "diffusers", "transformers", "open_clip_torch", "pytorch-lightning",
             "hydra-core")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_text_encoder(text_encoder, path: str | Path, provenance: dict[str, Any], log_level: int = logging.INFO) -> Path:
    """Write `text_encoder` with `save_pretrained` (safetensors) and `unlearning.json`, atomically.

    The folder loads with `CLIPTextModel.from_pretrained(path)` and drops into any diffusers
    pipeline as its `text_encoder`.
    """
    path = Path(path)
    with atomic_directory(path, replace=True) as tmp:
        text_encoder.save_pretrained(tmp, safe_serialization=True)
        write_json_atomic(tmp / PROVENANCE_FILE, {**provenance, "versions": package_versions()})
    log.log(log_level, "Saved text encoder to %s", path)
    return path


class SaveTextEncoderEachEpoch(pl.Callback):
    """Save `text_encoder_epoch_<n>/` (n from 1) in the run folder at the end of every epoch."""

    def __init__(self, out_dir: str | Path, provenance: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.provenance = provenance

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A diverged epoch is not saved as an epoch: the final folder gets the last finite encoder.
        if not trainer.is_global_zero or getattr(pl_module, "diverged_at_step", None) is not None:
            return
        epoch = trainer.current_epoch + 1
        record = {**self.provenance, "epoch": epoch,
                  "optimizer_steps": int(getattr(pl_module, "applied_steps", trainer.global_step))}
        if epoch == 1:
            log.info("Saving the text encoder after every epoch to %s", self.out_dir / "text_encoder_epoch_<n>")
        save_text_encoder(pl_module.text_encoder, self.out_dir / f"text_encoder_epoch_{epoch}", record,
                          log_level=logging.DEBUG)
