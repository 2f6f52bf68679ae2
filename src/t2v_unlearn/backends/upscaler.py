"""A super-resolution stage for generated videos: Stable Diffusion's x4 upscaler, frame by frame.

LaVie's super-resolution stage reads the prompt through the x4 upscaler's own text encoder (the
OpenCLIP ViT-H text tower, as in SD 2.x), not through the SD 1.x encoder that the unlearning
changes, so an erased concept can come back there. LaVie's own VSR model adds temporal layers to the
upscaler's UNet; this module instead runs diffusers' image `StableDiffusionUpscalePipeline` on each
frame. The prompt mode decides what the upscaler's encoder reads:

- `empty`: "" for every frame, so nothing about the concept reaches the upscaler through the text.
- `unlearned`: the prompt, through an OpenCLIP-H encoder unlearned by a run with an SD 2.x model
  (its `text_encoder/` folder). Videos rendered with the video model's original encoder are
  upscaled with the upscaler's original encoder, and videos rendered with any other encoder with
  the unlearned one, so a before/after comparison changes both encoders together.
- `original`: the prompt, through the upscaler's own encoder. This is the leak, kept to measure it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from t2v_unlearn.backends.bundle import fingerprint_module, to_uint8
from t2v_unlearn.backends.loading import (
    SCHEDULER,
    TEXT_ENCODER,
    TOKENIZER,
    UNET,
    VAE,
    Component,
    ModelLoadError,
    ModelSource,
    check_tokenizer,
    resolve_source,
)
from t2v_unlearn.backends.pretrained import PromptEmbedsInUNetDtype
from t2v_unlearn.backends.shared_encoder import EncoderMismatchError, encoder_config
from t2v_unlearn.export import BASE_FINGERPRINT_KEY, PROVENANCE_FILE

log = logging.getLogger(__name__)

UPSCALER_HUB_ID = "stabilityai/stable-diffusion-x4-upscaler"
OPTION = "model.backend.upscale"
PROMPT_MODES = ("empty", "unlearned", "original")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# LaVie's super-resolution sampling (vsr/configs/sample.yaml and vsr/sample.py of Vchitect/LaVie):
# DDIM, 50 steps, guidance 5, noise level 50, negative prompt "blur, worst quality".
LAVIE_NEGATIVE_PROMPT = "blur, worst quality"

LOW_RES_SCHEDULER = Component("low_res_scheduler", "low_res_scheduler", (("scheduler_config.json",),),
                              needs_weights=False)
# model_index.json stores the pipeline's `max_noise_level`.
MODEL_INDEX = Component("model_index", "", (("model_index.json",),), needs_weights=False)
UPSCALER_COMPONENTS = (TOKENIZER, TEXT_ENCODER, UNET, VAE, SCHEDULER, LOW_RES_SCHEDULER, MODEL_INDEX)
UNLEARNED_ENCODER = Component("unlearned text_encoder", "", (("config.json",),))

UNLEARNED_ENCODER_HINT = (
    "Pass the text_encoder/ folder of a finished run with an SD 2.x model, whose encoder is OpenCLIP-H like "
    "the upscaler's: `python train.py model=modelscope concept=...` writes "
    "outputs/modelscope/<concepts>/<time>/text_encoder/."
)


class UpscalePipeline(PromptEmbedsInUNetDtype, StableDiffusionUpscalePipeline):
    """`StableDiffusionUpscalePipeline` whose prompt embeddings take the UNet's dtype.

    The text encoders stay float32 because the fingerprint check compares float32 weights, while the
    UNet may be float16. Without the cast, diffusers gives the latents the encoder's dtype.
    """


@dataclass(frozen=True)
class UpscaleSettings:
    """The `upscale:` block of a LaVie model config."""

    enabled: bool = False
    # Hub id or local folder of a diffusers StableDiffusionUpscalePipeline repository.
    path: str = UPSCALER_HUB_ID
    revision: str | None = None
    prompt_mode: str = "empty"
    # Unlearned OpenCLIP-H `text_encoder/` folder, read only with prompt_mode=unlearned.
    encoder_path: str | None = None
    allow_encoder_mismatch: bool = False
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    # Noise added to the low-resolution frames, as a timestep of the low-resolution schedule.
    noise_level: int = 50
    negative_prompt: str | None = LAVIE_NEGATIVE_PROMPT
    # None keeps the upscaler's scheduler config. LaVie's VSR stage sets "linear".
    beta_schedule: str | None = None
    # Frames per pipeline call. Memory grows with it, because each output frame has 16x the input's pixels.
    frames_per_batch: int = 4

    @classmethod
    def from_options(cls, options: dict | None) -> UpscaleSettings:
        """Build and validate the settings from a config dict. None or {} means disabled."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{OPTION} has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        settings = cls(**options)
        if settings.enabled:
            settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first invalid option and how to fix it."""
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"{OPTION}.prompt_mode={self.prompt_mode!r} is invalid; pass one of {', '.join(PROMPT_MODES)}")
        if self.prompt_mode == "unlearned" and not self.encoder_path:
            raise ValueError(f"{OPTION}.prompt_mode=unlearned needs {OPTION}.encoder_path. {UNLEARNED_ENCODER_HINT}")
        if self.prompt_mode != "unlearned" and self.encoder_path:
            log.warning("%s.encoder_path=%s is ignored because prompt_mode=%s", OPTION, self.encoder_path,
                        self.prompt_mode)
        for name in ("num_inference_steps", "frames_per_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{OPTION}.{name}={value!r} is invalid; pass an integer of at least 1")
        if not isinstance(self.noise_level, int) or self.noise_level < 0:
            raise ValueError(f"{OPTION}.noise_level={self.noise_level!r} is invalid; pass an integer from 0 "
                             f"to the upscaler's max_noise_level (350 for {UPSCALER_HUB_ID})")
        if self.guidance_scale < 0:
            raise ValueError(f"{OPTION}.guidance_scale={self.guidance_scale} is invalid; pass 0 or more "
                             "(1 or less turns classifier-free guidance off)")
        if self.beta_schedule is not None and self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"{OPTION}.beta_schedule={self.beta_schedule!r} is invalid; pass null (the "
                             f"upscaler's own) or one of {', '.join(BETA_SCHEDULES)}")
        if self.prompt_mode == "original":
            log.warning("%s.prompt_mode=original: the upscaler's own text encoder reads the prompt, so an "
                        "unlearned concept can come back in the upscaled videos", OPTION)


class VideoUpscaler:
    """Post-processing step (`Backend.video_postprocess`) that runs the x4 upscaler on each video frame.

    With prompt mode `unlearned`, `video_text_encoder` is the video model's encoder as loaded: videos
    rendered by an encoder with the same weights (same `fingerprint_module`) are upscaled with the
    upscaler's original encoder, all others with `unlearned_encoder`.
    """

    def __init__(self, pipeline: StableDiffusionUpscalePipeline, settings: UpscaleSettings,
                 unlearned_encoder: torch.nn.Module | None = None,
                 video_text_encoder: torch.nn.Module | None = None,
                 unlearned_provenance: dict | None = None):
        if settings.prompt_mode == "unlearned" and (unlearned_encoder is None or video_text_encoder is None):
            raise ValueError("prompt_mode=unlearned needs the unlearned encoder and the video model's encoder")
        _check_noise_level(settings, pipeline.config.max_noise_level)
        self.pipeline = pipeline
        self.settings = settings
        self.original_encoder = pipeline.text_encoder
        self.unlearned_encoder = unlearned_encoder
        self.unlearned_provenance = unlearned_provenance or {}
        self.video_encoder_fingerprint = (fingerprint_module(video_text_encoder)
                                          if settings.prompt_mode == "unlearned" else None)
        pipeline.set_progress_bar_config(disable=True)

    @property
    def scale_factor(self) -> int:
        """Ratio of output to input side length: 4 for the x4 upscaler (a 3-block VAE)."""
        return int(self.pipeline.vae_scale_factor)

    def encoder_for(self, video_text_encoder: torch.nn.Module) -> tuple[torch.nn.Module, str]:
        """Return the upscaler's text encoder for videos rendered by `video_text_encoder`, and its name."""
        if self.settings.prompt_mode != "unlearned":
            return self.original_encoder, "original"
        if fingerprint_module(video_text_encoder) == self.video_encoder_fingerprint:
            return self.original_encoder, "original"
        return self.unlearned_encoder, "unlearned"

    @torch.no_grad()
    def __call__(self, videos: np.ndarray, prompts: list[str], seeds: list[int],
                 video_text_encoder: torch.nn.Module) -> np.ndarray:
        """Upscale uint8 videos `(n, frames, h, w, 3)` to `(n, frames, 4h, 4w, 3)`.

        Every frame of a video starts from noise seeded with that video's seed, so the output of a
        video depends only on its frames, prompt and seed, and its frames share one noise pattern.
        """
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
            raise ValueError(f"expected uint8 videos of shape (n, frames, height, width, 3), got "
                             f"{videos.dtype} {videos.shape}")
        if not len(videos) == len(prompts) == len(seeds):
            raise ValueError(f"got {len(videos)} videos, {len(prompts)} prompts and {len(seeds)} seeds; "
                             "pass one prompt and one seed per video")
        height, width = videos.shape[2:4]
        if height % self.scale_factor or width % self.scale_factor:
            raise ValueError(f"video frames of {height}x{width} pixels cannot be upscaled: the upscaler needs "
                             f"sides that are multiples of {self.scale_factor}; change the video height and width")

        encoder, encoder_name = self.encoder_for(video_text_encoder)
        log.info("Upscaling %d video(s) %dx with prompt_mode=%s and the upscaler's %s text encoder",
                 len(videos), self.scale_factor, self.settings.prompt_mode, encoder_name)
        installed_encoder = self.pipeline.text_encoder
        self.pipeline.text_encoder = encoder
        try:
            upscaled = [self.upscale_video(video, prompt, seed)
                        for video, prompt, seed in tqdm(list(zip(videos, prompts, seeds)), desc="upscale",
                                                        unit="video", leave=False)]
        finally:
            self.pipeline.text_encoder = installed_encoder
        return np.stack(upscaled)

    def upscale_video(self, video: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        """Upscale the uint8 frames `(frames, h, w, 3)` of one video, `frames_per_batch` at a time."""
        settings = self.settings
        text = "" if settings.prompt_mode == "empty" else prompt
        frames = video.astype(np.float32) / 255.0
        chunks = []
        for start in range(0, len(frames), settings.frames_per_batch):
            batch = frames[start : start + settings.frames_per_batch]
            count = len(batch)
            output = self.pipeline(
                prompt=[text] * count,
                image=batch,
                negative_prompt=None if settings.negative_prompt is None else [settings.negative_prompt] * count,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                noise_level=settings.noise_level,
                generator=[torch.Generator("cpu").manual_seed(int(seed)) for _ in range(count)],
                output_type="np",
            )
            chunks.append(to_uint8(np.asarray(output.images)))
        return np.concatenate(chunks, axis=0)


def upscale_pipeline_from(pipeline: StableDiffusionUpscalePipeline, settings: UpscaleSettings) -> UpscalePipeline:
    """Rebuild a loaded or tiny upscaler as `UpscalePipeline`, with the configured beta schedule."""
    scheduler = pipeline.scheduler
    if settings.beta_schedule is not None:
        scheduler = DDIMScheduler.from_config(scheduler.config, beta_schedule=settings.beta_schedule)
    return UpscalePipeline(
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        unet=pipeline.unet,
        low_res_scheduler=pipeline.low_res_scheduler,
        scheduler=scheduler,
        max_noise_level=pipeline.config.max_noise_level,
    )


def resolve_upscaler_source(settings: UpscaleSettings, cache_dir: str | None = None) -> ModelSource:
    """Check that every upscaler component is present; raises `ModelLoadError` naming the missing ones."""
    return resolve_source(settings.path, UPSCALER_COMPONENTS, label="the Stable Diffusion x4 upscaler",
                          option=f"{OPTION}.path", hub_id=UPSCALER_HUB_ID, revision=settings.revision,
                          cache_dir=cache_dir)


def unlearned_encoder_problems(settings: UpscaleSettings) -> list[str]:
    """Return the problems that stop the unlearned encoder folder from loading.

    The list is empty when the folder looks complete or the prompt mode does not read it.
    """
    if not settings.enabled or settings.prompt_mode != "unlearned":
        return []
    problem = UNLEARNED_ENCODER.problem(Path(settings.encoder_path).expanduser())
    if problem is None:
        return []
    message = (f"the unlearned text encoder for the upscaler ({OPTION}.encoder_path={settings.encoder_path}) "
               f"cannot load: {problem}. {UNLEARNED_ENCODER_HINT}")
    return [message]


def read_provenance(folder: Path) -> dict | None:
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def architecture_differences(unlearned: dict, upscaler: dict) -> list[str]:
    return [f"  - config {key}: {unlearned.get(key)!r} (unlearned encoder) vs {upscaler.get(key)!r} (upscaler)"
            for key in sorted(unlearned.keys() | upscaler.keys()) if unlearned.get(key) != upscaler.get(key)]


def load_unlearned_encoder(settings: UpscaleSettings, upscaler_encoder: torch.nn.Module,
                           upscaler_label: str) -> tuple[CLIPTextModel, dict]:
    """Load the unlearned encoder after checking it against the upscaler's own encoder.

    A different architecture always raises `EncoderMismatchError`. A base fingerprint in
    `unlearning.json` that differs from the upscaler encoder's, or a missing one, raises it too
    unless `allow_encoder_mismatch` is set, which logs a warning instead.
    """
    folder = Path(settings.encoder_path).expanduser()
    differences = architecture_differences(encoder_config(CLIPTextConfig.from_pretrained(folder)),
                                           encoder_config(upscaler_encoder))
    if differences:
        raise EncoderMismatchError(
            f"the unlearned text encoder {folder / 'config.json'} ({OPTION}.encoder_path) does not have the "
            f"architecture of the text encoder of {upscaler_label} (its text_encoder/config.json):\n"
            + "\n".join(differences) + f"\n{UNLEARNED_ENCODER_HINT} A run with model=lavie or "
            "model=animatediff unlearns SD 1.5's CLIP ViT-L encoder, which does not fit the upscaler."
        )

    provenance = read_provenance(folder)
    expected = fingerprint_module(upscaler_encoder)
    recorded = (provenance or {}).get(BASE_FINGERPRINT_KEY)
    if provenance is None:
        problem = (f"{folder} has no {PROVENANCE_FILE}, so the encoder it was unlearned from is unknown "
                   "and cannot be compared with the upscaler's.")
    elif recorded is None:
        problem = (f"{folder / PROVENANCE_FILE} does not record {BASE_FINGERPRINT_KEY} (runs of older versions "
                   "of this package did not write it), so the encoder it was unlearned from cannot be "
                   "compared with the upscaler's.")
    elif recorded != expected:
        problem = (f"the unlearned text encoder {folder} was unlearned from a different encoder than the "
                   f"upscaler's own: {PROVENANCE_FILE} records base fingerprint {recorded[:16]} (base model "
                   f"{provenance.get('base_model_id', 'not recorded')}), and the text encoder of {upscaler_label} "
                   f"has fingerprint {expected[:16]}. The upscaler would read prompts through weights it was "
                   "not trained with, so a change in the upscaled videos would not show that the unlearning "
                   "carried over.")
    else:
        problem = None
    if problem is not None:
        if not settings.allow_encoder_mismatch:
            raise EncoderMismatchError(
                f"{problem} Unlearn with an SD 2.x model whose text encoder is the upscaler's, or set "
                f"{OPTION}.allow_encoder_mismatch=true to use this encoder anyway."
            )
        log.warning("%s Continuing because %s.allow_encoder_mismatch is true.", problem, OPTION)
    else:
        log.info("The unlearned encoder %s started from the upscaler's text encoder (fingerprint %s)", folder,
                 expected[:16])

    encoder = CLIPTextModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return encoder.requires_grad_(False).eval(), provenance or {}


def build_video_upscaler(pipeline: StableDiffusionUpscalePipeline, settings: UpscaleSettings,
                         video_text_encoder: torch.nn.Module, device: torch.device, label: str,
                         unlearned: tuple[CLIPTextModel, dict] | None = None) -> VideoUpscaler:
    """Wrap an upscaler pipeline (float32 text encoder) with the prompt mode's encoders, on `device`.

    With prompt mode `unlearned`, `unlearned` is the result of `load_unlearned_encoder`, and None
    loads it here.
    """
    unlearned_encoder, provenance = None, None
    if settings.prompt_mode == "unlearned":
        unlearned_encoder, provenance = unlearned or load_unlearned_encoder(settings, pipeline.text_encoder, label)
        unlearned_encoder.to(device)
    upscale_pipeline = upscale_pipeline_from(pipeline, settings)
    for module in (upscale_pipeline.unet, upscale_pipeline.vae, upscale_pipeline.text_encoder):
        module.requires_grad_(False)
        module.to(device).eval()
    return VideoUpscaler(upscale_pipeline, settings, unlearned_encoder=unlearned_encoder,
                         video_text_encoder=video_text_encoder, unlearned_provenance=provenance)


def _check_noise_level(settings: UpscaleSettings, max_noise_level: int) -> None:
    if settings.noise_level > max_noise_level:
        raise ValueError(f"{OPTION}.noise_level={settings.noise_level} is invalid; this upscaler accepts at "
                         f"most max_noise_level={max_noise_level}")


def load_video_upscaler(settings: UpscaleSettings, source: ModelSource, device: torch.device,
                        unet_dtype: torch.dtype, video_text_encoder: torch.nn.Module) -> VideoUpscaler:
    """Load the x4 upscaler from `source` (see `resolve_upscaler_source`) as a video post-processing step.

    The text encoder is float32 (the fingerprint check compares float32 weights) and so is the VAE,
    which diffusers would otherwise upcast for every decode. The UNet takes `unet_dtype`.
    """
    # The small files and the encoders are read and checked first, so a bad setting fails before
    # the UNet loads.
    model_index = source.from_pretrained(StableDiffusionUpscalePipeline.load_config, MODEL_INDEX)
    # StableDiffusionUpscalePipeline's default, for a model_index.json without the key.
    max_noise_level = int(model_index.get("max_noise_level", 350))
    _check_noise_level(settings, max_noise_level)
    tokenizer = source.from_pretrained(CLIPTokenizer.from_pretrained, TOKENIZER)
    text_encoder = source.from_pretrained(CLIPTextModel.from_pretrained, TEXT_ENCODER, dtype=torch.float32)
    check_tokenizer(tokenizer, text_encoder, source)
    unlearned = None
    if settings.prompt_mode == "unlearned":
        unlearned = load_unlearned_encoder(settings, text_encoder, source.label)
    scheduler_config = source.from_pretrained(DDIMScheduler.load_config, SCHEDULER)
    low_res_config = source.from_pretrained(DDPMScheduler.load_config, LOW_RES_SCHEDULER)
    unet = source.from_pretrained(UNet2DConditionModel.from_pretrained, UNET, torch_dtype=unet_dtype)
    vae = source.from_pretrained(AutoencoderKL.from_pretrained, VAE, torch_dtype=torch.float32)
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler.from_config(low_res_config),
        scheduler=DDIMScheduler.from_config(scheduler_config),
        max_noise_level=max_noise_level,
    )
    upscaler = build_video_upscaler(pipeline, settings, video_text_encoder, device, source.label, unlearned)
    log.info("Loaded %s from %s (prompt_mode=%s, %d steps, guidance %s, noise_level %d)", source.label,
             source.load_path, settings.prompt_mode, settings.num_inference_steps, settings.guidance_scale,
             settings.noise_level)
    return upscaler


