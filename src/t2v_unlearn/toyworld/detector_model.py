"""The toy world's concept detector: a small CNN with one sigmoid output per concept key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ConceptDetector(nn.Module):
    """Three conv stages (each two 3x3 convs and a 2x2 max-pool), then a linear head per concept."""

    def __init__(self, concept_keys: list[str], channels: list[int], image_size: int):
        super().__init__()
        self.concept_keys = list(concept_keys)
        self.image_size = image_size
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in channels:
            for _ in range(2):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, 256), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(256, len(concept_keys)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits `(n, num_concepts)` for images `(n, 3, s, s)` in [0, 1]."""
        return self.head(self.features(images * 2.0 - 1.0))


def images_to_tensor(images: np.ndarray, image_size: int) -> torch.Tensor:
    """Convert uint8 `(n, h, w, 3)` to float `(n, 3, s, s)` in [0, 1], area-resized to `image_size`."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if tensor.shape[-1] != image_size or tensor.shape[-2] != image_size:
        mode = "area" if tensor.shape[-1] > image_size else "bilinear"
        tensor = nn.functional.interpolate(tensor, size=(image_size, image_size), mode=mode)
    return tensor


def save_detector(model: ConceptDetector, thresholds: list[float], directory: str | Path, extra: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    channels = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)][::2]
    config = {"concept_keys": model.concept_keys, "channels": channels, "image_size": model.image_size,
              "thresholds": [float(t) for t in thresholds], **extra}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))


def load_detector(directory: str | Path) -> tuple[ConceptDetector, dict]:
    """Load a saved detector in eval mode; returns the model and its config (thresholds included)."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    model = ConceptDetector(config["concept_keys"], config["channels"], config["image_size"])
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    model.eval()
    return model, config
