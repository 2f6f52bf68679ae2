"""Check that a text-to-image and a text-to-video model read prompts through the same text encoder.

The unlearning changes the text-to-image model's encoder and then plugs it into the video model.
That transfer assumes both models were trained on one encoder: the same architecture, weights and
tokenizer. A video model trained with another encoder would read prompts through an encoder it
never saw. Its videos would then no longer show what it learned, and a drop in a concept would be no
evidence of unlearning. This module compares the two encoders before the swap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from t2v_unlearn.backends.bundle import fingerprint_module

log = logging.getLogger(__name__)

# Config keys that record where and how a checkpoint was saved, not what the encoder computes.
# `projection_dim` is unused by CLIPTextModel (only CLIPTextModelWithProjection has a projection).
IGNORED_CONFIG_KEYS = frozenset({
    "_name_or_path", "_commit_hash", "architectures", "torch_dtype", "dtype", "transformers_version",
    "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal",
    "projection_dim", "output_attentions", "output_hidden_states", "return_dict", "use_return_dict",
})


class EncoderMismatchError(ValueError):
    """The text-to-image and text-to-video models do not share one text encoder."""


@dataclass
class EncoderComparison:
    config_differences: dict[str, tuple] = field(default_factory=dict)
    image_fingerprint: str = ""
    video_fingerprint: str = ""
    # Largest absolute weight difference, when both state dicts have the same names and shapes.
    max_abs_weight_difference: float | None = None
    tokenizer_differences: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return (not self.config_differences and self.image_fingerprint == self.video_fingerprint
                and not self.tokenizer_differences)

    def describe(self) -> str:
        lines = []
        for key, (image_value, video_value) in sorted(self.config_differences.items()):
            lines.append(f"  - config {key}: {image_value!r} (text-to-image) vs {video_value!r} (text-to-video)")
        if self.image_fingerprint != self.video_fingerprint:
            weights = f"  - weight fingerprints differ: {self.image_fingerprint[:16]} vs {self.video_fingerprint[:16]}"
            if self.max_abs_weight_difference is not None:
                weights += f" (max |difference| {self.max_abs_weight_difference:.3g})"
            lines.append(weights)
        lines += [f"  - tokenizer {difference}" for difference in self.tokenizer_differences]
        return "\n".join(lines)


def encoder_config(encoder) -> dict:
    """Return the architecture fields of a text encoder, or of its config (a transformers `PretrainedConfig`)."""
    config = encoder.config if isinstance(encoder, torch.nn.Module) else encoder
    return {k: v for k, v in config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}


def compare_tokenizers(image_tokenizer, video_tokenizer) -> list[str]:
    """Return how two tokenizers would give the encoder different token ids."""
    differences = []
    for attribute in ("pad_token", "bos_token", "eos_token", "model_max_length"):
        image_value, video_value = getattr(image_tokenizer, attribute), getattr(video_tokenizer, attribute)
        if image_value != video_value:
            differences.append(f"{attribute}: {image_value!r} vs {video_value!r}")
    if image_tokenizer.get_vocab() != video_tokenizer.get_vocab():
        differences.append(f"vocabulary: {len(image_tokenizer)} vs {len(video_tokenizer)} tokens, not identical")
    return differences


def max_abs_weight_difference(image_encoder: torch.nn.Module, video_encoder: torch.nn.Module) -> float | None:
    image_state, video_state = image_encoder.state_dict(), video_encoder.state_dict()
    if image_state.keys() != video_state.keys():
        return None
    largest = 0.0
    for name, image_tensor in image_state.items():
        video_tensor = video_state[name]
        if image_tensor.shape != video_tensor.shape:
            return None
        if image_tensor.is_floating_point():
            difference = (image_tensor.float() - video_tensor.to(image_tensor.device).float()).abs().max()
            largest = max(largest, float(difference))
        elif not torch.equal(image_tensor, video_tensor.to(image_tensor.device)):
            return float("inf")
    return largest


@torch.no_grad()
def compare_encoders(image_encoder: torch.nn.Module, video_encoder: torch.nn.Module,
                     image_tokenizer=None, video_tokenizer=None) -> EncoderComparison:
    """Compare architecture config, weight fingerprint (names, shapes, dtypes, values) and tokenizers."""
    image_config, video_config = encoder_config(image_encoder), encoder_config(video_encoder)
    comparison = EncoderComparison(
        config_differences={
            key: (image_config.get(key), video_config.get(key))
            for key in sorted(image_config.keys() | video_config.keys())
            if image_config.get(key) != video_config.get(key)
        },
        image_fingerprint=fingerprint_module(image_encoder),
        video_fingerprint=fingerprint_module(video_encoder),
    )
    if comparison.image_fingerprint != comparison.video_fingerprint:
        comparison.max_abs_weight_difference = max_abs_weight_difference(image_encoder, video_encoder)
    if image_tokenizer is not None and video_tokenizer is not None:
        comparison.tokenizer_differences = compare_tokenizers(image_tokenizer, video_tokenizer)
    return comparison


def check_shared_encoder(image_encoder: torch.nn.Module, video_encoder: torch.nn.Module, *,
                         image_source: str, video_source: str, allow_mismatch: bool = False,
                         image_tokenizer=None, video_tokenizer=None) -> EncoderComparison:
    """Raise `EncoderMismatchError` unless both encoders (and tokenizers, when given) are identical.

    With `allow_mismatch`, a difference is logged as a warning and the comparison is returned.
    Both encoders must be loaded in the same dtype, because the fingerprint covers dtypes.
    """
    comparison = compare_encoders(image_encoder, video_encoder, image_tokenizer, video_tokenizer)
    if comparison.same:
        log.info("The text encoders of %s and %s are identical (fingerprint %s)", image_source, video_source,
                 comparison.image_fingerprint[:16])
        return comparison
    message = (
        f"the text encoder of the text-to-video model {video_source} differs from that of the "
        f"text-to-image model {image_source}:\n{comparison.describe()}\n"
        "The unlearning trains the text-to-image model's encoder and then gives it to the video model, "
        "which assumes both models were trained with one encoder. With a different encoder the video "
        "model reads prompts through weights it was not trained with."
    )
    if not allow_mismatch:
        raise EncoderMismatchError(
            message + " Use a video model built on this text-to-image model's encoder, or set "
            "model.backend.allow_encoder_mismatch=true to swap it in anyway."
        )
    log.warning("%s Continuing because allow_encoder_mismatch is true.", message)
    return comparison
