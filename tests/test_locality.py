"""Retain term, concept-token training, early stopping and method presets."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import compose_config
from t2v_unlearn.concepts import Concept, PreservePrompt, evaluation_items
from t2v_unlearn.early_stopping import JudgeEarlyStopping
from t2v_unlearn.judges.base import Judge
from t2v_unlearn.run import retain_prompts, shared_token_prompts
from test_train_cli import FAST, run_in_process
from test_unlearn import CONCEPT, fit, make_datamodule, make_module, state

RETAIN = ["", "a panda taking a selfie", "a cat climbing on Tokyo Tower", "a red car"]


def batch(seed=0):
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    return {"latents": latents, "prompts": ["a photo of a Eiffel Tower", "a rendering of a Eiffel Tower"]}


def test_zero_weight_equals_published_loss(tiny_backend):
    published = make_module(tiny_backend)
    with_prompts = make_module(tiny_backend, retain_weight=0.0, retain_prompts=RETAIN)
    torch.manual_seed(5)
    expected = published.training_step(batch(), 0)
    torch.manual_seed(5)
    actual = with_prompts.training_step(batch(), 0)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("space", ["embedding", "unet"])
def test_retain_zero_at_start(tiny_backend, space):
    module = make_module(tiny_backend, retain_weight=1.0, retain_prompts=RETAIN, retain_space=space)
    assert module.retain_loss((4, 16, 16)).item() == 0.0


@pytest.mark.parametrize("space", ["embedding", "unet"])
def test_retain_gradient_pulls_encoder_back(tiny_backend, space):
    module = make_module(tiny_backend, retain_weight=1.0, retain_prompts=RETAIN, retain_space=space,
                         retain_batch_size=len(RETAIN))
    original = {k: v.clone() for k, v in module.text_encoder.named_parameters()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.text_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))

    def distance():
        return sum(((p - original[k]) ** 2).sum() for k, p in module.text_encoder.named_parameters()).item()

    def retain_value(seed=1):
        torch.manual_seed(seed)
        return module.retain_loss((4, 16, 16))

    before_retain = retain_value().item()
    assert before_retain > 0
    module.text_encoder.zero_grad()
    retain_value().backward()
    # The negative gradient points back towards the original weights (positive inner product with
    # original - perturbed), so a small step lowers both the retain term and the distance.
    pull = sum((-p.grad * (original[k] - p)).sum() for k, p in module.text_encoder.named_parameters()
               if p.grad is not None).item()
    assert pull > 0
    before_distance = distance()
    with torch.no_grad():
        for p in module.text_encoder.parameters():
            if p.grad is not None:
                p.sub_(1e-3 * p.grad / max(p.grad.norm().item(), 1e-12))
    assert retain_value().item() < before_retain
    assert distance() < before_distance


def test_retain_batch_always_has_empty_prompt(tiny_backend):
    module = make_module(tiny_backend, retain_weight=1.0, retain_prompts=RETAIN, retain_batch_size=2)
    seen = []
    original_encode = module.encode
    module.encode = lambda prompts: (seen.append(list(prompts)), original_encode(prompts))[1]
    for seed in range(5):
        torch.manual_seed(seed)
        module.retain_loss()
    assert all(prompts[0] == "" and len(prompts) == 2 for prompts in seen)


def test_concept_tokens_change_only_their_rows(tiny_backend):
    tokenizer = tiny_backend.tokenizer
    concept_ids = set(tokenizer(["Eiffel Tower"], add_special_tokens=False).input_ids[0])
    before = state(tiny_backend.text_encoder)
    module = make_module(tiny_backend, trainable="concept_tokens", concept_names=["Eiffel Tower"])
    fit(module, make_datamodule(tiny_backend), epochs=2)
    after = state(tiny_backend.text_encoder)

    embedding_key = next(k for k in before if k.endswith("token_embedding.weight"))
    changed_rows = set(torch.nonzero((before[embedding_key] != after[embedding_key]).any(dim=1)).flatten().tolist())
    assert changed_rows and changed_rows <= concept_ids
    for key in before:
        if key != embedding_key:
            assert torch.equal(before[key], after[key]), f"{key} changed with trainable=concept_tokens"


def test_concept_tokens_leave_shared_tokens_fixed(tiny_backend):
    tokenizer = tiny_backend.tokenizer
    (eiffel_ids,) = tokenizer(["Eiffel"], add_special_tokens=False).input_ids
    (tower_ids,) = tokenizer(["Tower"], add_special_tokens=False).input_ids
    before = state(tiny_backend.text_encoder)
    module = make_module(tiny_backend, trainable="concept_tokens", concept_names=["Eiffel Tower"],
                         shared_token_prompts=["a cat climbing on Tokyo Tower"])
    assert module.trainable_token_ids == sorted(eiffel_ids)
    fit(module, make_datamodule(tiny_backend), epochs=2)
    after = state(tiny_backend.text_encoder)
    embedding_key = next(k for k in before if k.endswith("token_embedding.weight"))
    changed = torch.nonzero((before[embedding_key] != after[embedding_key]).any(dim=1)).flatten().tolist()
    assert changed and set(changed) <= set(eiffel_ids)
    assert torch.equal(before[embedding_key][tower_ids], after[embedding_key][tower_ids])


def test_concept_tokens_reject_all_shared_name(tiny_backend):
    with pytest.raises(ValueError, match="concept_tokens_skip_shared=false"):
        make_module(tiny_backend, trainable="concept_tokens", concept_names=["Tokyo Tower"],
                    shared_token_prompts=["a cat climbing on Tokyo Tower"])


def test_shared_token_prompts_include_similar_concepts():
    eiffel = Concept(key="eiffel", name="Eiffel Tower", kind="object", image_prompts=("a",), eval_prompts=("b",),
                     preserve_prompts=(PreservePrompt("a cat climbing on Tokyo Tower", "tokyo_tower", "p"),),
                     probe="p", anchors=(), similar=("tokyo_tower",))
    assert shared_token_prompts([eiffel], ["a photo of a dog"]) == ["a cat climbing on Tokyo Tower", "a photo of a dog"]
    # The retain term leaves the similar concept out, but the token choice does not.
    assert "a cat climbing on Tokyo Tower" not in retain_prompts([eiffel], ["a photo of a dog"])


class ScriptedJudge(Judge):
    """Finds the target in a scripted share of images on successive calls."""

    def __init__(self, rates):
        self.rates = list(rates)
        self.calls = 0

    def detect(self, images, concept):
        rate = self.rates[min(self.calls, len(self.rates) - 1)]
        self.calls += 1
        present = np.zeros(len(images), dtype=bool)
        present[: int(round(rate * len(images)))] = True
        return present


def test_early_stopping_at_scripted_epoch(tiny_backend):
    items = evaluation_items([CONCEPT])
    judge = ScriptedJudge([1.0, 0.5, 0.0, 0.0])
    stopper = JudgeEarlyStopping(tiny_backend, judge, items, threshold=0.1, seeds=2)
    module = make_module(tiny_backend)
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[stopper])
    trainer.fit(module, datamodule=make_datamodule(tiny_backend, num_images=2))
    assert stopper.stopped_epoch == 3
    assert stopper.history == [1.0, 0.5, 0.0]
    assert trainer.global_step == 3


def test_retain_prompts_exclude_targets_and_similar():
    eiffel = Concept(key="eiffel", name="Eiffel Tower", kind="object", image_prompts=("a",), eval_prompts=("b",),
                     preserve_prompts=(PreservePrompt("a cat climbing on Tokyo Tower", "tokyo_tower", "p"),
                                       PreservePrompt("a panda taking a selfie", "panda", "p"),
                                       PreservePrompt("a cat near the Eiffel Tower", "cat", "p")),
                     probe="p", anchors=(), similar=("tokyo_tower",), paraphrases=("the iron lattice tower in Paris",))
    generic = ["a photo of a dog", "the iron lattice tower in Paris at night"]
    prompts = retain_prompts([eiffel], generic)
    assert prompts == ["", "a panda taking a selfie", "a photo of a dog"]
    with_similar = retain_prompts([eiffel], generic, include_similar=True)
    assert "a cat climbing on Tokyo Tower" in with_similar


@pytest.mark.parametrize("method", ["retain", "retain_unet", "concept_tokens", "concept_tokens_retain"])
def test_presets_compose_with_multi_concept(tmp_path, method):
    out = tmp_path / "run"
    metrics = run_in_process([*FAST, "epochs=1", "concept=snoopy_mickey", f"method={method}", "logger=none",
                              "eval.videos=false", "eval.clip_similarity=false"], out)
    assert metrics["train/optimizer_steps"] == 2
    provenance = json.loads((out / "text_encoder" / "unlearning.json").read_text())
    assert provenance["concepts"] == ["snoopy", "mickey"]
    assert provenance["method"] == method
    if "retain" in method:
        assert provenance["retain"]["weight"] > 0
        assert provenance["retain"]["space"] == ("unet" if method == "retain_unet" else "embedding")
    if method.startswith("concept_tokens"):
        assert provenance["trainable"] == "concept_tokens"


@pytest.mark.parametrize(("overrides", "method", "weight"), [
    ([], "concept_tokens_retain", 3.0),                    # the toy world's default
    (["model=toyworld_lavie"], "concept_tokens_retain", 3.0),
    (["method=concept_tokens"], "concept_tokens", 0.0),
    (["method=retain"], "retain", 3.0),
    (["method=paper"], "paper", 0.0),                       # the command line wins
    (["experiment=published_snoopy"], "paper", 0.0),
    (["model=animatediff_tiny"], "paper", 0.0),             # every other model: the published method
    (["model=lavie", "method=retain_unet"], "retain_unet", 10.0),
])
def test_default_method_depends_on_model(overrides, method, weight):
    cfg = compose_config(overrides)
    assert cfg.hydra.runtime.choices.method == method
    assert cfg.retain.weight == weight


def test_published_experiment_keeps_lr():
    # The toy world's own default is lr 1e-3; the published experiment must not inherit it.
    cfg = compose_config(["experiment=published_snoopy"])
    assert cfg.optim.lr == 1e-5
    assert (cfg.shots, cfg.epochs, cfg.retain.weight) == (4, 5, 0.0)


@pytest.mark.parametrize("method", ["concept_tokens", "concept_tokens_retain"])
@pytest.mark.parametrize("model", ["toyworld", "animatediff_tiny", "lavie"])
def test_concept_tokens_preset_brings_its_learning_rate(model, method):
    # Token rows need larger steps than the whole encoder on every backend, so the preset's
    # method_lr wins over the backend's recipe. The command line wins over both.
    cfg = compose_config([f"model={model}", f"method={method}"])
    assert cfg.optim.lr == cfg.method_lr >= 1e-2
    assert compose_config([f"model={model}", f"method={method}", "optim.lr=1e-4"]).optim.lr == 1e-4
    assert compose_config([f"model={model}", "method=retain"]).optim.lr == (1e-3 if model == "toyworld" else 1e-5)
