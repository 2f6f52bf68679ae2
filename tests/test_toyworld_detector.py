"""The committed toy-world detector and CLIP model on fresh renders."""

import json

import numpy as np
import pytest

from t2v_unlearn.judges.base import WatchedConcept
from t2v_unlearn.judges.detector import ToyWorldDetectorJudge
from t2v_unlearn.toyworld.clip_model import clip_settings
from t2v_unlearn.toyworld.data import make_image_set
from t2v_unlearn.toyworld.grammar import concept_keys, parse_caption
from t2v_unlearn.toyworld.render import render_image
from t2v_unlearn.toyworld.train import default_weights_dir


@pytest.fixture(scope="module")
def judge():
    return ToyWorldDetectorJudge()


def test_detector_supports_every_key(judge):
    assert set(judge.keys) == set(concept_keys())
    assert judge.supports(WatchedConcept("tokyo_tower", "a photo of Tokyo Tower"))
    assert not judge.supports(WatchedConcept("dragon", "a photo of a dragon"))


def test_detector_accuracy_on_fresh_renders(judge):
    heldout = make_image_set(400, seed=20_260_001, size=32)
    detected = judge.detect_all(heldout["images"])
    truth = heldout["labels"] > 0.5
    accuracy = {key: (detected[key] == truth[:, i]).mean() for i, key in enumerate(concept_keys())}
    assert np.mean(list(accuracy.values())) >= 0.98
    for key, value in accuracy.items():
        assert value >= 0.95, key


def test_detector_resizes_larger_images(judge):
    image = render_image(parse_caption("a photo of the Eiffel Tower"), seed=3, size=64)
    concept = WatchedConcept("eiffel", "a photo of the Eiffel Tower")
    assert judge.detect(image[None], concept).tolist() == [True]


def test_detector_rejects_unknown_key(judge):
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(KeyError, match="dragon"):
        judge.detect(images, WatchedConcept("dragon", "a photo of a dragon"))


def test_detector_config_is_complete():
    config = json.loads((default_weights_dir() / "detector" / "config.json").read_text())
    assert len(config["thresholds"]) == len(config["concept_keys"])
    assert config["image_size"] == 32


def test_clip_prefers_matching_captions():
    from t2v_unlearn.judges.clip import ClipScorer

    scorer = ClipScorer(clip_settings())
    prompts = ["a photo of the Eiffel Tower", "a panda taking a selfie", "a rocket flying in space",
               "Mickey Mouse is greeting the children", "a cat climbing on Tokyo Tower", "A person is dancing jazz."]
    images = np.stack([render_image(parse_caption(p), seed=i) for i, p in enumerate(prompts)])
    similarity = np.stack([scorer.similarity(images, p) for p in prompts], axis=1)  # (image, prompt)
    assert similarity.argmax(axis=1).tolist() == list(range(len(prompts)))


def test_auto_judge_uses_detector_beside_weights(tmp_path):
    import shutil
    from types import SimpleNamespace

    from t2v_unlearn.judges.auto import build_auto_judge

    shutil.copytree(default_weights_dir() / "detector", tmp_path / "detector")
    config = json.loads((tmp_path / "detector" / "config.json").read_text())
    config["thresholds"] = [0.5] * len(config["thresholds"])
    (tmp_path / "detector" / "config.json").write_text(json.dumps(config))
    backend = SimpleNamespace(name="toyworld", weights_dir=tmp_path, device="cpu")
    assert set(build_auto_judge(backend).thresholds.values()) == {0.5}
    packaged = build_auto_judge(SimpleNamespace(name="toyworld", weights_dir=None, device="cpu"))
    assert set(packaged.thresholds.values()) != {0.5}
