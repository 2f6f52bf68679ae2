"""The bundle of components that every backend returns.

The unlearning code only sees this bundle: a tokenizer and text encoder, the frozen text-to-image
UNet, VAE and noise scheduler, and two pipelines (text-to-image and text-to-video) that both read
prompts through the same text encoder. Swapping in the unlearned encoder is a plain attribute
assignment on each pipeline, so any diffusers-style pipeline with a `text_encoder` component fits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class Backend:
    name: str
    # Identifies the weights for provenance and for the few-shot image cache key.
    model_id: str
    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    # Scheduler of the text-to-image model's training process: defines the timesteps, the noise
    # schedule and the prediction type (epsilon or v) of the unlearning loss.
    noise_scheduler: Any
    image_pipeline: Any
    video_pipeline: Any
    # Default keyword arguments of each pipeline call (steps, guidance, size, frames).
    image_kwargs: dict = field(default_factory=dict)
    video_kwargs: dict = field(default_factory=dict)
    # Open_clip model settings for CLIP probes and the CLIP judge (see `judges.clip`).
    clip: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Images per pipeline call while generating, and videos per call unless video_batch_size is set.
    generation_batch_size: int = 4
    video_batch_size: int | None = None
    # Optional step that `generate_videos` applies to its output, such as a super-resolution stage.
    # Called as `video_postprocess(videos, prompts, seeds, text_encoder)`, where `text_encoder` is the
    # encoder that rendered the videos. It returns the new uint8 `(n, frames, h, w, 3)` videos.
    video_postprocess: Callable[[np.ndarray, list[str], list[int], torch.nn.Module], np.ndarray] | None = None
    # Local folder the weights came from, for backends that ship judge weights beside the models
    # (the toy world's detector); None for the others.
    weights_dir: Path | None = None

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def generate_images(
        self,
        prompts: list[str],
        seeds: list[int],
        text_encoder: torch.nn.Module | None = None,
        desc: str = "images",
        **overrides: Any,
    ) -> np.ndarray:
        """Generate one image per (prompt, seed) pair; returns uint8 `(n, h, w, 3)`."""
        kwargs = {**self.image_kwargs, **overrides}
        chunks = self._run_pipeline(self.image_pipeline, prompts, seeds, text_encoder, kwargs, desc, "images",
                                    self.generation_batch_size)
        return np.concatenate(chunks, axis=0)

    def generate_videos(
        self,
        prompts: list[str],
        seeds: list[int],
        text_encoder: torch.nn.Module | None = None,
        desc: str = "videos",
        **overrides: Any,
    ) -> np.ndarray:
        """Generate one video per (prompt, seed) pair; returns uint8 `(n, frames, h, w, 3)`.

        With `video_postprocess` set, the videos pass through it before they are returned.
        """
        kwargs = {**self.video_kwargs, **overrides}
        batch_size = self.video_batch_size or self.generation_batch_size
        chunks = self._run_pipeline(self.video_pipeline, prompts, seeds, text_encoder, kwargs, desc, "frames",
                                    batch_size)
        videos = np.concatenate(chunks, axis=0)
        if self.video_postprocess is not None:
            used_encoder = text_encoder if text_encoder is not None else self.text_encoder
            videos = self.video_postprocess(videos, prompts, seeds, used_encoder)
        return videos

    @torch.no_grad()
    def _run_pipeline(self, pipeline, prompts, seeds, text_encoder, kwargs, desc, output_field, batch_size):
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        original_encoder = pipeline.text_encoder
        pipeline.text_encoder = text_encoder if text_encoder is not None else self.text_encoder
        pipeline.set_progress_bar_config(disable=True)
        chunks = []
        try:
            batch = max(1, int(batch_size))
            for start in tqdm(range(0, len(prompts), batch), desc=desc, unit="batch", leave=False):
                batch_prompts = prompts[start : start + batch]
                # One generator per sample, so a sample depends on its own seed only and not on
                # the batch it happens to be generated in.
                generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + batch]]
                output = pipeline(prompt=batch_prompts, generator=generators, output_type="np", **kwargs)
                chunks.append(to_uint8(np.asarray(getattr(output, output_field))))
        finally:
            pipeline.text_encoder = original_encoder
        return chunks


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Convert pipeline output in [0, 1] to uint8 with rounding."""
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def fingerprint_module(module: torch.nn.Module) -> str:
    """Return a SHA-256 over a module's state-dict names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
