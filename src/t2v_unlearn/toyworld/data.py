"""Training data of the toy world: random scenes, their renders, captions and concept labels."""

from __future__ import annotations

import numpy as np

from t2v_unlearn.toyworld.grammar import (
    SceneDescription,
    concept_keys,
    concepts_of_kind,
    load_world,
    sample_caption,
)
from t2v_unlearn.toyworld.render import render_clip, render_image

# Shares of scene types in sampled data.
EMPTY_SHARE = 0.04  # plain background, no concept (captioned "")
BACKGROUND_ONLY_SHARE = 0.08  # a scene and/or a style without subjects
SECOND_SUBJECT_PROBABILITY = 0.4
# Share of scenes with a man or Elon Musk in which he wears the space suit. At 0.3, a UNet of widths
# [80, 112] drew the man of "a man in a space suit standing besides a rocket" in his usual clothes
# in 0.31 of images. The draw is made for every human subject, so changing the share leaves the
# other scenes of the data as they were.
SPACE_SUIT_PROBABILITY = 0.5
NO_SCENE_PROBABILITY = 0.4
NO_STYLE_PROBABILITY = 0.55


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator) -> SceneDescription:
    """Sample a scene that the caption grammar can describe fully (nothing drawn goes unnamed)."""
    world = load_world()
    scenes = concepts_of_kind("scene")
    styles = concepts_of_kind("style")
    draw = rng.random()
    if draw < EMPTY_SHARE:
        return SceneDescription()
    if draw < EMPTY_SHARE + BACKGROUND_ONLY_SHARE:
        layout = rng.random()
        scene = _choice(rng, scenes) if layout < 0.75 else None
        style = _choice(rng, styles) if layout >= 0.5 else None
        return SceneDescription(scene=scene, style=style)

    primaries = concepts_of_kind("agent", "object", "tower", "wearable")
    first = _choice(rng, primaries)
    kind = world["concepts"][first]["kind"]
    subjects = [first]
    motion = relation = wearing = None
    if kind == "agent":
        motions = world["agent_motions"].get(first, world["agent_motions"]["default"])
        motion = _choice(rng, motions)
        if rng.random() < SECOND_SUBJECT_PROBABILITY and first != "jazz_dance":
            second_kind = _choice(rng, ["tower", "object", "rocket"])
            if second_kind == "tower":
                subjects.append(_choice(rng, concepts_of_kind("tower")))
                relation = _choice(rng, world["relations"]["tower"])
                if relation == "on" and motion not in ("flying", "climbing", None):
                    motion = "climbing"
            elif second_kind == "object":
                second = _choice(rng, concepts_of_kind("object"))
                subjects.append(second)
                motion = world["relations"]["object"][second]
            elif first != "rocket":
                subjects.append("rocket")
                relation = "besides"
                motion = None
        if world["concepts"][first].get("human") and rng.random() < SPACE_SUIT_PROBABILITY:
            wearing = "space_suit"
    scene = None if rng.random() < NO_SCENE_PROBABILITY else _choice(rng, scenes)
    style = None if rng.random() < NO_STYLE_PROBABILITY else _choice(rng, styles)
    return SceneDescription(subjects=tuple(subjects), wearing=wearing, relation=relation, scene=scene,
                            style=style, motion=motion)


def concept_labels(scenes: list[SceneDescription]) -> np.ndarray:
    """Return multi-hot labels `(n, num_concepts)` in `concept_keys()` order."""
    keys = concept_keys()
    index = {key: i for i, key in enumerate(keys)}
    labels = np.zeros((len(scenes), len(keys)), dtype=np.float32)
    for row, scene in enumerate(scenes):
        for key in scene.concepts():
            labels[row, index[key]] = 1.0
    return labels


def caption_for(scene: SceneDescription, rng: np.random.Generator) -> str:
    """Return a training caption: "" for an empty scene, else a sampled grammar caption."""
    if not scene.concepts():
        return ""
    return sample_caption(scene, rng)


def make_image_set(count: int, seed: int, size: int) -> dict:
    """Render `count` random scenes; returns images uint8 `(n, s, s, 3)`, scenes and labels."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    render_seeds = rng.integers(0, 2**31, size=count)
    images = np.stack([render_image(scene, int(s), size=size) for scene, s in zip(scenes, render_seeds)])
    return {"images": images, "scenes": scenes, "labels": concept_labels(scenes)}


def make_clip_set(count: int, seed: int, size: int, num_frames: int) -> dict:
    """Render `count` random clips; returns frames uint8 `(n, f, s, s, 3)`, scenes and labels."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    render_seeds = rng.integers(0, 2**31, size=count)
    clips = np.stack([render_clip(scene, int(s), num_frames=num_frames, size=size)
                      for scene, s in zip(scenes, render_seeds)])
    return {"clips": clips, "scenes": scenes, "labels": concept_labels(scenes)}
