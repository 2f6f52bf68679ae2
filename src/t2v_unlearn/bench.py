"""Speed and memory of few-shot generation and unlearning at real size, on random weights.

    python -m t2v_unlearn.bench                  # SD 1.5 at 512 px (10-30 min on 2 CPU cores)
    python -m t2v_unlearn.bench --model tiny     # tiny random models at 32 px (seconds)

Timings do not depend on the weight values, so the models are built with random weights from the
published SD 1.5 configs in `bench_configs/`. Each figure is printed for the repository's defaults
and for the reference recipe:

1. Seconds per few-shot image. Defaults: DPM-Solver++ with 25 steps, 4 images per pipeline call.
   Reference: PNDM with 50 steps, one image per call, float32. A full 512-px generation takes
   many minutes on a CPU, so each configuration runs `--steps` denoising steps through the real
   pipeline. The mean step time, the setup before the first step and the VAE decode after the last
   are measured, and the full call time is extrapolated to the sampler's step count.
2. Seconds per unlearning step (loss, backward, Adam step). Defaults: `TextEncoderUnlearning` under
   a Lightning `Trainer`. Reference: a plain PyTorch loop of the same loss.
3. Peak host memory of the process (`ru_maxrss`).
4. GPU memory of unlearning with the default GPU settings, counted on the meta device (no
   allocation, no compute): weights, gradients and Adam state of the encoder, and every tensor
   autograd saves for backward, with and without gradient checkpointing.

It prints PASS or FAIL for each target and exits with status 1 when one fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, MotionAdapter, PNDMScheduler, UNet2DConditionModel
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextConfig, CLIPTextModel

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.backends.loading import resolve_device, resolve_frozen_dtype
from t2v_unlearn.backends.pretrained import (
    TextToImageParts,
    build_animatediff_backend,
    image_pipeline_and_kwargs,
)
from t2v_unlearn.backends.tiny import (
    SD1_SCHEDULE,
    tiny_motion_adapter,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from t2v_unlearn.tokenizer import build_clip_tokenizer
from t2v_unlearn.unlearn import TextEncoderUnlearning, diffusion_target

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("bench_configs")
MODELS = ("sd15", "tiny")
# Pixel size of each model's images: SD 1.5's own 512, and what the tiny VAE (2x downsampling)
# turns into 16x16 latents.
IMAGE_SIZE = {"sd15": 512, "tiny": 32}
PROMPT = "a photo of the Eiffel Tower"
# The published RTX 3070 has 8 GiB of memory.
GPU_BUDGET_BYTES = 8 * 2**30
# The unlearning-step target allows this much timing noise: both loops run the same math.
STEP_TOLERANCE = 0.05
GENERATION_SPEEDUP_TARGET = 2.0


# ---- models ---------------------------------------------------------------------------------


def _read_config(relative_path: str) -> dict:
    return json.loads((CONFIG_DIR / relative_path).read_text())


def build_parts(model: str, frozen_dtype: torch.dtype = torch.float32, seed: int = 0) -> TextToImageParts:
    """Build random-weight SD 1.5 (`sd15`) or tiny (`tiny`) components on the current default device.

    Run it under `with torch.device("meta"):` to get the shapes without allocating. The text encoder
    is float32 because it is trained. UNet and VAE take `frozen_dtype`, as the real loader does.
    """
    if model not in MODELS:
        raise ValueError(f"model='{model}' is not supported; use one of {list(MODELS)}")
    torch.manual_seed(seed)
    if model == "sd15":
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(_read_config("sd15/text_encoder.json")))
        unet = UNet2DConditionModel.from_config(_read_config("sd15/unet.json"))
        vae = AutoencoderKL.from_config(_read_config("sd15/vae.json"))
        scheduler_config = _read_config("sd15/scheduler.json")
    else:
        text_encoder = tiny_text_encoder(seed=seed)
        unet = tiny_unet(sample_size=IMAGE_SIZE["tiny"] // 2, seed=seed + 1)
        vae = tiny_vae(seed=seed + 2)
        scheduler_config = dict(PNDMScheduler(**SD1_SCHEDULE, skip_prk_steps=True, steps_offset=1,
                                              set_alpha_to_one=False).config)
    text_encoder.eval()
    for module in (unet, vae):
        module.requires_grad_(False)
        module.to(dtype=frozen_dtype).eval()
    # image_pipeline_and_kwargs reads only the components and the scheduler config, not the source.
    return TextToImageParts(source=None, model_id=f"random {model}", tokenizer=build_clip_tokenizer(),
                            text_encoder=text_encoder, unet=unet, vae=vae, scheduler_config=scheduler_config)


def build_motion_adapter(model: str) -> MotionAdapter:
    """Build AnimateDiff's motion adapter v1-5-2 (or the tiny one) on the current default device."""
    if model == "sd15":
        return MotionAdapter.from_config(_read_config("animatediff/motion_adapter_v1_5_2.json"))
    return tiny_motion_adapter()


