"""Quality gates of the toy world, measured on the committed weights.

    python scripts/toyworld_gates.py [--output gates.json]   # prints a table per concept
    python scripts/toyworld_gates.py --image-seeds 16 --video-seeds 0 --first-seed 100
        # images only, on seeds the model card does not use: a second, independent sample
    python scripts/toyworld_gates.py --write-card
        # measure again and replace the gate section of the weights' MODEL_CARD.md

1. Detector: accuracy per concept on fresh held-out renders (seeds never used in training).
2. Generation: over the published prompts and every prompt of conf/concept/*.yaml, how often each
   concept is detected in generated images and videos when the prompt names it, and when it does not.
3. Speed: seconds per generated image and per video at the backend's default settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from t2v_unlearn.io import atomic_file
from t2v_unlearn.toyworld.grammar import concept_keys, load_world, parse_caption

logger = logging.getLogger("t2v_unlearn.toyworld.gates")

# Thresholds of the gates and sample sizes of the measurement.
GATES = {"detector_accuracy": 0.98, "named_detected": 0.90, "unnamed_detected": 0.05}
# A concept named in three prompts gets 3 x video_seeds videos. With 2 seeds one miss among its 6
# videos gave 0.833, under the 0.90 gate, while 16 image seeds per prompt put the same concept at
# 0.917. With 4 seeds it needs 11 of 12.
SAMPLES = {"heldout_renders": 3000, "image_seeds": 8, "video_seeds": 4, "heldout_seed": 10_000_019}
QUICK_SAMPLES = {"heldout_renders": 300, "image_seeds": 1, "video_seeds": 1, "heldout_seed": 10_000_019}
# The model card's last section; `replace_card_gates` rewrites it from here on.
GATES_HEADING = "## Quality gates"
# A video shows a concept when the detector finds it in at least this share of its frames.
VIDEO_FRAME_SHARE = 0.5


def default_concept_dir() -> Path:
    """Return the repository's conf/concept folder (this file is src/t2v_unlearn/toyworld/gates.py)."""
    return Path(__file__).resolve().parents[3] / "conf" / "concept"


