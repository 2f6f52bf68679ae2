"""The x4 upscaler as LaVie's super-resolution stage: real-size architecture, prompt modes, loading."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from t2v_unlearn.backends.bundle import fingerprint_module
from t2v_unlearn.backends.lavie import build_lavie_backend, build_tiny_lavie_backend
from t2v_unlearn.backends.loading import ModelLoadError
from t2v_unlearn.backends.shared_encoder import EncoderMismatchError, encoder_config
from t2v_unlearn.backends.tiny import SD1_SCHEDULE, tiny_text_encoder, tiny_unet, tiny_vae
from t2v_unlearn.backends.tiny_repos import save_tiny_upscaler_repo
from t2v_unlearn.backends.tiny_sd2 import tiny_sd2_text_encoder, tiny_upscale_pipeline
from t2v_unlearn.backends.upscaler import (
    UPSCALER_HUB_ID,
    UpscalePipeline,
    UpscaleSettings,
    build_tiny_video_upscaler,
    check_upscaler_concepts,
)
from t2v_unlearn.export import BASE_FINGERPRINT_KEY, save_text_encoder
from t2v_unlearn.models.lavie import LaVieUNet3DConditionModel
from t2v_unlearn.tokenizer import build_clip_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "data" / "configs" / "sd_x4_upscaler"
PROMPT = "a photo of the Eiffel Tower at night"
UPSCALER_COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler", "low_res_scheduler", "model_index")
TINY_VIDEO_CALLS = {"video_kwargs": {"height": 32, "width": 32, "num_frames": 4, "num_inference_steps": 2},
                    "image_kwargs": {"height": 32, "width": 32, "num_inference_steps": 2}}


@pytest.fixture(autouse=True)
def offline_single_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The tiny models gain nothing from threads, and other processes may share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings(**overrides) -> UpscaleSettings:
    return UpscaleSettings.from_options({"enabled": True, "num_inference_steps": 2, **overrides})


def random_videos(count: int, frames: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, frames, size, size, 3), dtype=np.uint8)


def save_unlearned_encoder(folder: Path, encoder: torch.nn.Module, base: torch.nn.Module | None,
                           concepts=("eiffel",)) -> Path:
    """Save `encoder` as a run's text_encoder/ folder whose unlearning.json records `base`'s fingerprint."""
    provenance = {"concepts": list(concepts), "base_model_id": "test/base"}
    if base is not None:
        provenance[BASE_FINGERPRINT_KEY] = fingerprint_module(base)
    return save_text_encoder(encoder, folder, provenance)


def shift_final_norm(encoder: torch.nn.Module, amount: float = 0.5) -> None:
    """Change the encoder's weights in place, as a step of unlearning would."""
    parameters = dict(encoder.named_parameters())
    (name,) = [name for name in parameters if name.endswith("final_layer_norm.bias")]
    with torch.no_grad():
        parameters[name].add_(amount)


def perturbed(encoder: torch.nn.Module, amount: float = 0.5) -> torch.nn.Module:
    changed = copy.deepcopy(encoder)
    shift_final_norm(changed, amount)
    return changed


@pytest.fixture
def unlearned_folder(tmp_path) -> Path:
    """An unlearned encoder that started from the tiny upscaler's encoder (seed 0)."""
    base = tiny_sd2_text_encoder(seed=0)
    return save_unlearned_encoder(tmp_path / "unlearned" / "text_encoder", perturbed(base), base)


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_pre_hook(lambda _module, args: calls.append(args[0].clone()))
    return calls


# --- Real-size architecture from the published configs -----------------------------------------------


def build_on_meta(model_class, config_file: str) -> torch.nn.Module:
    path = CONFIGS / config_file
    with torch.device("meta"):
        if model_class is CLIPTextModel:
            return CLIPTextModel(CLIPTextConfig.from_json_file(str(path)))
        return model_class.from_config(json.loads(path.read_text()))


@pytest.mark.parametrize(("model_class", "config_file", "expected"), [
    (UNet2DConditionModel, "unet.json", 473_398_020),
    (AutoencoderKL, "vae.json", 55_325_927),
    (CLIPTextModel, "text_encoder.json", 340_387_840),
], ids=["unet", "vae", "text_encoder"])
def test_real_size_element_count(model_class, config_file, expected):
    module = build_on_meta(model_class, config_file)

    assert sum(tensor.numel() for tensor in module.state_dict().values()) == expected


