"""LaVie's base text-to-video UNet: SD 1.x's UNet with temporal attention in every transformer.

The state-dict keys are those of diffusers' `UNet2DConditionModel` plus 9 `_temp` entries per
transformer block, so LaVie's `.pt` checkpoints load strictly (see `convert.py`). The config
fields are those of LaVie's `UNet3DConditionModel`. As in SD 1.x, `attention_head_dim` is the
number of attention heads, not their width.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from torch import nn

from .attention import ROTARY_DIM, RotaryEmbedding
from .blocks import DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D, apply_per_frame

logger = logging.getLogger(__name__)

_CROSS_ATTENTION_BLOCKS = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
_CROSS_ATTENTION_UP_BLOCKS = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}

# Config values of LaVie's UNet that this implementation supports only at their base-model value.
# LaVie's base model uses exactly these, and other values need modules that it never builds.
_FIXED_CONFIG = {
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "use_first_frame": False,
    "use_relative_position": False,
}

# `UNet2DConditionModel` settings that `from_unet2d` can inflate, besides those in `_FIXED_CONFIG`:
# any other value builds modules or keys that LaVie's UNet does not have.
_UNET2D_DEFAULTS = {
    "dropout": 0.0,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
}

# Config fields copied unchanged from a 2-D UNet's config by `from_unet2d`.
_SHARED_FIELDS = (
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "flip_sin_to_cos",
    "freq_shift",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
)


class LaVieUNet3DConditionModel(ModelMixin, ConfigMixin):
    """Epsilon-prediction video UNet: (b, c, f, h, w) latents + timestep + text -> noise.

    Defaults are LaVie's base model (SD 1.4's UNet config with 3-D block types). Every temporal
    attention shares one `RotaryEmbedding`, so `state_dict()` lists its `freqs` once per transformer
    block, as LaVie's checkpoints do.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        only_cross_attention: bool = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        attention_head_dim: int | tuple[int, ...] = 8,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        use_first_frame: bool = False,
        use_relative_position: bool = False,
        rotary_dim: int = ROTARY_DIM,
    ):
        super().__init__()
        self._check_config(locals())
        num_blocks = len(block_out_channels)
        if isinstance(attention_head_dim, int):
            attention_head_dim = (attention_head_dim,) * num_blocks
        # SD 1.x naming: `attention_head_dim` holds the head count of each block.
        num_attention_heads = tuple(attention_head_dim)

        time_embed_dim = block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)
        # One rotary embedding, shared by every temporal attention of the model.
        # LaVie's is 32 wide; smaller models whose temporal heads are narrower need a smaller one.
        rotary_emb = RotaryEmbedding(rotary_dim)

        # Registered before the mid block, so `state_dict()` lists keys in LaVie's order.
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel = output_channel
            output_channel = block_out_channels[i]
            attention_args = {}
            if _CROSS_ATTENTION_BLOCKS[block_type]:
                attention_args = {
                    "num_attention_heads": num_attention_heads[i],
                    "cross_attention_dim": cross_attention_dim,
                    "rotary_emb": rotary_emb,
                }
            self.down_blocks.append(
                DownBlock3D(
                    num_layers=layers_per_block,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=i < num_blocks - 1,
                    resnet_groups=norm_num_groups,
                    resnet_eps=norm_eps,
                    act_fn=act_fn,
                    downsample_padding=downsample_padding,
                    **attention_args,
                )
            )

        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=block_out_channels[-1],
            temb_channels=time_embed_dim,
            resnet_groups=norm_num_groups,
            resnet_eps=norm_eps,
            act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor,
            num_attention_heads=num_attention_heads[-1],
            cross_attention_dim=cross_attention_dim,
            rotary_emb=rotary_emb,
        )

        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(num_attention_heads))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel = output_channel
            output_channel = reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, num_blocks - 1)]
            attention_args = {}
            if _CROSS_ATTENTION_UP_BLOCKS[block_type]:
                attention_args = {
                    "num_attention_heads": reversed_heads[i],
                    "cross_attention_dim": cross_attention_dim,
                    "rotary_emb": rotary_emb,
                }
            self.up_blocks.append(
                UpBlock3D(
                    # One more ResNet than a down block: it takes the down block's input skip.
                    num_layers=layers_per_block + 1,
                    in_channels=input_channel,
                    prev_output_channel=prev_output_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_upsample=i < num_blocks - 1,
                    resnet_groups=norm_num_groups,
                    resnet_eps=norm_eps,
                    act_fn=act_fn,
                    **attention_args,
                )
            )

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    @staticmethod
    def _check_config(config: dict[str, Any]) -> None:
        for name, supported in _FIXED_CONFIG.items():
            if config[name] != supported:
                raise ValueError(
                    f"{name}={config[name]!r} is not supported. LaVie's base UNet uses {name}={supported!r}."
                )
        num_blocks = len(config["block_out_channels"])
        if len(config["down_block_types"]) != num_blocks or len(config["up_block_types"]) != num_blocks:
            raise ValueError(
                "down_block_types and up_block_types need one entry per block_out_channels entry "
                f"({num_blocks})"
            )
        for block_type in config["down_block_types"]:
            if block_type not in _CROSS_ATTENTION_BLOCKS:
                raise ValueError(
                    f"unknown down block type {block_type!r}, "
                    f"expected one of {sorted(_CROSS_ATTENTION_BLOCKS)}"
                )
        for block_type in config["up_block_types"]:
            if block_type not in _CROSS_ATTENTION_UP_BLOCKS:
                raise ValueError(
                    f"unknown up block type {block_type!r}, "
                    f"expected one of {sorted(_CROSS_ATTENTION_UP_BLOCKS)}"
                )
        if not isinstance(config["layers_per_block"], int):
            raise ValueError(f"layers_per_block must be an int, got {config['layers_per_block']!r}")
        heads = config["attention_head_dim"]
        if not isinstance(heads, int) and len(heads) != num_blocks:
            raise ValueError(
                f"attention_head_dim needs one head count per block ({num_blocks}), got {heads!r}"
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Predict the noise in `sample` (b, c, f, h, w) at `timestep` given text (b, l, d).

        `timestep` may be a number, a 0-d tensor or a (b,) tensor. All frames of a video share it.
        """
        if sample.ndim != 5:
            raise ValueError(
                f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}"
            )
        batch = sample.shape[0]
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, "
                f"but sample has batch {batch}. Pass one text embedding per video."
            )

        # Each upsampler doubles H and W. When a size is not a multiple of the total factor, the
        # up blocks take their size from the matching skip connection instead.
        upsample_factor = 2 ** (len(self.up_blocks) - 1)
        forward_upsample_size = any(size % upsample_factor != 0 for size in sample.shape[-2:])

        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float32 if isinstance(timesteps, float) else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(batch)
        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)  # (b, c0) sinusoid
        emb = self.time_embedding(t_emb)  # (b, 4*c0)

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        sample = apply_per_frame(self.conv_in, sample)

        down_block_res_samples = (sample,)
        for down_block in self.down_blocks:
            sample, res_samples = down_block(sample, emb, encoder_hidden_states)
            down_block_res_samples += res_samples

        sample = self.mid_block(sample, emb, encoder_hidden_states)

        for i, up_block in enumerate(self.up_blocks):
            num_skips = len(up_block.resnets)
            res_samples = down_block_res_samples[-num_skips:]
            down_block_res_samples = down_block_res_samples[:-num_skips]
            upsample_size = None
            if forward_upsample_size and i < len(self.up_blocks) - 1:
                upsample_size = down_block_res_samples[-1].shape[-2:]
            sample = up_block(sample, res_samples, emb, encoder_hidden_states, upsample_size)

        # GroupNorm on the 5-D tensor: statistics over all frames of a video.
        sample = self.conv_act(self.conv_norm_out(sample))
        sample = apply_per_frame(self.conv_out, sample)

        if not return_dict:
            return (sample,)
        return UNet3DConditionOutput(sample=sample)

    @classmethod
    def from_unet2d(cls, unet2d: UNet2DConditionModel, rotary_dim: int = ROTARY_DIM) -> LaVieUNet3DConditionModel:
        """Inflate an SD-style image UNet: copy all its weights and add fresh temporal layers.

        Every key without `_temp` comes from `unet2d`. The `_temp` keys keep their fresh init,
        whose zero temporal output projection makes the new model start as `unet2d` applied frame
        by frame. The match is exact for one frame or identical frames (see the note in the body).
        The result has the device and dtype of `unet2d`. `rotary_dim` is the width of the rotary
        position embedding (LaVie's 32); it must not exceed the narrowest attention head.
        """
        config = dict(unet2d.config)
        for name, default in _UNET2D_DEFAULTS.items():
            if config.get(name, default) != default:
                raise ValueError(f"cannot inflate a UNet2DConditionModel with {name}={config[name]!r}")

        heads = config.get("num_attention_heads") or config["attention_head_dim"]
        config_3d = {name: config[name] for name in _SHARED_FIELDS}
        config_3d.update(
            down_block_types=[name.replace("2D", "3D") for name in config["down_block_types"]],
            up_block_types=[name.replace("2D", "3D") for name in config["up_block_types"]],
            mid_block_type=config["mid_block_type"] and config["mid_block_type"].replace("2D", "3D"),
            attention_head_dim=heads if isinstance(heads, int) else list(heads),
            only_cross_attention=config["only_cross_attention"],
            dual_cross_attention=config["dual_cross_attention"],
            use_linear_projection=config["use_linear_projection"],
            class_embed_type=config["class_embed_type"],
            num_class_embeds=config["num_class_embeds"],
            upcast_attention=config["upcast_attention"],
            resnet_time_scale_shift=config["resnet_time_scale_shift"],
            rotary_dim=rotary_dim,
        )
        model = cls(**config_3d)

        # NOTE: the ResNet GroupNorms of the 3-D model pool statistics over all frames, so for
        # distinct frames the inflated model can differ from the per-frame image model.
        missing, unexpected = model.load_state_dict(unet2d.state_dict(), strict=False)
        temporal_keys = {key for key in model.state_dict() if "_temp" in key}
        if unexpected or set(missing) != temporal_keys:
            raise ValueError(
                f"2-D weights do not fit the 3-D model: unexpected {unexpected[:5]}, "
                f"missing 2-D keys {sorted(set(missing) - temporal_keys)[:5]}"
            )
        logger.info(
            "Inflated a 2-D UNet: %d keys copied, %d temporal keys freshly initialised",
            len(unet2d.state_dict()),
            len(temporal_keys),
        )
        return model.to(device=unet2d.device, dtype=unet2d.dtype)
