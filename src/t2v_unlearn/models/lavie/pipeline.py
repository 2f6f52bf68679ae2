"""Text-to-video sampling with LaVie's base UNet, following LaVie's base `sample.py` settings.

Prompts go through `self.text_encoder`, so assigning another CLIP text encoder to the pipeline
(for example an unlearned one) changes what it generates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .unet import LaVieUNet3DConditionModel

OUTPUT_TYPES = ("np", "pt", "latent")


@dataclass
class LaViePipelineOutput(BaseOutput):
    """Generated videos.

    `frames` is (batch, frames, height, width, 3) with values in [0, 1]: a float32 numpy array for
    `output_type="np"`, a tensor for "pt". For "latent" it is the final latents (b, c, f, h/8, w/8).
    """

    frames: np.ndarray | torch.Tensor


def lavie_scheduler() -> DDPMScheduler:
    """Return the DDPM scheduler that LaVie's base model samples with.

    LaVie overrides SD 1.4's scaled-linear betas with a linear schedule from 1e-4 to 0.02 and turns
    sample clipping off. `steps_offset=0` reproduces the timesteps of LaVie's pinned diffusers
    0.16 (980, 960, ..., 0 for 50 steps); SD's config value 1 would give 981, ..., 1.
    """
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )


class LaViePipeline(DiffusionPipeline):
    """LaVie's base text-to-video sampler: CLIP text, 3-D UNet denoising, frame-by-frame VAE decode."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: LaVieUNet3DConditionModel,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Return the encoder's last hidden state (b, 77, d) for all positions, padding included.

        LaVie pads and truncates to the tokenizer's `model_max_length` and passes no attention mask.
        """
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(device))[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_frames: int = 16,
        height: int = 320,
        width: int = 512,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] = "",
        output_type: str = "np",
        latents: torch.Tensor | None = None,
    ) -> LaViePipelineOutput:
        """Generate one video per prompt.

        `generator` may be a list with one generator per prompt. It seeds both the initial noise
        and the DDPM noise of each step. Classifier-free guidance runs when `guidance_scale` > 1.
        `latents`, if given, is the initial noise (b, c, f, h/8, w/8) before scaling by the
        scheduler's `init_noise_sigma`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if isinstance(negative_prompt, str):
            negative_prompts = [negative_prompt] * batch
        else:
            negative_prompts = list(negative_prompt)
        self._check_inputs(batch, negative_prompts, generator, num_frames, height, width, output_type)
        device = self._execution_device
        do_classifier_free_guidance = guidance_scale > 1.0

        encoder_hidden_states = self.encode_prompt(prompts, device)  # (b, 77, d)
        if do_classifier_free_guidance:
            uncond_hidden_states = self.encode_prompt(negative_prompts, device)
            encoder_hidden_states = torch.cat([uncond_hidden_states, encoder_hidden_states])  # (2b, 77, d)
        encoder_hidden_states = encoder_hidden_states.to(self.unet.dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (
            batch,
            self.unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )  # (b, c, f, h, w)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

        with self.progress_bar(total=len(self.scheduler.timesteps)) as progress_bar:
            for t in self.scheduler.timesteps:
                latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                noise_pred = self.unet(latent_model_input, t, encoder_hidden_states).sample

                if do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)

                latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
                progress_bar.update()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return LaViePipelineOutput(frames=latents)

        # The VAE is 2-D: frames fold into the batch and decode in one call.
        frames = latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor  # (b*f, c, h, w)
        images = self.vae.decode(frames.to(self.vae.dtype)).sample  # (b*f, 3, H, W) in [-1, 1]
        video = (images / 2 + 0.5).clamp(0, 1)
        video = video.unflatten(0, (batch, num_frames)).permute(0, 1, 3, 4, 2).float()  # (b, f, H, W, 3)

        self.maybe_free_model_hooks()
        if output_type == "np":
            video = video.cpu().numpy()
        return LaViePipelineOutput(frames=video)

    def _check_inputs(
        self,
        batch: int,
        negative_prompts: list[str],
        generator: torch.Generator | list[torch.Generator] | None,
        num_frames: int,
        height: int,
        width: int,
        output_type: str,
    ) -> None:
        if len(negative_prompts) != batch:
            raise ValueError(f"got {len(negative_prompts)} negative prompts for {batch} prompts")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} prompts, expected one per prompt")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