def test_real_size_pipeline_upscales_4x():
    from diffusers import DDIMScheduler, DDPMScheduler

    unet = build_on_meta(UNet2DConditionModel, "unet.json")
    vae = build_on_meta(AutoencoderKL, "vae.json")
    model_index = json.loads((CONFIGS / "model_index.json").read_text())
    pipeline = UpscalePipeline(
        vae=vae, text_encoder=build_on_meta(CLIPTextModel, "text_encoder.json"), tokenizer=build_clip_tokenizer(),
        unet=unet, low_res_scheduler=DDPMScheduler.from_config(json.loads((CONFIGS / "low_res_scheduler.json").read_text())),
        scheduler=DDIMScheduler.from_config(json.loads((CONFIGS / "scheduler.json").read_text())),
        max_noise_level=model_index["max_noise_level"],
    )

    assert pipeline.vae_scale_factor == 4
    assert unet.config.in_channels == vae.config.latent_channels + 3
    assert unet.class_embedding.num_embeddings > pipeline.config.max_noise_level
    assert vae.config.scaling_factor == pytest.approx(0.08333)


def test_real_upscaler_encoder_has_sd21_architecture():
    upscaler = build_on_meta(CLIPTextModel, "text_encoder.json")
    sd21 = CLIPTextConfig.from_json_file(str(CONFIGS.parent / "sd21base" / "text_encoder.json"))
    modelscope = CLIPTextConfig.from_json_file(str(CONFIGS.parent / "modelscope" / "text_encoder.json"))

    assert encoder_config(upscaler) == encoder_config(sd21)
    assert encoder_config(upscaler) == encoder_config(modelscope)


def test_tiny_upscaler_keeps_real_flags():
    real_unet = json.loads((CONFIGS / "unet.json").read_text())
    real_vae = json.loads((CONFIGS / "vae.json").read_text())
    real_scheduler = json.loads((CONFIGS / "scheduler.json").read_text())
    real_low_res = json.loads((CONFIGS / "low_res_scheduler.json").read_text())
    tiny = tiny_upscale_pipeline(seed=0)

    for key in ("in_channels", "out_channels", "num_class_embeds", "use_linear_projection"):
        assert tiny.unet.config[key] == real_unet[key], key
    # The first block has no attention. The last down block keeps self-attention, and the ones
    # between have cross-attention only.
    assert tiny.unet.config.down_block_types[0] == real_unet["down_block_types"][0] == "DownBlock2D"
    assert list(tiny.unet.config.only_cross_attention[1:-1]) == [True] * (len(tiny.unet.config.only_cross_attention) - 2)
    assert tiny.unet.config.only_cross_attention[-1] is real_unet["only_cross_attention"][-1] is False
    assert len(tiny.vae.config.block_out_channels) == len(real_vae["block_out_channels"])
    assert tiny.vae.config.scaling_factor == real_vae["scaling_factor"]
    assert tiny.text_encoder.config.hidden_act == "gelu"
    for key in ("prediction_type", "beta_schedule", "beta_start", "beta_end"):
        assert tiny.scheduler.config[key] == real_scheduler[key], key
        assert tiny.low_res_scheduler.config[key] == real_low_res[key], key
    assert tiny.config.max_noise_level == json.loads((CONFIGS / "model_index.json").read_text())["max_noise_level"]


# --- Upscaling videos ----------------------------------------------------------------------------------


def test_upscale_returns_4x_uint8():
    upscaler = build_tiny_video_upscaler(settings(), seed=0, video_text_encoder=tiny_text_encoder(seed=0))
    videos = random_videos(2, frames=3, size=16)

    upscaled = upscaler(videos, [PROMPT, "a cat"], [0, 1], tiny_text_encoder(seed=0))

    assert upscaled.shape == (2, 3, 64, 64, 3)
    assert upscaled.dtype == np.uint8
    assert upscaled.std() > 0


