"""Render prompts of your own with a run's unlearned encoder and the original one, on the toy world.

    python scripts/toyworld_probe_prompts.py RUN_DIR --concept tokyo_tower --seeds 4 \\
        --prompt "a butterfly flying on Tokyo Tower" --prompt "a photo of Tokyo Tower"

`--concept` is a key of the toy world's detector (`--help` lists them). The detector covers every
concept of the world, not only those with a file in conf/concept/.

The main job judges its fixed evaluation prompts, and the retain term of some methods trains on the
preservation prompts among them. This script measures the same on prompts the job never saw.
For each prompt it renders `--seeds` videos (evaluation seeds 1000, 1001, ...) with the original
encoder and with RUN_DIR/text_encoder. It prints in how many of them the toy world's detector finds
the concept (in any of 5 judged frames, as in the job). The run must come from the toy world with
AnimateDiff (`model=toyworld`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from t2v_unlearn.backends.toyworld import read_detector_config

    keys = list(read_detector_config()["concept_keys"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished run folder of `python train.py` on the toy world")
    parser.add_argument("--concept", required=True, choices=keys, metavar="KEY",
                        help=f"detector key of the concept to look for: {', '.join(keys)}")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt to render (repeat the option)")
    parser.add_argument("--seeds", type=int, default=4, help="videos per prompt and encoder (default: 4)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} must be 1 or more")
    if not args.run_dir.is_dir():
        parser.error(f"run folder {args.run_dir} does not exist; pass the folder of a finished `python train.py` run")

    from transformers import CLIPTextModel

    from t2v_unlearn.backends.toyworld import build_toyworld_backend
    from t2v_unlearn.concepts import EvalItem
    from t2v_unlearn.evaluate import judge_videos
    from t2v_unlearn.judges.base import WatchedConcept
    from t2v_unlearn.judges.detector import ToyWorldDetectorJudge

    encoder_dir = args.run_dir / "text_encoder"
    provenance_path = encoder_dir / "unlearning.json"
    if not provenance_path.is_file():
        raise SystemExit(f"no unlearned encoder found in {encoder_dir} (unlearning.json is missing); "
                         f"pass the folder of a finished run")
    provenance = json.loads(provenance_path.read_text())
    if provenance.get("backend") != "toyworld":
        raise SystemExit(f"the run used backend {provenance.get('backend')!r}; this script needs a model=toyworld run")

    backend = build_toyworld_backend()
    judge = ToyWorldDetectorJudge()
    watched = WatchedConcept(args.concept, args.concept)
    unlearned = CLIPTextModel.from_pretrained(str(encoder_dir), torch_dtype=torch.float32).eval()

    prompts = [p for p in args.prompt for _ in range(args.seeds)]
    seeds = [1000 + j for _ in args.prompt for j in range(args.seeds)]
    found = {}
    for label, encoder in (("original", backend.text_encoder), ("unlearned", unlearned)):
        videos = backend.generate_videos(prompts, seeds, text_encoder=encoder, desc=f"videos {label}")
        items = [EvalItem(prompt, watched, "other") for prompt in prompts]
        found[label] = judge_videos(judge, videos, items, frames_to_judge=5)
    print(f"Videos showing {args.concept}, out of {args.seeds} per prompt and encoder "
          f"({args.run_dir}, method {provenance.get('method')}):")
    print(f"  {'original':>8s} {'unlearned':>9s}  prompt")
    for i, prompt in enumerate(args.prompt):
        part = slice(i * args.seeds, (i + 1) * args.seeds)
        print(f"  {int(found['original'][part].sum()):8d} {int(found['unlearned'][part].sum()):9d}  {prompt}")
    total = len(prompts)
    print(f"  {found['original'].sum() / total:8.2f} {found['unlearned'].sum() / total:9.2f}  share over all prompts")


if __name__ == "__main__":
    main()
