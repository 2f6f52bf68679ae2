"""The toy-world backend: small models of the real architectures, trained on rendered scenes.

Loads the committed weights (no download): a CLIPTextModel and CLIPTokenizer shared by a
StableDiffusionPipeline (text-to-image) and a text-to-video pipeline, the image UNet, VAE and DDPM
training scheduler, and the settings of the toy open_clip model. The video model is AnimateDiff
(`video_model="animatediff"`, the default) or LaVie's architecture (`video_model="lavie"`: the
image UNet inflated by the repository's LaVie implementation, with trained temporal layers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from t2v_unlearn.backends.bundle import Backend, fingerprint_module
from t2v_unlearn.quiet import hide_empty_float32_warning

# Pipeline defaults: 32 px, 8 frames, 20 DDIM steps at guidance 5 (timing in the model card).
IMAGE_KWARGS = {"height": 32, "width": 32, "num_inference_steps": 20, "guidance_scale": 5.0}
VIDEO_KWARGS = {"height": 32, "width": 32, "num_frames": 8, "num_inference_steps": 20, "guidance_scale": 5.0}
REQUIRED_FOLDERS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler")
# The folder each video model needs on top of REQUIRED_FOLDERS.
VIDEO_MODEL_FOLDERS = {"animatediff": "motion_adapter", "lavie": "lavie_temporal"}


def default_weights_dir() -> Path:
    from t2v_unlearn.toyworld.train import default_weights_dir as toyworld_weights_dir

    return toyworld_weights_dir()


def build_toyworld_backend(weights_dir: str | None = None, device: str = "cpu", video_model: str = "animatediff",
                           **overrides: Any) -> Backend:
    """Load the toy-world models into a `Backend`.

    `video_model` is "animatediff" (MotionAdapter) or "lavie" (LaVie's temporal layers).

    `overrides` may set `image_kwargs`, `video_kwargs` (merged into the defaults),
    `generation_batch_size`, `video_batch_size` and `clip` (replaces the spec below). `Backend.clip` is `{"loader": "t2v_unlearn.toyworld.clip_model:
    load_toyworld_clip", "directory": <weights>/clip}`: the CLIP scorer calls the loader with the
    directory, which contains the open_clip config JSON and safetensors weights.
    """
    from diffusers import (
        AnimateDiffPipeline,
        AutoencoderKL,
        DDPMScheduler,
        MotionAdapter,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    from t2v_unlearn.toyworld.clip_model import clip_settings

    if video_model not in VIDEO_MODEL_FOLDERS:
        raise ValueError(f"unknown toy-world video_model {video_model!r}; use one of {sorted(VIDEO_MODEL_FOLDERS)}")
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    folders = (*REQUIRED_FOLDERS, VIDEO_MODEL_FOLDERS[video_model])
    missing = [name for name in folders if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"toy-world weights in {root} lack {missing}; run `make toyworld` to train them")
    unknown = set(overrides) - {"image_kwargs", "video_kwargs", "generation_batch_size", "video_batch_size", "clip"}
    if unknown:
        raise TypeError(f"unknown toy-world backend options {sorted(unknown)}; "
                        "expected image_kwargs, video_kwargs, generation_batch_size, video_batch_size or clip")

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    # Weights are stored in fp16 to keep the repository small; the models run in fp32.
    dtype = torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), torch_dtype=dtype).to(device).eval()
    # The models are a few MB, so diffusers' low-memory loading (which needs `accelerate`, and
    # warns once per model without it) gains nothing here.
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=dtype,
                                                low_cpu_mem_usage=False).to(device).eval()
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype, low_cpu_mem_usage=False).to(device).eval()
    noise_scheduler = DDPMScheduler.from_pretrained(str(root / "scheduler"))
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)

    image_pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_sampling_scheduler(noise_scheduler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    if video_model == "lavie":
        from t2v_unlearn.models.lavie import LaViePipeline

        video_pipeline = LaViePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=load_lavie_video_unet(root, unet), scheduler=_sampling_scheduler(noise_scheduler))
    else:
        motion_adapter = MotionAdapter.from_pretrained(str(root / "motion_adapter"), torch_dtype=dtype,
                                                       low_cpu_mem_usage=False).to(device)
        # AnimateDiffPipeline wraps the image UNet into a UNetMotionModel with the adapter's temporal layers.
        hide_empty_float32_warning()
        video_pipeline = AnimateDiffPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=motion_adapter,
            scheduler=_sampling_scheduler(noise_scheduler),
        )
    video_pipeline = video_pipeline.to(device)
    video_pipeline.unet.eval().requires_grad_(False)

    provenance = fingerprint_module(text_encoder)[:12]
    model_id = f"toyworld:{root.name}:{provenance}" + (":lavie" if video_model == "lavie" else "")
    backend = Backend(
        name="toyworld" if video_model == "animatediff" else "toyworld_lavie",
        model_id=model_id,
        weights_dir=root,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        noise_scheduler=noise_scheduler,
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs={**IMAGE_KWARGS, **overrides.get("image_kwargs", {})},
        video_kwargs={**VIDEO_KWARGS, **overrides.get("video_kwargs", {})},
        clip=dict(overrides.get("clip") or clip_settings(root / "clip")),
        device=device,
        generation_batch_size=int(overrides.get("generation_batch_size", 8)),
        video_batch_size=int(overrides.get("video_batch_size") or 4),
    )
    return backend


def load_lavie_video_unet(root: Path, unet):
    """Inflate the toy image UNet into LaVie's architecture and load the trained temporal layers."""
    from safetensors.torch import load_file

    from t2v_unlearn.models.lavie import LaVieUNet3DConditionModel

    directory = root / "lavie_temporal"
    config = json.loads((directory / "config.json").read_text())
    video_unet = LaVieUNet3DConditionModel.from_unet2d(unet, rotary_dim=int(config["rotary_dim"]))
    temporal = load_file(str(directory / "temporal_layers.safetensors"))
    expected = {key for key in video_unet.state_dict() if "_temp" in key}
    if set(temporal) != expected:
        raise ValueError(f"{directory} does not fit the toy UNet: {len(set(temporal) ^ expected)} temporal keys "
                         "differ; retrain them with `python -m t2v_unlearn.toyworld.train --stages lavie`")
    video_unet.load_state_dict({key: value.float() for key, value in temporal.items()}, strict=False)
    return video_unet


def _sampling_scheduler(noise_scheduler):
    from diffusers import DDIMScheduler

    # Stable Diffusion's DDIM settings: timesteps offset by one, no alpha of one at the last step.
    return DDIMScheduler.from_config(noise_scheduler.config, steps_offset=1, set_alpha_to_one=False)


def read_detector_config(weights_dir: str | None = None) -> dict:
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    return json.loads((root / "detector" / "config.json").read_text())
