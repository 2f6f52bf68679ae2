"""The default judge: a backend's own ground-truth detector where one exists, CLIP otherwise."""

from __future__ import annotations

import logging

from t2v_unlearn.judges.base import Judge
from t2v_unlearn.judges.clip import build_clip_judge

log = logging.getLogger(__name__)


def build_auto_judge(backend, clip_threshold: float | None = None) -> Judge:
    """Return the toy world's detector for toy-world backends and the CLIP judge for the rest."""
    if backend.name.startswith("toyworld"):
        from t2v_unlearn.judges.detector import ToyWorldDetectorJudge

        # The detector that was trained with these weights (model.backend.weights_dir may point elsewhere).
        detector_dir = backend.weights_dir / "detector" if backend.weights_dir is not None else None
        log.info("Judge: the toy world's concept detector (ground truth of the rendered world) from %s",
                 detector_dir or "the package's weights")
        return ToyWorldDetectorJudge(str(detector_dir) if detector_dir else None, device=str(backend.device))
    log.info("Judge: CLIP zero-shot (%s)", backend.clip.get("model_name", backend.clip.get("loader")))
    return build_clip_judge(backend, threshold=clip_threshold)
