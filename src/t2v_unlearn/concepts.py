"""Concept definitions (one YAML file per concept under `conf/concept/`) as typed objects."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from t2v_unlearn.errors import SettingsError
from t2v_unlearn.judges.base import WatchedConcept

KINDS = ("object", "style")


@dataclass(frozen=True)
class PreservePrompt:
    """A prompt that names another concept, which must survive the unlearning."""

    prompt: str
    concept: str
    probe: str


@dataclass(frozen=True)
class Concept:
    key: str
    # The concept's name as it appears in prompts, filled into the prompt templates.
    name: str
    # "object" (objects, characters, people) or "style" (artist styles): picks the templates.
    kind: str
    image_prompts: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    preserve_prompts: tuple[PreservePrompt, ...]
    probe: str
    anchors: tuple[str, ...]
    category: str = ""
    similar: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()
    # Evaluation prompts that name the concept only by a paraphrase ("the beagle from Peanuts").
    # They measure whether an erased concept comes back under another name.
    paraphrase_prompts: tuple[str, ...] = ()
    # A user folder of images that replaces the generated few-shot images.
    images_dir: str | None = None

    @property
    def watched(self) -> WatchedConcept:
        return WatchedConcept(key=self.key, probe=self.probe, anchors=self.anchors)

    @classmethod
    def from_config(cls, key: str, cfg: Mapping[str, Any]) -> "Concept":
        missing = [f for f in ("name", "kind", "image_prompts", "eval_prompts", "probe") if not cfg.get(f)]
        if missing:
            raise SettingsError(f"concept '{key}' is missing the field(s) {missing}; see conf/concept/eiffel.yaml")
        if cfg["kind"] not in KINDS:
            raise SettingsError(f"concept '{key}' has kind '{cfg['kind']}'; use one of {list(KINDS)}")
        preserve = tuple(_preserve_prompt(key, entry) for entry in cfg.get("preserve_prompts") or ())
        return cls(
            key=str(cfg.get("key", key)),
            name=str(cfg["name"]),
            kind=str(cfg["kind"]),
            image_prompts=tuple(cfg["image_prompts"]),
            eval_prompts=tuple(cfg["eval_prompts"]),
            preserve_prompts=preserve,
            probe=str(cfg["probe"]),
            anchors=tuple(cfg.get("anchors") or ()),
            category=str(cfg.get("category") or ""),
            similar=tuple(cfg.get("similar") or ()),
            paraphrases=tuple(cfg.get("paraphrases") or ()),
            paraphrase_prompts=tuple(cfg.get("paraphrase_prompts") or ()),
            images_dir=cfg.get("images_dir") or None,
        )


def _preserve_prompt(key: str, entry: Mapping[str, Any]) -> PreservePrompt:
    fields = {"prompt", "concept", "probe"}
    missing = sorted(fields - set(entry))
    unknown = sorted(str(name) for name in set(entry) - fields)
    if unknown:
        # In a YAML flow mapping a comma ends the value, so an unquoted "a cat, oil painting style"
        # leaves the prompt as "a cat" and makes "oil painting style" a key.
        raise SettingsError(f"concept '{key}' has a preserve prompt {dict(entry)} with unknown key(s) {unknown}; "
                         "quote a prompt that contains a comma: {prompt: \"a cat, oil painting style\", ...}")
    if missing:
        raise SettingsError(f"concept '{key}' has a preserve prompt {dict(entry)} without {missing}; "
                         "give each entry prompt, concept and probe")
    return PreservePrompt(prompt=str(entry["prompt"]), concept=str(entry["concept"]), probe=str(entry["probe"]))


def load_concepts(concepts_cfg: Mapping[str, Any] | None, images_dir: str | None = None) -> list[Concept]:
    """Build the target concepts from the `concepts` node that `concept=...` fills.

    `images_dir` (the `concept.images_dir=...` shortcut) applies to a single-concept run.
    """
    if not concepts_cfg:
        raise SettingsError("no concept selected; pass one, e.g. concept=eiffel or concept=[snoopy,mickey]")
    concepts = [Concept.from_config(key, cfg) for key, cfg in concepts_cfg.items()]
    if images_dir:
        if len(concepts) > 1:
            keys = ", ".join(c.key for c in concepts)
            raise SettingsError(f"concept.images_dir applies to one concept, but this run unlearns {keys}; "
                             "set concepts.<key>.images_dir=... for each concept instead")
        concepts[0] = replace(concepts[0], images_dir=str(images_dir))
    return concepts


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt and the concept whose presence is measured in its outputs."""

    prompt: str
    watched: WatchedConcept
    # "target" for prompts naming an unlearned concept, "paraphrase" for prompts naming it only by
    # a paraphrase, "other" for preservation prompts.
    group: str
    # An "other" concept listed as similar to an unlearned one (Tokyo Tower for the Eiffel Tower),
    # where leakage is expected.
    similar: bool = False


def evaluation_items(concepts: list[Concept], prompts_per_group: int | None = None,
                     paraphrases: bool = False) -> list[EvalItem]:
    """List the target prompts of every concept, then (with `paraphrases`) their paraphrase
    prompts, then the preservation prompts.

    A preservation prompt that names one of the unlearned concepts (Mickey Mouse in Snoopy's list
    when both are unlearned) is dropped, since it is no longer "other". Duplicates are dropped.
    With `prompts_per_group`, only the first that many of each group are kept.
    """
    target_keys = {c.key for c in concepts}
    items: list[EvalItem] = []
    seen: set[tuple[str, str]] = set()
    for concept in concepts:
        for prompt in concept.eval_prompts:
            if (prompt, concept.key) not in seen:
                seen.add((prompt, concept.key))
                items.append(EvalItem(prompt, concept.watched, "target"))
    if paraphrases:
        for concept in concepts:
            for prompt in concept.paraphrase_prompts:
                if (prompt, concept.key) not in seen:
                    seen.add((prompt, concept.key))
                    items.append(EvalItem(prompt, concept.watched, "paraphrase"))
    for concept in concepts:
        for p in concept.preserve_prompts:
            if p.concept in target_keys or (p.prompt, p.concept) in seen:
                continue
            seen.add((p.prompt, p.concept))
            similar = any(p.concept in c.similar for c in concepts)
            items.append(EvalItem(p.prompt, WatchedConcept(p.concept, p.probe, concept.anchors), "other", similar))
    if prompts_per_group is not None:
        items = [item for group in ("target", "paraphrase", "other")
                 for item in [i for i in items if i.group == group][:prompts_per_group]]
    return items


@dataclass
class PromptTemplates:
    object: list[str] = field(default_factory=list)
    style: list[str] = field(default_factory=list)

    def for_kind(self, kind: str) -> list[str]:
        templates = self.object if kind == "object" else self.style
        if not templates:
            raise SettingsError(f"no prompt templates for kind '{kind}'; check conf/prompts/")
        return templates