def default_generation_batch_size() -> int:
    """Return the images per pipeline call that the SD 1.5 + AnimateDiff backend uses by default."""
    return int(inspect.signature(build_animatediff_backend).parameters["generation_batch_size"].default)


def default_optimizer() -> Callable[..., torch.optim.Optimizer]:
    """Return the optimizer factory of `conf/optim/adam.yaml`, the job's default `optim`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "optim" / "adam.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"optimizer config '{path}' not found; run the benchmark from a checkout of "
                                "the repository (pip install -e .)")
    return instantiate(OmegaConf.load(path))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- 1. few-shot generation -----------------------------------------------------------------


@dataclass
class GenerationTiming:
    """One few-shot generation configuration: measured parts and the extrapolated full call."""

    label: str
    sampler: str
    images_per_call: int
    # Denoising steps of the full recipe and the UNet calls they make (PNDM adds one).
    full_steps: int
    full_unet_calls: int
    # Measured on one pipeline call with `measured_unet_calls` denoising steps.
    measured_unet_calls: int
    step_s: float
    setup_s: float
    decode_s: float

    @property
    def call_s(self) -> float:
        """Extrapolated time of one full pipeline call: setup + UNet calls * step + decode."""
        return self.setup_s + self.full_unet_calls * self.step_s + self.decode_s

    @property
    def per_image_s(self) -> float:
        return self.call_s / self.images_per_call


def measure_generation(parts: TextToImageParts, reference: bool, steps: int, device: torch.device,
                       image_size: int) -> GenerationTiming:
    """Time one pipeline call of `steps` denoising steps and extrapolate it to the full recipe.

    A `callback_on_step_end` timestamps the end of each step. The step time is the mean gap between
    consecutive timestamps, so the first step, which also carries one-time warm-up (oneDNN kernel
    selection, first allocations), is not part of it. The setup (tokenizing, text encoding, initial
    latents) is the time to the start of the first UNet call, and the decode (VAE, conversion to
    uint8) is the time from the last step's end to the returned images.
    """
    if steps < 2:
        raise ValueError(f"steps={steps} is too few; the step time needs at least 2 denoising steps")
    pipeline, kwargs = image_pipeline_and_kwargs(parts, reference_sampling=reference,
                                                 image_kwargs=dict(height=image_size, width=image_size))
    pipeline.to(device)
    images_per_call = 1 if reference else default_generation_batch_size()
    backend = Backend(name="bench", model_id=parts.model_id, tokenizer=parts.tokenizer,
                      text_encoder=parts.text_encoder, unet=parts.unet, vae=parts.vae,
                      noise_scheduler=DDPMScheduler.from_config(parts.scheduler_config),
                      image_pipeline=pipeline, video_pipeline=None, image_kwargs=kwargs, device=device,
                      generation_batch_size=images_per_call)

    stamps: list[float] = []
    unet_starts: list[float] = []

    def on_step_end(pipe, step_index, timestep, callback_kwargs):
        _sync(device)
        stamps.append(time.perf_counter())
        return callback_kwargs

    def on_unet_start(module, args):
        _sync(device)
        unet_starts.append(time.perf_counter())

    label = "reference" if reference else "defaults"
    log.info("Generating %d image(s) with %s for %d steps (%s)", images_per_call,
             type(pipeline.scheduler).__name__, steps, label)
    hook = pipeline.unet.register_forward_pre_hook(on_unet_start)
    try:
        _sync(device)
        start = time.perf_counter()
        backend.generate_images([PROMPT] * images_per_call, list(range(images_per_call)),
                                num_inference_steps=steps, callback_on_step_end=on_step_end)
        _sync(device)
        end = time.perf_counter()
    finally:
        hook.remove()

    step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    full_sampler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    full_sampler.set_timesteps(kwargs["num_inference_steps"])
    return GenerationTiming(
        label=label,
        sampler=type(pipeline.scheduler).__name__,
        images_per_call=images_per_call,
        full_steps=int(kwargs["num_inference_steps"]),
        full_unet_calls=len(full_sampler.timesteps),
        measured_unet_calls=len(stamps),
        step_s=step_s,
        setup_s=unet_starts[0] - start,
        decode_s=end - stamps[-1],
    )


# ---- 2. unlearning steps --------------------------------------------------------------------


@dataclass
class StepTiming:
    label: str
    precision: str
    # Seconds of each timed step. One untimed warm-up step of each loop runs first.
    step_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s)


class _StepTimer(pl.Callback):
    """Time each training batch: training_step, backward and the optimizer step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _sync(self.device)
        self.durations.append(time.perf_counter() - self._start)


