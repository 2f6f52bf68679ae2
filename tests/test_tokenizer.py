from transformers import CLIPTokenizer

from t2v_unlearn.tokenizer import build_clip_tokenizer


def test_tokenizer_ids_match_openai_clip():
    tokenizer = build_clip_tokenizer()
    assert tokenizer("a photo of snoopy").input_ids == [49406, 320, 1125, 539, 41967, 49407]


def test_tokenizer_vocabulary_and_padding():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == 49407
    assert tokenizer.bos_token_id == 49406
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77
    assert padded[-1] == 49407


def test_tokenizer_matches_open_clip():
    import open_clip

    text = "A person is dancing jazz. Charlie Brown's dog, 4k"
    reference = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    ids = build_clip_tokenizer()(text).input_ids
    assert reference[: len(ids)] == ids
    assert all(token == 0 for token in reference[len(ids) :])


def test_tokenizer_save_and_reload(tmp_path):
    build_clip_tokenizer(tmp_path / "tokenizer")
    reloaded = CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    assert reloaded("a photo of snoopy").input_ids == [49406, 320, 1125, 539, 41967, 49407]
    assert reloaded.model_max_length == 77
    assert reloaded.pad_token_id == 49407


def test_saved_tokenizer_uses_hub_layout(tmp_path):
    build_clip_tokenizer(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]


def test_reloaded_tokenizer_matches_gate_prompts(tmp_path):
    from t2v_unlearn.toyworld.gates import gate_prompts

    built = build_clip_tokenizer(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(str(tmp_path))
    prompts = gate_prompts() + ["the beagle from Peanuts!!", "ÉLON   musk, 4K"]
    expected = built(prompts, padding="max_length", max_length=77).input_ids
    assert reloaded(prompts, padding="max_length", max_length=77).input_ids == expected
