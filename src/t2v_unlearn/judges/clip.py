"""CLIP probes and the CLIP zero-shot judge, on open_clip models."""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from t2v_unlearn.judges.base import Judge, WatchedConcept
from t2v_unlearn.quiet import open_clip_info_hidden

log = logging.getLogger(__name__)

# Custom architectures that ship with this package (random-weight smoke tests).
open_clip.add_model_config(str(files("t2v_unlearn.judges").joinpath("clip_configs")))


class ClipScorer:
    """Cosine similarity between images and texts in an open_clip model's joint embedding space.

    `spec` is the `clip` entry of a backend: either `{"model_name", "pretrained"}` for open_clip's
    own registry (a pretrained tag downloads on first use, or a local checkpoint path), or
    `{"loader": "package.module:function", ...}` for a function that returns
    `(model, preprocess, tokenizer)`, as the toy world does for its trained CLIP.
    """

    def __init__(self, spec: dict[str, Any], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        spec = dict(spec)
        with open_clip_info_hidden():
            if "loader" in spec:
                module_name, function_name = str(spec.pop("loader")).split(":")
                loader = getattr(importlib.import_module(module_name), function_name)
                self.model, self.preprocess, self.tokenizer = loader(**spec)
            else:
                name = spec.get("model_name")
                if not name:
                    raise ValueError(f"CLIP spec {spec} names no model; set model.clip.model_name (e.g. ViT-B-32)")
                if spec.get("seed") is not None:
                    torch.manual_seed(int(spec["seed"]))
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=spec.get("pretrained") or None
                )
                self.tokenizer = open_clip.get_tokenizer(name)
        self.model = self.model.to(self.device).eval()

    @torch.no_grad()
    def image_features(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        features = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(Image.fromarray(im)) for im in images[start : start + batch_size]])
            features.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(features), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def similarity(self, images: np.ndarray, text: str) -> np.ndarray:
        """Return the cosine similarity of each uint8 image `(n, h, w, 3)` with `text`, shape `(n,)`."""
        return (self.image_features(images) @ self.text_features([text]).T).squeeze(-1).cpu().numpy()


class ClipJudge(Judge):
    """Zero-shot: a concept is present when its probe text beats every anchor text.

    The anchors name what the image would show without the concept ("a photo of a tower" for the
    Eiffel Tower). With `threshold`, the probe's softmax probability among probe and anchors (at
    the model's logit scale) must also exceed it.
    """

    def __init__(self, scorer: ClipScorer, threshold: float | None = None,
                 default_anchors: tuple[str, ...] = ("a photo", "a picture")):
        self.scorer = scorer
        self.threshold = threshold
        self.default_anchors = tuple(default_anchors)

    @torch.no_grad()
    def detect(self, images: np.ndarray, concept: WatchedConcept) -> np.ndarray:
        anchors = [a for a in (concept.anchors or self.default_anchors) if a != concept.probe]
        texts = [concept.probe, *anchors]
        logits = self.scorer.image_features(images) @ self.scorer.text_features(texts).T  # (n, 1 + anchors)
        logit_scale = getattr(self.scorer.model, "logit_scale", None)
        scale = float(logit_scale.exp()) if logit_scale is not None else 100.0
        probs = torch.softmax(logits * scale, dim=-1)
        present = probs.argmax(dim=-1) == 0
        if self.threshold is not None:
            present &= probs[:, 0] > self.threshold
        return present.cpu().numpy()


@lru_cache(maxsize=4)
def _cached_scorer(key: tuple, device: str) -> ClipScorer:
    return ClipScorer(dict(key), device=device)


def clip_scorer_for(spec: dict[str, Any], device: str | torch.device = "cpu") -> ClipScorer:
    """Return a scorer for `spec`, shared between the judge and the similarity probes of one process."""
    return _cached_scorer(tuple(sorted((k, v) for k, v in spec.items())), str(device))


def build_clip_judge(backend, threshold: float | None = None) -> ClipJudge:
    return ClipJudge(clip_scorer_for(backend.clip, backend.device), threshold=threshold)
