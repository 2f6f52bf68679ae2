"""Gradient ascent on the latent-diffusion loss, through the frozen UNet, into the text encoder."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

TRAINABLE_CHOICES = ("all", "mlp", "attn", "mlp_final_attn", "concept_tokens")
RETAIN_SPACES = ("embedding", "unet")


def select_trainable(text_encoder: torch.nn.Module, trainable: str) -> list[str]:
    """Return the names of the encoder parameters that `trainable` selects.

    Names follow transformers' `CLIPTextModel` (SD 1.x's CLIP ViT-L/14 and SD 2.x's OpenCLIP-H
    alike): `[text_model.]encoder.layers.<i>.{self_attn,mlp,layer_norm1,layer_norm2}`, where
    transformers 4 has the `text_model.` prefix and transformers 5 does not.
    `mlp_final_attn` is the MLP of every layer plus the last layer's self-attention.
    `concept_tokens` is the token-embedding table; the module then keeps every row except the
    concept's own tokens fixed.
    """
    names = [name for name, _ in text_encoder.named_parameters()]
    if trainable == "all":
        return names
    if trainable == "concept_tokens":
        return [n for n in names if n.endswith("token_embedding.weight")]
    if trainable == "mlp":
        selected = [n for n in names if ".mlp." in n]
    elif trainable == "attn":
        selected = [n for n in names if ".self_attn." in n]
    elif trainable == "mlp_final_attn":
        last = text_encoder.config.num_hidden_layers - 1
        selected = [n for n in names if ".mlp." in n or f"layers.{last}.self_attn." in n]
    else:
        raise ValueError(f"trainable='{trainable}' is not supported; use one of {list(TRAINABLE_CHOICES)}")
    if not selected:
        raise ValueError(f"trainable='{trainable}' selects no parameter of {type(text_encoder).__name__}")
    return selected


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """Return what the UNet is trained to predict: the noise, or v for v-prediction schedulers."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type '{prediction_type}'; expected 'epsilon' or 'v_prediction'")


class DivergenceError(RuntimeError):
    """Raised when the unlearning loss becomes NaN or infinite."""


