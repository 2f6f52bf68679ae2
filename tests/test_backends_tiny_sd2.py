"""The tiny SD 2.x + ModelScope/Zeroscope twins: their architecture flags, generation and the whole job."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import CLIPTextModel

from t2v_unlearn.backends import tiny_repos
from t2v_unlearn.backends.shared_encoder import EncoderMismatchError
from t2v_unlearn.backends.tiny_sd2 import (
    build_tiny_sd2_video_backend,
    tiny_sd2_text_encoder,
    tiny_sd2_tokenizer,
    tiny_sd2_unet,
    tiny_unet3d,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "data" / "configs"


def published(config_file: str) -> dict:
    return json.loads((CONFIGS / config_file).read_text())


@pytest.fixture(autouse=True)
def offline_single_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    # The tiny models' operations are too small to gain from threads. With other processes on the
    # cores, thread contention made them 30 to 60 times slower (measured on a shared 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- The twins keep the real models' architecture flags ----------------------------------------------


def test_text_encoder_matches_sd21_flags():
    real = published("sd21base/text_encoder.json")
    tiny = tiny_sd2_text_encoder().config

    for key in ("hidden_act", "vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id"):
        assert getattr(tiny, key) == real[key], key


def test_tokenizer_pads_like_sd21():
    tokenizer = tiny_sd2_tokenizer()

    assert tokenizer.pad_token == published("sd21base/tokenizer_special_tokens_map.json")["pad_token"]
    assert tokenizer.pad_token_id == 0
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407]
    assert set(ids[4:]) == {0}


def test_unet_matches_sd21_flags():
    real = published("sd21base/unet.json")
    tiny = tiny_sd2_unet().config

    assert tiny.use_linear_projection is real["use_linear_projection"] is True
    assert isinstance(real["attention_head_dim"], list)
    assert len(tiny.attention_head_dim) == len(tiny.block_out_channels)


def test_unet3d_matches_modelscope_blocks():
    real = published("modelscope/unet.json")
    tiny = tiny_unet3d().config

    assert {*tiny.down_block_types} == {*real["down_block_types"]}
    assert {*tiny.up_block_types} == {*real["up_block_types"]}
    assert tiny.cross_attention_dim == tiny_sd2_text_encoder().config.hidden_size
    assert real["cross_attention_dim"] == published("sd21base/text_encoder.json")["hidden_size"]


# --- The backend --------------------------------------------------------------------------------------


def test_backend_generates_image_and_video():
    backend = build_tiny_sd2_video_backend(video_width=64, num_frames=3)

    assert backend.video_pipeline.text_encoder is backend.text_encoder
    assert backend.video_pipeline.tokenizer is backend.tokenizer
    assert isinstance(backend.video_pipeline.unet, UNet3DConditionModel)
    assert isinstance(backend.image_pipeline.scheduler, DPMSolverMultistepScheduler)
    assert isinstance(backend.noise_scheduler, DDPMScheduler)
    assert backend.clip["model_name"] == "t2v-unlearn-tiny-clip"

    image = backend.generate_images(["a photo of a cat"], [0])
    video = backend.generate_videos(["a cat running"], [0])
    assert image.shape == (1, 32, 32, 3)
    assert video.shape == (1, 3, 32, 64, 3)


def test_backend_is_deterministic_per_seed():
    first = build_tiny_sd2_video_backend().generate_images(["a cat", "a dog"], [3, 4])
    second = build_tiny_sd2_video_backend().generate_images(["a dog"], [4])

    assert (first[1] == second[0]).all()


def test_v_prediction_option():
    backend = build_tiny_sd2_video_backend(prediction_type="v_prediction")

    assert backend.noise_scheduler.config.prediction_type == "v_prediction"
    assert backend.image_pipeline.scheduler.config.prediction_type == "v_prediction"
    assert backend.video_pipeline.scheduler.config.prediction_type == "v_prediction"
    assert backend.generate_videos(["a cat"], [0]).shape == (1, 4, 32, 32, 3)


def test_invalid_prediction_type():
    with pytest.raises(ValueError, match="prediction_type='sample' is invalid"):
        build_tiny_sd2_video_backend(prediction_type="sample")


def test_mismatched_video_encoder_rejected():
    with pytest.raises(EncoderMismatchError, match="weight fingerprints differ"):
        build_tiny_sd2_video_backend(video_text_encoder_seed=1)


def test_mismatched_video_encoder_allowed(caplog):
    with caplog.at_level(logging.WARNING, logger="t2v_unlearn.backends.shared_encoder"):
        backend = build_tiny_sd2_video_backend(video_text_encoder_seed=1, allow_encoder_mismatch=True)

    assert "allow_encoder_mismatch is true" in caplog.text
    assert backend.video_pipeline.text_encoder is backend.text_encoder


@pytest.mark.parametrize("model", ["modelscope_tiny", "zeroscope_tiny"])
def test_tiny_config_instantiates(model):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}"])

    backend = instantiate(cfg.model.backend)

    assert backend.name == model
    assert backend.model_id.startswith(f"t2v_unlearn/{model}@seed0")


# --- The whole job -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["modelscope_tiny", "zeroscope_tiny"])
def test_job_runs_with_tiny_model(model, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "T2V_UNLEARN_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "train.py", f"model={model}", "concept=eiffel", "shots=2", "epochs=1",
               "eval.seeds_per_prompt=1", "logger=none", f"hydra.run.dir={run_dir}"]

    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    assert (run_dir / "text_encoder").is_dir()
    saved = CLIPTextModel.from_pretrained(run_dir / "text_encoder")
    assert saved.config.hidden_act == "gelu"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/optimizer_steps"] == 1


def test_tiny_repos_command_writes_hub_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tiny_repos", str(tmp_path), "--seed", "2"])
    tiny_repos.main()

    for name in ("sd15", "sd21_base", "modelscope"):
        index = json.loads((tmp_path / name / "model_index.json").read_text())
        for component in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
            assert (tmp_path / name / component).is_dir(), f"{name}/{component}"
            assert component in index, f"{name} model_index.json lacks {component}"
    assert json.loads((tmp_path / "modelscope" / "model_index.json").read_text())["_class_name"] == "TextToVideoSDPipeline"
    assert (tmp_path / "motion_adapter" / "config.json").is_file()