def gate_prompts(concept_dir: str | Path | None = None) -> list[str]:
    """Return the published prompts and every image, eval and preserve prompt of the concept configs."""
    prompts = list(load_world()["published_prompts"])
    directory = Path(concept_dir) if concept_dir is not None else default_concept_dir()
    for path in sorted(directory.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        prompts += list(spec.get("image_prompts") or []) + list(spec.get("eval_prompts") or [])
        prompts += [entry["prompt"] for entry in spec.get("preserve_prompts") or []]
    return list(dict.fromkeys(prompts))


def detector_accuracy(judge, count: int, seed: int) -> dict:
    """Return per-concept accuracy of the judge on `count` fresh renders."""
    from t2v_unlearn.toyworld.data import make_image_set

    heldout = make_image_set(count, seed, size=judge.model.image_size)
    detected = judge.detect_all(heldout["images"])
    truth = heldout["labels"] > 0.5
    return {key: float((detected[key] == truth[:, i]).mean()) for i, key in enumerate(concept_keys())}


def _detection_rates(named: list[frozenset], detected: dict[str, np.ndarray]) -> dict:
    """Per concept: share detected where the prompt names it, and where it does not."""
    rates = {}
    for key, hits in detected.items():
        mask = np.asarray([key in names for names in named])
        rates[key] = {
            "named": float(hits[mask].mean()) if mask.any() else None,
            "named_count": int(mask.sum()),
            "unnamed": float(hits[~mask].mean()) if (~mask).any() else None,
        }
    return rates


def generation_rates(backend, judge, prompts: list[str], image_seeds: int, video_seeds: int,
                     first_seed: int = 0) -> dict:
    """Generate images and videos for each prompt and measure detection rates and timing.

    Seeds run from `first_seed` upwards. `image_seeds=0` measures videos only (for a second video
    model on the same image model), `video_seeds=0` images only.
    """
    named = [parse_caption(prompt).concepts() for prompt in prompts]
    result = {}
    image_hits = None
    if image_seeds:
        image_prompts = [p for p in prompts for _ in range(image_seeds)]
        image_seed_list = [first_seed + s for _ in prompts for s in range(image_seeds)]
        started = time.time()
        images = backend.generate_images(image_prompts, image_seed_list, desc="gate images")
        result["seconds_per_image"] = (time.time() - started) / len(image_prompts)
        result["num_images"] = len(image_prompts)
        image_hits = judge.detect_all(images)
        image_named = [names for names in named for _ in range(image_seeds)]
        result["images"] = _detection_rates(image_named, image_hits)

    video_hits = None
    if video_seeds:
        video_prompts = [p for p in prompts for _ in range(video_seeds)]
        video_seed_list = [first_seed + s for _ in prompts for s in range(video_seeds)]
        started = time.time()
        videos = backend.generate_videos(video_prompts, video_seed_list, desc="gate videos")
        result["seconds_per_video"] = (time.time() - started) / len(video_prompts)
        result["num_videos"] = len(video_prompts)

        video_named = [names for names in named for _ in range(video_seeds)]
        n, f = videos.shape[:2]
        frame_hits = judge.detect_all(videos.reshape(n * f, *videos.shape[2:]))
        video_hits = {key: hits.reshape(n, f).mean(axis=1) >= VIDEO_FRAME_SHARE for key, hits in frame_hits.items()}
        frame_named = [names for names in video_named for _ in range(f)]
        result["videos"] = _detection_rates(video_named, video_hits)
        result["video_frames"] = _detection_rates(frame_named, frame_hits)

    def prompt_shares(hits: dict, index: int, per_prompt: int) -> dict:
        """Return the share of prompt `index`'s generations in which each concept is detected."""
        rows = slice(index * per_prompt, (index + 1) * per_prompt)
        return {key: float(h[rows].mean()) for key, h in hits.items() if h[rows].any() or key in named[index]}

    per_prompt = []
    for index, prompt in enumerate(prompts):
        row = {"prompt": prompt, "named": sorted(named[index])}
        if image_hits is not None:
            row["images_detected"] = prompt_shares(image_hits, index, image_seeds)
        if video_hits is not None:
            row["videos_detected"] = prompt_shares(video_hits, index, video_seeds)
        per_prompt.append(row)
    result["per_prompt"] = per_prompt
    return result


def _summarise(rates: dict) -> dict:
    named = {k: v["named"] for k, v in rates.items() if v["named"] is not None}
    unnamed = {k: v["unnamed"] for k, v in rates.items() if v["unnamed"] is not None}
    worst_named = min(named, key=named.get)
    worst_unnamed = max(unnamed, key=unnamed.get)
    return {
        "min_named": named[worst_named], "min_named_concept": worst_named,
        "max_unnamed": unnamed[worst_unnamed], "max_unnamed_concept": worst_unnamed,
        "passed": named[worst_named] >= GATES["named_detected"] and unnamed[worst_unnamed] <= GATES["unnamed_detected"],
    }


def measure_gates(weights_dir: str | None = None, quick: bool = False, concept_dir: str | None = None,
                  samples: dict | None = None) -> dict:
    """Measure every gate on the weights in `weights_dir` (default: the committed ones).

    `samples` overrides entries of SAMPLES (or QUICK_SAMPLES), for example
    `{"image_seeds": 8, "video_seeds": 0, "first_seed": 100}` for images on other seeds only.
    """
    from t2v_unlearn.backends.toyworld import build_toyworld_backend
    from t2v_unlearn.judges.detector import ToyWorldDetectorJudge

    samples = {"first_seed": 0, **(QUICK_SAMPLES if quick else SAMPLES), **(samples or {})}
    if not samples["image_seeds"] and not samples["video_seeds"]:
        raise ValueError("image_seeds and video_seeds are both 0; set at least one of them above 0")
    backend = build_toyworld_backend(weights_dir)
    judge = ToyWorldDetectorJudge(str(Path(weights_dir) / "detector") if weights_dir else None)
    accuracy = detector_accuracy(judge, samples["heldout_renders"], samples["heldout_seed"])
    prompts = gate_prompts(concept_dir)
    generation = generation_rates(backend, judge, prompts, samples["image_seeds"], samples["video_seeds"],
                                  samples["first_seed"])
    result = {
        "gates": GATES,
        "samples": samples,
        "torch_threads": torch.get_num_threads(),
        "num_prompts": len(prompts),
        "detector_accuracy": accuracy,
        "detector_passed": min(accuracy.values()) >= GATES["detector_accuracy"],
        "generation": generation,
    }
    for name in ("images", "videos", "video_frames"):
        if name in generation:
            result[f"{name}_summary"] = _summarise(generation[name])
    if not samples["video_seeds"]:
        return result
    weights = Path(weights_dir) if weights_dir else None
    lavie_folder = (weights or _committed_weights()) / "lavie_temporal"
    if lavie_folder.is_dir():
        # The same prompts and seeds through the LaVie-architecture video model (model=toyworld_lavie).
        lavie_backend = build_toyworld_backend(weights_dir, video_model="lavie")
        lavie = generation_rates(lavie_backend, judge, prompts, 0, samples["video_seeds"], samples["first_seed"])
        result["generation_lavie"] = lavie
        result["lavie_videos_summary"] = _summarise(lavie["videos"])
        result["lavie_video_frames_summary"] = _summarise(lavie["video_frames"])
    return result


def _committed_weights() -> Path:
    from t2v_unlearn.toyworld.train import default_weights_dir

    return default_weights_dir()


def format_table(result: dict) -> str:
    """Return the gate results as a Markdown table per concept plus a summary."""
    generation = result["generation"]
    lavie = result.get("generation_lavie")
    columns = [("images", generation.get("images")), ("videos", generation.get("videos"))]
    if lavie:
        columns.append(("LaVie videos", lavie["videos"]))
    columns = [(name, rates) for name, rates in columns if rates is not None]
    header = ["concept", "detector accuracy"] + [f"{name} {kind}" for name, _ in columns for kind in ("named", "unnamed")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    for key in concept_keys():
        cells = [key, f"{result['detector_accuracy'][key]:.4f}"]
        for _, rates in columns:
            cells += [f"{cell(rates[key]['named'])} ({rates[key]['named_count']})", cell(rates[key]["unnamed"])]
        lines.append("| " + " | ".join(cells) + " |")
    summary = []
    for name in ("images", "videos", "video_frames", "lavie_videos", "lavie_video_frames"):
        s = result.get(f"{name}_summary")
        if s is None:
            continue
        # Frame counts are context: the gate counts a video when the concept is in half of its frames.
        verdict = ("per frame, not a gate" if name.endswith("_frames")
                   else "PASS" if s["passed"] else "FAIL")
        summary.append(f"- {name}: min named {s['min_named']:.3f} ({s['min_named_concept']}), max unnamed "
                       f"{s['max_unnamed']:.3f} ({s['max_unnamed_concept']}): {verdict}")
    summary.append(f"- detector: min accuracy {min(result['detector_accuracy'].values()):.4f}: "
                   f"{'PASS' if result['detector_passed'] else 'FAIL'}")
    speeds = [f"{generation[f'seconds_per_{kind}']:.3f} s per {kind}" for kind in ("image", "video")
              if f"seconds_per_{kind}" in generation]
    summary.append(f"- {', '.join(speeds)} ({result['torch_threads']} torch threads)")
    if lavie:
        summary.append(f"- LaVie-architecture video model: {lavie['seconds_per_video']:.3f} s per video")
    return "\n".join(lines + [""] + summary)


def stage_timeline(stage_metrics: list[dict]) -> tuple[float, float]:
    """Return `(busy, span)` in seconds for stages with `finished_at` and `seconds`.

    `busy` is the time during which at least one stage was running, so stages that ran in parallel
    count once. `span` runs from the earliest start to the latest end, and exceeds `busy` when a
    resumed training left gaps between stages.
    """
    intervals = sorted((m["finished_at"] - m.get("seconds", 0.0), m["finished_at"])
                       for m in stage_metrics if "finished_at" in m)
    if not intervals:
        return float("nan"), float("nan")
    busy = 0.0
    current_start, current_end = intervals[0]
    for start, end in intervals[1:]:
        if start > current_end:
            busy += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    busy += current_end - current_start
    # Each new block starts after the previous one ends, so the last block ends latest.
    return busy, current_end - intervals[0][0]


def _timing_sentence(total: float, busy: float, span: float) -> str:
    text = (f"Stage times sum to {total / 60:.0f} minutes on a 2-core CPU, and at least one stage was running "
            f"for {busy / 60:.0f} minutes (stages that ran in parallel overlap).")
    if span - busy > 60:
        text += (f" The stages ran in separate sittings, {span / 60:.0f} minutes from the first start to the "
                 "last end.")
    return text


def write_model_card(path: Path, config: dict, metrics: dict, gates: dict) -> None:
    """Write MODEL_CARD.md from the training config, the stage metrics and the gate results."""
    data = metrics.get("data", {})
    stage_metrics = [m for m in metrics.values() if isinstance(m, dict) and m]
    total = sum(m.get("seconds", 0.0) for m in stage_metrics)
    busy, span = stage_timeline(stage_metrics)
    rows = []
    for stage in ("data", "vae", "decoder", "latents", "detector", "clip", "unet", "motion", "lavie"):
        m = metrics.get(stage, {})
        losses = (f"{m['first_loss']:.4f} -> {m['final_loss']:.4f}" if "first_loss" in m else "-")
        params = m.get("parameters") or m.get("unet_parameters") or m.get("trainable_parameters")
        if not m:
            continue
        rows.append(f"| {stage} | {m.get('steps', '-')} | {params or '-'} | {losses} | {m.get('seconds', 0):.0f} "
                    f"| {m.get('torch_threads', '-')} |")
    text = f"""# Toy-world models

Small models of the real architecture classes (CLIPTextModel, UNet2DConditionModel, AutoencoderKL,
AnimateDiff MotionAdapter, LaVie's temporal layers, open_clip CLIP, a CNN detector), trained from scratch on the procedurally
rendered toy world of `t2v_unlearn.toyworld` by `python -m t2v_unlearn.toyworld.train` (`make toyworld`).
Weights are stored as fp16 safetensors (the detector in fp32) and run in fp32.

## Data
- {data.get('train_images', '?')} rendered training images, {data.get('train_clips', '?')} clips of
  {config['num_frames']} frames, {data.get('heldout_images', '?')} held-out images; {config['image_size']}x{config['image_size']} RGB.
- Captions are sampled anew at every step from the caption grammar (`world.yaml`); 10% are empty for
  classifier-free guidance. Held out of training: the quality suffix "ultra quality", two object
  templates, one style template and the last paraphrase of each concept.

## Training (seed {config['seed']}; losses are means of the first and last 50 steps)
| stage | steps | parameters | loss | seconds | torch threads |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{_timing_sentence(total, busy, span)}
VAE held-out reconstruction MSE (on [-1, 1]): {metrics.get('vae', {}).get('heldout_mse', float('nan')):.5f}
after the VAE stage, {metrics.get('decoder', {}).get('heldout_mse', float('nan')):.5f} after the decoder stage;
latent scaling factor {metrics.get('vae', {}).get('scaling_factor', float('nan')):.4f}.

Sizes: {json.dumps({k: config[k] for k in ('vae', 'decoder', 'text_encoder', 'unet', 'motion_adapter', 'lavie', 'clip', 'detector') if k in config})}

"""
    with atomic_file(path) as tmp:
        tmp.write_text(text + gates_section(gates))


def gates_section(gates: dict) -> str:
    """Return the model card's last section: the gate results of `measure_gates`."""
    first_seed = gates["samples"].get("first_seed", 0)
    seeds = f" from seed {first_seed} on" if first_seed else ""
    return f"""{GATES_HEADING} (`python scripts/toyworld_gates.py`)
Detector accuracy on {gates['samples']['heldout_renders']} fresh renders; generation over {gates['num_prompts']}
prompts (published and conf/concept/*.yaml) with {gates['samples']['image_seeds']} image seeds and
{gates['samples']['video_seeds']} video seeds each{seeds}, 20 DDIM steps, guidance 5. "named": share of
generations whose prompt names the concept in which it is detected (count of generations in brackets);
"unnamed": share of the others in which it is detected. A video shows a concept when it is
detected in at least half of its frames. "LaVie videos" come from the same prompts and seeds through
the LaVie-architecture video model (`model=toyworld_lavie`). Gates: detector >= {GATES['detector_accuracy']}, named >=
{GATES['named_detected']}, unnamed <= {GATES['unnamed_detected']}.

{format_table(gates)}
"""


def replace_card_gates(path: Path, gates: dict) -> None:
    """Replace the quality-gate section of an existing model card, keeping the training part.

    For a new measurement on the same weights (a larger sample, a retrained detector) without the
    training run's stage records, which `write_model_card` needs.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model card at {path}; train the weights with `make toyworld`, "
                                "which writes it")
    text = path.read_text()
    start = text.find(GATES_HEADING)
    if start < 0:
        raise ValueError(f"{path} has no {GATES_HEADING!r} section to replace; "
                         "retrain with `make toyworld` to write a complete card")
    with atomic_file(path) as tmp:
        tmp.write_text(text[:start] + gates_section(gates))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the toy world's quality gates.")
    parser.add_argument("--weights", default=None, help="weights folder (default: the committed weights)")
    parser.add_argument("--quick", action="store_true", help="one seed per prompt and 300 renders (a minute)")
    parser.add_argument("--image-seeds", type=int, default=None,
                        help=f"image seeds per prompt (default {SAMPLES['image_seeds']}; 0: no images)")
    parser.add_argument("--video-seeds", type=int, default=None,
                        help=f"video seeds per prompt (default {SAMPLES['video_seeds']}; 0: no videos)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first generation seed; seeds other than the model card's give an independent sample")
    parser.add_argument("--output", default=None, help="JSON file for the full results (default: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--write-card", action="store_true",
                        help="replace the quality-gate section of the weights' MODEL_CARD.md with these results")
    args = parser.parse_args(argv)
    if args.write_card and args.quick:
        parser.error("--write-card with --quick would put a one-seed sample in the model card; drop --quick")
    for name in ("image_seeds", "video_seeds", "first_seed"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = {"first_seed": args.first_seed}
    if args.image_seeds is not None:
        samples["image_seeds"] = args.image_seeds
    if args.video_seeds is not None:
        samples["video_seeds"] = args.video_seeds
    try:
        result = measure_gates(args.weights, quick=args.quick, samples=samples)
    except ValueError as error:
        parser.error(str(error))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    print(format_table(result))
    if args.write_card:
        card = (Path(args.weights) if args.weights else _committed_weights()) / "MODEL_CARD.md"
        replace_card_gates(card, result)
        print(f"wrote the gate section of {card}")
