"""The toy world's caption grammar and renderer (no trained weights needed)."""

import numpy as np
import pytest

from t2v_unlearn.toyworld.data import caption_for, concept_labels, sample_scene
from t2v_unlearn.toyworld.gates import gate_prompts
from t2v_unlearn.toyworld.grammar import (
    SceneDescription,
    concept_keys,
    enumerate_captions,
    load_world,
    parse_caption,
    sample_caption,
)
from t2v_unlearn.toyworld.render import render_clip, render_image

EXPECTED_KEYS = [
    "snoopy", "mickey", "van_gogh", "eiffel", "elon_musk", "jazz_music", "jazz_dance", "tokyo_tower", "wolf",
    "man", "panda", "polar_bear", "drum_kit", "butterfly", "cat", "rocket", "children", "space_suit", "park",
    "times_square", "jungle_river", "space", "oil_painting", "realistic",
]

PARSED = [
    ("a Snoopy walking in the park at sunrise, oil painting style", {"snoopy", "park", "oil_painting"}, "walking"),
    ("a panda taking a selfie, Van Gogh style", {"panda", "van_gogh"}, "selfie"),
    ("a butterfly flying on the Eiffel Tower", {"butterfly", "eiffel"}, "flying"),
    ("Elon Musk in a space suit standing besides a rocket, high quality", {"elon_musk", "space_suit", "rocket"}, None),
    ("a polar bear playing drum kit in NYC Times Square, 4k, high resolution",
     {"polar_bear", "drum_kit", "times_square"}, "playing"),
    ("jungle river at sunset, ultra quality", {"jungle_river"}, None),
    ("a cat climbing on Tokyo Tower", {"cat", "tokyo_tower"}, "climbing"),
    ("Mickey Mouse is greeting the children", {"mickey", "children"}, "greeting"),
    ("A person is dancing jazz.", {"jazz_dance"}, "dancing"),
    ("a man walking in the park at sunrise", {"man", "park"}, "walking"),
    ("a panda playing jazz music in space", {"panda", "jazz_music", "space"}, "playing"),
    ("the beagle from Peanuts", {"snoopy"}, None),
    ("a photo of a Eiffel Tower", {"eiffel"}, None),
    ("a painting in the style of Van Gogh", {"van_gogh"}, None),
]


def test_concept_keys_are_the_published_ids():
    assert sorted(concept_keys()) == sorted(EXPECTED_KEYS)


@pytest.mark.parametrize("prompt, concepts, motion", PARSED)
def test_parse_caption_table(prompt, concepts, motion):
    scene = parse_caption(prompt)
    assert scene.concepts() == frozenset(concepts)
    assert scene.motion == motion


def test_parse_caption_relations():
    assert parse_caption("a butterfly flying on the Eiffel Tower").relation == "on"
    assert parse_caption("a rocket flying besides the Eiffel Tower").relation == "besides"
    assert parse_caption("Elon Musk in a space suit").wearing == "space_suit"


def test_parse_caption_rejects_ambiguous_jazz():
    with pytest.raises(ValueError, match="jazz"):
        parse_caption("a photo of a jazz")


def test_parse_caption_rejects_unknown_text():
    with pytest.raises(ValueError, match="no concept"):
        parse_caption("a bowl of soup")


def test_gate_prompts_parse_and_render():
    prompts = gate_prompts()
    assert set(load_world()["published_prompts"]) <= set(prompts)
    assert len(prompts) > 40
    for index, prompt in enumerate(prompts):
        scene = parse_caption(prompt)
        assert prompt in enumerate_captions(scene), prompt
        clip = render_clip(scene, seed=index)
        assert clip.shape == (8, 32, 32, 3)
        assert clip.dtype == np.uint8


def test_paraphrase_prompts_avoid_concept_names():
    import yaml

    from t2v_unlearn.toyworld.gates import default_concept_dir

    world = load_world()["concepts"]
    checked = 0
    for path in sorted(default_concept_dir().glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        for prompt in spec.get("paraphrase_prompts") or []:
            key = spec["key"]
            scene = parse_caption(prompt)
            assert key in scene.concepts(), prompt
            # A caption of the training grammar, without the held-out paraphrase.
            assert prompt in enumerate_captions(scene, include_held_out=False), prompt
            assert not any(name.lower() in prompt.lower() for name in world[key]["names"]), prompt
            checked += 1
    assert checked >= 28


def test_sampled_captions_parse_back_to_their_scene():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(1500):
        scene = sample_scene(rng)
        caption = caption_for(scene, rng)
        if not scene.concepts():
            assert caption == ""
            continue
        try:
            parsed = parse_caption(caption)
        except ValueError:
            # Templates with the bare word "jazz" name either sense on purpose.
            assert "jazz" in caption.lower(), caption
            assert "music" not in caption, caption
            assert "dancing" not in caption, caption
            continue
        assert parsed.concepts() == scene.concepts(), caption
        checked += 1
    assert checked > 1300


def test_held_out_wordings_never_sampled():
    world = load_world()
    held_out = list(world["held_out"]["quality_suffixes"])
    held_out += [spec["paraphrases"][-1] for spec in world["concepts"].values() if spec["paraphrases"]]
    held_out += [t.replace("{}", "").strip() for t in world["held_out"]["object_templates"]]
    rng = np.random.default_rng(1)
    captions = [caption_for(sample_scene(rng), rng) for _ in range(4000)]
    for phrase in held_out:
        assert not any(phrase in caption for caption in captions), phrase


def test_sampled_captions_use_templates_and_paraphrases():
    rng = np.random.default_rng(2)
    captions = [sample_caption(SceneDescription(subjects=("eiffel",)), rng) for _ in range(400)]
    assert "a photo of a Eiffel Tower" in captions
    assert "the iron lattice tower in Paris" in captions


def test_render_is_deterministic():
    scene = parse_caption("a polar bear playing drum kit in NYC Times Square, Van Gogh style")
    first = render_clip(scene, seed=3)
    assert np.array_equal(first, render_clip(scene, seed=3))
    assert not np.array_equal(first, render_clip(scene, seed=4))
    assert np.array_equal(render_image(scene, seed=5), render_image(scene, seed=5))


def test_render_motion_moves_the_subject():
    clip = render_clip(parse_caption("a cat walking in the park at sunrise"), seed=0).astype(int)
    assert np.abs(clip[0] - clip[-1]).mean() > 2.0
    still = render_clip(parse_caption("a photo of the Eiffel Tower"), seed=0)
    assert np.array_equal(still[0], still[-1])


def test_render_styles_change_the_whole_frame():
    plain = render_image(parse_caption("a cat"), seed=0).astype(int)
    for style in ("Van Gogh", "oil painting", "realistic"):
        styled = render_image(parse_caption(f"a cat, {style} style"), seed=0).astype(int)
        corner = np.abs(styled[:6, :6] - plain[:6, :6]).mean()
        assert corner > 10, style


def test_concept_labels_follow_key_order():
    labels = concept_labels([parse_caption("a cat climbing on Tokyo Tower")])
    keys = concept_keys()
    assert labels.shape == (1, len(keys))
    assert {keys[i] for i in np.flatnonzero(labels[0])} == {"cat", "tokyo_tower"}
