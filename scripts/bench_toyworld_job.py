"""Time the README's main job on the toy world: `python train.py concept=eiffel shots=2`.

    python scripts/bench_toyworld_job.py            # or: make bench-toyworld

Runs the job once in a fresh temporary folder with an empty few-shot cache and no logger, then
prints the job's own phase times (from metrics.json) and the wall clock including Python start-up.
The toy world's target is at most 60 s on 2 CPU cores.
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


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="t2v_bench_") as tmp:
        run_dir = Path(tmp) / "run"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
               "T2V_UNLEARN_CACHE": str(Path(tmp) / "cache")}
        command = [sys.executable, str(REPO_ROOT / "train.py"), "concept=eiffel", "shots=2", "logger=none",
                   f"hydra.run.dir={run_dir}"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"the job failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"toy-world main job on {os.cpu_count()} CPU cores")
    for key in ("time/fewshot_s", "time/unlearn_s", "time/eval_s", "time/total_s"):
        print(f"  {key:16s} {metrics[key]:7.1f} s")
    verdict = "PASS" if wall <= TARGET_S else "FAIL"
    print(f"  wall clock       {wall:7.1f} s including start-up (target {TARGET_S:.0f} s): {verdict}")
    print(f"  Eiffel Tower in videos: {metrics['video/target_rate_before']:.2f} before, "
          f"{metrics['video/target_rate_after']:.2f} after; other concepts {metrics['video/other_rate_before']:.2f} "
          f"before, {metrics['video/other_rate_after']:.2f} after")


if __name__ == "__main__":
    main()
