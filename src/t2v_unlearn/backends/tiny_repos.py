"""Write tiny random-weight repositories laid out like the Hub ones, to smoke-test the real loaders.

Each folder is what `save_pretrained` writes for the real model's pipeline class (`model_index.json`
plus one subfolder per component), so `build_animatediff_backend`, `build_modelscope_backend` and the
LaVie backend's upscaler (`model.backend.upscale.path`) load it exactly as they load a downloaded
model, offline and in seconds:

    python -m t2v_unlearn.backends.tiny_repos /tmp/tiny_repos
    HF_HUB_OFFLINE=1 python train.py model=animatediff model.backend.sd_path=/tmp/tiny_repos/sd15 \
        model.backend.motion_adapter_path=/tmp/tiny_repos/motion_adapter model.backend.device=cpu \
        '++model.backend.image_kwargs={height:32,width:32,num_inference_steps:2}' \
        '++model.backend.video_kwargs={height:32,width:32,num_frames:4,num_inference_steps:2}' \
        model.backend.clip.model_name=t2v-unlearn-tiny-clip model.backend.clip.pretrained=null \
        +model.backend.clip.seed=0 shots=2 epochs=1 logger=none

The tiny CLIP model ships with the package, so nothing downloads.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

from t2v_unlearn.backends.tiny import (
    SD1_SCHEDULE,
    tiny_motion_adapter,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from t2v_unlearn.backends.tiny_sd2 import (
    SD2_SCHEDULE,
    tiny_sd2_pipeline,
    tiny_text_to_video_pipeline,
    tiny_upscale_pipeline,
)
from t2v_unlearn.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

# The schedulers the real repositories ship: PNDM for SD 1.5 and SD 2.1-base, DDIM for ModelScope.
PNDM_SETTINGS = dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
DDIM_SETTINGS = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def save_tiny_sd15_repo(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a random SD 1.5-like `StableDiffusionPipeline` folder (safety checker omitted)."""
    pipeline = StableDiffusionPipeline(
        vae=tiny_vae(seed=seed + 1),
        text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=build_clip_tokenizer(),
        unet=tiny_unet(sample_size=image_size // 2, seed=seed + 2),
        scheduler=PNDMScheduler(**SD1_SCHEDULE, **PNDM_SETTINGS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return Path(folder)


def save_tiny_motion_adapter(folder: str | Path, seed: int = 0) -> Path:
    """Write a random `MotionAdapter` folder (config.json and weights at the top, as on the Hub)."""
    tiny_motion_adapter(seed=seed).save_pretrained(folder)
    return Path(folder)


def save_tiny_sd21_repo(folder: str | Path, seed: int = 0, image_size: int = 32,
                        prediction_type: str = "epsilon") -> Path:
    """Write a random SD 2.1-base-like `StableDiffusionPipeline` folder with its PNDM scheduler."""
    pipeline = tiny_sd2_pipeline(seed=seed, image_size=image_size, prediction_type=prediction_type)
    pipeline.scheduler = PNDMScheduler(**SD2_SCHEDULE, **PNDM_SETTINGS, prediction_type=prediction_type)
    pipeline.save_pretrained(folder)
    return Path(folder)


def save_tiny_text_to_video_repo(folder: str | Path, seed: int = 0, text_encoder_seed: int | None = None,
                                 sample_size: int = 16, prediction_type: str = "epsilon") -> Path:
    """Write a random ModelScope-like `TextToVideoSDPipeline` folder with its DDIM scheduler.

    With the default `text_encoder_seed` (= `seed`), its text encoder equals that of
    `save_tiny_sd21_repo(seed=seed)`; another seed gives a mismatched pair.
    """
    pipeline = tiny_text_to_video_pipeline(seed=seed, text_encoder_seed=text_encoder_seed,
                                           sample_size=sample_size, prediction_type=prediction_type)
    pipeline.scheduler = DDIMScheduler(**SD2_SCHEDULE, **DDIM_SETTINGS, prediction_type=prediction_type)
    pipeline.save_pretrained(folder)
    return Path(folder)


def save_tiny_upscaler_repo(folder: str | Path, seed: int = 0, text_encoder_seed: int | None = None) -> Path:
    """Write a random `StableDiffusionUpscalePipeline` folder laid out like stable-diffusion-x4-upscaler.

    With the default `text_encoder_seed` (= `seed`), its text encoder equals that of
    `save_tiny_sd21_repo(seed=seed)`.
    """
    tiny_upscale_pipeline(seed=seed, text_encoder_seed=text_encoder_seed).save_pretrained(folder)
    return Path(folder)


def save_all(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the repositories sd15, motion_adapter, sd21_base, modelscope and sd_x4_upscaler under `root`."""
    root = Path(root)
    return {
        "sd15": save_tiny_sd15_repo(root / "sd15", seed=seed),
        "motion_adapter": save_tiny_motion_adapter(root / "motion_adapter", seed=seed + 3),
        "sd21_base": save_tiny_sd21_repo(root / "sd21_base", seed=seed),
        "modelscope": save_tiny_text_to_video_repo(root / "modelscope", seed=seed),
        "sd_x4_upscaler": save_tiny_upscaler_repo(root / "sd_x4_upscaler", seed=seed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path,
                        help="folder to write sd15/, motion_adapter/, sd21_base/, modelscope/, sd_x4_upscaler/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, folder in save_all(args.root, args.seed).items():
        log.info("Wrote tiny %s repository to %s", name, folder)


if __name__ == "__main__":
    main()
