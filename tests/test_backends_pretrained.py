"""The real diffusers backends, loaded from tiny random repositories laid out like the Hub ones."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    MotionAdapter,
    PNDMScheduler,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UNetMotionModel,
)
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import CLIPTextConfig, CLIPTextModel

from t2v_unlearn.backends.loading import (
    TEXT_TO_IMAGE_COMPONENTS,
    ModelLoadError,
    check_tokenizer,
    resolve_device,
    resolve_frozen_dtype,
    resolve_source,
)
from t2v_unlearn.backends.pretrained import (
    build_animatediff_backend,
    build_modelscope_backend,
    build_zeroscope_backend,
)
from t2v_unlearn.backends.shared_encoder import (
    EncoderMismatchError,
    compare_encoders,
    compare_tokenizers,
    encoder_config,
)
from t2v_unlearn.backends.tiny import tiny_text_encoder
from t2v_unlearn.backends.tiny_repos import (
    save_tiny_motion_adapter,
    save_tiny_sd15_repo,
    save_tiny_sd21_repo,
    save_tiny_text_to_video_repo,
)
from t2v_unlearn.backends.tiny_sd2 import tiny_sd2_text_encoder, tiny_sd2_tokenizer
from t2v_unlearn.tokenizer import build_clip_tokenizer

try:  # huggingface_hub's HTTP client: httpx2 in 2.x, httpx in 1.x.
    import httpx2 as http_client
except ImportError:
    import httpx as http_client

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "data" / "configs"
TINY_CALLS = dict(
    image_kwargs=dict(height=32, width=32, num_inference_steps=2),
    video_kwargs=dict(height=32, width=32, num_frames=4, num_inference_steps=2),
)
SD_COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


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


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repos")
    return {
        "sd15": save_tiny_sd15_repo(root / "sd15", seed=0),
        "motion_adapter": save_tiny_motion_adapter(root / "motion_adapter", seed=3),
        "sd21_base": save_tiny_sd21_repo(root / "sd21_base", seed=0),
        "modelscope": save_tiny_text_to_video_repo(root / "modelscope", seed=0),
        "modelscope_other_encoder": save_tiny_text_to_video_repo(root / "modelscope_other", seed=0,
                                                                 text_encoder_seed=7),
    }


def copy_repo(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


# --- AnimateDiff -------------------------------------------------------------------------------------


def test_animatediff_loads_and_generates(repos):
    backend = build_animatediff_backend(sd_path=str(repos["sd15"]), motion_adapter_path=str(repos["motion_adapter"]),
                                        device="cpu", **TINY_CALLS)

    assert backend.name == "animatediff"
    assert backend.video_pipeline.text_encoder is backend.text_encoder
    assert backend.video_pipeline.tokenizer is backend.tokenizer
    assert backend.image_pipeline.text_encoder is backend.text_encoder
    assert backend.video_pipeline.vae is backend.vae
    assert backend.text_encoder.dtype == torch.float32
    assert backend.unet.dtype == torch.float32
    assert backend.image_pipeline.safety_checker is None
    assert isinstance(backend.video_pipeline.unet, UNetMotionModel)
    assert isinstance(backend.noise_scheduler, DDPMScheduler)
    assert isinstance(backend.image_pipeline.scheduler, DPMSolverMultistepScheduler)
    assert isinstance(backend.video_pipeline.scheduler, DDIMScheduler)
    assert backend.video_pipeline.scheduler.config.beta_schedule == "linear"
    assert backend.clip == {"model_name": "ViT-B-32", "pretrained": "openai"}
    assert str(repos["sd15"].resolve()) in backend.model_id
    assert str(repos["motion_adapter"].resolve()) in backend.model_id

    image = backend.generate_images(["a photo of a cat"], [0])
    video = backend.generate_videos(["a cat running"], [0])
    assert image.shape == (1, 32, 32, 3)
    assert image.dtype == np.uint8
    assert video.shape == (1, 4, 32, 32, 3)
    assert video.dtype == np.uint8


def test_motion_unet_copies_unet_and_adapter(repos):
    backend = build_animatediff_backend(sd_path=str(repos["sd15"]), motion_adapter_path=str(repos["motion_adapter"]),
                                        device="cpu", **TINY_CALLS)
    image_unet, motion_unet = backend.unet, backend.video_pipeline.unet

    assert torch.equal(image_unet.conv_in.weight, motion_unet.conv_in.weight)
    assert torch.equal(image_unet.down_blocks[0].attentions[0].proj_in.weight,
                       motion_unet.down_blocks[0].attentions[0].proj_in.weight)
    adapter = MotionAdapter.from_pretrained(repos["motion_adapter"])
    assert torch.equal(adapter.down_blocks[0].motion_modules[0].proj_in.weight,
                       motion_unet.down_blocks[0].motion_modules[0].proj_in.weight)
    assert backend.video_pipeline.motion_adapter is None


def test_animatediff_default_call_settings(repos):
    backend = build_animatediff_backend(sd_path=str(repos["sd15"]), motion_adapter_path=str(repos["motion_adapter"]),
                                        device="cpu")

    assert backend.image_kwargs == dict(height=512, width=512, num_inference_steps=25, guidance_scale=7.5)
    assert backend.video_kwargs == dict(height=512, width=512, num_frames=16, num_inference_steps=25,
                                        guidance_scale=7.5)
    assert backend.generation_batch_size == 4


def test_animatediff_warns_about_dreambooth(repos, caplog):
    with caplog.at_level(logging.WARNING, logger="t2v_unlearn.backends.pretrained"):
        build_animatediff_backend(sd_path=str(repos["sd15"]), motion_adapter_path=str(repos["motion_adapter"]),
                                  device="cpu")
    assert "DreamBooth" in caplog.text


def test_reference_sampling_uses_pndm_fp32(repos):
    backend = build_animatediff_backend(sd_path=str(repos["sd15"]), motion_adapter_path=str(repos["motion_adapter"]),
                                        device="cpu", dtype="float16", reference_sampling=True)

    assert isinstance(backend.image_pipeline.scheduler, PNDMScheduler)
    assert backend.image_kwargs["num_inference_steps"] == 50
    assert backend.generation_batch_size == 1
    assert backend.unet.dtype == torch.float32
    assert backend.vae.dtype == torch.float32


def test_float16_frozen_parts_generate(repos):
    backend = build_animatediff_backend(sd_path=str(repos["sd15"]), motion_adapter_path=str(repos["motion_adapter"]),
                                        device="cpu", dtype="float16", **TINY_CALLS)

    assert backend.unet.dtype == torch.float16
    assert backend.vae.dtype == torch.float16
    assert backend.video_pipeline.unet.dtype == torch.float16
    assert backend.text_encoder.dtype == torch.float32
    # The float32 encoder drives the float16 UNets because the pipelines cast the prompt embeddings.
    assert backend.generate_images(["a cat"], [0]).shape == (1, 32, 32, 3)
    assert backend.generate_videos(["a cat"], [0]).shape == (1, 4, 32, 32, 3)


# --- ModelScope and Zeroscope ------------------------------------------------------------------------


def test_modelscope_loads_and_generates(repos):
    backend = build_modelscope_backend(sd_path=str(repos["sd21_base"]), video_path=str(repos["modelscope"]),
                                       device="cpu", **TINY_CALLS)

    assert backend.name == "modelscope"
    assert backend.video_pipeline.text_encoder is backend.text_encoder
    assert backend.video_pipeline.tokenizer is backend.tokenizer
    assert backend.tokenizer.pad_token == "!"
    assert isinstance(backend.unet, UNet2DConditionModel)
    assert isinstance(backend.video_pipeline.unet, UNet3DConditionModel)
    assert isinstance(backend.video_pipeline.scheduler, DPMSolverMultistepScheduler)
    assert backend.noise_scheduler.config.prediction_type == "epsilon"

    image = backend.generate_images(["a photo of a cat"], [0])
    video = backend.generate_videos(["a cat running"], [0])
    assert image.shape == (1, 32, 32, 3)
    assert video.shape == (1, 4, 32, 32, 3)


def test_modelscope_and_zeroscope_video_defaults(repos):
    modelscope = build_modelscope_backend(sd_path=str(repos["sd21_base"]), video_path=str(repos["modelscope"]),
                                          device="cpu")
    zeroscope = build_zeroscope_backend(sd_path=str(repos["sd21_base"]), video_path=str(repos["modelscope"]),
                                        device="cpu")

    assert modelscope.video_kwargs == dict(height=256, width=256, num_frames=16, num_inference_steps=25,
                                           guidance_scale=9.0)
    assert zeroscope.name == "zeroscope"
    assert zeroscope.video_kwargs == dict(height=320, width=576, num_frames=24, num_inference_steps=40,
                                          guidance_scale=9.0)


def test_mismatched_encoder_rejected(repos):
    with pytest.raises(EncoderMismatchError) as error:
        build_modelscope_backend(sd_path=str(repos["sd21_base"]), video_path=str(repos["modelscope_other_encoder"]),
                                 device="cpu")

    message = str(error.value)
    assert "weight fingerprints differ" in message
    assert "allow_encoder_mismatch=true" in message


def test_mismatched_encoder_allowed(repos, caplog):
    with caplog.at_level(logging.WARNING, logger="t2v_unlearn.backends.shared_encoder"):
        backend = build_modelscope_backend(sd_path=str(repos["sd21_base"]),
                                           video_path=str(repos["modelscope_other_encoder"]),
                                           device="cpu", allow_encoder_mismatch=True, **TINY_CALLS)

    assert "weight fingerprints differ" in caplog.text
    assert backend.video_pipeline.text_encoder is backend.text_encoder
    assert backend.generate_videos(["a cat"], [0]).shape == (1, 4, 32, 32, 3)


def test_compare_encoders_lists_config_differences():
    sd1_like = tiny_text_encoder(seed=0)
    sd2_like = tiny_sd2_text_encoder(seed=0)

    comparison = compare_encoders(sd1_like, sd2_like)

    assert not comparison.same
    assert comparison.config_differences["hidden_act"] == ("quick_gelu", "gelu")


def test_compare_encoders_identical_copies():
    comparison = compare_encoders(tiny_sd2_text_encoder(seed=4), tiny_sd2_text_encoder(seed=4))

    assert comparison.same
    assert comparison.max_abs_weight_difference is None


def test_compare_tokenizers_finds_pad_token():
    differences = compare_tokenizers(build_clip_tokenizer(), tiny_sd2_tokenizer())

    assert differences == ["pad_token: '<|endoftext|>' vs '!'"]


# --- Load errors -------------------------------------------------------------------------------------


def test_missing_component_named(repos, tmp_path, monkeypatch):
    sd = copy_repo(repos["sd15"], tmp_path / "sd15")
    shutil.rmtree(sd / "vae")
    loaded = []
    monkeypatch.setattr(CLIPTextModel, "from_pretrained", lambda *args, **kwargs: loaded.append("text_encoder"))
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", lambda *args, **kwargs: loaded.append("unet"))

    with pytest.raises(ModelLoadError) as error:
        build_animatediff_backend(sd_path=str(sd), motion_adapter_path=str(repos["motion_adapter"]), device="cpu")

    message = str(error.value)
    assert "- vae: folder" in message
    assert "- unet:" not in message
    assert "- text_encoder:" not in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert f"model.backend.sd_path={sd}" in message
    # The component check runs before any weights load.
    assert loaded == []


def test_missing_weights_named(repos, tmp_path):
    sd = copy_repo(repos["sd15"], tmp_path / "sd15")
    for weights in (sd / "unet").glob("*.safetensors"):
        weights.unlink()

    with pytest.raises(ModelLoadError, match=r"- unet: no weight file"):
        build_animatediff_backend(sd_path=str(sd), motion_adapter_path=str(repos["motion_adapter"]), device="cpu")


def test_missing_components_of_both_repos_in_one_error(repos, tmp_path):
    video = copy_repo(repos["modelscope"], tmp_path / "modelscope")
    shutil.rmtree(video / "tokenizer")
    (video / "scheduler" / "scheduler_config.json").unlink()

    with pytest.raises(ModelLoadError) as error:
        build_modelscope_backend(sd_path=str(tmp_path / "no_sd21"), video_path=str(video), device="cpu")

    message = str(error.value)
    for component in SD_COMPONENTS:
        assert component in message.split("\n\n")[0]
    assert "- tokenizer: folder" in message
    assert "- scheduler: scheduler_config.json not found" in message
    assert "hf download stabilityai/stable-diffusion-2-1-base" in message
    assert "hf download ali-vilab/text-to-video-ms-1.7b" in message


def test_nonexistent_folder_names_components(tmp_path):
    missing = tmp_path / "does_not_exist"

    with pytest.raises(ModelLoadError) as error:
        build_animatediff_backend(sd_path=str(missing), motion_adapter_path=str(tmp_path / "no_adapter"),
                                  device="cpu")

    message = str(error.value)
    assert f"model.backend.sd_path={missing}" in message
    for component in (*SD_COMPONENTS, "motion_adapter"):
        assert component in message
    assert "hf download guoyww/animatediff-motion-adapter-v1-5-2" in message


def test_offline_hub_id_not_cached(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        build_modelscope_backend(sd_path="example-org/not-cached-sd", video_path="example-org/not-cached-video",
                                 cache_dir=str(tmp_path / "hf_cache"), device="cpu")

    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message
    for component in SD_COMPONENTS:
        assert component in message
    assert "hf download example-org/not-cached-sd --local-dir" in message
    assert "hf download example-org/not-cached-video --local-dir" in message
    assert "model.backend.sd_path=" in message


def write_hub_cache(cache_dir: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Lay `folder` out as a cached snapshot of `repo_id` (huggingface_hub cache layout)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_offline_hub_id_loads_from_cache(repos, tmp_path):
    cache = tmp_path / "hf_cache"
    write_hub_cache(cache, "example-org/sd15", repos["sd15"], "a" * 40)
    write_hub_cache(cache, "example-org/adapter", repos["motion_adapter"], "b" * 40)

    backend = build_animatediff_backend(sd_path="example-org/sd15", motion_adapter_path="example-org/adapter",
                                        cache_dir=str(cache), device="cpu", **TINY_CALLS)

    assert backend.model_id == f"example-org/sd15@{'a' * 40} + example-org/adapter@{'b' * 40}"
    assert backend.generate_images(["a cat"], [0]).shape == (1, 32, 32, 3)


def test_offline_partial_cache_names_missing(repos, tmp_path):
    cache = tmp_path / "hf_cache"
    write_hub_cache(cache, "example-org/sd15", repos["sd15"], "c" * 40)
    shutil.rmtree(cache / "models--example-org--sd15" / "snapshots" / ("c" * 40) / "text_encoder")

    with pytest.raises(ModelLoadError) as error:
        build_animatediff_backend(sd_path="example-org/sd15", motion_adapter_path=str(repos["motion_adapter"]),
                                  cache_dir=str(cache), device="cpu")

    assert "- text_encoder: folder" in str(error.value)
    assert "- unet:" not in str(error.value)


def refuse_connection(*args, **kwargs):
    raise http_client.ConnectError("[Errno 111] Connection refused")


def test_hub_unreachable_loads_from_cache(repos, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "model_info", refuse_connection)
    cache = tmp_path / "hf_cache"
    write_hub_cache(cache, "example-org/sd15", repos["sd15"], "d" * 40)
    write_hub_cache(cache, "example-org/adapter", repos["motion_adapter"], "e" * 40)

    with caplog.at_level(logging.WARNING, logger="t2v_unlearn.backends.loading"):
        backend = build_animatediff_backend(sd_path="example-org/sd15", motion_adapter_path="example-org/adapter",
                                            cache_dir=str(cache), device="cpu")

    assert "the Hub could not be reached" in caplog.text
    assert backend.model_id == f"example-org/sd15@{'d' * 40} + example-org/adapter@{'e' * 40}"


def test_hub_unreachable_not_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "model_info", refuse_connection)

    with pytest.raises(ModelLoadError) as error:
        build_animatediff_backend(sd_path="example-org/sd15", motion_adapter_path="example-org/adapter",
                                  cache_dir=str(tmp_path / "hf_cache"), device="cpu")

    message = str(error.value)
    assert "the Hub could not be reached (ConnectError" in message
    for component in (*SD_COMPONENTS, "motion_adapter"):
        assert component in message
    assert "hf download example-org/sd15 --local-dir" in message


def test_hub_repository_not_found(tmp_path, monkeypatch):
    def not_found(*args, **kwargs):
        request = http_client.Request("GET", "https://hub.invalid/api/models/example-org/typo")
        raise RepositoryNotFoundError("404 Repository Not Found",
                                      response=http_client.Response(404, request=request))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "model_info", not_found)

    with pytest.raises(ModelLoadError, match="example-org/typo .model.backend.sd_path. was not found on the Hub"):
        build_animatediff_backend(sd_path="example-org/typo", motion_adapter_path="example-org/adapter",
                                  cache_dir=str(tmp_path / "hf_cache"), device="cpu")


def test_tokenizer_vocabulary_mismatch_rejected(repos):
    source = resolve_source(str(repos["sd15"]), TEXT_TO_IMAGE_COMPONENTS, label="the SD 1.5 text-to-image model",
                            option="model.backend.sd_path", hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5")
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=8, intermediate_size=16,
                                           num_hidden_layers=1, num_attention_heads=2))

    with pytest.raises(ModelLoadError, match="has 49408 tokens but its text encoder embeds 100"):
        check_tokenizer(build_clip_tokenizer(), encoder, source)


def test_model_id_changes_with_weights(repos, tmp_path):
    sd = copy_repo(repos["sd15"], tmp_path / "sd15")
    kwargs = dict(motion_adapter_path=str(repos["motion_adapter"]), device="cpu")
    before = build_animatediff_backend(sd_path=str(sd), **kwargs).model_id

    weights = next((sd / "unet").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    after = build_animatediff_backend(sd_path=str(sd), **kwargs).model_id

    assert before != after


def test_invalid_dtype_and_device():
    with pytest.raises(ModelLoadError, match="dtype='float8' is invalid"):
        resolve_frozen_dtype("float8", torch.device("cpu"))
    assert resolve_frozen_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_frozen_dtype("auto", torch.device("cuda")) == torch.float16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


# --- Hydra configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["animatediff", "modelscope", "zeroscope"])
def test_real_config_instantiates_on_tiny_repos(model, repos):
    paths = {
        "animatediff": [f"model.backend.sd_path={repos['sd15']}",
                        f"model.backend.motion_adapter_path={repos['motion_adapter']}"],
        "modelscope": [f"model.backend.sd_path={repos['sd21_base']}",
                       f"model.backend.video_path={repos['modelscope']}"],
    }
    paths["zeroscope"] = paths["modelscope"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}", "model.backend.device=cpu", *paths[model]])

    backend = instantiate(cfg.model.backend)

    assert backend.name == model
    assert backend.device == torch.device("cpu")
    assert backend.clip == {"model_name": "ViT-B-32", "pretrained": "openai"}
    assert isinstance(backend.clip, dict)


# --- Real-size architectures from the published configs ----------------------------------------------

# State-dict element counts of the published configs, built with diffusers 0.42.1 and
# transformers 5.25.0. They match the float32 checkpoint sizes on the Hub (4 bytes per element).
REAL_SIZE_COUNTS = [
    (UNet2DConditionModel, "sd15/unet.json", 859_520_964),
    (AutoencoderKL, "sd15/vae.json", 83_653_863),
    (CLIPTextModel, "sd15/text_encoder.json", 123_060_480),
    (UNet2DConditionModel, "sd21base/unet.json", 865_910_724),
    (CLIPTextModel, "sd21base/text_encoder.json", 340_387_840),
    (CLIPTextModel, "modelscope/text_encoder.json", 340_387_840),
    (UNet3DConditionModel, "modelscope/unet.json", 1_411_233_860),
    # Includes the sinusoidal position-encoding buffers (`pe`), which the checkpoint stores too.
    (MotionAdapter, "animatediff/motion_adapter_v1_5_2.json", 453_813_440),
    (MotionAdapter, "animatediff/motion_adapter_v1_5_3.json", 417_700_800),
]


def build_on_meta(model_class, config_file: str) -> torch.nn.Module:
    path = CONFIGS / config_file
    with torch.device("meta"):
        if model_class is CLIPTextModel:
            return CLIPTextModel(CLIPTextConfig.from_json_file(str(path)))
        return model_class.from_config(json.loads(path.read_text()))


def state_dict_elements(module: torch.nn.Module) -> int:
    return sum(tensor.numel() for tensor in module.state_dict().values())


@pytest.mark.parametrize(("model_class", "config_file", "expected"), REAL_SIZE_COUNTS,
                         ids=[row[1] for row in REAL_SIZE_COUNTS])
def test_real_size_element_count(model_class, config_file, expected):
    module = build_on_meta(model_class, config_file)

    assert state_dict_elements(module) == expected


def test_motion_adapter_parameters_exclude_pe_buffers():
    adapter = build_on_meta(MotionAdapter, "animatediff/motion_adapter_v1_5_2.json")

    assert sum(p.numel() for p in adapter.parameters()) == 453_209_280


def test_real_size_motion_unet_is_unet_plus_adapter():
    unet = build_on_meta(UNet2DConditionModel, "sd15/unet.json")
    adapter = build_on_meta(MotionAdapter, "animatediff/motion_adapter_v1_5_2.json")
    with torch.device("meta"):
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)

    assert state_dict_elements(motion_unet) == 859_520_964 + 453_813_440


def test_real_size_encoders_share_architecture():
    sd21 = build_on_meta(CLIPTextModel, "sd21base/text_encoder.json")
    modelscope = build_on_meta(CLIPTextModel, "modelscope/text_encoder.json")

    assert encoder_config(sd21) == encoder_config(modelscope)


# --- The whole job on a real config ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["animatediff", "modelscope"])
def test_job_runs_with_real_config_on_tiny_repos(model, repos, tmp_path):
    paths = {
        "animatediff": [f"model.backend.sd_path={repos['sd15']}",
                        f"model.backend.motion_adapter_path={repos['motion_adapter']}"],
        "modelscope": [f"model.backend.sd_path={repos['sd21_base']}",
                       f"model.backend.video_path={repos['modelscope']}"],
    }
    tiny_calls = ["++model.backend.image_kwargs={height:32,width:32,num_inference_steps:2}",
                  "++model.backend.video_kwargs={height:32,width:32,num_frames:4,num_inference_steps:2}"]
    # The tiny random open_clip model that ships with the package, so nothing downloads.
    tiny_clip = ["model.backend.clip.model_name=t2v-unlearn-tiny-clip", "model.backend.clip.pretrained=null",
                 "+model.backend.clip.seed=0"]
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "T2V_UNLEARN_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "train.py", f"model={model}", *paths[model], "model.backend.device=cpu",
               *tiny_calls, *tiny_clip, "concept=eiffel", "shots=2", "epochs=1", "eval.seeds_per_prompt=1",
               "logger=none", f"hydra.run.dir={run_dir}"]

    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    assert (run_dir / "text_encoder").is_dir()
