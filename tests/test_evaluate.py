"""Rates per evaluation group, from judge decisions."""

import numpy as np

from t2v_unlearn.concepts import EvalItem
from t2v_unlearn.evaluate import PhaseOutputs, phase_metrics, rate
from t2v_unlearn.judges.base import WatchedConcept

SNOOPY = WatchedConcept("snoopy", "a picture of Snoopy", ())
WOLF = WatchedConcept("wolf", "a photo of a wolf", ())
PANDA = WatchedConcept("panda", "a photo of a panda", ())
SAMPLES = [
    EvalItem("a Snoopy flying in space", SNOOPY, "target"),
    EvalItem("a Snoopy flying in space", SNOOPY, "target"),
    EvalItem("the beagle from Peanuts flying in space", SNOOPY, "paraphrase"),
    EvalItem("the beagle from Peanuts flying in space", SNOOPY, "paraphrase"),
    EvalItem("a wolf walking in the park at sunrise", WOLF, "other", similar=True),
    EvalItem("a panda taking a selfie", PANDA, "other"),
]


def test_each_group_counts_only_its_samples():
    present = np.array([True, False, True, True, False, True])
    assert rate(present, SAMPLES, "target") == 0.5
    assert rate(present, SAMPLES, "paraphrase") == 1.0
    assert rate(present, SAMPLES, "other") == 0.5
    assert rate(present, SAMPLES, "similar") == 0.0
    assert rate(present, SAMPLES, "unrelated") == 1.0


def test_rate_of_empty_group_is_none():
    present = np.array([True, False, True, True, False, True])
    assert rate(present, SAMPLES[:2] + SAMPLES[4:], "paraphrase") is None
    assert rate(None, SAMPLES, "target") is None


def test_phase_metrics_include_paraphrase_rates():
    outputs = PhaseOutputs(video_present=np.array([False, False, True, False, True, True]),
                           image_present=np.array([False, False, False, False, True, True]),
                           clip_similarity=None, video_paths=[], grid_paths=[], image_grid_path=None)
    metrics = phase_metrics("after", outputs, SAMPLES)
    assert metrics["video/paraphrase_rate_after"] == 0.5
    assert metrics["image/paraphrase_rate_after"] == 0.0
    assert metrics["video/target_rate_after"] == 0.0
