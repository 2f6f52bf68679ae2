"""Render the evaluation prompts, judge the outputs, and turn the decisions into rates."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2v_unlearn.backends.bundle import Backend
from t2v_unlearn.concepts import EvalItem
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


def judge_videos(judge: Judge, videos: np.ndarray, samples: list[EvalItem], frames_to_judge: int) -> np.ndarray:
    """Judge each video: it shows the concept when any of `frames_to_judge` uniformly sampled frames does."""
    frame_index = sample_frame_indices(videos.shape[1], frames_to_judge)
    frames = videos[:, frame_index]  # (n, k, h, w, 3)
    n, k = frames.shape[:2]
    per_frame_samples = [s for s in samples for _ in range(k)]
    per_frame = judge_images(judge, frames.reshape(n * k, *frames.shape[2:]), per_frame_samples)
    return per_frame.reshape(n, k).any(axis=1)


def run_phase(
    phase: str,
    backend: Backend,
    judge: Judge,
    scorer,
    items: list[EvalItem],
    text_encoder: torch.nn.Module,
    out_dir: str | Path,
    settings: EvalSettings,
) -> PhaseOutputs:
    """Generate, save and judge the videos and images of every evaluation prompt with one encoder."""
    out_dir = Path(out_dir)
    samples, seeds = expand(items, settings)
    prompts = [s.prompt for s in samples]
    video_present = image_present = clip_similarity = None
    video_paths: list[Path] = []
    grid_paths: list[Path] = []
    image_grid_path = None

    if settings.videos:
        videos = backend.generate_videos(prompts, seeds, text_encoder=text_encoder, desc=f"videos {phase}")
        for i, (video, prompt, seed) in enumerate(zip(videos, prompts, seeds)):
            stem = f"{i:03d}_{_slug(prompt)}_seed{seed}"
            write_video(out_dir / "videos" / phase / f"{stem}.mp4", video, fps=settings.fps)
            write_frame_grid(out_dir / "videos" / phase / f"{stem}.png", video)
            video_paths.append(out_dir / "videos" / phase / f"{stem}.mp4")
            grid_paths.append(out_dir / "videos" / phase / f"{stem}.png")
        video_present = judge_videos(judge, videos, samples, settings.frames_to_judge)
        if scorer is not None:
            clip_similarity = _probe_similarity(scorer, videos, samples, settings.frames_to_judge)

    if settings.images:
        images = backend.generate_images(prompts, seeds, text_encoder=text_encoder, desc=f"images {phase}")
        image_grid_path = out_dir / "images" / f"{phase}.png"
        write_png(image_grid_path, image_grid(images, columns=settings.seeds_per_prompt * 2))
        image_present = judge_images(judge, images, samples)

    return PhaseOutputs(video_present, image_present, clip_similarity, video_paths, grid_paths, image_grid_path)


def _probe_similarity(scorer, videos: np.ndarray, samples: list[EvalItem], frames_to_judge: int) -> np.ndarray:
    """Mean CLIP cosine similarity of each target video's sampled frames with its concept's probe."""
    frame_index = sample_frame_indices(videos.shape[1], frames_to_judge)
    values = []
    for video, sample in zip(videos, samples):
        if sample.group == "target":
            values.append(float(np.mean(scorer.similarity(video[frame_index], sample.watched.probe))))
    return np.asarray(values)


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
            if phase.image_present is not None:
                record[f"image_{name}"] = bool(phase.image_present[i])
        records.append(record)
    return records
