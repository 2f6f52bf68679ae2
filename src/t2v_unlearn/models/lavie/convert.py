"""Load LaVie's `.pt` checkpoints (such as `lavie_base.pt`) into `LaVieUNet3DConditionModel`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .attention import RotaryEmbedding
from .unet import LaVieUNet3DConditionModel

logger = logging.getLogger(__name__)


def load_lavie_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LaVie checkpoint and return its UNet state dict.

    Like LaVie's own loader, this takes the "ema" entry (the EMA weights) when the checkpoint has
    one and the whole dict otherwise. Loading uses `weights_only=True`, so a pickle that would run
    code on load raises instead.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} contains a {type(checkpoint).__name__}, expected a dict of tensors")
    if "ema" in checkpoint:
        logger.info("Using the 'ema' weights of %s", path)
        return checkpoint["ema"]
    return checkpoint


def lavie_unet_from_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict | None = None
) -> LaVieUNet3DConditionModel:
    """Build the UNet (LaVie's base config unless `config` is given) and load `state_dict` strictly.

    The model is built on the meta device and takes the checkpoint's tensors without copying them.
    Missing `rotary_emb.freqs` entries are filled with their fixed values, because these entries
    are a constant rather than a learned weight. All copies present must be equal, because the
    model stores one tensor for all of them.
    """
    with torch.device("meta"):
        # Underscore fields (`_class_name`, ...) are diffusers bookkeeping, not constructor arguments.
        init_kwargs = {key: value for key, value in (config or {}).items() if not key.startswith("_")}
        model = LaVieUNet3DConditionModel(**init_kwargs)

    state_dict = dict(state_dict)
    freqs_keys = [key for key in model.state_dict() if key.endswith("rotary_emb.freqs")]
    present = [key for key in freqs_keys if key in state_dict]
    for key in present[1:]:
        if not torch.equal(state_dict[key], state_dict[present[0]]):
            raise ValueError(
                f"{key} differs from {present[0]}, but all rotary_emb.freqs copies must be equal"
            )
    if len(present) < len(freqs_keys):
        logger.info("Filling %d missing rotary_emb.freqs entries", len(freqs_keys) - len(present))
        freqs = state_dict[present[0]] if present else RotaryEmbedding().freqs
        for key in freqs_keys:
            state_dict.setdefault(key, freqs)

    model.load_state_dict(state_dict, strict=True, assign=True)
    return model
