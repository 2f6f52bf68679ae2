"""Time the README's main job on the toy world: `python train.py concept=eiffel shots=2`.

    python scripts/bench_toyworld_job.py            # or: make bench-toyworld

Runs the job in a fresh temporary folder with empty caches and no logger, then prints the job's
own phase times (from metrics.json) and the wall clock including Python start-up. The toy world's
target, for this first run, is at most 60 s on 2 CPU cores. Then it runs the job once more with
another unlearning seed, as the second run of a sweep would: its few-shot images and "before"
samples come from the caches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0


def run_job(tmp: Path, name: str, extra: list[str]) -> tuple[float, dict]:
    """Run the README job into tmp/name with the caches in tmp/cache; return the wall clock and metrics."""
    run_dir = tmp / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "T2V_UNLEARN_CACHE": str(tmp / "cache")}
    command = [sys.executable, str(REPO_ROOT / "train.py"), "concept=eiffel", "shots=2", "logger=none", *extra,
               f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the job failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return wall, json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="t2v_bench_") as tmp:
        wall, metrics = run_job(Path(tmp), "first", [])
        print(f"toy-world main job on {os.cpu_count()} CPU cores, empty caches")
        for key in ("time/fewshot_s", "time/unlearn_s", "time/eval_s", "time/total_s"):
            print(f"  {key:16s} {metrics[key]:7.1f} s")
        verdict = "PASS" if wall <= TARGET_S else "FAIL"
        print(f"  wall clock       {wall:7.1f} s including start-up (target {TARGET_S:.0f} s): {verdict}")
        print(f"  Eiffel Tower in videos: {metrics['video/target_rate_before']:.2f} before, "
              f"{metrics['video/target_rate_after']:.2f} after; other concepts "
              f"{metrics['video/other_rate_before']:.2f} before, {metrics['video/other_rate_after']:.2f} after")
        wall, metrics = run_job(Path(tmp), "second", ["seed=1"])
        print(f"the same job with seed=1 after it (a sweep's second run): {metrics['eval/videos_from_cache']} "
              f"videos and {metrics['eval/images_from_cache']} images from the cache")
        print(f"  time/eval_s      {metrics['time/eval_s']:7.1f} s")
        print(f"  wall clock       {wall:7.1f} s including start-up")


if __name__ == "__main__":
    main()
