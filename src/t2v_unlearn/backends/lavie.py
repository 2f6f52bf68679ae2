"""SD 1.5 → LaVie: the published pairing, and its tiny random twin.

LaVie's base model reads prompts through SD 1.4's CLIP ViT-L/14 text encoder, which SD 1.5 ships
unchanged, so the video pipeline here is built on the SD 1.5 tokenizer, text encoder and VAE
objects, and the unlearned encoder reaches it by construction.

LaVie's later stages: the interpolation stage reads prompts through the same SD 1.x encoder, so
the unlearning carries over. The super-resolution stage runs Stable Diffusion's x4 upscaler, whose
OpenCLIP-H encoder also reads the prompt, so the concept can leak back there. This backend renders
the base stage, and with `upscale.enabled` it adds a super-resolution step: diffusers' image x4
upscaler on each frame (not LaVie's VSR model, which adds temporal layers), whose prompt mode
controls that leak (see `upscaler`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.backends.loading import TEXT_TO_IMAGE_COMPONENTS, ModelLoadError
from t2v_unlearn.backends.pretrained import (
    DEFAULT_CLIP,
    SD15_HUB_ID,
    image_pipeline_and_kwargs,
    load_text_to_image,
    noise_scheduler_for,
    resolve_placement,
    resolve_sources,
)
from t2v_unlearn.backends.tiny import SD1_SCHEDULE, tiny_sd1_image_pipeline
from t2v_unlearn.backends.upscaler import (
    UpscaleSettings,
    build_tiny_video_upscaler,
    load_video_upscaler,
    resolve_upscaler_source,
    unlearned_encoder_problems,
)
from t2v_unlearn.models.lavie import (
    LaViePipeline,
    LaVieUNet3DConditionModel,
    lavie_scheduler,
    lavie_unet_from_state_dict,
    load_lavie_checkpoint,
)

log = logging.getLogger(__name__)

# LaVie's base sampling (configs/sample.yaml): 16 frames of 320x512, DDPM with 50 steps, guidance 7.5.
LAVIE_VIDEO_KWARGS = dict(height=320, width=512, num_frames=16, num_inference_steps=50, guidance_scale=7.5)
LAVIE_DOWNLOAD_HINT = (
    "download lavie_base.pt (the LaVie README points to the Vchitect/LaVie repository on the Hugging Face Hub, "
    "e.g. `huggingface-cli download Vchitect/LaVie lavie_base.pt --local-dir ./lavie`) and pass "
    "model.backend.lavie_path=./lavie/lavie_base.pt, or a folder written by scripts/convert_lavie_checkpoint.py"
)


def load_lavie_unet(path: str | Path, dtype: torch.dtype = torch.float32,
                    config: dict | str | None = None) -> LaVieUNet3DConditionModel:
    """Load LaVie's UNet from a `.pt` checkpoint (safe unpickling) or a converted safetensors folder.

    A `.pt` file holds weights only: `config` (a dict or a JSON file) gives the architecture, and
    None means LaVie's base model.
    """
    path = Path(path).expanduser()
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).expanduser().read_text())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"LaVie UNet folder '{path}' has no config.json; {LAVIE_DOWNLOAD_HINT}")
        unet = LaVieUNet3DConditionModel.from_pretrained(path, torch_dtype=dtype)
    elif path.is_file():
        unet = lavie_unet_from_state_dict(load_lavie_checkpoint(path), config=config).to(dtype)
    else:
        raise ModelLoadError(f"LaVie checkpoint '{path}' not found; {LAVIE_DOWNLOAD_HINT}")
    return unet.requires_grad_(False).eval()


def build_lavie_backend(
    sd_path: str = SD15_HUB_ID,
    lavie_path: str = "lavie/lavie_base.pt",
    lavie_config: dict | str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    cache_dir: str | None = None,
    reference_sampling: bool = False,
    image_kwargs: dict | None = None,
    video_kwargs: dict | None = None,
    clip: dict | None = None,
    generation_batch_size: int = 4,
    upscale: dict | None = None,
) -> Backend:
    """Load SD 1.5 (local folder or Hub id) and LaVie's base UNet on the same text encoder.

    `upscale` is the `upscale:` block of the config (see `upscaler.UpscaleSettings`). When it is
    enabled, `generate_videos` upscales every video 4x with the x4 upscaler.
    """
    upscale_settings = UpscaleSettings.from_options(upscale)
    placement = resolve_placement(device, dtype, reference_sampling)
    problems = []
    if not Path(lavie_path).expanduser().exists():
        problems.append(f"LaVie checkpoint '{lavie_path}' not found; {LAVIE_DOWNLOAD_HINT}")
    try:
        (sd_source,) = resolve_sources(
            dict(spec=sd_path, components=TEXT_TO_IMAGE_COMPONENTS, label="the SD 1.5 text-to-image model",
                 option="model.backend.sd_path", hub_id=SD15_HUB_ID, revision=revision, cache_dir=cache_dir))
    except ModelLoadError as error:
        problems.insert(0, str(error))
    upscaler_source = None
    if upscale_settings.enabled:
        try:
            upscaler_source = resolve_upscaler_source(upscale_settings, cache_dir)
        except ModelLoadError as error:
            problems.append(str(error))
        problems += unlearned_encoder_problems(upscale_settings)
    if problems:
        raise ModelLoadError("\n\n".join(problems))

    parts = load_text_to_image(sd_source, placement)
    image_pipeline, image_call = image_pipeline_and_kwargs(parts, reference_sampling, image_kwargs)
    video_unet = load_lavie_unet(lavie_path, placement.frozen_dtype, lavie_config).to(placement.device)
    video_pipeline = LaViePipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=video_unet, scheduler=lavie_scheduler())
    log.info("Loaded LaVie backend: %s + %s on %s (frozen %s)", parts.model_id, lavie_path, placement.device,
             placement.frozen_dtype)
    upscaler = None
    if upscaler_source is not None:
        upscaler = load_video_upscaler(upscale_settings, upscaler_source, placement.device, placement.frozen_dtype,
                                       parts.text_encoder)
    return Backend(
        name="lavie",
        model_id=f"{parts.model_id} + lavie:{Path(lavie_path).name}",
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        unet=parts.unet,
        vae=parts.vae,
        noise_scheduler=noise_scheduler_for(parts),
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs=image_call,
        video_kwargs={**LAVIE_VIDEO_KWARGS, **dict(video_kwargs or {})},
        clip=dict(clip) if clip else dict(DEFAULT_CLIP),
        device=placement.device,
        generation_batch_size=1 if reference_sampling else int(generation_batch_size),
        video_postprocess=upscaler,
    )


def build_tiny_lavie_backend(
    seed: int = 0,
    image_size: int = 32,
    num_frames: int = 8,
    num_inference_steps: int = 4,
    guidance_scale: float = 5.0,
    device: str = "cpu",
    generation_batch_size: int = 4,
    upscale: dict | None = None,
) -> Backend:
    """SMOKE TEST: tiny random SD 1.x components and a LaVie UNet inflated from the tiny image UNet.

    With `upscale.enabled`, a tiny random x4 upscaler of the real classes upscales every video. Its
    text encoder is the SD 2.x encoder of `modelscope_tiny` with the same seed.
    """
    from diffusers import DDPMScheduler

    upscale_settings = UpscaleSettings.from_options(upscale)
    # One head per block: LaVie rotates the first 32 channels of each temporal head, so heads must be
    # at least 32 wide.
    image_pipeline = tiny_sd1_image_pipeline(seed=seed, image_size=image_size, heads=1)
    tokenizer, text_encoder = image_pipeline.tokenizer, image_pipeline.text_encoder
    vae, unet = image_pipeline.vae, image_pipeline.unet
    torch.manual_seed(seed + 3)
    video_unet = LaVieUNet3DConditionModel.from_unet2d(unet)
    # Random temporal output projections, so the temporal layers take part in the smoke test (the
    # fresh init zeroes them, which would make the video model the image model frame by frame).
    for name, parameter in video_unet.named_parameters():
        if "attn_temp.to_out" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    video_pipeline = LaViePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=video_unet,
                                   scheduler=lavie_scheduler())
    for module in (vae, unet, video_unet, text_encoder):
        module.requires_grad_(False)
        module.to(device)
    common = dict(height=image_size, width=image_size, num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale)
    upscaler = None
    if upscale_settings.enabled:
        upscaler = build_tiny_video_upscaler(upscale_settings, seed, text_encoder, device)
    return Backend(
        name="lavie_tiny",
        model_id=f"t2v_unlearn/lavie_tiny@seed{seed}",
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        noise_scheduler=DDPMScheduler(**SD1_SCHEDULE),
        image_pipeline=image_pipeline,
        video_pipeline=video_pipeline,
        image_kwargs=dict(common),
        video_kwargs=dict(common, num_frames=num_frames),
        clip={"model_name": "t2v-unlearn-tiny-clip", "pretrained": None, "seed": seed},
        device=torch.device(device),
        generation_batch_size=generation_batch_size,
        video_postprocess=upscaler,
    )
