"""Tiny random-weight backends of the real classes: smoke tests, not results.

Each builds the components of a real backend (SD 1.x + AnimateDiff here) at a size that runs in
seconds on a CPU, from a seed. The outputs are noise-like images; the judge decisions on them carry
no meaning. They exist so that the whole job, every output and every error path can be exercised
without downloading weights.
"""

from __future__ import annotations

import logging

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

# A scaled-linear schedule as in SD 1.x (1000 training steps, betas 0.00085 to 0.012).
SD1_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def tiny_text_encoder(hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 16, seed: int = 0, heads: int = 8) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        # SD 1.x's config field: the number of heads, not their width.
        attention_head_dim=heads,
        norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def tiny_motion_adapter(seed: int = 0) -> MotionAdapter:
    torch.manual_seed(seed)
    return MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
        use_motion_mid_block=False,
    )


def tiny_sd1_image_pipeline(seed: int = 0, image_size: int = 32, heads: int = 8) -> StableDiffusionPipeline:
    """Build a random SD 1.x-style text-to-image pipeline (DDIM sampler, no safety checker).

    Its text encoder, VAE and UNet use seeds `seed`, `seed + 1` and `seed + 2`.
    """
    return StableDiffusionPipeline(
        vae=tiny_vae(seed=seed + 1),
        text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=build_clip_tokenizer(),
        unet=tiny_unet(sample_size=image_size // 2, seed=seed + 2, heads=heads),
        scheduler=DDIMScheduler(**SD1_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_animatediff_backend(
    seed: int = 0,
    image_size: int = 32,
    num_frames: int = 8,
    num_inference_steps: int = 4,
    guidance_scale: float = 5.0,
    device: str = "cpu",
    generation_batch_size: int = 4,
) -> Backend:
    """Build SD 1.x-style text-to-image components and an AnimateDiff video pipeline, all random."""
    image_pipeline = tiny_sd1_image_pipeline(seed=seed, image_size=image_size)
    tokenizer, text_encoder = image_pipeline.tokenizer, image_pipeline.text_encoder
    vae, unet, sampler = image_pipeline.vae, image_pipeline.unet, image_pipeline.scheduler
    adapter = tiny_motion_adapter(seed=seed + 3)
    noise_scheduler = DDPMScheduler(**SD1_SCHEDULE)
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter).eval()
    video_pipeline = AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=motion_unet,
        motion_adapter=adapter,
        scheduler=DDIMScheduler.from_config(sampler.config),
    )
    for module in (vae, unet, motion_unet, text_encoder):
        module.requires_grad_(False)
        module.to(device)

    common = dict(height=image_size, width=image_size, num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale)
    return Backend(
        name="animatediff_tiny",
        model_id=f"t2v_unlearn/animatediff_tiny@seed{seed}",
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        noise_scheduler=noise_scheduler,
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs=dict(common),
        video_kwargs=dict(common, num_frames=num_frames),
        clip={"model_name": "t2v-unlearn-tiny-clip", "pretrained": None, "seed": seed},
        device=torch.device(device),
        generation_batch_size=generation_batch_size,
    )
