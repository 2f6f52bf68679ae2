"""Tiny random-weight SD 2.x + ModelScope/Zeroscope backends of the real classes: smoke tests only.

They mirror the real SD 2.1-base + `TextToVideoSDPipeline` backends at a size that runs in seconds on
a CPU. The `CLIPTextModel` uses GELU, the OpenCLIP text tower's activation (SD 1.x uses quick-GELU).
The tokenizer pads with "!" (token id 0) as SD 2.x's does. The 2D UNet has linear projections in its
transformer blocks, and a `UNet3DConditionModel` drives the video pipeline. The video
model gets its own text encoder, which must pass the same shared-encoder check as the real backends
before SD 2.x's encoder replaces it. Outputs are noise and the metrics mean nothing.
"""

from __future__ import annotations

import logging

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.backends.pretrained import (
    SharedEncoderStableDiffusionPipeline,
    SharedEncoderTextToVideoSDPipeline,
)
from t2v_unlearn.backends.shared_encoder import check_shared_encoder
from t2v_unlearn.backends.tiny import SD1_SCHEDULE, tiny_vae
from t2v_unlearn.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

# SD 2.1-base and ModelScope train with the same scaled-linear schedule as SD 1.x.
SD2_SCHEDULE = SD1_SCHEDULE
# The clip spec of the tiny backends: a random open_clip model that ships with this package.
TINY_CLIP_MODEL = "t2v-unlearn-tiny-clip"
# The noise schedule in the scheduler configs of stabilityai/stable-diffusion-x4-upscaler: DDIM with
# v-prediction samples, and DDPM with epsilon adds noise to the low-resolution input.
UPSCALER_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                     "beta_schedule": "scaled_linear"}
UPSCALER_MAX_NOISE_LEVEL = 350


def tiny_sd2_tokenizer() -> CLIPTokenizer:
    """Return the CLIP tokenizer padding with "!" (id 0), as SD 2.x's `special_tokens_map.json` sets."""
    tokenizer = build_clip_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def tiny_sd2_text_encoder(hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    """Return a 2-layer GELU CLIP text model with SD 2.1's legacy special-token ids (bos 0, eos 2, pad 1).

    With eos_token_id 2, transformers pools at the argmax of the input ids, i.e. at `<|endoftext|>`.
    """
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def tiny_sd2_unet(cross_attention_dim: int = 32, sample_size: int = 16, seed: int = 0) -> UNet2DConditionModel:
    # As in SD 2.x, attention_head_dim lists the head count per block and the transformer blocks
    # project with linear layers instead of 1x1 convolutions.
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
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    ).eval()


