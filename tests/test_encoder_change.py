"""How far the encoder moved: parameters and hidden states, per evaluation group."""

import pytest
import torch

from t2v_unlearn.backends.tiny import tiny_text_encoder
from t2v_unlearn.concepts import EvalItem
from t2v_unlearn.encoder_change import EncoderSnapshot
from t2v_unlearn.judges.base import WatchedConcept
from t2v_unlearn.tokenizer import build_clip_tokenizer

SNOOPY = WatchedConcept("snoopy", "a picture of Snoopy", ())
PANDA = WatchedConcept("panda", "a photo of a panda", ())
ITEMS = [
    EvalItem("a snoopy flying in space", SNOOPY, "target"),
    EvalItem("a snoopy walking in the park", SNOOPY, "target"),
    EvalItem("a panda taking a selfie", PANDA, "other"),
    EvalItem("a panda taking a selfie", PANDA, "other"),
]


@pytest.fixture
def encoder_and_tokenizer():
    return tiny_text_encoder(seed=0).eval(), build_clip_tokenizer()


def test_unchanged_encoder_measures_zero(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    metrics = EncoderSnapshot(tokenizer, encoder, ITEMS).change_metrics(encoder)
    assert metrics == {"encoder/param_change": 0.0, "encoder/param_max_abs_change": 0.0,
                       "encoder/hidden_change_target": 0.0, "encoder/hidden_change_other": 0.0}


def test_one_token_row_moves_only_its_prompts(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    snapshot = EncoderSnapshot(tokenizer, encoder, ITEMS)
    (snoopy_id,) = tokenizer("snoopy", add_special_tokens=False).input_ids
    table = encoder.get_input_embeddings().weight
    # Alternating signs: a constant shift of the row would vanish in the first layer norm.
    step = torch.tensor([0.5, -0.5]).repeat(table.shape[1] // 2)
    with torch.no_grad():
        table[snoopy_id] += step
    metrics = snapshot.change_metrics(encoder)

    assert metrics["encoder/param_max_abs_change"] == pytest.approx(0.5)
    total = sum(float(p.detach().pow(2).sum()) for p in snapshot.parameters.values()) ** 0.5
    assert metrics["encoder/param_change"] == pytest.approx(float(step.norm()) / total, rel=1e-4)
    assert metrics["encoder/hidden_change_target"] > 0.01
    assert metrics["encoder/hidden_change_other"] == 0.0


def test_snapshot_keeps_its_own_copy(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    snapshot = EncoderSnapshot(tokenizer, encoder, ITEMS)
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(2.0)
    metrics = snapshot.change_metrics(encoder)
    assert metrics["encoder/param_change"] == pytest.approx(1.0, rel=1e-5)
    assert metrics["encoder/hidden_change_other"] > 0


def test_renamed_parameters_rejected(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    snapshot = EncoderSnapshot(tokenizer, encoder, ITEMS)
    wrapped = torch.nn.ModuleDict({"inner": encoder})
    wrapped.forward = encoder.forward
    with pytest.raises(ValueError, match="parameter names changed"):
        snapshot.change_metrics(wrapped)


def test_no_prompts_measures_parameters_only(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    metrics = EncoderSnapshot(tokenizer, encoder, []).change_metrics(encoder)
    assert metrics == {"encoder/param_change": 0.0, "encoder/param_max_abs_change": 0.0}