def _batches(latents: torch.Tensor, count: int) -> list[dict]:
    return [{"latents": latents, "prompts": [PROMPT] * len(latents)} for _ in range(count)]


class DefaultUnlearningStep:
    """One optimizer step of `TextEncoderUnlearning` per call, each under a new Lightning `Trainer`.

    The trainer follows conf/trainer/default.yaml on a CPU (32-true) and conf/trainer/gpu.yaml on a
    GPU (16-mixed: autocast and a gradient scaler around the fp16 UNet). One Adam instance serves
    every call, as it would across the steps of one `fit`.
    """

    def __init__(self, parts: TextToImageParts, latents: torch.Tensor, device: torch.device):
        self.device = device
        self.latents = latents
        self.precision = "16-mixed" if device.type == "cuda" else "32-true"
        self.module = TextEncoderUnlearning(text_encoder=parts.text_encoder, unet=parts.unet,
                                            noise_scheduler=DDPMScheduler.from_config(parts.scheduler_config),
                                            tokenizer=parts.tokenizer, optimizer=self._optimizer)
        self._adam: torch.optim.Optimizer | None = None

    def _optimizer(self, parameters) -> torch.optim.Optimizer:
        if self._adam is None:
            self._adam = default_optimizer()(parameters)
        return self._adam

    def __call__(self) -> float:
        timer = _StepTimer(self.device)
        trainer = pl.Trainer(accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
                             precision=self.precision, max_steps=1, logger=False, callbacks=[timer],
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0)
        loader = torch.utils.data.DataLoader(_batches(self.latents, 1), batch_size=None)
        trainer.fit(self.module, train_dataloaders=loader)
        return timer.durations[0]


class ReferenceUnlearningStep:
    """One step of a plain float32 loop per call: -MSE through the UNet, backward, Adam step."""

    def __init__(self, parts: TextToImageParts, latents: torch.Tensor, device: torch.device):
        if parts.unet.dtype != torch.float32:
            raise ValueError(f"the reference recipe runs the UNet in float32, but it is {parts.unet.dtype}")
        self.parts = parts
        self.latents = latents
        self.device = device
        self.noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
        self.optimizer = default_optimizer()(parts.text_encoder.parameters())

    def __call__(self) -> float:
        text_encoder, unet, tokenizer = self.parts.text_encoder, self.parts.unet, self.parts.tokenizer
        latents = self.latents
        text_encoder.train().requires_grad_(True)
        _sync(self.device)
        start = time.perf_counter()
        # Tokenized on every step, as TextEncoderUnlearning.training_step does.
        input_ids = tokenizer([PROMPT] * len(latents), padding="max_length",
                              max_length=tokenizer.model_max_length, truncation=True,
                              return_tensors="pt").input_ids.to(self.device)
        encoder_hidden_states = text_encoder(input_ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),),
                                  device=self.device)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        noise_pred = unet(noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states).sample
        loss = -F.mse_loss(noise_pred, diffusion_target(self.noise_scheduler, latents, noise, timesteps))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - start


