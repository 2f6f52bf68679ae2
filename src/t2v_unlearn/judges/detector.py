"""A judge that runs the toy world's trained concept detector (one sigmoid output per concept key)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from t2v_unlearn.judges.base import Judge, WatchedConcept


class ToyWorldDetectorJudge(Judge):
    """Detects toy-world concepts with the committed CNN and its per-concept calibrated thresholds.

    Images of any size are area-resized to the detector's resolution (32 px) before scoring.
    """

    def __init__(self, weights_dir: str | None = None, device: str = "cpu", batch_size: int = 256):
        from t2v_unlearn.toyworld.detector_model import load_detector

        directory = Path(weights_dir) if weights_dir is not None else _default_detector_dir()
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"detector config {directory / 'config.json'} not found; "
                                    "run `make toyworld` to train the toy-world models")
        self.model, self.config = load_detector(directory)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        self.keys = list(self.config["concept_keys"])
        self.thresholds = dict(zip(self.keys, self.config["thresholds"]))

    def supports(self, concept: WatchedConcept) -> bool:
        return concept.key in self.thresholds

    @torch.no_grad()
    def scores(self, images: np.ndarray) -> np.ndarray:
        """Return sigmoid scores `(n, num_concepts)` in `self.keys` order for uint8 images `(n, h, w, 3)`."""
        from t2v_unlearn.toyworld.detector_model import images_to_tensor

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (n, h, w, 3), got shape {images.shape}")
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = images_to_tensor(images[start : start + self.batch_size], self.model.image_size).to(self.device)
            chunks.append(torch.sigmoid(self.model(batch)).cpu().numpy())
        if not chunks:
            return np.zeros((0, len(self.keys)), dtype=np.float32)
        return np.concatenate(chunks)

    def detect_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Return `{concept key: bool (n,)}` for every concept key of the detector."""
        scores = self.scores(images)
        return {key: scores[:, i] >= self.thresholds[key] for i, key in enumerate(self.keys)}

    def detect(self, images: np.ndarray, concept: WatchedConcept) -> np.ndarray:
        if not self.supports(concept):
            raise KeyError(f"the toy-world detector has no output for {concept.key!r}; known keys: {self.keys}")
        column = self.keys.index(concept.key)
        return self.scores(images)[:, column] >= self.thresholds[concept.key]


def _default_detector_dir() -> Path:
    from t2v_unlearn.toyworld.train import default_weights_dir

    return default_weights_dir() / "detector"
