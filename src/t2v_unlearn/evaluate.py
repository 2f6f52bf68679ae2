"""Render the evaluation prompts, judge the outputs, and turn the decisions into rates."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.concepts import EvalItem
from t2v_unlearn.io import atomic_file
from t2v_unlearn.judges.base import Judge
from t2v_unlearn.media import image_grid, sample_frame_indices, write_frame_grid, write_png, write_video

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    seeds_per_prompt: int = 2
    # Seeds are `seed + j` for j < seeds_per_prompt, the same before and after unlearning.
    seed: int = 1000
    frames_to_judge: int = 5
    videos: bool = True
    images: bool = True
    fps: int = 8


@dataclass
class PhaseOutputs:
    """Outputs of one phase ("before" or "after") and the judge's decisions on them."""

    video_present: np.ndarray | None  # (n_samples,) bool
    image_present: np.ndarray | None
    clip_similarity: np.ndarray | None  # (n_target_samples,) mean over judged frames
    video_paths: list[Path]
    grid_paths: list[Path]
    image_grid_path: Path | None
    # Kept so that a later phase can take over samples whose prompts its encoder reads unchanged.
    images: np.ndarray | None = None  # (n_samples, h, w, 3) uint8
    clip_by_sample: np.ndarray | None = None  # (n_samples,), NaN outside the target group
    # (n_samples,) bool: taken over from an earlier phase instead of generated again.
    reused: np.ndarray | None = None
    # Per sample, the concept keys that the judge finds in any judged frame of the video, the rule of
    # `judge_videos`. None when the judge has no fixed concept list (`Judge.detect_all`).
    video_seen: list[tuple[str, ...]] | None = None
    # (n_samples,) bool: read from the sample cache (`sample_cache.SampleCache`) instead of rendered.
    video_from_cache: np.ndarray | None = None
    image_from_cache: np.ndarray | None = None


def expand(items: list[EvalItem], settings: EvalSettings) -> tuple[list[EvalItem], list[int]]:
    """Repeat each item once per seed; returns the per-sample items and seeds."""
    samples, seeds = [], []
    for item in items:
        for j in range(settings.seeds_per_prompt):
            samples.append(item)
            seeds.append(settings.seed + j)
    return samples, seeds


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


def judge_images(judge: Judge, images: np.ndarray, samples: list[EvalItem]) -> np.ndarray:
    """Return per-image decisions, one judge call per watched concept."""
    present = np.zeros(len(samples), dtype=bool)
    by_concept: dict = defaultdict(list)
    for i, sample in enumerate(samples):
        by_concept[sample.watched].append(i)
    for watched, index in by_concept.items():
        present[index] = judge.detect(images[index], watched)
    return present


def _judged_frames(videos: np.ndarray, frames_to_judge: int) -> tuple[np.ndarray, int]:
    """Return the uniformly sampled frames of every video as one `(n * k, h, w, 3)` array, and k."""
    frames = videos[:, sample_frame_indices(videos.shape[1], frames_to_judge)]  # (n, k, h, w, 3)
    return frames.reshape(-1, *frames.shape[2:]), frames.shape[1]


def judge_videos(judge: Judge, videos: np.ndarray, samples: list[EvalItem], frames_to_judge: int) -> np.ndarray:
    """Judge each video: it shows the concept when any of `frames_to_judge` uniformly sampled frames does."""
    frames, k = _judged_frames(videos, frames_to_judge)
    per_frame_samples = [s for s in samples for _ in range(k)]
    per_frame = judge_images(judge, frames, per_frame_samples)
    return per_frame.reshape(len(videos), k).any(axis=1)


def concepts_seen(judge: Judge, videos: np.ndarray, frames_to_judge: int) -> list[tuple[str, ...]] | None:
    """Return, per video, the sorted keys of every concept the judge finds in any judged frame.

    None when the judge cannot list concepts (`Judge.detect_all` returns None).
    """
    frames, k = _judged_frames(videos, frames_to_judge)
    detected = judge.detect_all(frames)
    if detected is None:
        return None
    n = len(videos)
    in_any_frame = {key: hits.reshape(n, k).any(axis=1) for key, hits in detected.items()}
    return [tuple(sorted(key for key, hits in in_any_frame.items() if hits[i])) for i in range(n)]


