"""Filters for known library messages: each drops its one message and keeps the rest."""

import logging
import warnings

from t2v_unlearn.quiet import diffusers_errors_only, root_logger_warnings_only, silence_known_training_messages


def test_root_logger_quiet_restores_level(caplog):
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO):
        with root_logger_warnings_only():
            logging.info("loading step")
            logging.warning("real problem")
        logging.info("after the block")
    messages = [record.getMessage() for record in caplog.records]
    assert "loading step" not in messages
    assert "real problem" in messages
    assert "after the block" in messages
    assert root.level == logging.INFO


def test_diffusers_quiet_restores_verbosity():
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_warning()
    with diffusers_errors_only():
        assert diffusers_logging.get_verbosity() == diffusers_logging.ERROR
    assert diffusers_logging.get_verbosity() == diffusers_logging.WARNING


def test_lightning_tip_dropped_other_info_kept(caplog):
    silence_known_training_messages()
    silence_known_training_messages()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert len(rank_zero.filters) == 1
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
