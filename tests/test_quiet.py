"""Filters for known library messages: each drops its one message and keeps the rest."""

import logging
import warnings

from t2v_unlearn.quiet import (
    hide_empty_float32_warning,
    open_clip_info_hidden,
    silence_known_training_messages,
)


def test_open_clip_info_hidden_others_kept(caplog):
    import open_clip

    caplog.set_level(logging.INFO)
    with open_clip_info_hidden():
        open_clip.create_model("RN50", pretrained=None)
        logging.info("a message of this repository")
    open_clip.get_tokenizer("RN50")
    messages = [record.getMessage() for record in caplog.records]
    assert "a message of this repository" in messages
    assert not any("Instantiating model architecture" in message for message in messages)
    assert logging.getLogger().filters == []


def test_empty_float32_warning_dropped_others_kept():
    modeling_utils = logging.getLogger("diffusers.models.modeling_utils")
    hide_empty_float32_warning()
    count = len(modeling_utils.filters)
    hide_empty_float32_warning()
    assert len(modeling_utils.filters) == count
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    # Other tests may have set diffusers' verbosity to errors only.
    level = modeling_utils.level
    modeling_utils.setLevel(logging.WARNING)
    modeling_utils.addHandler(handler)
    try:
        modeling_utils.warning("There are modules in UNetMotionModel that should be kept in float32: []. Casting ...")
        modeling_utils.warning("There are modules in UNet that should be kept in float32: ['norm']. Casting ...")
    finally:
        modeling_utils.removeHandler(handler)
        modeling_utils.setLevel(level)
    assert len(messages) == 1
    assert "['norm']" in messages[0]


def test_lightning_tip_dropped_other_info_kept(caplog):
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    silence_known_training_messages()
    count = len(rank_zero.filters)
    silence_known_training_messages()
    assert len(rank_zero.filters) == count
    with caplog.at_level(logging.INFO, logger=rank_zero.name):
        rank_zero.info("💡 Tip: install something")
        rank_zero.info("GPU available: False, used: False")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["GPU available: False, used: False"]


def test_known_warnings_dropped_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_training_messages()
        warnings.warn("Found 348 module(s) in eval mode at the start of training. This may lead to ...")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else")
        warnings.warn("Found a real problem")
    assert [str(w.message) for w in caught] == ["Found a real problem"]
