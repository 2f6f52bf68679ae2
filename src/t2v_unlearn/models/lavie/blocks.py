"""ResNet, down, mid and up blocks of LaVie's base UNet, on video tensors of shape (b, c, f, h, w).

Convolutions, resampling and transformers work per frame. The ResNets' GroupNorms run on the
5-D tensor, so their statistics cover all frames of a video. Key names match diffusers'
`UNet2DConditionModel` (`resnets.j`, `attentions.j`, `downsamplers.0.conv`, `upsamplers.0.conv`).
"""

from __future__ import annotations

import torch
from diffusers.models.activations import get_activation
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .attention import LaVieTransformer3DModel, RotaryEmbedding


def apply_per_frame(module: nn.Module, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """Run a 2-D image module on every frame of `hidden_states` (b, c, f, h, w)."""
    batch, _, num_frames = hidden_states.shape[:3]
    frames = hidden_states.transpose(1, 2).flatten(0, 1)  # (b*f, c, h, w)
    frames = module(frames, **kwargs)
    return frames.unflatten(0, (batch, num_frames)).transpose(1, 2)  # (b, c', f, h', w')


class ResnetBlock3D(nn.Module):
    """SD's ResNet block with per-frame 3x3 convs and GroupNorms over all frames of a video."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        act_fn: str,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )
        self.output_scale_factor = output_scale_factor

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Map `input_tensor` (b, c_in, f, h, w) and `temb` (b, t) to (b, c_out, f, h, w)."""
        hidden_states = self.nonlinearity(self.norm1(input_tensor))
        hidden_states = apply_per_frame(self.conv1, hidden_states)
        # One timestep per video: the projection broadcasts over frames and pixels.
        hidden_states = hidden_states + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None, None]
        hidden_states = self.nonlinearity(self.norm2(hidden_states))
        hidden_states = apply_per_frame(self.conv2, self.dropout(hidden_states))

        if self.conv_shortcut is not None:
            input_tensor = apply_per_frame(self.conv_shortcut, input_tensor)
        return (input_tensor + hidden_states) / self.output_scale_factor


class _CheckpointedBlock(nn.Module):
    """Base of the UNet blocks: runs sub-modules through diffusers' gradient checkpointing hook."""

    def __init__(self):
        super().__init__()
        # `ModelMixin.enable_gradient_checkpointing` sets both attributes on every module that has
        # `gradient_checkpointing`.
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)


def _check_groups(channels: int, groups: int) -> None:
    if channels % groups != 0:
        raise ValueError(f"norm_num_groups={groups} does not divide the block width {channels}")


def _transformers(
    num_layers: int,
    channels: int,
    num_attention_heads: int,
    cross_attention_dim: int,
    rotary_emb: RotaryEmbedding,
    groups: int,
) -> nn.ModuleList:
    if channels % num_attention_heads != 0:
        raise ValueError(f"{num_attention_heads} attention heads do not divide the block width {channels}")
    return nn.ModuleList(
        [
            LaVieTransformer3DModel(
                num_attention_heads,
                channels // num_attention_heads,
                channels,
                cross_attention_dim,
                rotary_emb,
                norm_num_groups=groups,
            )
            for _ in range(num_layers)
        ]
    )