def test_upscale_depends_only_on_own_seed():
    upscaler = build_tiny_video_upscaler(settings(), seed=0, video_text_encoder=tiny_text_encoder(seed=0))
    videos = random_videos(2)
    encoder = tiny_text_encoder(seed=0)

    together = upscaler(videos, [PROMPT, "a cat"], [7, 8], encoder)
    alone = upscaler(videos[:1], [PROMPT], [7], encoder)
    other_seed = upscaler(videos[:1], [PROMPT], [9], encoder)

    np.testing.assert_array_equal(together[0], alone[0])
    assert np.abs(other_seed[0].astype(int) - alone[0].astype(int)).max() > 0


def test_frames_per_batch_keeps_output():
    encoder = tiny_text_encoder(seed=0)
    videos = random_videos(1, frames=4)
    frame_by_frame = build_tiny_video_upscaler(settings(frames_per_batch=1), seed=0, video_text_encoder=encoder)
    all_frames = build_tiny_video_upscaler(settings(frames_per_batch=4), seed=0, video_text_encoder=encoder)

    difference = np.abs(frame_by_frame(videos, [PROMPT], [0], encoder).astype(int)
                        - all_frames(videos, [PROMPT], [0], encoder).astype(int))

    assert difference.max() <= 1


@pytest.mark.parametrize("shape,message", [
    ((1, 3, 16, 16), "expected uint8 videos of shape"),
    ((1, 3, 18, 16, 3), "multiples of 4"),
])
def test_upscale_rejects_bad_videos(shape, message):
    upscaler = build_tiny_video_upscaler(settings(), seed=0, video_text_encoder=tiny_text_encoder(seed=0))

    with pytest.raises(ValueError, match=message):
        upscaler(np.zeros(shape, np.uint8), [PROMPT], [0], tiny_text_encoder(seed=0))


def recorded_texts(monkeypatch, tokenizer) -> list[str]:
    """Record every text the tokenizer's class encodes from now on."""
    texts: list[str] = []
    tokenizer_class = type(tokenizer)
    original_call = tokenizer_class.__call__

    def spy(self, text=None, *args, **kwargs):
        texts.extend([text] if isinstance(text, str) else list(text))
        return original_call(self, text, *args, **kwargs)

    monkeypatch.setattr(tokenizer_class, "__call__", spy)
    return texts


def token_ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids[0]


@pytest.mark.parametrize("negative_prompt", [None, "blur, worst quality"])
def test_empty_mode_feeds_empty_prompt(monkeypatch, negative_prompt):
    upscaler = build_tiny_video_upscaler(settings(prompt_mode="empty", negative_prompt=negative_prompt), seed=0,
                                         video_text_encoder=tiny_text_encoder(seed=0))
    tokenizer = upscaler.pipeline.tokenizer
    allowed_ids = [token_ids(tokenizer, ""), token_ids(tokenizer, negative_prompt or "")]
    encoder_inputs = count_calls(upscaler.original_encoder)
    texts = recorded_texts(monkeypatch, tokenizer)

    upscaler(random_videos(2), [PROMPT, "Snoopy dancing"], [0, 1], tiny_text_encoder(seed=0))

    assert "" in texts
    assert set(texts) <= {"", negative_prompt or ""}
    assert encoder_inputs, "the upscaler's text encoder was not called"
    for batch in encoder_inputs:
        for row in batch:
            assert any(torch.equal(row, ids) for ids in allowed_ids), "the encoder read a token that is not in ''"


def test_original_mode_feeds_prompt(monkeypatch):
    upscaler = build_tiny_video_upscaler(settings(prompt_mode="original"), seed=0,
                                         video_text_encoder=tiny_text_encoder(seed=0))
    texts = recorded_texts(monkeypatch, upscaler.pipeline.tokenizer)

    upscaler(random_videos(1), [PROMPT], [0], tiny_text_encoder(seed=0))

    assert PROMPT in texts


def test_modes_give_different_videos():
    encoder = tiny_text_encoder(seed=0)
    videos = random_videos(1)
    empty = build_tiny_video_upscaler(settings(prompt_mode="empty"), seed=0, video_text_encoder=encoder)
    original = build_tiny_video_upscaler(settings(prompt_mode="original"), seed=0, video_text_encoder=encoder)

    difference = np.abs(empty(videos, [PROMPT], [0], encoder).astype(int)
                        - original(videos, [PROMPT], [0], encoder).astype(int))

    assert difference.max() > 0


# --- prompt_mode=unlearned -------------------------------------------------------------------------------