def measure_unlearning(parts: TextToImageParts, reference_parts: TextToImageParts, latents: torch.Tensor,
                       steps: int, device: torch.device) -> list[StepTiming]:
    """Time `steps` default and `steps` reference unlearning steps, after one untimed step of each.

    The two alternate step by step, so that a change in the machine's load slows both alike.
    """
    default_step = DefaultUnlearningStep(parts, latents, device)
    reference_step = ReferenceUnlearningStep(reference_parts, latents, device)
    log.info("Running %d unlearning steps each of TextEncoderUnlearning (defaults, %s) and of the plain loop "
             "(reference, 32-true), alternating", steps + 1, default_step.precision)
    default_step()
    reference_step()
    default_times, reference_times = [], []
    for _ in range(steps):
        default_times.append(default_step())
        reference_times.append(reference_step())
    parts.text_encoder.eval().requires_grad_(False)
    return [StepTiming("defaults", default_step.precision, default_times),
            StepTiming("reference", "32-true", reference_times)]


# ---- 4. GPU memory, counted on the meta device ----------------------------------------------


def _storage_key(tensor: torch.Tensor) -> int:
    # The address of the StorageImpl: views of one tensor share it, and it exists on meta too.
    return StorageWeakRef(tensor.untyped_storage()).cdata


