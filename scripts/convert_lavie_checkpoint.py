"""Convert a LaVie base-model checkpoint (`lavie_base.pt`) to a diffusers UNet folder.

The folder contains `config.json` and `diffusion_pytorch_model.safetensors` and loads with
`LaVieUNet3DConditionModel.from_pretrained(folder)`. The EMA weights are used when the checkpoint
has them. Loading never unpickles code (`torch.load(..., weights_only=True)`).

Example:
    python scripts/convert_lavie_checkpoint.py lavie_base.pt checkpoints/lavie_base_unet --dtype float16
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from t2v_unlearn.models.lavie import lavie_unet_from_state_dict, load_lavie_checkpoint

logger = logging.getLogger("convert_lavie_checkpoint")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a LaVie .pt checkpoint to a diffusers UNet folder.")
    parser.add_argument("checkpoint", type=Path, help="LaVie checkpoint, e.g. lavie_base.pt")
    parser.add_argument(
        "output_dir", type=Path, help="folder to write config.json and the safetensors file to"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="UNet config JSON (LaVie's UNet3DConditionModel fields); default: LaVie's base model",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="dtype of the saved weights (default: float32)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = json.loads(args.config.read_text()) if args.config else None
    logger.info("Loading %s", args.checkpoint)
    model = lavie_unet_from_state_dict(load_lavie_checkpoint(args.checkpoint), config)
    model.to(DTYPES[args.dtype]).save_pretrained(args.output_dir, safe_serialization=True)
    logger.info("Wrote the UNet (%s) to %s", args.dtype, args.output_dir)


if __name__ == "__main__":
    main()
