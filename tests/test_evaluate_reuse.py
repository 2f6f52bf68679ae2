"""The after phase takes over the samples whose prompts the changed encoder reads exactly as before."""

import copy

import numpy as np
import pytest
import torch

from t2v_unlearn.backends.toyworld import build_toyworld_backend
from t2v_unlearn.concepts import EvalItem
from t2v_unlearn.evaluate import EvalSettings, encoder_digests, guidance_texts, run_phase, unchanged_prompts
from t2v_unlearn.judges.base import WatchedConcept
from t2v_unlearn.judges.detector import ToyWorldDetectorJudge

EIFFEL = WatchedConcept("eiffel", "a photo of the Eiffel Tower", ())
PANDA = WatchedConcept("panda", "a photo of a panda", ())
PROMPTS = ["a cat climbing on the Eiffel Tower", "a panda taking a selfie"]
ITEMS = [
    EvalItem("a cat climbing on the Eiffel Tower", EIFFEL, "target"),
    EvalItem("a panda taking a selfie", PANDA, "other"),
]
SETTINGS = EvalSettings(seeds_per_prompt=2, seed=1000, frames_to_judge=3)


@pytest.fixture(scope="module")
def backend():
    steps = {"num_inference_steps": 4}
    return build_toyworld_backend(image_kwargs=steps, video_kwargs=steps, generation_batch_size=4)


def _with_token_row_changed(backend, word: str, replacement: str = "wolf") -> torch.nn.Module:
    """Return a copy of the encoder whose `word` embedding row equals `replacement`'s row."""
    encoder = copy.deepcopy(backend.text_encoder)
    (token,) = backend.tokenizer(word, add_special_tokens=False).input_ids
    (other,) = backend.tokenizer(replacement, add_special_tokens=False).input_ids
    table = encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token] = table[other]
    return encoder


def test_digests_follow_changed_token(backend):
    assert guidance_texts(backend) == [""]
    texts = PROMPTS + [""]
    before = encoder_digests(backend.tokenizer, backend.text_encoder, texts)
    after = encoder_digests(backend.tokenizer, _with_token_row_changed(backend, "eiffel"), texts)
    assert before[""] == after[""]
    assert before["a panda taking a selfie"] == after["a panda taking a selfie"]
    assert before["a cat climbing on the Eiffel Tower"] != after["a cat climbing on the Eiffel Tower"]
    assert unchanged_prompts(before, after, PROMPTS, [""]) == {"a panda taking a selfie"}


def test_unchanged_prompts_needs_same_negative():
    before = {"": "a", "p": "b", "q": "c"}
    assert unchanged_prompts(before, {"": "a", "p": "b", "q": "x"}, ["p", "q"], [""]) == {"p"}
    assert unchanged_prompts(before, {"": "z", "p": "b", "q": "c"}, ["p", "q"], [""]) == frozenset()
    # The empty prompt as an evaluation prompt of its own still guards every other sample.
    assert unchanged_prompts(before, {"": "z", "p": "b", "q": "c"}, ["", "p"], [""]) == frozenset()


def test_guidance_texts_include_negative_prompts(backend):
    other = copy.copy(backend)
    other.video_kwargs = {**backend.video_kwargs, "negative_prompt": "blurry"}
    assert guidance_texts(other) == ["", "blurry"]


def test_unchanged_prompts_after_whole_encoder_change(backend):
    encoder = copy.deepcopy(backend.text_encoder)
    bias = next(p for name, p in encoder.named_parameters() if name.endswith("final_layer_norm.bias"))
    with torch.no_grad():
        bias += 1e-3
    texts = PROMPTS + [""]
    before = encoder_digests(backend.tokenizer, backend.text_encoder, texts)
    after = encoder_digests(backend.tokenizer, encoder, texts)
    assert unchanged_prompts(before, after, PROMPTS, [""]) == frozenset()


def test_run_phase_reuse_matches_full_render(backend, tmp_path):
    judge = ToyWorldDetectorJudge()
    changed = _with_token_row_changed(backend, "eiffel")
    texts = PROMPTS + [""]
    reusable = unchanged_prompts(encoder_digests(backend.tokenizer, backend.text_encoder, texts),
                                 encoder_digests(backend.tokenizer, changed, texts), PROMPTS, [""])
    before = run_phase("before", backend, judge, None, ITEMS, backend.text_encoder, tmp_path / "a", SETTINGS)
    reused = run_phase("after", backend, judge, None, ITEMS, changed, tmp_path / "a", SETTINGS,
                       reuse_from=before, reusable_prompts=reusable)
    full = run_phase("after", backend, judge, None, ITEMS, changed, tmp_path / "b", SETTINGS)

    assert before.reused.tolist() == [False] * 4
    assert reused.reused.tolist() == [False, False, True, True]
    assert not full.reused.any()
    np.testing.assert_array_equal(reused.images, full.images)
    np.testing.assert_array_equal(reused.image_present, full.image_present)
    np.testing.assert_array_equal(reused.video_present, full.video_present)
    assert reused.video_seen == full.video_seen
    assert "panda" in reused.video_seen[2]
    # The panda samples (the last two) are copies of the first phase's files. The Eiffel Tower
    # samples were rendered with the changed encoder.
    for i in (2, 3):
        assert reused.video_paths[i].read_bytes() == before.video_paths[i].read_bytes()
        assert reused.grid_paths[i].read_bytes() == full.grid_paths[i].read_bytes()
    assert not np.array_equal(reused.images[:2], before.images[:2])
    assert reused.image_grid_path.read_bytes() == full.image_grid_path.read_bytes()


def test_run_phase_without_outputs_reuses_nothing(backend, tmp_path):
    judge = ToyWorldDetectorJudge()
    nothing = EvalSettings(seeds_per_prompt=1, videos=False, images=False)
    before = run_phase("before", backend, judge, None, ITEMS, backend.text_encoder, tmp_path, nothing)
    after = run_phase("after", backend, judge, None, ITEMS, backend.text_encoder, tmp_path, nothing,
                      reuse_from=before, reusable_prompts=frozenset(PROMPTS))
    assert not after.reused.any()