def test_unlearned_encoder_follows_video_encoder(unlearned_folder):
    backend = build_tiny_lavie_backend(num_frames=2, num_inference_steps=2, upscale={
        "enabled": True, "prompt_mode": "unlearned", "encoder_path": str(unlearned_folder), "num_inference_steps": 2})
    upscaler = backend.video_postprocess
    original_calls = count_calls(upscaler.original_encoder)
    unlearned_calls = count_calls(upscaler.unlearned_encoder)

    # "before": the video model's own encoder, as run.py passes it.
    before = backend.generate_videos([PROMPT], [0], text_encoder=backend.text_encoder)
    assert original_calls and not unlearned_calls

    # "after": the same encoder object, changed in place as the unlearning changes it.
    original_calls.clear()
    shift_final_norm(backend.text_encoder)
    after = backend.generate_videos([PROMPT], [0], text_encoder=backend.text_encoder)
    assert unlearned_calls and not original_calls
    assert before.shape == after.shape == (1, 2, 128, 128, 3)


def test_concept_mismatch_warns(unlearned_folder, caplog):
    backend = build_tiny_lavie_backend(num_frames=2, num_inference_steps=2, upscale={
        "enabled": True, "prompt_mode": "unlearned", "encoder_path": str(unlearned_folder)})

    with caplog.at_level(logging.WARNING, logger="t2v_unlearn.backends.upscaler"):
        check_upscaler_concepts(backend, ["eiffel"])
        assert not caplog.records
        check_upscaler_concepts(backend, ["snoopy"])

    assert "was unlearned for eiffel, but this run unlearns snoopy" in caplog.text


def test_unlearned_mode_loads_given_encoder(unlearned_folder):
    upscaler = build_tiny_video_upscaler(settings(prompt_mode="unlearned", encoder_path=str(unlearned_folder)),
                                         seed=0, video_text_encoder=tiny_text_encoder(seed=0))
    saved = CLIPTextModel.from_pretrained(unlearned_folder)

    assert fingerprint_module(upscaler.unlearned_encoder) == fingerprint_module(saved)
    assert fingerprint_module(upscaler.original_encoder) == fingerprint_module(tiny_sd2_text_encoder(seed=0))
    assert upscaler.unlearned_provenance["concepts"] == ["eiffel"]


def test_unlearned_architecture_mismatch_rejected(tmp_path):
    # What a LaVie or AnimateDiff run saves: an SD 1.x encoder (quick_gelu, other token ids).
    sd1_encoder = tiny_text_encoder(seed=0)
    folder = save_unlearned_encoder(tmp_path / "text_encoder", perturbed(sd1_encoder), sd1_encoder)

    with pytest.raises(EncoderMismatchError) as error:
        build_tiny_video_upscaler(settings(prompt_mode="unlearned", encoder_path=str(folder), allow_encoder_mismatch=True),
                                  seed=0, video_text_encoder=sd1_encoder)

    message = str(error.value)
    assert "config hidden_act: 'quick_gelu' (unlearned encoder) vs 'gelu' (upscaler)" in message
    assert str(folder / "config.json") in message
    assert "text_encoder/config.json" in message
    assert "model=modelscope" in message


def test_unlearned_base_fingerprint_mismatch_rejected(tmp_path):
    other_base = tiny_sd2_text_encoder(seed=1)
    folder = save_unlearned_encoder(tmp_path / "text_encoder", perturbed(other_base), other_base)

    with pytest.raises(EncoderMismatchError) as error:
        build_tiny_video_upscaler(settings(prompt_mode="unlearned", encoder_path=str(folder)), seed=0,
                                  video_text_encoder=tiny_text_encoder(seed=0))

    message = str(error.value)
    assert f"base fingerprint {fingerprint_module(other_base)[:16]}" in message
    assert fingerprint_module(tiny_sd2_text_encoder(seed=0))[:16] in message
    assert "model.backend.upscale.allow_encoder_mismatch=true" in message


def test_unlearned_base_fingerprint_mismatch_allowed(tmp_path, caplog):
    other_base = tiny_sd2_text_encoder(seed=1)
    folder = save_unlearned_encoder(tmp_path / "text_encoder", perturbed(other_base), other_base)

    with caplog.at_level(logging.WARNING, logger="t2v_unlearn.backends.upscaler"):
        upscaler = build_tiny_video_upscaler(
            settings(prompt_mode="unlearned", encoder_path=str(folder), allow_encoder_mismatch=True), seed=0,
            video_text_encoder=tiny_text_encoder(seed=0))

    assert "was unlearned from a different encoder" in caplog.text
    assert fingerprint_module(upscaler.unlearned_encoder) == fingerprint_module(perturbed(other_base))