def tiny_unet3d(cross_attention_dim: int = 32, sample_size: int = 16, seed: int = 0) -> UNet3DConditionModel:
    # attention_head_dim is the head width here (ModelScope's 64 gives channels // 64 heads).
    torch.manual_seed(seed)
    return UNet3DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def tiny_sd2_pipeline(seed: int = 0, image_size: int = 32, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """Return a random SD 2.x-like text-to-image pipeline (seeds seed..seed+2), sampling with DPM-Solver++."""
    return StableDiffusionPipeline(
        vae=tiny_vae(seed=seed + 1),
        text_encoder=tiny_sd2_text_encoder(seed=seed),
        tokenizer=tiny_sd2_tokenizer(),
        unet=tiny_sd2_unet(sample_size=image_size // 2, seed=seed + 2),
        scheduler=DPMSolverMultistepScheduler(**SD2_SCHEDULE, steps_offset=1, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_text_to_video_pipeline(seed: int = 0, text_encoder_seed: int | None = None, sample_size: int = 16,
                                prediction_type: str = "epsilon") -> TextToVideoSDPipeline:
    """Return a random ModelScope-like pipeline; its own text encoder comes from `text_encoder_seed`.

    With the default `text_encoder_seed` (= `seed`), that encoder equals the one of
    `tiny_sd2_pipeline(seed)`, so the shared-encoder check passes.
    """
    text_encoder_seed = seed if text_encoder_seed is None else text_encoder_seed
    return TextToVideoSDPipeline(
        vae=tiny_vae(seed=seed + 1),
        text_encoder=tiny_sd2_text_encoder(seed=text_encoder_seed),
        tokenizer=tiny_sd2_tokenizer(),
        unet=tiny_unet3d(sample_size=sample_size, seed=seed + 3),
        scheduler=DPMSolverMultistepScheduler(**SD2_SCHEDULE, steps_offset=1, prediction_type=prediction_type),
    )


def build_tiny_sd2_video_backend(
    name: str = "modelscope_tiny",
    seed: int = 0,
    video_text_encoder_seed: int | None = None,
    allow_encoder_mismatch: bool = False,
    prediction_type: str = "epsilon",
    image_size: int = 32,
    video_height: int = 32,
    video_width: int = 32,
    num_frames: int = 4,
    num_inference_steps: int = 4,
    guidance_scale: float = 5.0,
    device: str = "cpu",
    generation_batch_size: int = 4,
) -> Backend:
    """Build a random SD 2.x-like text-to-image model and a `TextToVideoSDPipeline` sharing its encoder.

    The video pipeline is built with its own encoder (`video_text_encoder_seed`, default `seed`),
    which is compared with the text-to-image encoder and then replaced by it, as the real ModelScope
    and Zeroscope backends do. `prediction_type` "v_prediction" trains and samples with
    v-prediction, as the 768-pixel SD 2.x models do.
    """
    if prediction_type not in {"epsilon", "v_prediction"}:
        raise ValueError(f"prediction_type={prediction_type!r} is invalid; pass epsilon or v_prediction")
    image = tiny_sd2_pipeline(seed=seed, image_size=image_size, prediction_type=prediction_type)
    video = tiny_text_to_video_pipeline(seed=seed, text_encoder_seed=video_text_encoder_seed,
                                        sample_size=max(video_height, video_width) // 2,
                                        prediction_type=prediction_type)
    check_shared_encoder(image.text_encoder, video.text_encoder, image_source=f"{name} text-to-image (seed {seed})",
                         video_source=f"{name} text-to-video", allow_mismatch=allow_encoder_mismatch,
                         image_tokenizer=image.tokenizer, video_tokenizer=video.tokenizer)

    image_pipeline = SharedEncoderStableDiffusionPipeline(
        vae=image.vae, text_encoder=image.text_encoder, tokenizer=image.tokenizer, unet=image.unet,
        scheduler=image.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    video_pipeline = SharedEncoderTextToVideoSDPipeline(
        vae=video.vae, text_encoder=image.text_encoder, tokenizer=image.tokenizer, unet=video.unet,
        scheduler=video.scheduler,
    )
    for module in (image.vae, image.unet, video.vae, video.unet, image.text_encoder):
        module.requires_grad_(False)
        module.to(device)

    encoder_seed = seed if video_text_encoder_seed is None else video_text_encoder_seed
    return Backend(
        name=name,
        model_id=f"t2v_unlearn/{name}@seed{seed}-encoder{encoder_seed}-{prediction_type}",
        tokenizer=image.tokenizer,
        text_encoder=image.text_encoder,
        unet=image.unet,
        vae=image.vae,
        noise_scheduler=DDPMScheduler(**SD2_SCHEDULE, prediction_type=prediction_type),
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs=dict(height=image_size, width=image_size, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale),
        video_kwargs=dict(height=video_height, width=video_width, num_frames=num_frames,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale),
        clip={"model_name": TINY_CLIP_MODEL, "pretrained": None, "seed": seed},
        device=torch.device(device),
        generation_batch_size=generation_batch_size,
    )


def tiny_upscaler_unet(cross_attention_dim: int = 32, sample_size: int = 32, seed: int = 0) -> UNet2DConditionModel:
    """Return a random UNet with the x4 upscaler's architecture flags at a tiny size.

    As in the real one: 7 input channels (4 latent + 3 low-resolution RGB), the noise level embedded
    as a class label (`num_class_embeds` 1000), linear projections, and no self-attention in the
    first cross-attention down blocks (`only_cross_attention`). The last down block, the first up
    block and the mid block keep self-attention.
    """
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=7,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, False),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        use_linear_projection=True,
        num_class_embeds=1000,
        norm_num_groups=8,
    ).eval()


def tiny_upscaler_vae(seed: int = 0) -> AutoencoderKL:
    """Return a random 3-block `AutoencoderKL`, whose decoder enlarges latents 4x like the x4 upscaler's."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.08333,
    ).eval()


def tiny_upscale_pipeline(seed: int = 0, text_encoder_seed: int | None = None) -> StableDiffusionUpscalePipeline:
    """Return a random x4 upscaler of the real classes, with a text encoder from `text_encoder_seed`.

    With the default `text_encoder_seed` (= `seed`), that encoder equals the SD 2.x encoder of
    `build_tiny_sd2_video_backend(seed=seed)`, so the unlearned encoder of a `modelscope_tiny` run
    with that seed passes the upscaler's base-fingerprint check.
    """
    text_encoder_seed = seed if text_encoder_seed is None else text_encoder_seed
    return StableDiffusionUpscalePipeline(
        vae=tiny_upscaler_vae(seed=seed + 1),
        text_encoder=tiny_sd2_text_encoder(seed=text_encoder_seed),
        tokenizer=tiny_sd2_tokenizer(),
        unet=tiny_upscaler_unet(seed=seed + 2),
        low_res_scheduler=DDPMScheduler(**UPSCALER_SCHEDULE, clip_sample=True, prediction_type="epsilon"),
        scheduler=DDIMScheduler(**UPSCALER_SCHEDULE, prediction_type="v_prediction", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        max_noise_level=UPSCALER_MAX_NOISE_LEVEL,
    )
