import numpy as np
import torch

from t2v_unlearn.backends.tiny import tiny_text_encoder


def test_video_pipeline_uses_given_encoder(tiny_backend):
    prompts, seeds = ["a butterfly flying on the Eiffel Tower"], [3]
    original = tiny_backend.generate_videos(prompts, seeds)
    again = tiny_backend.generate_videos(prompts, seeds)
    other = tiny_text_encoder(seed=99)
    swapped = tiny_backend.generate_videos(prompts, seeds, text_encoder=other)

    assert original.shape == (1, 8, 32, 32, 3)
    np.testing.assert_array_equal(original, again)
    assert np.abs(original.astype(int) - swapped.astype(int)).max() > 0
    # The pipeline gets its own encoder back afterwards.
    assert tiny_backend.video_pipeline.text_encoder is tiny_backend.text_encoder


def test_video_pipeline_sees_in_place_change(tiny_backend):
    prompts, seeds = ["a cat"], [0]
    before = tiny_backend.generate_videos(prompts, seeds)
    with torch.no_grad():
        for parameter in tiny_backend.text_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    after = tiny_backend.generate_videos(prompts, seeds)
    assert np.abs(before.astype(int) - after.astype(int)).max() > 0


def test_image_and_video_share_encoder_object(tiny_backend):
    assert tiny_backend.image_pipeline.text_encoder is tiny_backend.text_encoder
    assert tiny_backend.video_pipeline.text_encoder is tiny_backend.text_encoder


def test_video_batch_size_sets_calls(tiny_backend, monkeypatch):
    calls = []
    pipeline = tiny_backend.video_pipeline
    original_call = type(pipeline).__call__

    def counting_call(self, prompt, **kwargs):
        calls.append(len(prompt))
        return original_call(self, prompt=prompt, **kwargs)

    monkeypatch.setattr(type(pipeline), "__call__", counting_call)
    prompts, seeds = ["a cat"] * 5, list(range(5))
    monkeypatch.setattr(tiny_backend, "generation_batch_size", 4)
    monkeypatch.setattr(tiny_backend, "video_batch_size", None)
    in_fours = tiny_backend.generate_videos(prompts, seeds)
    assert calls == [4, 1]

    calls.clear()
    monkeypatch.setattr(tiny_backend, "video_batch_size", 2)
    in_twos = tiny_backend.generate_videos(prompts, seeds)
    assert calls == [2, 2, 1]
    # Each sample has its own generator, so the split moves a pixel by at most one level.
    np.testing.assert_allclose(in_fours.astype(int), in_twos.astype(int), atol=1)
