"""Scene descriptions and the caption grammar of the toy world.

A `SceneDescription` lists what a rendered image or clip shows. `parse_caption` maps a prompt to
the scene it describes; `enumerate_captions` and `sample_caption` go the other way. The words come
from `world.yaml`, so a new concept or wording is a data change.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import yaml

# Probabilities of the optional caption parts in sampled training captions.
SAMPLING = {"template": 0.3, "prefix": 0.15, "quality": 0.2, "paraphrase": 0.15, "is_form": 0.3}
PREFIXES = ("a photo of ", "a picture of ")


@dataclass(frozen=True)
class SceneDescription:
    """What an image or clip shows; every field contains concept keys of `world.yaml`."""

    # Drawn things in caption order: agents, objects, towers (at most two).
    subjects: tuple[str, ...] = ()
    # Clothing on the first subject ("space_suit"), or None.
    wearing: str | None = None
    # How the first subject relates to the second: "on" or "besides" (towers, a rocket), else None.
    relation: str | None = None
    scene: str | None = None
    style: str | None = None
    motion: str | None = None
    # Free rendering choices (positions, colours) come from the seed, not from here.
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def concepts(self) -> frozenset[str]:
        """Return the concept keys visible in the scene (what a perfect detector reports)."""
        keys = set(self.subjects)
        for key in (self.wearing, self.scene, self.style):
            if key is not None:
                keys.add(key)
        return frozenset(keys)


@functools.cache
def load_world() -> dict:
    """Return the parsed `world.yaml` (concepts, motions, templates, held-out wordings)."""
    text = resources.files("t2v_unlearn.toyworld").joinpath("world.yaml").read_text()
    return yaml.safe_load(text)


def concept_keys() -> list[str]:
    """Return every concept key in `world.yaml` order (the detector's output order)."""
    return list(load_world()["concepts"])


def concepts_of_kind(*kinds: str) -> list[str]:
    return [key for key, spec in load_world()["concepts"].items() if spec["kind"] in kinds]


# ---------------------------------------------------------------------------------------------
# Parsing


def _strip_article(phrase: str) -> str:
    return re.sub(r"^(a|an|the)\s+", "", phrase.strip().lower())


@functools.cache
def _lexicon() -> list[tuple[str, str, str]]:
    """Return (phrase, kind, value) entries, longest phrase first, all lower case."""
    world = load_world()
    entries: dict[str, tuple[str, str]] = {}
    for key, spec in world["concepts"].items():
        phrases = list(spec["names"]) + list(spec["paraphrases"]) + [spec["bare"]]
        for phrase in phrases:
            entries.setdefault(_strip_article(phrase), ("concept", key))
    # A bare "jazz" names both senses, and "a person" is the dancer only next to "dancing jazz".
    entries["jazz"] = ("jazz", "")
    entries["person"] = ("person", "")
    entries["dancing jazz"] = ("concept", "jazz_dance")
    entries["park"] = ("concept", "park")
    for motion, words in world["motions"].items():
        for word in words:
            entries[word] = ("motion", motion)
    for word in world["still_words"]:
        entries[word] = ("still", "")
    return sorted(((phrase, kind, value) for phrase, (kind, value) in entries.items()), key=lambda e: -len(e[0]))


def _find_phrases(text: str) -> list[tuple[int, int, str, str]]:
    """Return non-overlapping (start, end, kind, value) matches, longest phrase first."""
    taken = np.zeros(len(text), dtype=bool)
    matches = []
    for phrase, kind, value in _lexicon():
        for match in re.finditer(r"(?<![\w'])" + re.escape(phrase) + r"(?![\w'])", text):
            start, end = match.span()
            if taken[start:end].any():
                continue
            taken[start:end] = True
            matches.append((start, end, kind, value))
    return sorted(matches)


def parse_caption(text: str) -> SceneDescription:
    """Parse a prompt into the scene it describes; raises ValueError for prompts outside the world.

    Quality suffixes ("high quality", "4k, high resolution", "ultra quality") and template words
    ("a photo of", "a painting in the style of") are accepted and ignored.
    """
    world = load_world()
    lowered = text.strip().lower().rstrip(".")
    for suffix in world["quality_suffixes"]:
        lowered = lowered.replace(suffix.lower(), " ")
    matches = _find_phrases(lowered)
    kinds = {key: spec["kind"] for key, spec in world["concepts"].items()}

    found: list[tuple[int, str]] = []
    motion = None
    has_person = False
    has_bare_jazz = False
    for start, _end, kind, value in matches:
        if kind == "concept":
            if value not in [key for _, key in found]:
                found.append((start, value))
        elif kind == "motion" and motion is None:
            motion = value
        elif kind == "person":
            has_person = True
        elif kind == "jazz":
            has_bare_jazz = True
    keys = [key for _, key in found]

    if has_bare_jazz and "jazz_dance" not in keys and "jazz_music" not in keys:
        if motion == "dancing":
            found.append((lowered.index("jazz"), "jazz_dance"))
        else:
            raise ValueError(
                f"'jazz' in {text!r} names both the dance and the music; write 'dancing jazz' or 'jazz music'"
            )
    keys = [key for _, key in sorted(found)]
    if "jazz_dance" in keys:
        motion = motion or "dancing"
    elif has_person:
        position = lowered.index("person")
        found.append((position, "man"))
        keys = [key for _, key in sorted(found)]

    subjects = [k for k in keys if kinds[k] in ("agent", "object", "tower")]
    wearables = [k for k in keys if kinds[k] == "wearable"]
    scenes = [k for k in keys if kinds[k] == "scene"]
    styles = [k for k in keys if kinds[k] == "style"]

    wearing = None
    if wearables:
        if not subjects:
            subjects = wearables[:1]
        elif load_world()["concepts"][subjects[0]].get("human"):
            wearing = wearables[0]
        else:
            raise ValueError(f"in {text!r} only people (man, Elon Musk) can wear {wearables[0]!r}")
    if not (subjects or scenes or styles):
        raise ValueError(f"no concept of the toy world found in {text!r}")
    if len(subjects) > 2:
        raise ValueError(f"{text!r} names {len(subjects)} subjects {subjects}; the toy world draws at most two")

    relation = None
    if len(subjects) == 2:
        second_start = min(start for start, key in found if key == subjects[1])
        preceding = [word for word in lowered[:second_start].split() if word not in ("a", "an", "the")]
        if preceding and preceding[-1] in ("on", "besides", "beside"):
            relation = "on" if preceding[-1] == "on" else "besides"
    return SceneDescription(
        subjects=tuple(subjects),
        wearing=wearing,
        relation=relation,
        scene=scenes[0] if scenes else None,
        style=styles[0] if styles else None,
        motion=motion,
    )


# ---------------------------------------------------------------------------------------------
# Caption generation: a caption is one choice per slot; enumeration is the product of the slots.


def _held_out() -> dict:
    return load_world()["held_out"]


def _names(key: str, include_held_out: bool) -> list[str]:
    spec = load_world()["concepts"][key]
    paraphrases = list(spec["paraphrases"])
    if not include_held_out and paraphrases:
        paraphrases = paraphrases[:-1]
    return list(spec["names"]) + paraphrases


def _quality_suffixes(include_held_out: bool) -> list[str]:
    suffixes = load_world()["quality_suffixes"]
    if not include_held_out:
        suffixes = [s for s in suffixes if s not in _held_out()["quality_suffixes"]]
    return [""] + [", " + s for s in suffixes]


def _style_slot(style: str | None, include_held_out: bool) -> list[str]:
    if style is None:
        return [""]
    names = _names(style, include_held_out)
    slot = [f", {name} style" for name in load_world()["concepts"][style]["names"]]
    if load_world()["concepts"][style].get("style_of"):
        slot += [f" in the style of {name}" for name in names]
    return slot


def _verb_slot(scene: SceneDescription, first_name: str) -> list[str]:
    spec = load_world()["concepts"][scene.subjects[0]]
    if scene.subjects[0] == "jazz_dance":
        # Paraphrases ("a jazz dancer", "swing dancing") already name the dance.
        if first_name not in spec["names"]:
            return [""]
        return [f" {spec['verb']}", f" is {spec['verb']}"]
    if spec["kind"] != "agent":
        return [""]
    if scene.motion is None:
        return ["", " standing", " is standing"]
    word = load_world()["motions"][scene.motion][0]
    return [f" {word}", f" is {word}"]


def _object_slot(scene: SceneDescription, include_held_out: bool) -> list[str]:
    if len(scene.subjects) < 2:
        return [""]
    second = scene.subjects[1]
    kind = load_world()["concepts"][second]["kind"]
    names = _names(second, include_held_out)
    if kind == "tower" or scene.relation is not None:
        relation = scene.relation or "besides"
        return [f" {relation} {name}" for name in names]
    # Objects are direct objects of the verb: "greeting the children", "playing drum kit".
    return [f" {name}" for name in names]


def _scene_slot(scene_key: str | None, include_held_out: bool) -> list[str]:
    if scene_key is None:
        return [""]
    spec = load_world()["concepts"][scene_key]
    return [f" {prep} {name}" for prep in spec["prepositions"] for name in _names(scene_key, include_held_out)]


def _template_captions(scene: SceneDescription, include_held_out: bool) -> list[list[str]]:
    """Return textual-inversion template captions as single-slot forms, or [] if none fit."""
    world = load_world()
    forms = []
    simple = scene.wearing is None and scene.motion is None and len(scene.subjects) <= 1
    if simple and len(scene.subjects) == 1 and scene.scene is None and scene.style is None:
        templates = [t for t in world["object_templates"]
                     if include_held_out or t not in _held_out()["object_templates"]]
        bare = world["concepts"][scene.subjects[0]]["bare"]
        forms.append([t.format(bare) for t in templates])
    if simple and not scene.subjects and scene.scene is None and scene.style is not None:
        templates = [t for t in world["style_templates"]
                     if include_held_out or t not in _held_out()["style_templates"]]
        names = [world["concepts"][scene.style]["bare"]] + _names(scene.style, include_held_out)[1:]
        forms.append([t.format(name) for t in templates for name in names])
    return forms


def _caption_forms(scene: SceneDescription, include_held_out: bool) -> list[tuple[str, list[list[str]]]]:
    """Return (form name, slots) pairs; a caption joins one choice from each slot."""
    quality = _quality_suffixes(include_held_out)
    style = _style_slot(scene.style, include_held_out)
    forms = []
    if scene.subjects:
        for first_name in _names(scene.subjects[0], include_held_out):
            slots = [
                [""] + [p for p in PREFIXES],
                [first_name],
                [" in " + _names(scene.wearing, include_held_out)[0]] if scene.wearing else [""],
                _verb_slot(scene, first_name),
                _object_slot(scene, include_held_out),
                _scene_slot(scene.scene, include_held_out),
                style,
                quality,
            ]
            forms.append(("sentence", slots))
    elif scene.scene is not None:
        names = _names(scene.scene, include_held_out)
        forms.append(("scene", [["", *PREFIXES], names, style, quality]))
    elif scene.style is not None:
        forms.append(("style", [["a painting", "a picture"], style, quality]))
    for slots in _template_captions(scene, include_held_out):
        forms.append(("template", [slots]))
    return forms


def _as_sentence(caption: str) -> str:
    return caption[0].upper() + caption[1:] + "."


def enumerate_captions(scene: SceneDescription, include_held_out: bool = True) -> set[str]:
    """Return every caption the grammar writes for `scene`."""
    captions = set()
    for name, slots in _caption_forms(scene, include_held_out):
        for parts in itertools.product(*slots):
            caption = "".join(parts).strip()
            captions.add(caption)
            if name == "sentence" and " is " in caption and parts[-1] == "":
                captions.add(_as_sentence(caption))
    return captions


def sample_caption(scene: SceneDescription, rng: np.random.Generator) -> str:
    """Sample one training caption for `scene`, never a held-out wording."""
    forms = _caption_forms(scene, include_held_out=False)
    templates = [slots for name, slots in forms if name == "template"]
    others = [(name, slots) for name, slots in forms if name != "template"]
    if templates and (not others or rng.random() < SAMPLING["template"]):
        options = templates[int(rng.integers(len(templates)))][0]
        return options[int(rng.integers(len(options)))]

    # The first name of a concept is its usual one; paraphrases appear now and then.
    use_paraphrase = rng.random() < SAMPLING["paraphrase"]
    name, slots = others[int(rng.integers(len(others)))] if use_paraphrase else others[0]
    parts = []
    for index, slot in enumerate(slots):
        if len(slot) == 1:
            parts.append(slot[0])
        elif slot[0] == "" and index in (0, len(slots) - 1):
            # Prefix and quality suffix: usually absent.
            chance = SAMPLING["prefix"] if index == 0 else SAMPLING["quality"]
            parts.append(slot[1 + int(rng.integers(len(slot) - 1))] if rng.random() < chance else "")
        else:
            options = slot
            if index == 3 and parts[0]:
                # "a photo of a cat walking", never "a photo of a cat is walking".
                options = [option for option in slot if not option.startswith(" is ")]
            parts.append(options[int(rng.integers(len(options)))])
    caption = "".join(parts).strip()
    if name == "sentence" and " is " in caption and parts[-1] == "" and rng.random() < 0.5:
        caption = _as_sentence(caption)
    return caption