def seen_shares(outputs: PhaseOutputs, samples: list[EvalItem], group: str = "target") -> dict[str, float]:
    """Return the share of `group`'s videos in which each concept was seen, or {} without records."""
    index = [i for i, s in enumerate(samples) if s.group == group]
    if outputs.video_seen is None or not index:
        return {}
    counts: dict[str, int] = defaultdict(int)
    for i in index:
        for key in outputs.video_seen[i]:
            counts[key] += 1
    return {key: counts[key] / len(index) for key in sorted(counts)}


def seen_in_target_metrics(before: PhaseOutputs, after: PhaseOutputs, samples: list[EvalItem]) -> dict[str, float]:
    """Return `seen_in_target/<key>_before` and `_after`: what the target prompts' videos show.

    One pair per concept seen in either phase, from judges that list concepts (`Judge.detect_all`).
    The pairs show what takes the erased concept's place: after the Eiffel Tower is erased, a
    tower prompt may still draw a tower that the judge calls Tokyo Tower.
    """
    if before.video_seen is None or after.video_seen is None:
        return {}
    shares = {"before": seen_shares(before, samples), "after": seen_shares(after, samples)}
    keys = sorted(set(shares["before"]) | set(shares["after"]))
    if keys:
        log.info("Concepts seen in the target prompts' videos, before -> after: %s",
                 ", ".join(f"{key} {shares['before'].get(key, 0.0):.2f} -> {shares['after'].get(key, 0.0):.2f}"
                           for key in keys))
    return {f"seen_in_target/{key}_{phase}": shares[phase].get(key, 0.0) for key in keys for phase in shares}


