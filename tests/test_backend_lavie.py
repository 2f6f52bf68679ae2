"""The SD 1.5 → LaVie backend, loaded through its real loader from tiny saved components."""

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline

from t2v_unlearn.backends.lavie import build_lavie_backend, build_tiny_lavie_backend, load_lavie_unet
from t2v_unlearn.backends.loading import ModelLoadError
from t2v_unlearn.backends.tiny import SD1_SCHEDULE, tiny_text_encoder, tiny_unet, tiny_vae
from t2v_unlearn.models.lavie import LaVieUNet3DConditionModel
from t2v_unlearn.tokenizer import build_clip_tokenizer
from test_train_cli import FAST, run_in_process


@pytest.fixture
def tiny_lavie_files(tmp_path):
    """A tiny SD 1.5-like repository folder and a LaVie-style `.pt` checkpoint inflated from its UNet."""
    unet = tiny_unet(sample_size=16, seed=2, heads=1)
    StableDiffusionPipeline(
        vae=tiny_vae(seed=1), text_encoder=tiny_text_encoder(seed=0), tokenizer=build_clip_tokenizer(),
        unet=unet, scheduler=PNDMScheduler(**SD1_SCHEDULE, skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(tmp_path / "sd15")
    torch.manual_seed(3)
    video_unet = LaVieUNet3DConditionModel.from_unet2d(unet)
    for name, parameter in video_unet.named_parameters():
        if "attn_temp.to_out" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    torch.save({"ema": video_unet.state_dict(), "step": 1}, tmp_path / "lavie_base.pt")
    video_unet.save_config(tmp_path / "lavie_config")
    return tmp_path / "sd15", tmp_path / "lavie_base.pt", tmp_path / "lavie_config" / "config.json", video_unet


def test_loader_builds_shared_encoder_pipeline(tiny_lavie_files):
    sd_path, lavie_path, config_path, reference = tiny_lavie_files
    backend = build_lavie_backend(sd_path=str(sd_path), lavie_path=str(lavie_path), lavie_config=str(config_path),
                                  device="cpu", video_kwargs=dict(height=32, width=32, num_frames=4,
                                                                  num_inference_steps=2),
                                  image_kwargs=dict(height=32, width=32, num_inference_steps=2))
    assert backend.video_pipeline.text_encoder is backend.text_encoder
    assert backend.image_pipeline.text_encoder is backend.text_encoder
    loaded = backend.video_pipeline.unet.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert backend.noise_scheduler.config.num_train_timesteps == 1000

    videos = backend.generate_videos(["a cat climbing on Tokyo Tower"], [0])
    assert videos.shape == (1, 4, 32, 32, 3)
    swapped = backend.generate_videos(["a cat climbing on Tokyo Tower"], [0], text_encoder=tiny_text_encoder(seed=5))
    assert np.abs(videos.astype(int) - swapped.astype(int)).max() > 0


def test_missing_checkpoint_and_sd_named_together(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        build_lavie_backend(sd_path=str(tmp_path / "no_sd"), lavie_path=str(tmp_path / "no.pt"), device="cpu")
    message = str(error.value)
    assert "no.pt" in message
    assert "lavie_base.pt" in message
    assert "model.backend.sd_path" in message


def test_pickle_with_code_rejected(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"ema": {"x": Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        load_lavie_unet(tmp_path / "evil.pt")
    assert not marker.exists()


def test_tiny_lavie_job_end_to_end(tmp_path):
    out = tmp_path / "run"
    metrics = run_in_process([*FAST, "model=lavie_tiny", "concept=eiffel", "logger=none", "eval.images=false"], out)
    assert metrics["train/optimizer_steps"] == 2
    assert len(list((out / "videos" / "after").glob("*.mp4"))) > 0
    assert (out / "text_encoder" / "model.safetensors").is_file()


def test_tiny_lavie_backend_temporal_layers_active():
    backend = build_tiny_lavie_backend(num_inference_steps=2)
    video = backend.generate_videos(["a cat"], [0])[0]
    assert not np.array_equal(video[0], video[-1])
