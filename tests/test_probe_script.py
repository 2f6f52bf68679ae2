"""scripts/toyworld_probe_prompts.py on a real toy-world run, and its input errors."""

import subprocess
import sys

from conftest import REPO_ROOT
from test_train_cli import train_cli

SCRIPT = str(REPO_ROOT / "scripts" / "toyworld_probe_prompts.py")


def probe(args, tmp_path):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_probe_counts_videos_per_prompt(tmp_path):
    out = tmp_path / "run"
    train_cli(["concept=eiffel", "shots=2", "logger=none", "eval.videos=false", "eval.images=false",
               "eval.clip_similarity=false", f"hydra.run.dir={out}"], tmp_path)
    result = probe([str(out), "--concept", "eiffel", "--seeds", "1", "--prompt", "a photo of the Eiffel Tower",
                    "--prompt", "a photo of Tokyo Tower"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split(None, 2)[2]: line.split()[:2] for line in result.stdout.splitlines()
            if line.strip().startswith(("0", "1")) and "photo" in line}
    # The original encoder draws the tower; the unlearned one does not (the job test checks the same
    # on the evaluation prompts). Tokyo Tower is not the Eiffel Tower either way.
    assert rows["a photo of the Eiffel Tower"] == ["1", "0"]
    assert rows["a photo of Tokyo Tower"] == ["0", "0"]
    assert "method concept_tokens_retain" in result.stdout


def test_probe_rejects_bad_input(tmp_path):
    missing = probe([str(tmp_path / "nowhere"), "--concept", "eiffel", "--prompt", "x"], tmp_path)
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr
    unknown = probe([str(tmp_path), "--concept", "tokyo", "--prompt", "x"], tmp_path)
    assert unknown.returncode != 0
    assert "tokyo_tower" in unknown.stderr  # the valid keys are listed
    not_a_run = probe([str(tmp_path), "--concept", "eiffel", "--prompt", "x"], tmp_path)
    assert not_a_run.returncode != 0
    assert "no unlearned encoder found" in not_a_run.stderr
