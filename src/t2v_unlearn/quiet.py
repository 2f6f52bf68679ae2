"""Filters for library messages that do not apply to this repository's calls.

Each filter matches one known message, so every other warning still reaches the user.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager


@contextmanager
def root_logger_warnings_only():
    """Raise the root logger to WARNING inside the block.

    open_clip reports each step of model creation at INFO on the root logger, and Hydra sets the
    root logger to INFO, so loading the CLIP judge would print about ten lines.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


@contextmanager
def diffusers_errors_only():
    """Show only diffusers errors inside the block.

    `UNetMotionModel.from_unet2d` casts the new model to the image UNet's dtype with `.to(dtype)`,
    and diffusers then warns that modules should stay in float32, listing none.
    """
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


class _DropLightningTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def silence_known_training_messages() -> None:
    """Hide Lightning messages that every unlearning run would print and none can act on."""
    # The frozen UNet and VAE are in eval mode on purpose: only the text encoder trains.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # pytorch_lightning's own code calls a torch API that newer torch releases deprecate.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(existing, _DropLightningTip) for existing in rank_zero.filters):
        rank_zero.addFilter(_DropLightningTip())