@pytest.mark.parametrize("provenance", ["missing_file", "missing_key"])
def test_unlearned_without_base_fingerprint_rejected(tmp_path, provenance):
    base = tiny_sd2_text_encoder(seed=0)
    folder = save_unlearned_encoder(tmp_path / "text_encoder", perturbed(base), None)
    if provenance == "missing_file":
        (folder / "unlearning.json").unlink()

    with pytest.raises(EncoderMismatchError, match="allow_encoder_mismatch=true") as error:
        build_tiny_video_upscaler(settings(prompt_mode="unlearned", encoder_path=str(folder)), seed=0,
                                  video_text_encoder=tiny_text_encoder(seed=0))

    expected = "has no unlearning.json" if provenance == "missing_file" else "does not record " + BASE_FINGERPRINT_KEY
    assert expected in str(error.value)


def test_unlearned_encoder_folder_missing_named(tmp_path):
    missing = tmp_path / "no_such_run" / "text_encoder"

    with pytest.raises(ModelLoadError) as error:
        build_tiny_lavie_backend(upscale={"enabled": True, "prompt_mode": "unlearned", "encoder_path": str(missing)})

    message = str(error.value)
    assert f"model.backend.upscale.encoder_path={missing}" in message
    assert "not found" in message
    assert "model=modelscope" in message


# --- Settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ({"prompt_mode": "bogus"}, "prompt_mode='bogus' is invalid; pass one of empty, unlearned, original"),
    ({"prompt_mode": "unlearned"}, "prompt_mode=unlearned needs model.backend.upscale.encoder_path"),
    ({"num_inference_steps": 0}, "num_inference_steps=0 is invalid"),
    ({"frames_per_batch": 0}, "frames_per_batch=0 is invalid"),
    ({"noise_level": -1}, "noise_level=-1 is invalid"),
    ({"guidance_scale": -2.0}, "guidance_scale=-2.0 is invalid"),
    ({"beta_schedule": "cosine"}, "beta_schedule='cosine' is invalid"),
    ({"steps": 50}, "unknown key(s) steps"),
])
def test_invalid_settings_rejected(override, message):
    with pytest.raises(ValueError) as error:
        UpscaleSettings.from_options({"enabled": True, **override})

    assert message in str(error.value)


def test_noise_level_above_max_rejected():
    with pytest.raises(ValueError, match="noise_level=400 is invalid; this upscaler accepts at most max_noise_level=350"):
        build_tiny_video_upscaler(settings(noise_level=400), seed=0, video_text_encoder=tiny_text_encoder(seed=0))


def test_beta_schedule_override_applied():
    upscaler = build_tiny_video_upscaler(settings(beta_schedule="linear"), seed=0,
                                         video_text_encoder=tiny_text_encoder(seed=0))

    assert upscaler.pipeline.scheduler.config.beta_schedule == "linear"
    assert upscaler.pipeline.scheduler.config.prediction_type == "v_prediction"


def test_disabled_upscale_keeps_videos():
    plain = build_tiny_lavie_backend(num_frames=2, num_inference_steps=2)
    disabled = build_tiny_lavie_backend(num_frames=2, num_inference_steps=2, upscale={"enabled": False})

    assert disabled.video_postprocess is None
    np.testing.assert_array_equal(plain.generate_videos([PROMPT], [0]), disabled.generate_videos([PROMPT], [0]))


