"""The real diffusers backends: SD 1.5 + AnimateDiff, and SD 2.1-base + ModelScope or Zeroscope.

Each builder loads a text-to-image model (whose text encoder the unlearning trains) and a video
model that reads prompts through that same encoder:

- AnimateDiff adds a motion adapter to the SD 1.5 UNet, and the `AnimateDiffPipeline` is built
  from the very tokenizer, text encoder and VAE objects of the SD 1.5 pipeline.
- ModelScope text-to-video 1.7B and Zeroscope v2 576w (a ModelScope fine-tune) ship their own text
  encoder with SD 2.1's architecture (the OpenCLIP ViT-H text tower, 23 layers). The builder loads
  it, compares it with SD 2.1-base's (config, tokenizer and a weight fingerprint) and only then puts
  SD 2.1's encoder into the `TextToVideoSDPipeline`.

NOTE: the published configs and float32 file sizes of the SD 2.1-base and ModelScope encoders agree,
but their weights were not compared here. If they differ, the check at load raises and lists how.

Paths are local folders or Hub ids (see `loading`). The text encoder stays float32 because it is
trained. The frozen UNets and VAEs are float16 on a GPU by default, so the pipelines cast the prompt
embeddings to the UNet's dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    MotionAdapter,
    PNDMScheduler,
    StableDiffusionPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.backends.loading import (
    MOTION_ADAPTER,
    MOTION_ADAPTER_COMPONENTS,
    SCHEDULER,
    TEXT_ENCODER,
    TEXT_TO_IMAGE_COMPONENTS,
    TEXT_TO_VIDEO_COMPONENTS,
    TOKENIZER,
    UNET,
    VAE,
    ModelLoadError,
    ModelSource,
    check_tokenizer,
    resolve_device,
    resolve_frozen_dtype,
    resolve_source,
)
from t2v_unlearn.backends.shared_encoder import check_shared_encoder
from t2v_unlearn.quiet import hide_empty_float32_warning

log = logging.getLogger(__name__)

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ANIMATEDIFF_ADAPTER_HUB_ID = "guoyww/animatediff-motion-adapter-v1-5-2"
SD21_BASE_HUB_ID = "stabilityai/stable-diffusion-2-1-base"
MODELSCOPE_HUB_ID = "ali-vilab/text-to-video-ms-1.7b"
ZEROSCOPE_HUB_ID = "cerspense/zeroscope_v2_576w"

# open_clip model of the CLIP judge and probes; "openai" weights download on first use.
DEFAULT_CLIP = {"model_name": "ViT-B-32", "pretrained": "openai"}

# Few-shot image generation. Fast default: DPM-Solver++ with 25 steps. The reference recipe samples
# with the model's own PNDM scheduler for 50 steps, one image per call, in float32.
# Size and guidance 7.5 are the defaults of StableDiffusionPipeline for SD 1.5 and SD 2.1-base.
SD_IMAGE_KWARGS = dict(height=512, width=512, num_inference_steps=25, guidance_scale=7.5)
REFERENCE_IMAGE_STEPS = 50

# Video settings of each model's diffusers example: AnimateDiff with DDIM (linear betas, linspace
# timesteps), 16 frames, 25 steps, guidance 7.5. ModelScope with DPM-Solver++, 25 steps, its
# pipeline's default guidance 9.0, 16 frames at the UNet's 256-pixel size. Zeroscope v2 576w with
# DPM-Solver++, 40 steps, 24 frames of 576x320, the size it was fine-tuned on.
ANIMATEDIFF_VIDEO_KWARGS = dict(height=512, width=512, num_frames=16, num_inference_steps=25, guidance_scale=7.5)
ANIMATEDIFF_SAMPLER = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
MODELSCOPE_VIDEO_KWARGS = dict(height=256, width=256, num_frames=16, num_inference_steps=25, guidance_scale=9.0)
ZEROSCOPE_VIDEO_KWARGS = dict(height=320, width=576, num_frames=24, num_inference_steps=40, guidance_scale=9.0)


class PromptEmbedsInUNetDtype:
    """Pipeline mixin: cast prompt embeddings to the UNet's dtype.

    diffusers casts them to the text encoder's dtype, and the latents then take that dtype too, which
    fails when a float32 encoder (the one being trained) drives a float16 UNet.
    """

    def encode_prompt(self, *args, **kwargs):
        prompt_embeds, negative_prompt_embeds = super().encode_prompt(*args, **kwargs)
        dtype = self.unet.dtype
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)
        return prompt_embeds.to(dtype), negative_prompt_embeds


class SharedEncoderStableDiffusionPipeline(PromptEmbedsInUNetDtype, StableDiffusionPipeline):
    pass


class SharedEncoderAnimateDiffPipeline(PromptEmbedsInUNetDtype, AnimateDiffPipeline):
    pass


class SharedEncoderTextToVideoSDPipeline(PromptEmbedsInUNetDtype, TextToVideoSDPipeline):
    pass


@dataclass
class TextToImageParts:
    """The loaded components of a Stable Diffusion repository."""

    source: ModelSource
    model_id: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict


@dataclass
class Placement:
    device: torch.device
    # dtype of the frozen UNets and VAEs; the text encoder is always float32.
    frozen_dtype: torch.dtype


def resolve_placement(device: str, dtype: str, reference_sampling: bool) -> Placement:
    resolved_device = resolve_device(device)
    frozen_dtype = resolve_frozen_dtype(dtype, resolved_device)
    if reference_sampling and frozen_dtype != torch.float32:
        log.info("reference_sampling=true: loading the UNet and VAE in float32 (dtype=%s ignored)", dtype)
        frozen_dtype = torch.float32
    return Placement(resolved_device, frozen_dtype)


def resolve_sources(*requests: dict) -> list[ModelSource]:
    """Resolve several repositories and raise one `ModelLoadError` that lists every problem."""
    sources, problems = [], []
    for request in requests:
        try:
            sources.append(resolve_source(**request))
        except ModelLoadError as error:
            problems.append(str(error))
    if problems:
        raise ModelLoadError("\n\n".join(problems))
    return sources


def load_text_to_image(source: ModelSource, placement: Placement) -> TextToImageParts:
    """Load tokenizer, float32 text encoder, frozen UNet and VAE, and the scheduler config."""
    tokenizer = source.from_pretrained(CLIPTokenizer.from_pretrained, TOKENIZER)
    text_encoder = source.from_pretrained(CLIPTextModel.from_pretrained, TEXT_ENCODER, dtype=torch.float32)
    unet = source.from_pretrained(UNet2DConditionModel.from_pretrained, UNET, torch_dtype=placement.frozen_dtype)
    vae = source.from_pretrained(AutoencoderKL.from_pretrained, VAE, torch_dtype=placement.frozen_dtype)
    scheduler_config = source.from_pretrained(DDPMScheduler.load_config, SCHEDULER)
    check_tokenizer(tokenizer, text_encoder, source)
    text_encoder.to(placement.device).eval()
    for module in (unet, vae):
        module.requires_grad_(False)
        module.to(placement.device).eval()
    return TextToImageParts(source, source.model_id(), tokenizer, text_encoder,
                            unet, vae, dict(scheduler_config))


def image_pipeline_and_kwargs(parts: TextToImageParts, reference_sampling: bool,
                              image_kwargs: dict | None) -> tuple[StableDiffusionPipeline, dict]:
    """Build the text-to-image pipeline (safety checker off) and its call defaults."""
    kwargs = dict(SD_IMAGE_KWARGS)
    if reference_sampling:
        sampler = PNDMScheduler.from_config(parts.scheduler_config)
        kwargs["num_inference_steps"] = REFERENCE_IMAGE_STEPS
    else:
        sampler = DPMSolverMultistepScheduler.from_config(parts.scheduler_config)
    kwargs.update(dict(image_kwargs or {}))
    pipeline = SharedEncoderStableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline, kwargs


def noise_scheduler_for(parts: TextToImageParts) -> DDPMScheduler:
    """Return the training noise schedule of the text-to-image model (betas, timesteps, prediction type)."""
    return DDPMScheduler.from_config(parts.scheduler_config)


def build_animatediff_backend(
    sd_path: str = SD15_HUB_ID,
    motion_adapter_path: str = ANIMATEDIFF_ADAPTER_HUB_ID,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    motion_adapter_revision: str | None = None,
    cache_dir: str | None = None,
    reference_sampling: bool = False,
    image_kwargs: dict | None = None,
    video_kwargs: dict | None = None,
    clip: dict | None = None,
    generation_batch_size: int = 4,
) -> Backend:
    """Load SD 1.5 and an AnimateDiff motion adapter that share one text encoder by construction.

    `image_kwargs` and `video_kwargs` override the pipeline call defaults (size, steps, guidance,
    frames). With `reference_sampling`, few-shot images use PNDM with 50 steps, one image per call,
    and float32 weights.
    """
    log.warning(
        "AnimateDiff videos are unlearned only when they use this backend's SD 1.5 text encoder. Community "
        "DreamBooth checkpoints replace the text encoder, so videos made with them bypass the unlearning."
    )
    placement = resolve_placement(device, dtype, reference_sampling)
    sd_source, adapter_source = resolve_sources(
        dict(spec=sd_path, components=TEXT_TO_IMAGE_COMPONENTS, label="the SD 1.5 text-to-image model",
             option="model.backend.sd_path", hub_id=SD15_HUB_ID, revision=revision, cache_dir=cache_dir),
        dict(spec=motion_adapter_path, components=MOTION_ADAPTER_COMPONENTS, label="the AnimateDiff motion adapter",
             option="model.backend.motion_adapter_path", hub_id=ANIMATEDIFF_ADAPTER_HUB_ID,
             revision=motion_adapter_revision, cache_dir=cache_dir),
    )
    parts = load_text_to_image(sd_source, placement)
    adapter = adapter_source.from_pretrained(MotionAdapter.from_pretrained, MOTION_ADAPTER,
                                             torch_dtype=placement.frozen_dtype)
    image_pipeline, image_call = image_pipeline_and_kwargs(parts, reference_sampling, image_kwargs)

    # from_unet2d copies the image UNet's weights into a new UNet with motion modules, so training
    # (on `parts.unet`) and video generation (on `motion_unet`) use the same spatial weights.
    hide_empty_float32_warning()
    motion_unet = UNetMotionModel.from_unet2d(parts.unet, adapter)
    motion_unet.requires_grad_(False)
    motion_unet.to(placement.device).eval()
    if motion_unet.dtype != placement.frozen_dtype:
        motion_unet.to(dtype=placement.frozen_dtype)
    # The motion modules now live in motion_unet, so the pipeline need not keep the adapter
    # (an optional component), which frees its 0.45 B elements of GPU memory.
    del adapter
    video_pipeline = SharedEncoderAnimateDiffPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=motion_unet,
        motion_adapter=None,
        scheduler=DDIMScheduler.from_config(parts.scheduler_config, **ANIMATEDIFF_SAMPLER),
    )
    if video_pipeline.text_encoder is not parts.text_encoder or video_pipeline.tokenizer is not parts.tokenizer:
        raise RuntimeError("the AnimateDiff pipeline contains a different text encoder or tokenizer object "
                           "than the SD 1.5 pipeline; build both pipelines from the same objects")

    video_model_id = adapter_source.model_id()
    log.info("Loaded AnimateDiff backend: %s + %s on %s (frozen %s)", parts.model_id, video_model_id,
             placement.device, placement.frozen_dtype)
    return Backend(
        name="animatediff",
        model_id=f"{parts.model_id} + {video_model_id}",
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        unet=parts.unet,
        vae=parts.vae,
        noise_scheduler=noise_scheduler_for(parts),
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs=image_call,
        video_kwargs={**ANIMATEDIFF_VIDEO_KWARGS, **dict(video_kwargs or {})},
        clip=dict(clip) if clip else dict(DEFAULT_CLIP),
        device=placement.device,
        generation_batch_size=1 if reference_sampling else int(generation_batch_size),
    )


def build_modelscope_backend(
    sd_path: str = SD21_BASE_HUB_ID,
    video_path: str = MODELSCOPE_HUB_ID,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    video_revision: str | None = None,
    cache_dir: str | None = None,
    allow_encoder_mismatch: bool = False,
    reference_sampling: bool = False,
    image_kwargs: dict | None = None,
    video_kwargs: dict | None = None,
    clip: dict | None = None,
    generation_batch_size: int = 4,
    name: str = "modelscope",
    video_hub_id: str = MODELSCOPE_HUB_ID,
    default_video_kwargs: dict | None = None,
) -> Backend:
    """Load SD 2.1-base and a `TextToVideoSDPipeline` that reads prompts through SD 2.1's text encoder.

    The video model's own text encoder is loaded in float32, compared with SD 2.1-base's (config,
    tokenizer, weight fingerprint) and then replaced. A difference raises `EncoderMismatchError`
    unless `allow_encoder_mismatch` is true, which logs a warning instead.
    """
    placement = resolve_placement(device, dtype, reference_sampling)
    sd_source, video_source = resolve_sources(
        dict(spec=sd_path, components=TEXT_TO_IMAGE_COMPONENTS, label="the SD 2.1-base text-to-image model",
             option="model.backend.sd_path", hub_id=SD21_BASE_HUB_ID, revision=revision, cache_dir=cache_dir),
        dict(spec=video_path, components=TEXT_TO_VIDEO_COMPONENTS, label=f"the {name} text-to-video model",
             option="model.backend.video_path", hub_id=video_hub_id, revision=video_revision, cache_dir=cache_dir),
    )
    parts = load_text_to_image(sd_source, placement)

    video_tokenizer = video_source.from_pretrained(CLIPTokenizer.from_pretrained, TOKENIZER)
    video_encoder = video_source.from_pretrained(CLIPTextModel.from_pretrained, TEXT_ENCODER, dtype=torch.float32)
    check_tokenizer(video_tokenizer, video_encoder, video_source)
    check_shared_encoder(parts.text_encoder, video_encoder, image_source=sd_source.spec,
                         video_source=video_source.spec, allow_mismatch=allow_encoder_mismatch,
                         image_tokenizer=parts.tokenizer, video_tokenizer=video_tokenizer)
    del video_encoder

    video_unet = video_source.from_pretrained(UNet3DConditionModel.from_pretrained, UNET,
                                              torch_dtype=placement.frozen_dtype)
    video_vae = video_source.from_pretrained(AutoencoderKL.from_pretrained, VAE, torch_dtype=placement.frozen_dtype)
    video_scheduler_config = video_source.from_pretrained(DDIMScheduler.load_config, SCHEDULER)
    for module in (video_unet, video_vae):
        module.requires_grad_(False)
        module.to(placement.device).eval()

    image_pipeline, image_call = image_pipeline_and_kwargs(parts, reference_sampling, image_kwargs)
    # The tokenizer is SD 2.1's as well: it produces the token ids the shared encoder was trained on.
    video_pipeline = SharedEncoderTextToVideoSDPipeline(
        vae=video_vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=video_unet,
        scheduler=DPMSolverMultistepScheduler.from_config(dict(video_scheduler_config)),
    )

    video_model_id = video_source.model_id()
    log.info("Loaded %s backend: %s + %s on %s (frozen %s)", name, parts.model_id, video_model_id,
             placement.device, placement.frozen_dtype)
    return Backend(
        name=name,
        model_id=f"{parts.model_id} + {video_model_id}",
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        unet=parts.unet,
        vae=parts.vae,
        noise_scheduler=noise_scheduler_for(parts),
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs=image_call,
        video_kwargs={**(default_video_kwargs or MODELSCOPE_VIDEO_KWARGS), **dict(video_kwargs or {})},
        clip=dict(clip) if clip else dict(DEFAULT_CLIP),
        device=placement.device,
        generation_batch_size=1 if reference_sampling else int(generation_batch_size),
    )


def build_zeroscope_backend(sd_path: str = SD21_BASE_HUB_ID, video_path: str = ZEROSCOPE_HUB_ID,
                            **kwargs: Any) -> Backend:
    """Load SD 2.1-base and Zeroscope v2 576w; same as `build_modelscope_backend` with 576x320, 24 frames."""
    kwargs.setdefault("name", "zeroscope")
    kwargs.setdefault("video_hub_id", ZEROSCOPE_HUB_ID)
    kwargs.setdefault("default_video_kwargs", ZEROSCOPE_VIDEO_KWARGS)
    return build_modelscope_backend(sd_path=sd_path, video_path=video_path, **kwargs)
