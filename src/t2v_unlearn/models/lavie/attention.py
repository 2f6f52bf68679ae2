"""LaVie's spatio-temporal transformer: spatial, text and temporal attention in one block.

Each transformer block of LaVie's base UNet runs, pre-norm with a residual around every step:
self-attention over the H*W tokens of one frame, cross-attention to the text, temporal attention
over the frames at each pixel position, then a GEGLU feed-forward. Temporal attention adds a
rotary position embedding (frame index as position) and a learned T5-style relative-position bias.
State-dict names follow LaVie's checkpoints (`attn_temp.*`, `norm_temp.*`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

# LaVie builds one rotary embedding of width 32 per UNet and hands it to every temporal attention.
ROTARY_DIM = 32
# The relative-position bias uses T5's bidirectional bucketing with these settings.
NUM_RELATIVE_BUCKETS = 32
MAX_RELATIVE_DISTANCE = 32


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over frame indices, applied to the first `dim` channels of a head.

    Channel pairs (0, 1), (2, 3), ... rotate by the angle `position * freqs[k]` with
    `freqs[k] = 10000^(-2k/dim)`. Channels past `dim` pass through unchanged.
    """

    def __init__(self, dim: int = ROTARY_DIM, theta: float = 10000.0):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"rotary dim must be even, got {dim}")
        self.dim = dim
        # A buffer, not a parameter: the frequencies are a constant, so optimizers and
        # `requires_grad_` calls never reach them, but checkpoints still carry them.
        # Written as 1 / theta^(2k/dim), which rounds exactly like LaVie's stored float32 values.
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("freqs", freqs)
        self.register_state_dict_post_hook(_copy_freqs_entry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate `x` of shape (..., frames, head_dim) by frame position 0..frames-1."""
        num_frames, head_dim = x.shape[-2], x.shape[-1]
        if head_dim < self.dim:
            raise ValueError(f"head width {head_dim} is smaller than the rotary dim {self.dim}")

        # NOTE: angles are computed in float32 even when the model runs in fp16. LaVie's fp16
        # pipeline computes them in fp16, so fp16 outputs may differ slightly from LaVie's.
        positions = torch.arange(num_frames, device=x.device, dtype=torch.float32)
        angles = positions[:, None] * self.freqs.float()[None, :]  # (f, dim/2)
        angles = angles.repeat_interleave(2, dim=-1)  # (f, dim): pairs share one angle
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)

        x_rot, x_pass = x[..., : self.dim], x[..., self.dim :]
        pairs = x_rot.unflatten(-1, (-1, 2))  # (..., f, dim/2, 2)
        # For a pair (x0, x1), rotate_half gives (-x1, x0).
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        x_rot = x_rot * cos + rotated_half * sin
        return torch.cat((x_rot, x_pass), dim=-1)


def _copy_freqs_entry(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    # The shared module appears once per temporal attention in `state_dict()`, so all its entries
    # alias one tensor. safetensors' save_file (used by `save_pretrained`) rejects tensors that
    # share memory, so each entry gets its own copy.
    key = prefix + "freqs"
    if key in state_dict:
        state_dict[key] = state_dict[key].clone()


class RelativePositionBias(nn.Module):
    """Learned attention-logit bias per head, indexed by T5's bidirectional distance buckets."""

    def __init__(
        self,
        heads: int,
        num_buckets: int = NUM_RELATIVE_BUCKETS,
        max_distance: int = MAX_RELATIVE_DISTANCE,
    ):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def bucket(self, distance: torch.Tensor) -> torch.Tensor:
        """Map `distance = query frame - key frame` to a bucket index.

        Half the buckets take d >= 0 and half take d < 0. Inside each half, distances below a
        quarter of the buckets are exact and larger ones are spaced logarithmically up to
        `max_distance`.
        """
        half = self.num_buckets // 2
        offset = (distance < 0).long() * half
        n = distance.abs()
        max_exact = half // 2
        # The log is taken in float32 and truncated toward zero, so n = 9 and n = 8 share bucket 8.
        log_ratio = torch.log(n.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact)
        large = max_exact + (log_ratio * (half - max_exact)).long()
        large = large.clamp(max=half - 1)
        return offset + torch.where(n < max_exact, n, large)

    def forward(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """Return the bias of shape (heads, frames, frames) for query frame i and key frame j."""
        frames = torch.arange(num_frames, device=device)
        distance = frames[:, None] - frames[None, :]  # (f_query, f_key)
        bias = self.relative_attention_bias(self.bucket(distance))  # (f, f, heads)
        return bias.permute(2, 0, 1)


class TemporalAttention(nn.Module):
    """Multi-head self-attention along the frame axis with rotary positions and a relative bias."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary_emb: RotaryEmbedding):
        super().__init__()
        inner_dim = heads * dim_head
        if dim_head < rotary_emb.dim:
            raise ValueError(
                f"temporal attention head width {dim_head} is smaller than the rotary dim {rotary_emb.dim}. "
                "Use fewer heads, wider blocks or a smaller rotary_dim."
            )
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim), nn.Dropout(0.0)])
        self.time_rel_pos_bias = RelativePositionBias(heads)
        self.rotary_emb = rotary_emb

        # Zero output projection: a freshly added temporal layer adds nothing to its residual
        # branch, so a model inflated from 2-D weights starts close to the image model.
        nn.init.zeros_(self.to_out[0].weight)
        nn.init.zeros_(self.to_out[0].bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Attend over the frames of `hidden_states` (batch * pixels, frames, dim)."""
        num_frames = hidden_states.shape[1]

        # (n, f, heads * d) -> (n, heads, f, d)
        query, key, value = (
            proj(hidden_states).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        query = self.rotary_emb(query)
        key = self.rotary_emb(key)
        bias = self.time_rel_pos_bias(num_frames, hidden_states.device).to(query.dtype)  # (heads, f, f)

        # softmax(q k^T * scale + bias) v, with no mask and no causal restriction.
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=self.scale)
        hidden_states = hidden_states.transpose(1, 2).flatten(2)  # (n, f, heads * d)
        return self.to_out[1](self.to_out[0](hidden_states))


class LaVieTransformerBlock(nn.Module):
    """Spatial self-attention, text cross-attention, temporal attention and a GEGLU feed-forward.

    Modules are registered in LaVie's order (attn1, norm1, attn2, norm2, attn_temp, norm_temp, ff,
    norm3), so `state_dict()` lists keys in the order of LaVie's checkpoints.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int,
        rotary_emb: RotaryEmbedding,
    ):
        super().__init__()
        self.attn1 = Attention(dim, heads=num_attention_heads, dim_head=attention_head_dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            dim,
            cross_attention_dim=cross_attention_dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            bias=False,
        )
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, num_attention_heads, attention_head_dim, rotary_emb)
        self.norm_temp = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        """Run the block on `hidden_states` (b*f, h*w, c) with text `encoder_hidden_states` (b*f, l, d)."""
        hidden_states = self.attn1(self.norm1(hidden_states)) + hidden_states
        hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states) + hidden_states

        # Regroup so that each pixel position of each video is a sequence over frames.
        batch_frames, num_pixels, channels = hidden_states.shape
        batch = batch_frames // num_frames
        hidden_states = (
            hidden_states.view(batch, num_frames, num_pixels, channels)
            .transpose(1, 2)
            .reshape(batch * num_pixels, num_frames, channels)
        )  # (b*h*w, f, c)
        hidden_states = self.attn_temp(self.norm_temp(hidden_states)) + hidden_states
        hidden_states = (
            hidden_states.view(batch, num_pixels, num_frames, channels)
            .transpose(1, 2)
            .reshape(batch_frames, num_pixels, channels)
        )  # (b*f, h*w, c)

        return self.ff(self.norm3(hidden_states)) + hidden_states


class LaVieTransformer3DModel(nn.Module):
    """Transformer wrapper (`attentions.j` in the UNet): GroupNorm, 1x1 conv in, blocks, 1x1 conv out.

    The GroupNorm runs per frame (frames folded into the batch), unlike the ResNets' GroupNorms,
    which span all frames of a video. The wrapper adds its input back to its output.
    """

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        cross_attention_dim: int,
        rotary_emb: RotaryEmbedding,
        num_layers: int = 1,
        norm_num_groups: int = 32,
    ):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                LaVieTransformerBlock(
                    inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim, rotary_emb
                )
                for _ in range(num_layers)
            ]
        )
        self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Map `hidden_states` (b, c, f, h, w) to the same shape; `encoder_hidden_states` is (b, l, d)."""
        batch, channels, num_frames, height, width = hidden_states.shape
        # Frames fold into the batch with b outer and f inner; each video's text repeats per frame.
        hidden_states = hidden_states.transpose(1, 2).reshape(batch * num_frames, channels, height, width)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)  # (b*f, l, d)
        residual = hidden_states

        hidden_states = self.proj_in(self.norm(hidden_states))
        inner_dim = hidden_states.shape[1]
        hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (b*f, h*w, c)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, encoder_hidden_states, num_frames)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch * num_frames, inner_dim, height, width)
        hidden_states = self.proj_out(hidden_states) + residual

        return hidden_states.view(batch, num_frames, channels, height, width).transpose(1, 2)