# --- Loading the real classes from folders and the Hub cache ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lavie_files(tmp_path_factory):
    """A tiny SD 1.5-like folder, a LaVie `.pt` checkpoint with its config, and a tiny upscaler folder."""
    root = tmp_path_factory.mktemp("lavie_files")
    unet = tiny_unet(sample_size=16, seed=2, heads=1)
    StableDiffusionPipeline(
        vae=tiny_vae(seed=1), text_encoder=tiny_text_encoder(seed=0), tokenizer=build_clip_tokenizer(),
        unet=unet, scheduler=PNDMScheduler(**SD1_SCHEDULE, skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "sd15")
    video_unet = LaVieUNet3DConditionModel.from_unet2d(unet)
    torch.save({"ema": video_unet.state_dict()}, root / "lavie_base.pt")
    video_unet.save_config(root / "lavie_config")
    save_tiny_upscaler_repo(root / "upscaler", seed=0)
    return {"sd15": root / "sd15", "lavie": root / "lavie_base.pt",
            "lavie_config": root / "lavie_config" / "config.json", "upscaler": root / "upscaler"}


def lavie_with_upscaler(files, upscale: dict, **kwargs):
    return build_lavie_backend(sd_path=str(files["sd15"]), lavie_path=str(files["lavie"]),
                               lavie_config=str(files["lavie_config"]), device="cpu",
                               upscale={"enabled": True, "num_inference_steps": 2, **upscale},
                               **TINY_VIDEO_CALLS, **kwargs)


def test_loads_tiny_hub_layout_folder(tiny_lavie_files):
    backend = lavie_with_upscaler(tiny_lavie_files, {"path": str(tiny_lavie_files["upscaler"])})
    upscaler = backend.video_postprocess
    saved = tiny_upscale_pipeline(seed=0)

    assert fingerprint_module(upscaler.pipeline.unet) == fingerprint_module(saved.unet)
    assert fingerprint_module(upscaler.original_encoder) == fingerprint_module(saved.text_encoder)
    assert upscaler.pipeline.config.max_noise_level == 350
    assert backend.generate_videos([PROMPT], [0]).shape == (1, 4, 128, 128, 3)


def test_float16_unet_with_float32_encoders(tiny_lavie_files, unlearned_folder):
    backend = lavie_with_upscaler(tiny_lavie_files, {"path": str(tiny_lavie_files["upscaler"]),
                                                     "prompt_mode": "unlearned", "encoder_path": str(unlearned_folder)},
                                  dtype="float16")
    pipeline = backend.video_postprocess.pipeline

    assert pipeline.unet.dtype == torch.float16
    assert pipeline.text_encoder.dtype == backend.video_postprocess.unlearned_encoder.dtype == torch.float32
    shift_final_norm(backend.text_encoder)
    videos = backend.generate_videos([PROMPT], [0])
    assert videos.shape == (1, 4, 128, 128, 3)
    assert videos.std() > 0


def test_loads_cached_hub_id_offline(tiny_lavie_files, tmp_path):
    cache = tmp_path / "hf_cache"
    repo = cache / f"models--{UPSCALER_HUB_ID.replace('/', '--')}"
    shutil.copytree(tiny_lavie_files["upscaler"], repo / "snapshots" / ("f" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("f" * 40)

    backend = lavie_with_upscaler(tiny_lavie_files, {}, cache_dir=str(cache))

    assert backend.video_postprocess.scale_factor == 4


def test_loader_checks_unlearned_encoder(tiny_lavie_files, unlearned_folder, tmp_path):
    backend = lavie_with_upscaler(tiny_lavie_files, {"path": str(tiny_lavie_files["upscaler"]),
                                                     "prompt_mode": "unlearned", "encoder_path": str(unlearned_folder)})
    assert fingerprint_module(backend.video_postprocess.unlearned_encoder) == fingerprint_module(
        CLIPTextModel.from_pretrained(unlearned_folder))

    other_base = tiny_sd2_text_encoder(seed=3)
    mismatched = save_unlearned_encoder(tmp_path / "other" / "text_encoder", perturbed(other_base), other_base)
    with pytest.raises(EncoderMismatchError, match="was unlearned from a different encoder"):
        lavie_with_upscaler(tiny_lavie_files, {"path": str(tiny_lavie_files["upscaler"]),
                                               "prompt_mode": "unlearned", "encoder_path": str(mismatched)})


def test_offline_error_names_missing_components(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        build_lavie_backend(sd_path=str(tmp_path / "no_sd"), lavie_path=str(tmp_path / "no.pt"), device="cpu",
                            cache_dir=str(tmp_path / "hf_cache"),
                            upscale={"enabled": True, "path": "example-org/not-cached-upscaler",
                                     "prompt_mode": "unlearned", "encoder_path": str(tmp_path / "no_encoder")})

    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message
    for component in UPSCALER_COMPONENTS:
        assert component in message
    assert "hf download example-org/not-cached-upscaler --local-dir" in message
    assert "model.backend.upscale.path=" in message
    # The other parts are named in the same error.
    assert "no.pt" in message
    assert "model.backend.sd_path" in message
    assert f"model.backend.upscale.encoder_path={tmp_path / 'no_encoder'}" in message


def test_partial_folder_names_missing_components(tiny_lavie_files, tmp_path):
    folder = tmp_path / "upscaler"
    shutil.copytree(tiny_lavie_files["upscaler"], folder)
    shutil.rmtree(folder / "low_res_scheduler")
    for weights in (folder / "vae").glob("*.safetensors"):
        weights.unlink()

    with pytest.raises(ModelLoadError) as error:
        lavie_with_upscaler(tiny_lavie_files, {"path": str(folder)})

    message = str(error.value)
    assert "missing 2 component(s)" in message
    assert "- low_res_scheduler: folder" in message
    assert "- vae: no weight file" in message
    assert "- unet:" not in message
    assert f"hf download {UPSCALER_HUB_ID} --local-dir {folder}" in message


# --- The whole job --------------------------------------------------------------------------------------------


def train_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "T2V_UNLEARN_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


TINY_JOB = ["concept=eiffel", "shots=2", "epochs=1", "eval.seeds_per_prompt=1", "eval.prompts_per_group=1",
            "eval.images=false", "logger=none"]


def test_job_writes_upscaled_videos(tmp_path):
    from test_train_cli import run_in_process

    run_dir = tmp_path / "run"
    run_in_process(["model=lavie_tiny", "model.backend.image_size=64", "model.backend.num_frames=2",
                    "model.backend.num_inference_steps=2", "model.backend.upscale.enabled=true",
                    "model.backend.upscale.num_inference_steps=2", "eval.clip_similarity=false", *TINY_JOB],
                   run_dir)

    for phase in ("before", "after"):
        videos = sorted((run_dir / "videos" / phase).glob("*.mp4"))
        assert videos, f"no {phase} video"
        for path in videos:
            # 64-pixel frames upscaled 4x (write_video alone would enlarge them only to 128).
            assert iio.imread(path, plugin="FFMPEG", index=None).shape == (2, 256, 256, 3), path
    provenance = json.loads((run_dir / "text_encoder" / "unlearning.json").read_text())
    assert provenance[BASE_FINGERPRINT_KEY] == fingerprint_module(tiny_text_encoder(seed=0))


@pytest.mark.slow
def test_train_cli_writes_upscaled_videos(tmp_path):
    run_dir = tmp_path / "run"
    result = train_cli(["model=lavie_tiny", "model.backend.image_size=64", "model.backend.num_frames=4",
                        "model.backend.num_inference_steps=2", "model.backend.upscale.enabled=true",
                        "model.backend.upscale.num_inference_steps=2", *TINY_JOB, f"hydra.run.dir={run_dir}"], tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    for phase in ("before", "after"):
        videos = sorted((run_dir / "videos" / phase).glob("*.mp4"))
        assert videos, f"no {phase} video"
        for path in videos:
            assert iio.imread(path, plugin="FFMPEG", index=None).shape == (4, 256, 256, 3), path


@pytest.mark.slow
def test_modelscope_encoder_drives_lavie_upscaler(tmp_path):
    """A modelscope_tiny run's encoder passes the tiny upscaler's checks in a lavie_tiny run."""
    first = train_cli(["model=modelscope_tiny", "eval.videos=false", *TINY_JOB, f"hydra.run.dir={tmp_path / 'ms'}"],
                      tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    second = train_cli(["model=lavie_tiny", "model.backend.num_frames=2", "model.backend.num_inference_steps=2",
                        "model.backend.upscale.enabled=true", "model.backend.upscale.num_inference_steps=2",
                        "model.backend.upscale.prompt_mode=unlearned",
                        f"model.backend.upscale.encoder_path={tmp_path / 'ms' / 'text_encoder'}", *TINY_JOB,
                        f"hydra.run.dir={tmp_path / 'lavie'}"], tmp_path)

    assert second.returncode == 0, second.stderr[-3000:]
    log_text = second.stderr + second.stdout
    assert "started from the upscaler's text encoder" in log_text
    assert "the upscaler's original text encoder" in log_text
    assert "the upscaler's unlearned text encoder" in log_text
