import pytest

from conftest import compose_config
from t2v_unlearn.concepts import evaluation_items, load_concepts

ALL_CONCEPTS = ["snoopy", "mickey", "van_gogh", "eiffel", "elon_musk", "jazz_music", "jazz_dance"]


@pytest.mark.parametrize("name", ALL_CONCEPTS)
def test_concept_config_loads(name):
    cfg = compose_config([f"concept={name}"])
    (concept,) = load_concepts(cfg.concepts)
    assert concept.key == name
    assert concept.image_prompts
    assert concept.eval_prompts
    assert concept.preserve_prompts
    assert concept.kind == ("style" if name == "van_gogh" else "object")


def test_jazz_senses_share_the_word():
    music = load_concepts(compose_config(["concept=jazz_music"]).concepts)[0]
    dance = load_concepts(compose_config(["concept=jazz_dance"]).concepts)[0]
    assert music.name == dance.name == "jazz"
    assert set(music.image_prompts).isdisjoint(dance.image_prompts)


def test_concept_list_and_combined_file_agree():
    combined = load_concepts(compose_config(["concept=snoopy_mickey"]).concepts)
    listed = load_concepts(compose_config(["concept=[snoopy,mickey]"]).concepts)
    assert [c.key for c in combined] == [c.key for c in listed] == ["snoopy", "mickey"]


def test_prompts_per_group_limits_each_group():
    concepts = load_concepts(compose_config(["concept=eiffel"]).concepts)
    items = evaluation_items(concepts, prompts_per_group=2)
    assert [i.group for i in items] == ["target", "target", "other", "other"]
    assert len(evaluation_items(concepts)) == len(concepts[0].eval_prompts) + len(concepts[0].preserve_prompts)


def test_paraphrase_items_sit_between_targets_and_others():
    (eiffel,) = load_concepts(compose_config(["concept=eiffel"]).concepts)
    items = evaluation_items([eiffel], paraphrases=True)
    groups = [i.group for i in items]
    assert groups == (["target"] * len(eiffel.eval_prompts) + ["paraphrase"] * len(eiffel.paraphrase_prompts)
                      + ["other"] * len(eiffel.preserve_prompts))
    assert {i.watched.key for i in items if i.group == "paraphrase"} == {"eiffel"}
    assert "paraphrase" not in {i.group for i in evaluation_items([eiffel])}
    limited = evaluation_items([eiffel], prompts_per_group=1, paraphrases=True)
    assert [i.group for i in limited] == ["target", "paraphrase", "other"]


def test_paraphrase_items_follow_each_target():
    concepts = load_concepts(compose_config(["concept=snoopy_mickey"]).concepts)
    items = evaluation_items(concepts, paraphrases=True)
    paraphrased = [i.watched.key for i in items if i.group == "paraphrase"]
    assert paraphrased == ["snoopy"] * 4 + ["mickey"] * 4


def test_images_dir_shortcut_rejects_several_concepts():
    cfg = compose_config(["concept=snoopy_mickey"])
    with pytest.raises(ValueError, match="concepts.<key>.images_dir"):
        load_concepts(cfg.concepts, images_dir="/tmp/images")


def _eiffel_config(preserve_entry):
    cfg = dict(compose_config(["concept=eiffel"]).concepts)
    eiffel = dict(cfg["eiffel"])
    eiffel["preserve_prompts"] = [preserve_entry]
    return {"eiffel": eiffel}


def test_preserve_prompt_unquoted_comma_rejected():
    # What YAML makes of the unquoted flow mapping {prompt: a cat, oil painting style, concept: ...}.
    entry = {"prompt": "a cat", "oil painting style": None, "concept": "oil_painting", "probe": "an oil painting"}
    with pytest.raises(ValueError, match="unknown key.*'oil painting style'.*quote a prompt"):
        load_concepts(_eiffel_config(entry))


def test_preserve_prompt_without_probe_rejected():
    with pytest.raises(ValueError, match=r"without \['probe'\]"):
        load_concepts(_eiffel_config({"prompt": "a cat", "concept": "cat"}))


@pytest.mark.parametrize("name", ALL_CONCEPTS)
def test_preserve_prompts_name_their_concept(name):
    # The toy world's caption parser lists the concepts a prompt names. Each preservation prompt
    # must name the concept it watches, or its rate measures nothing.
    from t2v_unlearn.toyworld.grammar import parse_caption

    (concept,) = load_concepts(compose_config([f"concept={name}"]).concepts)
    for preserve in concept.preserve_prompts:
        assert preserve.concept in parse_caption(preserve.prompt).concepts(), preserve.prompt
