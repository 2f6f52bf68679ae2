"""The toy world's small open_clip model (image and text towers), for CLIP probes and the CLIP judge."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

MODEL_NAME = "toyworld-clip"
CONFIG_FILE = f"{MODEL_NAME}.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# OpenAI CLIP's normalisation, open_clip's default for models without their own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def default_clip_dir() -> Path:
    return Path(str(resources.files("t2v_unlearn.toyworld").joinpath("weights", "clip")))


def write_clip_config(cfg: dict, directory: str | Path) -> Path:
    """Write the open_clip model config JSON built from the `clip` section of train_config.yaml."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "embed_dim": cfg["embed_dim"],
        "vision_cfg": dict(cfg["vision"]),
        "text_cfg": dict(cfg["text"]),
    }
    path = directory / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2))
    return path


def clip_settings(directory: str | Path | None = None) -> dict:
    """Return the `Backend.clip` spec: `load_toyworld_clip` as the loader and its `directory` argument.

    `t2v_unlearn.judges.clip.ClipScorer` calls `loader(**rest)`; the directory contains the open_clip
    model config JSON (`toyworld-clip.json`) and the weights (`open_clip_model.safetensors`).
    """
    directory = Path(directory) if directory is not None else default_clip_dir()
    return {"loader": f"{__name__}:load_toyworld_clip", "directory": str(directory)}


def load_toyworld_clip(directory: str | Path | None = None, device: str = "cpu"):
    """Load the trained toy open_clip model; returns `(model, preprocess, tokenizer)` like open_clip.

    `preprocess` maps a PIL image to a normalised `(3, 32, 32)` tensor; `tokenizer` is open_clip's
    default CLIP BPE tokenizer (context length 77).
    """
    import open_clip

    directory = Path(directory) if directory is not None else default_clip_dir()
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(f"toy-world CLIP file {path} not found; run `make toyworld` to train it")
    open_clip.add_model_config(str(config_path))
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights_path),
                                                                 device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)
