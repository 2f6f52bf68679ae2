"""The toy-world backend: small models of the real architectures, trained on rendered scenes.

Loads the committed weights (no download): a CLIPTextModel and CLIPTokenizer shared by a
StableDiffusionPipeline (text-to-image) and an AnimateDiffPipeline (text-to-video), the image
UNet, VAE and DDPM training scheduler, and the settings of the toy open_clip model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from t2v_unlearn.backends.bundle import Backend, fingerprint_module

# Pipeline defaults: 32 px, 8 frames, 20 DDIM steps at guidance 5 (timing in the model card).
IMAGE_KWARGS = {"height": 32, "width": 32, "num_inference_steps": 20, "guidance_scale": 5.0}
VIDEO_KWARGS = {"height": 32, "width": 32, "num_frames": 8, "num_inference_steps": 20, "guidance_scale": 5.0}
REQUIRED_FOLDERS = ("text_encoder", "tokenizer", "unet", "vae", "scheduler", "motion_adapter")


def default_weights_dir() -> Path:
    from t2v_unlearn.toyworld.train import default_weights_dir as toyworld_weights_dir

    return toyworld_weights_dir()


def build_toyworld_backend(weights_dir: str | None = None, device: str = "cpu", **overrides: Any) -> Backend:
    """Load the toy-world models into a `Backend`.

    `overrides` may set `image_kwargs`, `video_kwargs` (merged into the defaults),
    `generation_batch_size` and `clip` (replaces the spec below). `Backend.clip` is `{"loader": "t2v_unlearn.toyworld.clip_model:
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

    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    missing = [name for name in REQUIRED_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"toy-world weights in {root} lack {missing}; run `make toyworld` to train them")
    unknown = set(overrides) - {"image_kwargs", "video_kwargs", "generation_batch_size", "clip"}
    if unknown:
        raise TypeError(f"unknown toy-world backend options {sorted(unknown)}; "
                        "expected image_kwargs, video_kwargs, generation_batch_size or clip")

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    # Weights are stored in fp16 to keep the repository small; the models run in fp32.
    dtype = torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), torch_dtype=dtype).to(device).eval()
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=dtype).to(device).eval()
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype).to(device).eval()
    motion_adapter = MotionAdapter.from_pretrained(str(root / "motion_adapter"), torch_dtype=dtype).to(device)
    noise_scheduler = DDPMScheduler.from_pretrained(str(root / "scheduler"))
    for module in (text_encoder, unet, vae, motion_adapter):
        module.requires_grad_(False)

    image_pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_sampling_scheduler(noise_scheduler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    # AnimateDiffPipeline wraps the image UNet into a UNetMotionModel with the adapter's temporal layers.
    video_pipeline = AnimateDiffPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=motion_adapter,
        scheduler=_sampling_scheduler(noise_scheduler),
    ).to(device)
    video_pipeline.unet.eval().requires_grad_(False)

    provenance = fingerprint_module(text_encoder)[:12]
    model_id = f"toyworld:{root.name}:{provenance}"
    backend = Backend(
        name="toyworld",
        model_id=model_id,
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
    )
    return backend


def _sampling_scheduler(noise_scheduler):
    from diffusers import DDIMScheduler

    # Stable Diffusion's DDIM settings: timesteps offset by one, no alpha of one at the last step.
    return DDIMScheduler.from_config(noise_scheduler.config, steps_offset=1, set_alpha_to_one=False)


def read_detector_config(weights_dir: str | None = None) -> dict:
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    return json.loads((root / "detector" / "config.json").read_text())
