import copy
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from diffusers import DDPMScheduler

from t2v_unlearn.concepts import Concept, PromptTemplates
from t2v_unlearn.data import LatentPromptDataset, UnlearningDataModule, encode_images
from t2v_unlearn.unlearn import (
    TextEncoderUnlearning,
    diffusion_target,
    expected_optimizer_steps,
    select_trainable,
)

CONCEPT = Concept(key="eiffel", name="Eiffel Tower", kind="object", image_prompts=("a photo of the Eiffel Tower",),
                  eval_prompts=("a cat on the Eiffel Tower",), preserve_prompts=(), probe="a photo of the Eiffel Tower",
                  anchors=("a photo",))
TEMPLATES = PromptTemplates(object=["a photo of a {}", "a rendering of a {}"], style=["a painting in the style of {}"])
PUBLISHED_ADAM = dict(lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-8)


def make_module(backend, lr=1e-3, **kwargs):
    return TextEncoderUnlearning(
        text_encoder=backend.text_encoder,
        unet=backend.unet,
        noise_scheduler=backend.noise_scheduler,
        tokenizer=backend.tokenizer,
        optimizer=lambda params: torch.optim.Adam(params, **{**PUBLISHED_ADAM, "lr": lr}),
        **kwargs,
    )


def make_datamodule(backend, num_images=4, batch_size=2):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)
    latents = encode_images(backend.vae, images, torch.Generator().manual_seed(0))
    dataset = LatentPromptDataset(latents, [CONCEPT], TEMPLATES, [0] * num_images)
    return UnlearningDataModule(dataset, batch_size=batch_size)


def fit(module, datamodule, epochs=1):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_encoder_parameters_change(tiny_backend):
    unet_before = state(tiny_backend.unet)
    vae_before = state(tiny_backend.vae)
    encoder_before = state(tiny_backend.text_encoder)
    module = make_module(tiny_backend)
    fit(module, make_datamodule(tiny_backend), epochs=2)

    for key, value in state(tiny_backend.unet).items():
        assert torch.equal(value, unet_before[key]), f"UNet tensor {key} changed"
    for key, value in state(tiny_backend.vae).items():
        assert torch.equal(value, vae_before[key]), f"VAE tensor {key} changed"
    changed = [k for k, v in state(tiny_backend.text_encoder).items() if not torch.equal(v, encoder_before[k])]
    # transformers 4 prefixes the keys with "text_model.", transformers 5 does not.
    assert any(k.endswith("encoder.layers.0.mlp.fc1.weight") for k in changed)
    assert any(k.endswith("final_layer_norm.weight") for k in changed)


def test_loss_is_negated_mse_on_known_batch(tiny_backend):
    module = make_module(tiny_backend)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    prompts = ["a photo of a Eiffel Tower", "a rendering of a Eiffel Tower"]

    torch.manual_seed(123)
    loss = module.training_step({"latents": latents, "prompts": prompts}, 0)

    # Replay the random draws of training_step in the same order: noise, then timesteps.
    torch.manual_seed(123)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (2,)).long()
    alphas_cumprod = tiny_backend.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alphas_cumprod.sqrt() * latents + (1 - alphas_cumprod).sqrt() * noise
    ids = tiny_backend.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny_backend.text_encoder(ids)[0]
        noise_pred = tiny_backend.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
    expected = -((noise_pred - noise) ** 2).mean()

    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert loss.item() < 0


