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

        log.info("Judge: the toy world's concept detector (ground truth of the rendered world)")
        return ToyWorldDetectorJudge(device=str(backend.device))
    log.info("Judge: CLIP zero-shot (%s)", backend.clip.get("model_name", backend.clip.get("loader")))
    return build_clip_judge(backend, threshold=clip_threshold)