def encoder_digests(tokenizer, text_encoder: torch.nn.Module, texts: list[str]) -> dict[str, str]:
    """Return a SHA-256 per text over everything the text encoder returns for it.

    The texts are tokenized as the pipelines tokenize prompts, padded to the model's length. The
    digest covers the last hidden state, the pooled output and every layer's hidden states. Two
    encoders with equal digests for a text thus give any pipeline the same conditioning for it.
    """
    texts = list(dict.fromkeys(texts))
    parameter = next(text_encoder.parameters())
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(parameter.device)
    with torch.no_grad():
        output = text_encoder(ids, output_hidden_states=True)
    tensors = []
    for value in output.to_tuple():
        tensors.extend(value if isinstance(value, (tuple, list)) else [value])
    digests = {}
    for row, text in enumerate(texts):
        digest = hashlib.sha256()
        for tensor in tensors:
            digest.update(tensor[row].detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        digests[text] = digest.hexdigest()
    return digests


def guidance_texts(backend: Backend) -> list[str]:
    """List the texts that every sample's guidance reads besides its prompt.

    These are the empty prompt of classifier-free guidance and any configured negative prompt.
    """
    texts = [""]
    for kwargs in (backend.image_kwargs, backend.video_kwargs):
        negative = kwargs.get("negative_prompt")
        texts += [negative] if isinstance(negative, str) else list(negative or [])
    return list(dict.fromkeys(texts))


def unchanged_prompts(before: dict[str, str], after: dict[str, str], prompts: list[str],
                      shared: list[str]) -> frozenset[str]:
    """Return the prompts whose digests match, or none when a text in `shared` changed."""
    if any(before[text] != after[text] for text in shared):
        return frozenset()
    return frozenset(text for text in prompts if before[text] == after[text])


def _copy_file(source: Path, target: Path) -> None:
    with atomic_file(target) as tmp:
        shutil.copyfile(source, tmp)


def _render(kind: str, backend: Backend, cache, prompts: list[str], seeds: list[int], text_encoder: torch.nn.Module,
            phase: str, store: bool) -> tuple[np.ndarray, np.ndarray]:
    """Render videos or images through `cache` when there is one, else through the backend.

    Returns the uint8 samples and a bool mask of those read from the cache.
    """
    desc = f"{kind}s {phase}"
    if cache is not None:
        return cache.render(kind, prompts, seeds, text_encoder, desc=desc, store=store)
    generate = backend.generate_videos if kind == "video" else backend.generate_images
    return generate(prompts, seeds, text_encoder=text_encoder, desc=desc), np.zeros(len(prompts), dtype=bool)


def run_phase(
    phase: str,
    backend: Backend,
    judge: Judge,
    scorer,
    items: list[EvalItem],
    text_encoder: torch.nn.Module,
    out_dir: str | Path,
    settings: EvalSettings,
    reuse_from: PhaseOutputs | None = None,
    reusable_prompts: frozenset[str] = frozenset(),
    cache=None,
) -> PhaseOutputs:
    """Generate, save and judge the videos and images of every evaluation prompt with one encoder.

    Samples whose prompt is in `reusable_prompts` are taken over from `reuse_from` (an earlier phase
    with the same items and settings): their files are copied and their decisions kept. The caller
    passes only prompts that `text_encoder` encodes bit for bit as the earlier phase's encoder did
    (`unchanged_prompts`), with the UNet, VAE and seeds the same, so generating them again would
    give the same videos and images. The other samples are rendered through `cache` (a
    `sample_cache.SampleCache`) when one is given, so a sample an earlier run rendered is read back.
    Only the first phase (no `reuse_from`) stores its samples there: those are what other runs share.
    """
    out_dir = Path(out_dir)
    samples, seeds = expand(items, settings)
    prompts = [s.prompt for s in samples]
    rendered = settings.videos or settings.images
    reused = np.array([rendered and reuse_from is not None and p in reusable_prompts for p in prompts], dtype=bool)
    todo = np.flatnonzero(~reused)
    todo_samples = [samples[i] for i in todo]
    todo_prompts, todo_seeds = [prompts[i] for i in todo], [seeds[i] for i in todo]
    video_present = image_present = clip_similarity = clip_by_sample = images = video_seen = None
    video_paths: list[Path] = []
    grid_paths: list[Path] = []
    image_grid_path = None
    video_from_cache = np.zeros(len(samples), dtype=bool)
    image_from_cache = np.zeros(len(samples), dtype=bool)

    if settings.videos:
        videos = None
        if len(todo):
            videos, from_cache = _render("video", backend, cache, todo_prompts, todo_seeds, text_encoder, phase,
                                         store=reuse_from is None)
            video_from_cache[todo] = from_cache
        generated = dict(zip(todo.tolist(), videos if videos is not None else []))
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            stem = f"{i:03d}_{_slug(prompt)}_seed{seed}"
            video_path = out_dir / "videos" / phase / f"{stem}.mp4"
            grid_path = out_dir / "videos" / phase / f"{stem}.png"
            if reused[i]:
                _copy_file(reuse_from.video_paths[i], video_path)
                _copy_file(reuse_from.grid_paths[i], grid_path)
            else:
                write_video(video_path, generated[i], fps=settings.fps)
                write_frame_grid(grid_path, generated[i])
            video_paths.append(video_path)
            grid_paths.append(grid_path)
        video_present = np.zeros(len(samples), dtype=bool)
        if reused.any():
            video_present[reused] = reuse_from.video_present[reused]
        if videos is not None:
            video_present[todo] = judge_videos(judge, videos, todo_samples, settings.frames_to_judge)
        video_seen = _seen_per_sample(judge, videos, todo, reused, reuse_from, settings.frames_to_judge)
        if scorer is not None:
            clip_by_sample = np.full(len(samples), np.nan)
            if reused.any():
                clip_by_sample[reused] = reuse_from.clip_by_sample[reused]
            if videos is not None:
                clip_by_sample[todo] = _probe_similarity(scorer, videos, todo_samples, settings.frames_to_judge)
            clip_similarity = np.asarray([clip_by_sample[i] for i, s in enumerate(samples) if s.group == "target"])

    if settings.images:
        new_images = None
        if len(todo):
            new_images, from_cache = _render("image", backend, cache, todo_prompts, todo_seeds, text_encoder, phase,
                                             store=reuse_from is None)
            image_from_cache[todo] = from_cache
        reference = new_images if new_images is not None else reuse_from.images
        images = np.zeros((len(samples), *reference.shape[1:]), dtype=reference.dtype)
        image_present = np.zeros(len(samples), dtype=bool)
        if reused.any():
            images[reused] = reuse_from.images[reused]
            image_present[reused] = reuse_from.image_present[reused]
        if new_images is not None:
            images[todo] = new_images
            image_present[todo] = judge_images(judge, new_images, todo_samples)
        image_grid_path = out_dir / "images" / f"{phase}.png"
        write_png(image_grid_path, image_grid(images, columns=settings.seeds_per_prompt * 2))

    if reused.any():
        log.info("%s: %d of %d samples taken over from the earlier phase (their prompts are encoded "
                 "as before)", phase, int(reused.sum()), len(samples))
    return PhaseOutputs(video_present, image_present, clip_similarity, video_paths, grid_paths, image_grid_path,
                        images=images, clip_by_sample=clip_by_sample, reused=reused, video_seen=video_seen,
                        video_from_cache=video_from_cache if settings.videos else None,
                        image_from_cache=image_from_cache if settings.images else None)


def _seen_per_sample(judge: Judge, videos: np.ndarray | None, todo: np.ndarray, reused: np.ndarray,
                     reuse_from: PhaseOutputs | None, frames_to_judge: int) -> list[tuple[str, ...]] | None:
    """Combine the concepts seen in new videos with those recorded for taken-over samples."""
    seen: list[tuple[str, ...]] = [()] * len(reused)
    if reused.any():
        if reuse_from.video_seen is None:
            return None
        for i in np.flatnonzero(reused).tolist():
            seen[i] = reuse_from.video_seen[i]
    if videos is not None:
        new = concepts_seen(judge, videos, frames_to_judge)
        if new is None:
            return None
        for i, keys in zip(todo.tolist(), new):
            seen[i] = keys
    return seen


def _probe_similarity(scorer, videos: np.ndarray, samples: list[EvalItem], frames_to_judge: int) -> np.ndarray:
    """Return the mean CLIP similarity of each target video's sampled frames with its probe.

    Samples outside the target group get NaN.
    """
    frame_index = sample_frame_indices(videos.shape[1], frames_to_judge)
    values = np.full(len(samples), np.nan)
    for i, (video, sample) in enumerate(zip(videos, samples)):
        if sample.group == "target":
            values[i] = float(np.mean(scorer.similarity(video[frame_index], sample.watched.probe)))
    return values


def rate(present: np.ndarray | None, samples: list[EvalItem], group: str) -> float | None:
    """Share of positives among the samples of `group`: "target", "paraphrase" (the target named
    another way), "other", or "similar" (the other concepts listed as similar to an unlearned one)
    and "unrelated" (the rest of "other"). None when the group has no sample."""
    if present is None:
        return None
    select = {
        "target": lambda s: s.group == "target",
        "paraphrase": lambda s: s.group == "paraphrase",
        "other": lambda s: s.group == "other",
        "similar": lambda s: s.group == "other" and s.similar,
        "unrelated": lambda s: s.group == "other" and not s.similar,
    }[group]
    mask = np.array([select(s) for s in samples], dtype=bool)
    return float(present[mask].mean()) if mask.any() else None


def phase_metrics(phase: str, outputs: PhaseOutputs, samples: list[EvalItem]) -> dict[str, float | None]:
    metrics = {
        f"video/target_rate_{phase}": rate(outputs.video_present, samples, "target"),
        f"video/other_rate_{phase}": rate(outputs.video_present, samples, "other"),
        f"image/target_rate_{phase}": rate(outputs.image_present, samples, "target"),
        f"image/other_rate_{phase}": rate(outputs.image_present, samples, "other"),
        f"video/similar_rate_{phase}": rate(outputs.video_present, samples, "similar"),
        f"video/unrelated_rate_{phase}": rate(outputs.video_present, samples, "unrelated"),
        f"video/paraphrase_rate_{phase}": rate(outputs.video_present, samples, "paraphrase"),
        f"image/paraphrase_rate_{phase}": rate(outputs.image_present, samples, "paraphrase"),
        f"clip/target_similarity_{phase}": (
            float(outputs.clip_similarity.mean())
            if outputs.clip_similarity is not None and len(outputs.clip_similarity) else None
        ),
    }
    return metrics


def per_sample_records(samples: list[EvalItem], seeds: list[int], before: PhaseOutputs,
                       after: PhaseOutputs | None) -> list[dict]:
    """Build one record per (prompt, seed) with the judge's decision before and after, for later analysis."""
    records = []
    for i, (sample, seed) in enumerate(zip(samples, seeds)):
        record = {"prompt": sample.prompt, "seed": seed, "group": sample.group, "concept": sample.watched.key,
                  "similar": sample.similar}
        for name, phase in (("before", before), ("after", after)):
            if phase is None:
                continue
            if phase.video_present is not None:
                record[f"video_{name}"] = bool(phase.video_present[i])
                record[f"video_{name}_path"] = str(phase.video_paths[i])
            if phase.video_seen is not None:
                record[f"video_{name}_seen"] = list(phase.video_seen[i])
            if phase.image_present is not None:
                record[f"image_{name}"] = bool(phase.image_present[i])
            if phase.reused is not None and phase.reused.any():
                record[f"{name}_copied_from_before"] = bool(phase.reused[i])
            if phase.video_from_cache is not None:
                record[f"video_{name}_from_cache"] = bool(phase.video_from_cache[i])
            if phase.image_from_cache is not None:
                record[f"image_{name}_from_cache"] = bool(phase.image_from_cache[i])
        records.append(record)
    return records
