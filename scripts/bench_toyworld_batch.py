"""Time toy-world generation per sample at several batch sizes (pipeline calls of n samples).

    python scripts/bench_toyworld_batch.py [--samples 16] [--sizes 1 2 4 8 16]

Prints seconds per video and per image for each size, after one warm-up call. The toy world's
`video_batch_size` (conf/model/toyworld.yaml) comes from this.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16, help="videos and images generated per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="batch sizes to time")
    args = parser.parse_args()
    if args.samples < 1 or min(args.sizes) < 1:
        parser.error(f"--samples {args.samples} and --sizes {args.sizes} must be 1 or more")

    from t2v_unlearn.backends.toyworld import build_toyworld_backend

    backend = build_toyworld_backend()
    prompts = ["a butterfly flying on the Eiffel Tower", "a panda taking a selfie"] * args.samples
    prompts, seeds = prompts[:args.samples], list(range(args.samples))
    backend.generate_videos(prompts[:2], seeds[:2])  # warm-up
    print(f"toy-world generation on {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
          f"{args.samples} samples per size")
    for size in args.sizes:
        backend.video_batch_size = backend.generation_batch_size = size
        started = time.perf_counter()
        backend.generate_videos(prompts, seeds)
        per_video = (time.perf_counter() - started) / args.samples
        started = time.perf_counter()
        backend.generate_images(prompts, seeds)
        per_image = (time.perf_counter() - started) / args.samples
        print(f"  batch {size:3d}: {per_video:.3f} s per video, {per_image:.3f} s per image")


if __name__ == "__main__":
    main()
