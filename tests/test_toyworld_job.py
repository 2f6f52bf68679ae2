"""The main job on the built-in toy world: the README's first command, judged against ground truth."""

import json

from test_train_cli import train_cli


def test_default_job_erases_eiffel_keeps_others(tmp_path):
    out = tmp_path / "run"
    train_cli(["concept=eiffel", "shots=2", "logger=none", f"hydra.run.dir={out}"], tmp_path, timeout=900)
    metrics = json.loads((out / "metrics.json").read_text())
    provenance = json.loads((out / "text_encoder" / "unlearning.json").read_text())

    assert provenance["backend"] == "toyworld"
    # The toy world's default method and its learning rate, see conf/model/toyworld.yaml.
    assert provenance["method"] == "concept_tokens_retain"
    assert provenance["trainable"] == "concept_tokens"
    assert provenance["optimizer"]["lr"] == 3e-2
    assert provenance["retain"]["weight"] == 3.0
    assert metrics["train/optimizer_steps"] == 10
    assert metrics["video/target_rate_before"] >= 0.9
    assert metrics["image/target_rate_before"] >= 0.9
    assert metrics["video/target_rate_after"] <= 0.1
    assert metrics["image/target_rate_after"] <= 0.1
    # Concepts unrelated to the Eiffel Tower survive. Tokyo Tower, its similar concept, shares the
    # trained "tower" row and may leak.
    assert metrics["video/unrelated_rate_after"] >= 0.9 * metrics["video/unrelated_rate_before"]
    assert metrics["video/other_rate_after"] >= 0.9 * metrics["video/other_rate_before"]
    assert metrics["clip/target_similarity_after"] < metrics["clip/target_similarity_before"]
    # The erasing run moved the target prompts' hidden states by most of their norm (0.89 measured),
    # the other prompts much less: only the Tokyo Tower prompt shares a trained token.
    assert metrics["encoder/hidden_change_target"] > 0.5
    assert metrics["encoder/hidden_change_other"] < 0.5 * metrics["encoder/hidden_change_target"]
    # Paraphrase prompts are opt-in (eval.paraphrases), so the default job renders none.
    assert metrics["video/paraphrase_rate_before"] is None
    # Only the rows of "eiffel" and "tower" changed, so the prompts without those tokens read as
    # before, and their samples were copied from the first phase instead of rendered again.
    from transformers import CLIPTokenizer

    from t2v_unlearn.backends.toyworld import default_weights_dir

    tokenizer = CLIPTokenizer.from_pretrained(str(default_weights_dir() / "tokenizer"))
    trained = set(provenance["trainable_token_ids"])
    assert len(trained) == 2
    samples = json.loads((out / "eval_samples.json").read_text())
    for sample in samples:
        untouched = trained.isdisjoint(tokenizer(sample["prompt"]).input_ids)
        assert sample["after_copied_from_before"] == untouched, sample["prompt"]
    assert metrics["eval/after_samples_reused"] == sum(s["after_copied_from_before"] for s in samples) > 0
    # The detector lists every concept it finds, with the frames and rule of the judge.
    for phase in ("before", "after"):
        assert metrics[f"seen_in_target/eiffel_{phase}"] == metrics[f"video/target_rate_{phase}"]
        assert all((s["concept"] in s[f"video_{phase}_seen"]) == s[f"video_{phase}"] for s in samples)


def test_published_lr_leaves_eiffel(tmp_path):
    out = tmp_path / "run"
    train_cli(["concept=eiffel", "shots=2", "method=paper", "optim.lr=1e-5", "logger=none", "eval.images=false",
               "eval.clip_similarity=false", "eval.seeds_per_prompt=1", "eval.paraphrases=true",
               f"hydra.run.dir={out}"], tmp_path, timeout=900)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["video/target_rate_after"] >= 0.75
    # Named as "the iron lattice tower in Paris", the tower is there before and stays.
    assert metrics["video/paraphrase_rate_before"] >= 0.75
    assert metrics["video/paraphrase_rate_after"] >= 0.75
    # Why nothing went: Adam moves each parameter by about lr per step, 5e-5 in all here. The target
    # prompts' hidden states moved by about 1% (0.010 measured), where an erasing run moves them ~0.9.
    assert 0 < metrics["encoder/param_max_abs_change"] < 2 * 5 * 1e-5
    assert metrics["encoder/hidden_change_target"] < 0.05
    assert metrics["encoder/hidden_change_paraphrase"] < 0.05
    # The whole encoder moved, so every prompt was rendered again.
    assert metrics["eval/after_samples_reused"] == 0