class DownBlock3D(_CheckpointedBlock):
    """ResNets, each optionally followed by a transformer, then an optional stride-2 downsampler.

    With `num_attention_heads` set this is LaVie's `CrossAttnDownBlock3D`, else its `DownBlock3D`.
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        add_downsample: bool,
        resnet_groups: int,
        resnet_eps: float,
        act_fn: str,
        downsample_padding: int,
        num_attention_heads: int | None = None,
        cross_attention_dim: int | None = None,
        rotary_emb: RotaryEmbedding | None = None,
    ):
        super().__init__()
        _check_groups(out_channels, resnet_groups)
        self.has_cross_attention = num_attention_heads is not None
        if self.has_cross_attention:
            self.attentions = _transformers(
                num_layers, out_channels, num_attention_heads, cross_attention_dim, rotary_emb, resnet_groups
            )
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    temb_channels,
                    resnet_groups,
                    resnet_eps,
                    act_fn,
                )
                for i in range(num_layers)
            ]
        )
        self.downsamplers = None
        if add_downsample:
            downsampler = Downsample2D(
                out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op"
            )
            self.downsamplers = nn.ModuleList([downsampler])

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Return the block output and, for the skip connections, the output of every stage."""
        output_states = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = self._run(resnet, hidden_states, temb)
            if self.has_cross_attention:
                hidden_states = self._run(self.attentions[i], hidden_states, encoder_hidden_states)
            output_states += (hidden_states,)

        if self.downsamplers is not None:
            hidden_states = apply_per_frame(self.downsamplers[0], hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class UpBlock3D(_CheckpointedBlock):
    """ResNets that each take one skip connection, optional transformers, an optional x2 upsampler.

    With `num_attention_heads` set this is LaVie's `CrossAttnUpBlock3D`, else its `UpBlock3D`.
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        add_upsample: bool,
        resnet_groups: int,
        resnet_eps: float,
        act_fn: str,
        num_attention_heads: int | None = None,
        cross_attention_dim: int | None = None,
        rotary_emb: RotaryEmbedding | None = None,
    ):
        super().__init__()
        _check_groups(out_channels, resnet_groups)
        self.has_cross_attention = num_attention_heads is not None
        if self.has_cross_attention:
            self.attentions = _transformers(
                num_layers, out_channels, num_attention_heads, cross_attention_dim, rotary_emb, resnet_groups
            )
        resnets = []
        for i in range(num_layers):
            # The last ResNet takes the skip from the previous (narrower) down block.
            res_skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in_channels = prev_output_channel if i == 0 else out_channels
            resnets.append(
                ResnetBlock3D(
                    resnet_in_channels + res_skip_channels,
                    out_channels,
                    temb_channels,
                    resnet_groups,
                    resnet_eps,
                    act_fn,
                )
            )
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = None
        if add_upsample:
            upsampler = Upsample2D(out_channels, use_conv=True, out_channels=out_channels)
            self.upsamplers = nn.ModuleList([upsampler])

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Consume one skip per ResNet from the end of `res_hidden_states_tuple`."""
        for i, resnet in enumerate(self.resnets):
            res_hidden_states = res_hidden_states_tuple[-i - 1]
            hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)  # concatenate channels
            hidden_states = self._run(resnet, hidden_states, temb)
            if self.has_cross_attention:
                hidden_states = self._run(self.attentions[i], hidden_states, encoder_hidden_states)

        if self.upsamplers is not None:
            hidden_states = apply_per_frame(self.upsamplers[0], hidden_states, output_size=upsample_size)
        return hidden_states


class UNetMidBlock3DCrossAttn(_CheckpointedBlock):
    """ResNet, then (transformer, ResNet) per layer, at the lowest resolution."""

    def __init__(
        self,
        in_channels: int,
        temb_channels: int,
        resnet_groups: int,
        resnet_eps: float,
        act_fn: str,
        output_scale_factor: float,
        num_attention_heads: int,
        cross_attention_dim: int,
        rotary_emb: RotaryEmbedding,
        num_layers: int = 1,
    ):
        super().__init__()
        _check_groups(in_channels, resnet_groups)
        self.attentions = _transformers(
            num_layers, in_channels, num_attention_heads, cross_attention_dim, rotary_emb, resnet_groups
        )
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    in_channels,
                    in_channels,
                    temb_channels,
                    resnet_groups,
                    resnet_eps,
                    act_fn,
                    output_scale_factor,
                )
                for _ in range(num_layers + 1)
            ]
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = self._run(self.resnets[0], hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = self._run(attention, hidden_states, encoder_hidden_states)
            hidden_states = self._run(resnet, hidden_states, temb)
        return hidden_states