def build_tiny_video_upscaler(settings: UpscaleSettings, seed: int, video_text_encoder: torch.nn.Module,
                              device: str | torch.device = "cpu") -> VideoUpscaler:
    """SMOKE TEST: a random tiny x4 upscaler of the real classes (see `tiny_sd2.tiny_upscale_pipeline`)."""
    from t2v_unlearn.backends.tiny_sd2 import tiny_upscale_pipeline

    problems = unlearned_encoder_problems(settings)
    if problems:
        raise ModelLoadError("\n".join(problems))
    return build_video_upscaler(tiny_upscale_pipeline(seed=seed), settings, video_text_encoder,
                                torch.device(device), f"the tiny random x4 upscaler (seed {seed})")


def check_upscaler_concepts(backend: Any, concept_keys: list[str]) -> None:
    """Warn when the upscaler's unlearned encoder was unlearned for other concepts than this run's."""
    upscaler = getattr(backend, "video_postprocess", None)
    if not isinstance(upscaler, VideoUpscaler) or upscaler.settings.prompt_mode != "unlearned":
        return
    recorded = upscaler.unlearned_provenance.get("concepts")
    if recorded is None or sorted(recorded) == sorted(concept_keys):
        return
    log.warning("The upscaler's unlearned text encoder (%s) was unlearned for %s, but this run unlearns %s; the "
                "upscaled 'after' videos then read the prompt through an encoder that still knows this run's "
                "concepts", upscaler.settings.encoder_path, ", ".join(recorded), ", ".join(concept_keys))
