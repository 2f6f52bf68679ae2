"""The disk cache of rendered evaluation samples: hits, keys and damaged files."""

import json
import os
import subprocess
import sys

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
    first, from_cache = SampleCache(tmp_path, tiny_backend).render(kind, PROMPTS, SEEDS)
    assert not from_cache.any()
    cache = SampleCache(tmp_path, tiny_backend)
    second, from_cache = cache.render(kind, PROMPTS, SEEDS)
    assert calls[kind] == 2
    assert from_cache.all()
    assert (cache.hits[kind], cache.misses[kind]) == (2, 0)
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
    assert moved[0] != base[0]
    assert moved[1] == base[1]

    tiny_backend.video_kwargs = {**tiny_backend.video_kwargs, "guidance_scale": 3.0}
    assert not set(cache.keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)) & set(base)


def test_changed_unet_misses(tiny_backend, tmp_path):
    base = SampleCache(tmp_path, tiny_backend).keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)
    with torch.no_grad():
        next(tiny_backend.video_pipeline.unet.parameters()).add_(1e-3)
    assert not set(SampleCache(tmp_path, tiny_backend).keys("video", PROMPTS, SEEDS, tiny_backend.text_encoder)) & set(base)


@pytest.mark.parametrize("content", [b"not an array", b"", b"PK\x05\x06" + bytes(18)], ids=["text", "empty", "zip"])
def test_damaged_file_is_rendered_again(tiny_backend, tmp_path, caplog, content):
    cache = SampleCache(tmp_path, tiny_backend)
    first, _ = cache.render("image", PROMPTS, SEEDS)
    damaged = cache._path(cache.keys("image", PROMPTS, SEEDS, tiny_backend.text_encoder)[0])
    damaged.write_bytes(content)
    second, from_cache = cache.render("image", PROMPTS, SEEDS)
    assert from_cache.tolist() == [False, True]
    assert (cache.hits["image"], cache.misses["image"]) == (1, 3)
    assert "cached sample" in caplog.text
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(np.load(damaged), first[0])


def test_failed_write_keeps_the_run_going(tiny_backend, tmp_path, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    images, from_cache = SampleCache(tmp_path, tiny_backend).render("image", PROMPTS, SEEDS)
    assert images.shape[0] == 2
    assert not from_cache.any()
    assert "No space left on device" in caplog.text
    assert not list(tmp_path.rglob("*.npy"))


def test_store_false_reads_but_does_not_write(tiny_backend, tmp_path):
    cache = SampleCache(tmp_path, tiny_backend)
    cache.render("image", PROMPTS[:1], SEEDS[:1])
    _, from_cache = cache.render("image", PROMPTS, SEEDS, store=False)
    assert from_cache.tolist() == [True, False]
    assert len(list(tmp_path.rglob("*.npy"))) == 1


def test_weights_changed_in_place_miss(tiny_backend, tmp_path):
    cache = SampleCache(tmp_path, tiny_backend)
    cache.render("image", PROMPTS, SEEDS)
    with torch.no_grad():
        for p in tiny_backend.image_pipeline.unet.parameters():
            p.mul_(0.5)
    _, from_cache = cache.render("image", PROMPTS, SEEDS)
    assert not from_cache.any()


def test_module_config_is_in_the_key(tiny_backend, tmp_path):
    base = SampleCache(tmp_path, tiny_backend).keys("image", PROMPTS, SEEDS, tiny_backend.text_encoder)
    # Same weights, another scaling factor: the latents are decoded differently.
    tiny_backend.image_pipeline.vae.register_to_config(scaling_factor=0.5)
    assert not set(SampleCache(tmp_path, tiny_backend).keys("image", PROMPTS, SEEDS, tiny_backend.text_encoder)) & set(base)


def test_mismatched_input_rejected(tiny_backend, tmp_path):
    cache = SampleCache(tmp_path, tiny_backend)
    with pytest.raises(ValueError, match="2 prompts and 1 seeds"):
        cache.render("image", PROMPTS, SEEDS[:1])
    with pytest.raises(ValueError, match="at least one prompt"):
        cache.render("image", [], [])


KEY_SCRIPT = """
import sys
from t2v_unlearn.backends.tiny import build_tiny_animatediff_backend
from t2v_unlearn.sample_cache import SampleCache
backend = build_tiny_animatediff_backend(seed=0, num_inference_steps=2)
cache = SampleCache(sys.argv[1], backend)
for kind in ("image", "video"):
    print(cache.keys(kind, ["a photo of the Eiffel Tower"], [1], backend.text_encoder)[0])
"""


def test_keys_agree_between_processes(tmp_path):
    # diffusers stores a list built from a set in scheduler configs, so its order follows the hash seed.
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", KEY_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout.split())
    assert len(outputs[0]) == 2
    assert outputs[0] == outputs[1]


def test_post_processing_backend_rejected(tiny_backend, tmp_path):
    tiny_backend.video_postprocess = lambda videos, prompts, seeds, encoder: videos
    with pytest.raises(ValueError, match="post-processing"):
        SampleCache(tmp_path, tiny_backend)


def test_second_job_reads_the_first_jobs_samples(tmp_path):
    args = [*FAST, "concept=eiffel", "logger=none", "eval.clip_similarity=false"]
    first = run_in_process([*args, "seed=0"], tmp_path / "first")
    second = run_in_process([*args, "seed=1"], tmp_path / "second")
    samples = json.loads((tmp_path / "first" / "eval_samples.json").read_text())
    # Every "before" video and image of the second run comes from the cache. The changed encoder
    # reads every prompt differently, so all "after" samples are rendered (with the other seed).
    assert first["eval/videos_from_cache"] == first["eval/images_from_cache"] == 0
    assert second["eval/videos_from_cache"] == second["eval/images_from_cache"] == len(samples)
    again_samples = json.loads((tmp_path / "second" / "eval_samples.json").read_text())
    assert all(record["video_before_from_cache"] for record in again_samples)
    assert all(record["image_before_from_cache"] for record in again_samples)
    assert not any(record["video_after_from_cache"] for record in again_samples)
    first_samples = json.loads((tmp_path / "first" / "eval_samples.json").read_text())
    assert not any(record["video_before_from_cache"] or record["image_before_from_cache"] for record in first_samples)
    for key in ("video/target_rate_before", "video/other_rate_before", "image/target_rate_before"):
        assert second[key] == first[key], key
    before = sorted((tmp_path / "first" / "videos" / "before").glob("*.png"))
    again = sorted((tmp_path / "second" / "videos" / "before").glob("*.png"))
    assert [p.read_bytes() for p in before] == [p.read_bytes() for p in again]
