"""Filters for library messages that do not apply to this repository's calls.

Each filter matches one known message or one library's INFO lines, so every other warning still
reaches the user.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path


class _DropOpenClipInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "open_clip" not in Path(record.pathname).parts


@contextmanager
def open_clip_info_hidden():
    """Hide open_clip's INFO lines inside the block.

    open_clip reports each step of model creation at INFO on the root logger, and Hydra sets the
    root logger to INFO, so loading the CLIP judge would print about ten lines.
    """
    root = logging.getLogger()
    drop = _DropOpenClipInfo()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class _DropEmptyFloat32Warning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def hide_empty_float32_warning() -> None:
    """Drop diffusers' float32 warning when its list of modules is empty.

    `UNetMotionModel.from_unet2d` casts the new model with `.to(dtype)`, and diffusers then warns
    that modules should stay in float32 even when it lists none.
    """
    modeling_utils = logging.getLogger("diffusers.models.modeling_utils")
    # Compared by name: a re-imported module brings a new class, and one filter is enough.
    if not any(type(existing).__name__ == "_DropEmptyFloat32Warning" for existing in modeling_utils.filters):
        modeling_utils.addFilter(_DropEmptyFloat32Warning())


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
    if not any(type(existing).__name__ == "_DropLightningTip" for existing in rank_zero.filters):
        rank_zero.addFilter(_DropLightningTip())
