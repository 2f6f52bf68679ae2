"""The notebooks run top to bottom on a real run folder."""

import json

import matplotlib
import pytest

from conftest import REPO_ROOT
from test_train_cli import FAST, run_in_process

matplotlib.use("Agg")


def run_notebook(path, env, monkeypatch):
    """Execute a notebook's code cells in order in one namespace, as a kernel would."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    namespace = {"__name__": "__main__"}
    for number, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name} cell {number}", "exec"), namespace)
    return namespace


def test_inspect_run_notebook(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run_in_process([*FAST, "concept=eiffel", "logger=none", "eval.clip_similarity=false"], out)
    namespace = run_notebook(REPO_ROOT / "notebooks" / "inspect_run.ipynb", {"T2V_RUN_DIR": str(out)}, monkeypatch)
    printed = capsys.readouterr().out
    assert "method=paper" in printed
    assert "target: " in printed
    assert "encoder/hidden_change_target" in printed
    assert namespace["targets"], "no target prompt was shown"
    # Every prompt of the run is listed with its counts.
    samples = json.loads((out / "eval_samples.json").read_text())
    for record in samples:
        assert record["prompt"] in printed


def test_inspect_run_notebook_without_runs_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `python train.py` first"):
        run_notebook(REPO_ROOT / "notebooks" / "inspect_run.ipynb", {"T2V_RUN_DIR": ""}, monkeypatch)