class SavedTensorCounter:
    """Count the bytes of the distinct storages that autograd saves for backward.

    Use it as a context manager around a forward pass. Storages of `exclude` tensors (the weights,
    counted elsewhere) are left out. `checkpoint` is a gradient-checkpointing function for diffusers'
    `enable_gradient_checkpointing` and transformers' layers: it counts the block inputs that
    checkpointing keeps, and records the largest block's saved bytes, which its recomputation
    holds during backward.
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self.excluded = {_storage_key(t) for t in exclude}
        self.storages: dict[int, int] = {}
        self.max_block_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    @property
    def saved_bytes(self) -> int:
        return sum(self.storages.values())

    def add(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key not in self.excluded:
            self.storages[key] = tensor.untyped_storage().nbytes()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor

    def __enter__(self) -> SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)

    def checkpoint(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                self.add(value)
        # Run the block once more, outside the checkpoint, to count what its recomputation saves.
        block = SavedTensorCounter()
        block.excluded = self.excluded
        with block:
            function(*args, **kwargs)
        self.max_block_bytes = max(self.max_block_bytes, block.saved_bytes)
        # preserve_rng_state=False: the RNG state API has no meta device, and no block here is random.
        return checkpoint(function, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)


# Ops of CUDA autocast (torch.amp, "CUDA Ops that can autocast to float16 / float32") that the SD
# UNet, the VAE and the CLIP text encoder call. SDPA is float16 because its inputs come from float16
# linears. Other ops run in their inputs' dtype under autocast too.
_LOWER_PRECISION_OPS = {F.linear, F.conv2d, F.conv_transpose2d, torch.matmul, torch.bmm, torch.baddbmm,
                        torch.mm, torch.addmm, F.scaled_dot_product_attention}
_FLOAT32_OPS = {F.group_norm, F.layer_norm, F.mse_loss, F.softmax, F.log_softmax, torch.softmax}


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


class CudaAutocastOnMeta(TorchFunctionMode):
    """Make meta-device forwards save what a CUDA run with float16 autocast saves.

    - With `autocast`, floating inputs of the ops above are cast to float16 or float32 first. The
      casts are autograd ops, so the copies that CUDA autocast saves (float16 weight copies of the
      float32 encoder, float32 inputs of the norms) are saved here too.
    - Attention runs as flash attention, which saves q, k, v, the output and the log-sum-exp. On
      meta tensors, `scaled_dot_product_attention` takes the math path instead and saves the
      (heads, tokens, tokens) probabilities, which a CUDA GPU does not store.

    NOTE: it covers only the functions that these models call. Another function that CUDA autocast
    casts (for example `torch.exp` on a gradient path) is counted in its input dtype.
    """

    def __init__(self, autocast: bool = True, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.autocast = autocast
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.autocast and (func in _LOWER_PRECISION_OPS or func in _FLOAT32_OPS):
            dtype = self.dtype if func in _LOWER_PRECISION_OPS else torch.float32
            args = tuple(_cast_floating(a, dtype) for a in args)
            kwargs = {k: _cast_floating(v, dtype) for k, v in kwargs.items()}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            return _flash_attention(*args, **kwargs)
        return func(*args, **kwargs)


def _flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    if kwargs.get("enable_gqa"):
        raise NotImplementedError("grouped-query attention (enable_gqa=True) is not supported by the count")
    if attn_mask is None:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                  scale=scale)[0]
    # Flash attention takes no mask, so CUDA uses the memory-efficient kernel, which saves the same
    # tensors plus the mask.
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value,
                                                                  attn_mask.to(query.dtype),
                                                                  True, dropout_p, is_causal, scale=scale)[0]


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass
class GpuMemoryCount:
    """Bytes that unlearning holds on the GPU, without the CUDA context and allocator overhead."""

    gradient_checkpointing: bool
    # True: the encoder runs under float16 autocast (trainer=gpu, 16-mixed). False: in float32
    # (trainer=default, 32-true), while the UNet stays float16.
    autocast: bool
    # Weights and buffers of each component, in the dtype the GPU uses.
    weights: dict[str, int]
    # Gradients and Adam's two moments of the trainable float32 encoder parameters.
    gradients: int
    adam_state: int
    # Tensors that autograd saves for backward, weights excluded. With checkpointing, the block inputs.
    saved: int
    # With checkpointing: the largest block's saved tensors, held while backward recomputes it.
    recompute: int

    @property
    def total(self) -> int:
        return sum(self.weights.values()) + self.gradients + self.adam_state + self.saved + self.recompute


def count_unlearning_gpu_memory(model: str, batch_size: int, gradient_checkpointing: bool,
                                autocast: bool = True) -> GpuMemoryCount:
    """Count the GPU memory of one unlearning step with the default GPU settings, on the meta device.

    Default GPU settings: UNet and VAE in float16 (dtype=auto), the encoder's weights in float32
    under float16 autocast (trainer=gpu, precision 16-mixed), every encoder weight trainable
    (method=paper), Adam. The forward is `TextEncoderUnlearning.encode` and `diffusion_mse`, the
    loss of `training_step` without the optional retain term.
    """
    with torch.device("meta"):
        parts = build_parts(model, frozen_dtype=torch.float16)
    module = TextEncoderUnlearning(text_encoder=parts.text_encoder, unet=parts.unet,
                                   noise_scheduler=DDPMScheduler.from_config(parts.scheduler_config),
                                   tokenizer=parts.tokenizer, optimizer=torch.optim.Adam)
    # Moves nothing because the tensors are on meta already, but sets `module.device`, which encode() uses.
    module.to(torch.device("meta"))
    module.train()

    weights = [*module.text_encoder.parameters(), *module.unet.parameters(), *parts.vae.parameters()]
    counter = SavedTensorCounter(exclude=weights)
    if gradient_checkpointing:
        module.unet.enable_gradient_checkpointing(gradient_checkpointing_func=counter.checkpoint)
        _enable_encoder_checkpointing(module.text_encoder, counter.checkpoint)

    # Each VAE block after the first halves the image: 512 px -> 64x64 latents for SD 1.5.
    size = IMAGE_SIZE[model] // 2 ** (len(parts.vae.config.block_out_channels) - 1)
    latents = torch.empty(batch_size, parts.unet.config.in_channels, size, size, device="meta")
    noise = torch.empty_like(latents)
    timesteps = torch.zeros(batch_size, dtype=torch.long, device="meta")
    with CudaAutocastOnMeta(autocast=autocast), counter:
        encoder_hidden_states = module.encode([PROMPT] * batch_size)
        loss = -module.diffusion_mse(latents, encoder_hidden_states, noise, timesteps)
    if not loss.requires_grad:
        raise RuntimeError("the unlearning loss does not depend on the text encoder; nothing was counted")

    trainable = sum(p.numel() * p.element_size() for p in module.text_encoder.parameters() if p.requires_grad)
    return GpuMemoryCount(
        gradient_checkpointing=gradient_checkpointing,
        autocast=autocast,
        weights={"unet": _module_bytes(module.unet), "vae": _module_bytes(parts.vae),
                 "text_encoder": _module_bytes(module.text_encoder)},
        gradients=trainable,
        adam_state=2 * trainable,
        saved=counter.saved_bytes,
        recompute=counter.max_block_bytes,
    )


def _enable_encoder_checkpointing(text_encoder: torch.nn.Module, checkpoint_function: Callable) -> None:
    # transformers 5 renamed gradient_checkpointing_enable to activation_checkpointing_enable.
    enable = getattr(text_encoder, "activation_checkpointing_enable", None)
    enable = enable or text_encoder.gradient_checkpointing_enable
    enable()
    layers = [m for m in text_encoder.modules() if getattr(m, "gradient_checkpointing", False)]
    if not layers:
        raise RuntimeError(f"{type(text_encoder).__name__} has no layer with gradient checkpointing enabled")
    for layer in layers:
        layer._gradient_checkpointing_func = checkpoint_function


def motion_unet_bytes(model: str, dtype: torch.dtype = torch.float16) -> int:
    """Return the weight bytes of AnimateDiff's motion UNet: a copy of the SD UNet plus the motion modules.

    The animatediff backend keeps it on the GPU next to the SD UNet, so it counts during unlearning.
    """
    with torch.device("meta"):
        unet = build_parts(model).unet
        adapter = build_motion_adapter(model)
    elements = sum(t.numel() for module in (unet, adapter) for t in (*module.parameters(), *module.buffers()))
    return elements * torch.empty((), dtype=dtype).element_size()


# ---- the whole benchmark --------------------------------------------------------------------


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class BenchResult:
    model: str
    device: str
    batch_size: int
    machine: dict
    generation: list[GenerationTiming] = field(default_factory=list)
    unlearning: list[StepTiming] = field(default_factory=list)
    gpu_memory: list[GpuMemoryCount] = field(default_factory=list)
    motion_unet_bytes: int | None = None
    # ru_maxrss after each phase. The last one is the peak of the whole process.
    peak_host_bytes: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return the result as JSON-ready data, with the derived figures of each timing."""
        data = dataclasses.asdict(self)
        for timing, row in zip(self.generation, data["generation"]):
            row.update(call_s=timing.call_s, per_image_s=timing.per_image_s)
        for timing, row in zip(self.unlearning, data["unlearning"]):
            row.update(median_s=timing.median_s)
        for count, row in zip(self.gpu_memory, data["gpu_memory"]):
            row.update(total=count.total)
        return data


