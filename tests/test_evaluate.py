"""Rates per evaluation group, from judge decisions."""

import numpy as np

from t2v_unlearn.concepts import EvalItem
from t2v_unlearn.evaluate import PhaseOutputs, concepts_seen, phase_metrics, rate, seen_in_target_metrics
from t2v_unlearn.judges.base import Judge, WatchedConcept

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


class _BrightnessJudge(Judge):
    """Sees "bright" in frames with a mean above 128 and "dark" in the others."""

    def detect(self, images, concept):
        return self.detect_all(images)[concept.key]

    def detect_all(self, images):
        bright = images.reshape(len(images), -1).mean(axis=1) > 128
        return {"bright": bright, "dark": ~bright}


class _OneConceptJudge(Judge):
    def detect(self, images, concept):
        return np.ones(len(images), dtype=bool)


def _videos(frame_values):
    """One 4x4 RGB video per row of frame values."""
    values = np.asarray(frame_values, dtype=np.uint8)
    return np.broadcast_to(values[:, :, None, None, None], (*values.shape, 4, 4, 3)).copy()


def test_concepts_seen_in_any_judged_frame():
    # Five frames judged out of nine: 0, 2, 4, 6, 8. Frame 1 is never judged.
    videos = _videos([[0, 255, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 255, 0, 0, 0, 0], [255] * 9])
    assert concepts_seen(_BrightnessJudge(), videos, frames_to_judge=5) == [
        ("dark",), ("bright", "dark"), ("bright",)]
    assert concepts_seen(_OneConceptJudge(), videos, frames_to_judge=5) is None


def test_seen_in_target_metrics_per_phase():
    def outputs(seen):
        return PhaseOutputs(None, None, None, [], [], None, video_seen=seen)

    before = outputs([("snoopy",), ("snoopy", "space"), ("snoopy",), (), ("wolf",), ("panda",)])
    after = outputs([("wolf",), ("space",), ("snoopy",), (), ("wolf",), ("panda",)])
    metrics = seen_in_target_metrics(before, after, SAMPLES)
    # Only the two target samples count; the paraphrase and other groups do not.
    assert metrics == {
        "seen_in_target/snoopy_before": 1.0, "seen_in_target/snoopy_after": 0.0,
        "seen_in_target/space_before": 0.5, "seen_in_target/space_after": 0.5,
        "seen_in_target/wolf_before": 0.0, "seen_in_target/wolf_after": 0.5,
    }
    assert seen_in_target_metrics(before, outputs(None), SAMPLES) == {}