def test_v_prediction_target_formula():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([0, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(diffusion_target(scheduler, latents, noise, timesteps), expected)


def test_epsilon_target_is_noise():
    scheduler = DDPMScheduler(prediction_type="epsilon")
    noise = torch.randn(2, 4, 8, 8)
    assert diffusion_target(scheduler, torch.zeros_like(noise), noise, torch.tensor([1, 2])) is noise


@pytest.mark.parametrize("num_images,batch_size,epochs", [(4, 2, 5), (3, 2, 2), (1, 2, 3)])
def test_optimizer_step_count(tiny_backend, num_images, batch_size, epochs):
    module = make_module(tiny_backend)
    trainer = fit(module, make_datamodule(tiny_backend, num_images, batch_size), epochs=epochs)
    assert trainer.global_step == math.ceil(num_images / batch_size) * epochs
    assert trainer.global_step == expected_optimizer_steps(num_images, batch_size, epochs)


def test_trainable_selection_names(tiny_backend):
    encoder = tiny_backend.text_encoder
    mlp = select_trainable(encoder, "mlp")
    attn = select_trainable(encoder, "attn")
    mixed = select_trainable(encoder, "mlp_final_attn")
    assert mlp and all(".mlp." in n for n in mlp)
    assert attn and all(".self_attn." in n for n in attn)
    assert set(mlp) < set(mixed)
    assert {n for n in mixed if ".self_attn." in n} == {n for n in attn if "layers.1." in n}
    assert len(select_trainable(encoder, "all")) == len(list(encoder.parameters()))
    with pytest.raises(ValueError, match="trainable='everything'"):
        select_trainable(encoder, "everything")


def test_trainable_mlp_leaves_attention_unchanged(tiny_backend):
    before = state(tiny_backend.text_encoder)
    fit(make_module(tiny_backend, trainable="mlp"), make_datamodule(tiny_backend))
    after = state(tiny_backend.text_encoder)
    for key in before:
        if ".mlp." in key:
            continue
        assert torch.equal(before[key], after[key]), f"{key} changed with trainable=mlp"
    fc2 = next(k for k in before if k.endswith("encoder.layers.0.mlp.fc2.weight"))
    assert not torch.equal(before[fc2], after[fc2])


def test_nonfinite_loss_stops_and_keeps_encoder(tiny_backend):
    module = make_module(tiny_backend)
    datamodule = make_datamodule(tiny_backend, num_images=6, batch_size=2)
    original_mse = module.diffusion_mse
    calls = {"n": 0}

    def mse_that_overflows(*args, **kwargs):
        calls["n"] += 1
        value = original_mse(*args, **kwargs)
        return value * float("inf") if calls["n"] == 3 else value

    module.diffusion_mse = mse_that_overflows
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            snapshots.append(copy.deepcopy(state(pl_module.text_encoder)))

    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[Snapshot()])
    trainer.fit(module, datamodule=datamodule)

    # Steps 0 and 1 applied; the loss of step 2 is infinite, so step 1 is undone: the encoder is
    # the one that gave the last finite loss (after step 0).
    assert module.diverged_at_step == 2
    assert module.applied_steps == 1
    # Lightning counts the skipped step too; without the stop it would run 9 steps.
    assert trainer.global_step == 3
    assert len(snapshots) == 3
    final = state(module.text_encoder)
    for key, value in final.items():
        assert torch.isfinite(value).all(), f"{key} is not finite"
        assert torch.equal(value, snapshots[0][key]), f"{key} is not the encoder of the last finite loss"


def test_gradient_checkpointing_same_gradients(tiny_backend):
    from t2v_unlearn.backends.tiny import build_tiny_animatediff_backend

    other_backend = build_tiny_animatediff_backend(seed=0, num_inference_steps=2)
    plain = make_module(tiny_backend)
    checkpointed = make_module(other_backend, gradient_checkpointing=True)
    plain.train()
    checkpointed.train()
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    batch = {"latents": latents, "prompts": ["a photo of a Eiffel Tower", "a rendering of a Eiffel Tower"]}
    for module in (plain, checkpointed):
        torch.manual_seed(7)
        module.training_step(batch, 0).backward()
    plain_grads = dict(plain.text_encoder.named_parameters())
    for name, parameter in checkpointed.text_encoder.named_parameters():
        torch.testing.assert_close(parameter.grad, plain_grads[name].grad, rtol=1e-4, atol=1e-6)