class TextEncoderUnlearning(pl.LightningModule):
    """Maximise the latent-diffusion loss of the concept images by changing only the text encoder.

    loss = -MSE(target, unet(noisy_latents, t, E(prompt))) + retain_weight * retain

    with t uniform over the scheduler's training timesteps and E the text encoder. The retain term
    is off (retain_weight = 0) in the published recipe. It keeps the encoder in place on retain
    prompts (the empty prompt first), against the frozen original encoder E_0:
    - `retain_space="embedding"`: MSE(E(p), E_0(p)) on the last hidden states;
    - `retain_space="unet"`: MSE(unet(x_t, t, E(p)), unet(x_t, t, E_0(p))) on random noisy latents,
      which weighs the drift by how much the UNet reacts to it.
    """

    def __init__(
        self,
        text_encoder: torch.nn.Module,
        unet: torch.nn.Module,
        noise_scheduler: Any,
        tokenizer: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        trainable: str = "all",
        unet_dtype: torch.dtype | None = None,
        retain_weight: float = 0.0,
        retain_prompts: Sequence[str] = (),
        retain_batch_size: int = 8,
        retain_space: str = "embedding",
        concept_names: Sequence[str] = (),
        shared_token_prompts: Sequence[str] = (),
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.text_encoder = text_encoder
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.trainable = trainable
        self.unet_dtype = unet_dtype
        self.retain_weight = float(retain_weight)
        self.retain_prompts = list(retain_prompts)
        self.retain_batch_size = retain_batch_size
        if retain_space not in RETAIN_SPACES:
            raise ValueError(f"retain.space='{retain_space}' is not supported; use one of {list(RETAIN_SPACES)}")
        self.retain_space = retain_space
        # Set when a non-finite loss or gradient stopped training. The encoder then has the
        # parameters that gave the last finite loss.
        self.diverged_at_step: int | None = None
        # Optimizer steps that changed the encoder (Lightning's global_step also counts skipped ones).
        self.applied_steps = 0
        # Trainable parameters as they were before the latest optimizer step, to undo that step when
        # the loss it leads to is not finite.
        self._before_last_step: dict[str, torch.Tensor] | None = None

        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        if gradient_checkpointing:
            # Recompute activations in backward: less GPU memory for about one more forward pass.
            self.unet.enable_gradient_checkpointing()
            # transformers 5 renamed gradient_checkpointing_enable to activation_checkpointing_enable.
            enable = getattr(self.text_encoder, "activation_checkpointing_enable", None)
            (enable or self.text_encoder.gradient_checkpointing_enable)()
        self.trainable_names = select_trainable(text_encoder, trainable)
        params = dict(text_encoder.named_parameters())
        for name in self.trainable_names:
            params[name].requires_grad_(True)

        self._token_mask: torch.Tensor | None = None
        self._original_embeddings: torch.Tensor | None = None
        if trainable == "concept_tokens":
            self._setup_concept_tokens(concept_names, shared_token_prompts)

        if self.retain_weight > 0 and not self.retain_prompts:
            raise ValueError("retain.weight > 0 needs retain prompts; the job passes the empty prompt and the "
                             "preservation prompts, so check the concept configs or set retain.weight=0")
        self._retain_targets: torch.Tensor | None = None
        if self.retain_weight > 0:
            # E_0 is frozen, so its hidden states for the retain prompts are computed once.
            with torch.no_grad():
                self._retain_targets = self.encode(self.retain_prompts).detach().cpu()

    # ---- Lightning wiring -------------------------------------------------------------------

    def _setup_concept_tokens(self, concept_names: Sequence[str], shared_token_prompts: Sequence[str]) -> None:
        """Let only the rows of the concept names' tokens change, except tokens that also occur in
        `shared_token_prompts` ("tower" of "Eiffel Tower" is in "a cat climbing on Tokyo Tower")."""
        if not concept_names:
            raise ValueError("trainable=concept_tokens needs the concept names to find their tokens")
        ids = self.tokenizer(list(concept_names), add_special_tokens=False).input_ids
        name_ids = sorted({i for row in ids for i in row})
        shared: set[int] = set()
        if shared_token_prompts:
            shared = {i for row in self.tokenizer(list(shared_token_prompts), add_special_tokens=False).input_ids
                      for i in row}
        token_ids = [i for i in name_ids if i not in shared]
        if not token_ids:
            names = ", ".join(repr(n) for n in concept_names)
            raise ValueError(f"trainable=concept_tokens: every token of {names} also occurs in a preservation or "
                             "generic retain prompt, so no embedding row may change; pass "
                             "concept_tokens_skip_shared=false to train the shared rows anyway")
        embedding = self.text_encoder.get_input_embeddings().weight
        self._token_mask = torch.zeros(embedding.shape[0], dtype=torch.bool)
        self._token_mask[token_ids] = True
        self._original_embeddings = embedding.detach().clone()
        skipped = sorted(set(name_ids) - set(token_ids))
        log.info("trainable=concept_tokens: %d embedding rows can change (token ids %s), and %d shared with other "
                 "prompts stay fixed (%s)", len(token_ids), token_ids, len(skipped), skipped)

    @property
    def trainable_token_ids(self) -> list[int] | None:
        """Token ids whose embedding rows may change (trainable=concept_tokens), else None."""
        return None if self._token_mask is None else torch.nonzero(self._token_mask).flatten().tolist()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._token_mask is None:
            return
        # Adam's weight decay and momentum move rows whose gradient is zero, so the rows of every
        # other token are copied back after each step: only the concept's own rows change.
        embedding = self.text_encoder.get_input_embeddings().weight
        keep = ~self._token_mask.to(embedding.device)
        with torch.no_grad():
            embedding[keep] = self._original_embeddings.to(embedding.device, embedding.dtype)[keep]

    def train(self, mode: bool = True):
        # The frozen UNet stays in eval mode: training mode would turn on any dropout it has.
        super().train(mode)
        self.unet.eval()
        return self

    def configure_optimizers(self):
        parameters = [p for p in self.text_encoder.parameters() if p.requires_grad]
        return self.optimizer_factory(parameters)

    def on_fit_start(self) -> None:
        if self.unet_dtype is not None:
            self.unet.to(dtype=self.unet_dtype)

    # ---- the math ---------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        # The encoder's own device: before fit, a LightningModule reports "cpu" even when the
        # backend placed the encoder on a GPU.
        device = next(self.text_encoder.parameters()).device
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(device)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Return the encoder's last hidden states `(b, 77, d)`, what the UNet cross-attends to."""
        return self.text_encoder(self.tokenize(prompts))[0]

    def diffusion_mse(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
        """Return the latent-diffusion loss MSE(target, noise_pred) for given noise and timesteps."""
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps)
        unet_dtype = next(self.unet.parameters()).dtype
        noise_pred = self.unet(noisy_latents.to(unet_dtype), timesteps,
                               encoder_hidden_states=encoder_hidden_states.to(unet_dtype)).sample
        return F.mse_loss(noise_pred.float(), target.float(), reduction="mean")

    def retain_loss(self, latent_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Return the drift of the encoder from E_0 on a random batch of retain prompts.

        In the embedding space it is the MSE of the last hidden states; in the UNet space, the MSE
        of the UNet's predictions on random noisy latents of `latent_shape` `(c, h, w)`.
        """
        if self._retain_targets is None:
            return torch.zeros((), device=self.device)
        # The first retain prompt (the empty prompt, which classifier-free guidance encodes on every
        # sampling step) is in every batch; the others are drawn at random.
        count = len(self.retain_prompts)
        others = torch.randperm(count - 1)[: max(0, min(self.retain_batch_size, count) - 1)] + 1
        index = torch.cat([torch.zeros(1, dtype=torch.long), others])
        prompts = [self.retain_prompts[i] for i in index.tolist()]
        hidden = self.encode(prompts).float()
        original = self._retain_targets[index].to(hidden.device).float()
        if self.retain_space == "embedding":
            return F.mse_loss(hidden, original)

        if latent_shape is None:
            raise ValueError("the UNet-space retain term needs the latent shape")
        latents = torch.randn((len(prompts), *latent_shape), device=self.device)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(prompts),),
                                  device=self.device).long()
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        unet_dtype = next(self.unet.parameters()).dtype
        prediction = self.unet(noisy_latents.to(unet_dtype), timesteps,
                               encoder_hidden_states=hidden.to(unet_dtype)).sample
        with torch.no_grad():
            reference = self.unet(noisy_latents.to(unet_dtype), timesteps,
                                  encoder_hidden_states=original.to(unet_dtype)).sample
        return F.mse_loss(prediction.float(), reference.float())

    def training_step(self, batch: dict, batch_idx: int):
        latents = batch["latents"].to(self.device)  # (b, c, h, w)
        noise = torch.randn_like(latents)
        num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), device=self.device).long()
        encoder_hidden_states = self.encode(batch["prompts"])
        mse = self.diffusion_mse(latents, encoder_hidden_states, noise, timesteps)
        loss = -mse
        if self.retain_weight > 0:
            retain = self.retain_loss(tuple(latents.shape[1:]))
            loss = loss + self.retain_weight * retain
            self.log("train/retain", retain.detach(), on_step=True, batch_size=len(latents))

        if not torch.isfinite(loss):
            # The parameters that gave this loss came from the previous step: undo it, so the encoder
            # has the parameters of the last finite loss. Returning None skips backward and the
            # optimizer step.
            self._undo_last_step()
            self._stop_on_divergence(f"loss is {loss.item()}")
            return None
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(latents))
        self.log("train/diffusion_mse", mse.detach(), on_step=True, batch_size=len(latents))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # Under fp16 mixed precision the gradient scaler skips steps with inf gradients and lowers
        # its scale, which is normal in the first steps: only a non-finite loss means divergence then.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        grads = [p.grad for p in self.text_encoder.parameters() if p.grad is not None]
        if not grads or self.diverged_at_step is not None:
            # Lightning still calls this hook when training_step returned None: nothing to apply.
            return
        # One fused norm over all gradients: a per-tensor isfinite check costs seconds per step on
        # SD's 123M-parameter encoder (measured by the bench), the norm about 0.1 s.
        if scaler is None and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            # Dropping the gradients makes the optimizer skip every parameter this step.
            optimizer.zero_grad(set_to_none=True)
            self._stop_on_divergence("a gradient is NaN or infinite")
            return
        self._before_last_step = {name: p.detach().clone() for name, p in self.text_encoder.named_parameters()
                                  if p.requires_grad}
        self.applied_steps += 1

    def _undo_last_step(self) -> None:
        if self._before_last_step is None:
            return
        parameters = dict(self.text_encoder.named_parameters())
        with torch.no_grad():
            for name, value in self._before_last_step.items():
                parameters[name].copy_(value)
        self.applied_steps -= 1
        self._before_last_step = None

    def _stop_on_divergence(self, reason: str) -> None:
        self.diverged_at_step = int(self.global_step)
        log.error("Unlearning diverged at step %d: %s. Training stops here; the encoder keeps the "
                  "parameters of the last finite step. Lower optim.lr or add a retain term.",
                  self.global_step, reason)
        self.trainer.should_stop = True


def expected_optimizer_steps(num_images: int, batch_size: int, epochs: int) -> int:
    return math.ceil(num_images / batch_size) * epochs