def peak_host_bytes() -> int:
    """Return the process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def describe_machine(device: torch.device) -> dict:
    """Return the CPU model, core count, RAM and library versions that the timings depend on."""
    import diffusers
    import psutil
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    machine = {
        "cpu": cpu,
        "cpu_cores": psutil.cpu_count(logical=True),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "pytorch_lightning": pl.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        # Other processes on the machine slow the timings down. The 1-minute load average shows how
        # busy it was.
        "load_average_start": os.getloadavg()[0],
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def run_bench(model: str = "sd15", steps: int = 3, device: str = "cpu", batch_size: int = 2,
              generation: bool = True, unlearning: bool = True, gpu_memory: bool = True) -> BenchResult:
    """Run the selected parts of the benchmark and evaluate the targets they cover.

    `steps` is the number of denoising steps run per generation configuration and of timed
    unlearning steps per loop (each loop runs one more, untimed, first).
    """
    # NOTE: the cuda path (float16 defaults, 16-mixed trainer, float32 copies for the reference) has
    # never been run. The recorded figures are from CPU runs.
    resolved = resolve_device(device)
    result = BenchResult(model=model, device=str(resolved), batch_size=batch_size,
                         machine=describe_machine(resolved))
    if gpu_memory:
        log.info("Counting the GPU memory of unlearning on the meta device")
        result.gpu_memory = [
            count_unlearning_gpu_memory(model, batch_size, gradient_checkpointing=False),
            count_unlearning_gpu_memory(model, batch_size, gradient_checkpointing=True),
            count_unlearning_gpu_memory(model, batch_size, gradient_checkpointing=False, autocast=False),
        ]
        result.motion_unet_bytes = motion_unet_bytes(model)
        result.peak_host_bytes["gpu_memory"] = peak_host_bytes()

    if generation or unlearning:
        log.info("Building random-weight %s components", model)
        parts = build_parts(model, frozen_dtype=resolve_frozen_dtype("auto", resolved))
        parts.text_encoder.to(resolved)
        parts.unet.to(resolved)
        parts.vae.to(resolved)
        # The reference recipe is float32 throughout. On a CPU the defaults are too, so both share one model.
        reference_parts = parts
        if parts.unet.dtype != torch.float32:
            reference_parts = dataclasses.replace(parts, unet=_float32_copy(parts.unet),
                                                  vae=_float32_copy(parts.vae))
        if generation:
            result.generation = [
                measure_generation(parts, reference=False, steps=steps, device=resolved,
                                   image_size=IMAGE_SIZE[model]),
                measure_generation(reference_parts, reference=True, steps=steps, device=resolved,
                                   image_size=IMAGE_SIZE[model]),
            ]
            result.peak_host_bytes["generation"] = peak_host_bytes()
        if unlearning:
            size = IMAGE_SIZE[model] // 2 ** (len(parts.vae.config.block_out_channels) - 1)
            latents = torch.randn(batch_size, parts.unet.config.in_channels, size, size, device=resolved)
            result.unlearning = measure_unlearning(parts, reference_parts, latents, steps, resolved)
            result.peak_host_bytes["unlearning"] = peak_host_bytes()
    result.machine["load_average_end"] = os.getloadavg()[0]
    result.checks = evaluate_targets(result)
    return result


def _float32_copy(module: torch.nn.Module) -> torch.nn.Module:
    copy = type(module).from_config(module.config).to(module.device)
    copy.load_state_dict({k: v.float() for k, v in module.state_dict().items()})
    return copy.requires_grad_(False).eval()


def evaluate_targets(result: BenchResult) -> list[Check]:
    """Compare the measured figures with the targets. A part that did not run adds no check."""
    checks = []
    if result.generation:
        defaults, reference = result.generation
        speedup = reference.per_image_s / defaults.per_image_s
        checks.append(Check("few-shot generation >= 2x faster than the reference",
                            speedup >= GENERATION_SPEEDUP_TARGET,
                            f"{speedup:.2f}x per image (extrapolated)"))
    if result.unlearning:
        defaults, reference = result.unlearning
        ratio = defaults.median_s / reference.median_s
        checks.append(Check("unlearning step no slower than the reference", ratio <= 1 + STEP_TOLERANCE,
                            f"defaults / reference = {ratio:.3f} "
                            f"(tolerance {STEP_TOLERANCE:.0%} for timing noise)"))
    if result.gpu_memory:
        plain = next(c for c in result.gpu_memory if c.autocast and not c.gradient_checkpointing)
        checks.append(Check("default GPU settings <= 8 GiB (SD 1.5 unlearning)",
                            plain.total <= GPU_BUDGET_BYTES,
                            f"{_gib(plain.total)} counted, no gradient checkpointing"))
    return checks


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def format_report(result: BenchResult) -> str:
    """Return the result as the plain-text tables that `main` prints."""
    machine = result.machine
    lines = [f"Benchmark of {result.model} on {result.device}: {machine['cpu']}, {machine['cpu_cores']} "
             f"cores, {_gib(machine['ram_bytes'])} RAM, torch {machine['torch']}, {machine['date_utc']}, "
             f"1-minute load average {machine['load_average_start']:.1f} at the start and "
             f"{machine['load_average_end']:.1f} at the end",
             ""]
    if result.generation:
        lines += ["1. Few-shot generation (seconds; 'measured' on one call, 'extrapolated' = setup + UNet"
                  " calls x step + decode)",
                  f"{'':10} {'sampler':28} {'images/call':>11} {'UNet calls':>10} {'step':>8} {'setup':>8} "
                  f"{'decode':>8} {'call':>9} {'per image':>10}",
                  f"{'':10} {'':28} {'':>11} {'full':>10} {'measured':>8} {'measured':>8} {'measured':>8} "
                  f"{'extrap.':>9} {'extrap.':>10}"]
        for timing in result.generation:
            sampler = f"{timing.sampler} {timing.full_steps} steps"
            lines.append(f"{timing.label:10} {sampler:28} {timing.images_per_call:>11} "
                         f"{timing.full_unet_calls:>10} "
                         f"{timing.step_s:>8.2f} {timing.setup_s:>8.2f} {timing.decode_s:>8.2f} "
                         f"{timing.call_s:>9.1f} {timing.per_image_s:>10.1f}")
        defaults, reference = result.generation
        lines.append(f"step = mean gap between step ends over {defaults.measured_unet_calls} (defaults) and "
                     f"{reference.measured_unet_calls} (reference) measured UNet calls; per-image ratio "
                     f"reference / defaults = {reference.per_image_s / defaults.per_image_s:.2f}")
        lines.append("")
    if result.unlearning:
        lines.append(f"2. Unlearning step at batch {result.batch_size} (seconds, measured, alternating, "
                     "after one warm-up step of each)")
        for timing in result.unlearning:
            steps = ", ".join(f"{s:.2f}" for s in timing.step_s)
            lines.append(f"{timing.label:10} {timing.precision:9} median {timing.median_s:8.2f}   "
                         f"steps: {steps}")
        defaults, reference = result.unlearning
        lines.append(f"ratio defaults / reference = {defaults.median_s / reference.median_s:.3f}")
        lines.append("")
    if result.peak_host_bytes:
        phases = ", ".join(f"after {phase} {_gib(size)}" for phase, size in result.peak_host_bytes.items())
        lines += [f"3. Peak host memory (ru_maxrss): {phases}", ""]
    if result.gpu_memory:
        lines.append(f"4. GPU memory of unlearning at batch {result.batch_size} (GiB, counted on the meta "
                     "device; float16 UNet/VAE, float32 encoder weights, Adam)")
        lines.append(f"{'encoder':9} {'checkpointing':14} {'UNet':>9} {'VAE':>9} {'encoder':>9} {'grads':>9} "
                     f"{'Adam':>9} {'saved':>9} {'recompute':>9} {'total':>9}")
        for count in result.gpu_memory:
            weights = count.weights
            lines.append(f"{'16-mixed' if count.autocast else '32-true':9} "
                         f"{'on' if count.gradient_checkpointing else 'off':14} "
                         + " ".join(f"{v / 2**30:>9.3f}" for v in (
                             weights["unet"], weights["vae"], weights["text_encoder"], count.gradients,
                             count.adam_state, count.saved, count.recompute, count.total)))
        lines.append("16-mixed = trainer=gpu (float16 autocast), 32-true = trainer=default. Not counted: "
                     "CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation, the transient "
                     "gradients of backward.")
        if result.motion_unet_bytes is not None:
            lines.append("With the animatediff backend, its float16 motion UNet "
                         f"({_gib(result.motion_unet_bytes)}) is on the GPU too:")
            for count in result.gpu_memory:
                total = count.total + result.motion_unet_bytes
                verdict = "fits" if total <= GPU_BUDGET_BYTES else "does not fit"
                lines.append(f"  {'16-mixed' if count.autocast else '32-true'}, checkpointing "
                             f"{'on' if count.gradient_checkpointing else 'off'}: {_gib(total)}, "
                             f"{verdict} in 8 GiB")
        lines.append("")
    if result.checks:
        lines.append("Targets")
        lines += [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in result.checks]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="sd15",
                        help="sd15: published SD 1.5 configs at 512 px; tiny: tiny random models at 32 px")
    parser.add_argument("--steps", type=int, default=3,
                        help="denoising steps per generation configuration and timed unlearning steps "
                             "per loop")
    parser.add_argument("--device", default="cpu", help="torch device of the timed runs: cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=2,
                        help="unlearning batch size (the job's default 2)")
    parser.add_argument("--skip-generation", action="store_true", help="do not time few-shot generation")
    parser.add_argument("--skip-unlearning", action="store_true", help="do not time unlearning steps")
    parser.add_argument("--skip-gpu-memory", action="store_true", help="do not count the GPU memory")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    result = run_bench(model=args.model, steps=args.steps, device=args.device, batch_size=args.batch_size,
                       generation=not args.skip_generation, unlearning=not args.skip_unlearning,
                       gpu_memory=not args.skip_gpu_memory)
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        log.info("Wrote %s", args.json)
    return 0 if all(check.passed for check in result.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
