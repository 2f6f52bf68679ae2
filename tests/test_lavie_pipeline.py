"""LaVie sampling pipeline on tiny random components: seeding, guidance, encoder swapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from t2v_unlearn.models.lavie import LaViePipeline, LaVieUNet3DConditionModel, lavie_scheduler
from t2v_unlearn.tokenizer import build_clip_tokenizer

DATA = Path(__file__).parent / "data" / "lavie"
# 4 frames of 64x64 pixels: 8x8 latents, the tiny UNet's sample size.
CALL_KWARGS = {"num_frames": 4, "height": 64, "width": 64, "num_inference_steps": 3}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The tensors are tiny, so extra intra-op threads only add synchronisation. On a busy machine
    # (2 shared cores, load average 6), a tiny LaVie pipeline call took 10 s on two threads, 0.2 s on one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_text_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=48,  # the tiny UNet's cross_attention_dim
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config).eval()


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    # Four resolutions give SD's VAE factor of 8.
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()


def tiny_unet() -> LaVieUNet3DConditionModel:
    config = json.loads((DATA / "tiny_config.json").read_text())
    model = LaVieUNet3DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict(load_file(DATA / "tiny_unet.safetensors"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


@pytest.fixture
def pipe(tokenizer) -> LaViePipeline:
    pipeline = LaViePipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(seed=0),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=lavie_scheduler(),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe: LaViePipeline, prompt="a photo of snoopy", seed=0, **kwargs) -> np.ndarray:
    kwargs = {**CALL_KWARGS, **kwargs}
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def test_tokenizer_ids(tokenizer):
    assert tokenizer("a photo of snoopy").input_ids == [49406, 320, 1125, 539, 41967, 49407]
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408


def test_scheduler_matches_lavie():
    scheduler = lavie_scheduler()
    scheduler.set_timesteps(50)

    assert scheduler.timesteps.tolist() == list(range(980, -1, -20))
    torch.testing.assert_close(scheduler.betas, torch.linspace(1e-4, 0.02, 1000))
    assert scheduler.config.clip_sample is False
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.variance_type == "fixed_small"


def test_output_shape_and_range(pipe):
    frames = generate(pipe)

    assert isinstance(frames, np.ndarray)
    assert frames.dtype == np.float32
    assert frames.shape == (1, 4, 64, 64, 3)
    assert frames.min() >= 0.0
    assert frames.max() <= 1.0
    assert frames.std() > 0


def test_same_seed_same_frames(pipe):
    first = generate(pipe, seed=3)
    second = generate(pipe, seed=3)
    other_seed = generate(pipe, seed=4)

    np.testing.assert_array_equal(first, second)
    assert np.abs(first - other_seed).max() > 1e-3


def test_swapped_text_encoder_changes_frames(pipe):
    before = generate(pipe)
    pipe.text_encoder = tiny_text_encoder(seed=1)
    after = generate(pipe)

    assert np.abs(before - after).max() > 1e-3


def test_guidance_batches_uncond_then_cond(pipe):
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    generate(pipe, prompt="a photo of snoopy", guidance_scale=7.5, num_inference_steps=1)
    with torch.no_grad():
        uncond = pipe.encode_prompt([""], torch.device("cpu"))
        cond = pipe.encode_prompt(["a photo of snoopy"], torch.device("cpu"))

    assert len(seen) == 1
    assert seen[0].shape == (2, 77, 48)
    torch.testing.assert_close(seen[0][:1], uncond, atol=0, rtol=0)
    torch.testing.assert_close(seen[0][1:], cond, atol=0, rtol=0)


def test_guidance_one_skips_uncond(pipe):
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[2].shape))
    first = generate(pipe, guidance_scale=1.0, negative_prompt="")
    second = generate(pipe, guidance_scale=1.0, negative_prompt="a cat")

    assert seen[0] == (1, 77, 48)
    np.testing.assert_array_equal(first, second)


def test_guidance_formula(pipe, monkeypatch):
    eps_uncond = torch.full((1, 4, 4, 8, 8), 0.1)
    eps_cond = torch.full((1, 4, 4, 8, 8), 0.3)
    fixed_output = UNet3DConditionOutput(sample=torch.cat([eps_uncond, eps_cond]))
    monkeypatch.setattr(pipe.unet, "forward", lambda *args, **kwargs: fixed_output)
    noise_preds = []
    original_step = pipe.scheduler.step

    def recording_step(noise_pred, *args, **kwargs):
        noise_preds.append(noise_pred)
        return original_step(noise_pred, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", recording_step)
    generate(pipe, guidance_scale=7.5, num_inference_steps=1, output_type="latent")

    assert len(noise_preds) == 1
    torch.testing.assert_close(noise_preds[0], eps_uncond + 7.5 * (eps_cond - eps_uncond))


def test_generator_list_one_per_prompt(pipe):
    batched = pipe(
        ["a photo of snoopy", "a photo of mickey"],
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        **CALL_KWARGS,
    ).frames
    single = generate(pipe, prompt="a photo of mickey", seed=1)

    assert batched.shape == (2, 4, 64, 64, 3)
    np.testing.assert_allclose(batched[1:], single, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_latent_output_shape(pipe):
    latents = generate(pipe, output_type="latent")

    assert latents.shape == (1, 4, 4, 8, 8)


def test_given_latents_used(pipe):
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    first = generate(pipe, seed=0, latents=latents)
    second = generate(pipe, seed=0, latents=latents.clone())
    from_seed = generate(pipe, seed=0)

    np.testing.assert_array_equal(first, second)
    assert np.abs(first - from_seed).max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 60}, "multiples of 8"),
        ({"num_frames": 0}, "num_frames"),
        ({"output_type": "pil"}, "output_type"),
        ({"negative_prompt": ["", ""]}, "negative prompts"),
        ({"latents": torch.zeros(1, 4, 2, 8, 8)}, "latents have shape"),
    ],
)
def test_invalid_arguments_rejected(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, **kwargs)


def test_generator_count_rejected(pipe):
    with pytest.raises(ValueError, match="one per prompt"):
        pipe(["a", "b"], generator=[torch.Generator()], **CALL_KWARGS)
