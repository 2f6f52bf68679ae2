"""The disk cache of rendered evaluation samples: hits, keys and damaged files."""

import json

import numpy as np
import pytest
import torch

from t2v_unlearn.sample_cache import SampleCache
from test_train_cli import FAST, run_in_process

PROMPTS = ["a photo of the Eiffel Tower", "a panda taking a selfie"]
SEEDS = [3, 4]


def _count_calls(backend, monkeypatch):
    calls = {"video": 0, "image": 0}
    for kind, name in (("video", "generate_videos"), ("image", "generate_images")):
        original = getattr(backend, name)

        def counted(prompts, *args, _original=original, _kind=kind, **kwargs):
            calls[_kind] += len(prompts)
            return _original(prompts, *args, **kwargs)

        monkeypatch.setattr(backend, name, counted)
    return calls


@pytest.mark.parametrize("kind", ["video", "image"])
def test_second_render_reads_the_first(tiny_backend, tmp_path, monkeypatch, kind):
    calls = _count_calls(tiny_backend, monkeypatch)
    first = SampleCache(tmp_path, tiny_backend).render(kind, PROMPTS, SEEDS)
    cache = SampleCache(tmp_path, tiny_backend)
    second = cache.render(kind, PROMPTS, SEEDS)
    assert calls[kind] == 2
    assert (cache.hits, cache.misses) == (2, 0)
    np.testing.assert_array_equal(first, second)
    # A read-back sample is the one rendering gives, bit for bit.
    fresh = (tiny_backend.generate_videos if kind == "video" else tiny_backend.generate_images)(PROMPTS, SEEDS)
    np.testing.assert_array_equal(second, fresh)


def test_key_follows_prompt_reading_seed_and_settings(tiny_backend, tmp_path):
    cache = SampleCache(tmp_path, tiny_backend)
    base = cache.keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)
    assert len(set(base)) == 2
    assert cache.keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder) == base
    assert cache.keys("image", PROMPTS, SEEDS, tiny_backend.text_encoder) != base
    assert cache.keys("video", PROMPTS, [5, 6], tiny_backend.text_encoder)[0] != base[0]

    # Moving the rows of "eiffel" changes what the encoder returns for the first prompt only.
    edited = type(tiny_backend.text_encoder)(tiny_backend.text_encoder.config)
    edited.load_state_dict(tiny_backend.text_encoder.state_dict())
    (eiffel_id,) = tiny_backend.tokenizer("eiffel", add_special_tokens=False).input_ids
    with torch.no_grad():
        row = edited.get_input_embeddings().weight[eiffel_id]
        row.copy_(torch.flip(row, dims=[0]))
    moved = cache.keys("video", PROMPTS, SEEDS, edited)
    assert moved[0] != base[0] and moved[1] == base[1]

    tiny_backend.video_kwargs = {**tiny_backend.video_kwargs, "guidance_scale": 3.0}
    assert not set(cache.keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)) & set(base)


def test_changed_unet_misses(tiny_backend, tmp_path):
    base = SampleCache(tmp_path, tiny_backend).keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)
    with torch.no_grad():
        next(tiny_backend.video_pipeline.unet.parameters()).add_(1e-3)
    assert not set(SampleCache(tmp_path, tiny_backend).keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)) & set(base)


def test_damaged_file_is_rendered_again(tiny_backend, tmp_path, caplog):
    cache = SampleCache(tmp_path, tiny_backend)
    first = cache.render("image", PROMPTS, SEEDS)
    damaged = cache._path(cache.keys("image", PROMPTS, SEEDS, tiny_backend.text_encoder)[0])
    damaged.write_bytes(b"not an array")
    second = cache.render("image", PROMPTS, SEEDS)
    assert (cache.hits, cache.misses) == (1, 3)
    assert "unreadable cached sample" in caplog.text
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(np.load(damaged), first[0])


def test_post_processing_backend_is_refused(tiny_backend, tmp_path):
    tiny_backend.video_postprocess = lambda videos, prompts, seeds, encoder: videos
    with pytest.raises(ValueError, match="post-processing"):
        SampleCache(tmp_path, tiny_backend)


def test_second_job_reads_the_first_jobs_samples(tmp_path):
    args = [*FAST, "concept=eiffel", "logger=none", "eval.clip_similarity=false"]
    first = run_in_process([*args, "seed=0"], tmp_path / "first")
    second = run_in_process([*args, "seed=1"], tmp_path / "second")
    samples = json.loads((tmp_path / "first" / "eval_samples.json").read_text())
    # Every "before" video and image of the second run comes from the cache; the changed encoder
    # reads every prompt differently, so all "after" samples are rendered (with the other seed).
    assert first["eval/samples_from_cache"] == 0
    assert second["eval/samples_from_cache"] == 2 * len(samples)
    for key in ("video/target_rate_before", "video/other_rate_before", "image/target_rate_before"):
        assert second[key] == first[key], key
    before = sorted((tmp_path / "first" / "videos" / "before").glob("*.png"))
    again = sorted((tmp_path / "second" / "videos" / "before").glob("*.png"))
    assert [p.read_bytes() for p in before] == [p.read_bytes() for p in again]
