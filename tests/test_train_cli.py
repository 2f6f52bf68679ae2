"""The main job end to end on the tiny random backend: outputs, logging, sweeps, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, compose_config
from t2v_unlearn.errors import SettingsError

FAST = ["model=animatediff_tiny", "model.backend.num_inference_steps=2", "eval.seeds_per_prompt=1",
        "eval.prompts_per_group=2", "epochs=2", "shots=2"]
METRIC_KEYS = [
    "video/target_rate_before", "video/target_rate_after", "video/other_rate_before", "video/other_rate_after",
    "image/target_rate_before", "image/target_rate_after", "image/other_rate_before", "image/other_rate_after",
    "clip/target_similarity_before", "clip/target_similarity_after",
    "time/fewshot_s", "time/unlearn_s", "time/eval_s", "time/total_s",
]


def train_cli(args, tmp_path, check=True, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "T2V_UNLEARN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def run_in_process(overrides, out_dir):
    from hydra.core.hydra_config import HydraConfig

    from t2v_unlearn.run import run

    cfg = compose_config([*overrides, f"hydra.run.dir={out_dir}"])
    # compose() leaves the runtime output folder unset; `python train.py` sets it to hydra.run.dir.
    with __import__("omegaconf").open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
    HydraConfig.instance().set_config(cfg)
    cfg_without_hydra = cfg.copy()
    with __import__("omegaconf").open_dict(cfg_without_hydra):
        del cfg_without_hydra["hydra"]
    return run(cfg_without_hydra, out_dir)


def test_job_writes_output_contract(tmp_path):
    out = tmp_path / "run"
    metrics = run_in_process([*FAST, "concept=eiffel", "logger=wandb"], out)

    for key in METRIC_KEYS:
        assert key in metrics, f"metrics lack {key}"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk.keys() >= set(METRIC_KEYS)
    assert metrics["train/optimizer_steps"] == 2  # ceil(2 / 2) * 2 epochs

    assert sorted(p.name for p in (out / "fewshot").glob("*.png")) == ["eiffel_00.png", "eiffel_01.png"]
    assert (out / "fewshot" / "fewshot.json").is_file()
    for folder in ("text_encoder", "text_encoder_epoch_1", "text_encoder_epoch_2"):
        assert (out / folder / "model.safetensors").is_file(), folder
        assert (out / folder / "config.json").is_file(), folder
    provenance = json.loads((out / "text_encoder" / "unlearning.json").read_text())
    assert provenance["concepts"] == ["eiffel"]
    assert provenance["optimizer"]["lr"] == 1e-5
    assert provenance["optimizer"]["betas"] == [0.9, 0.98]

    for phase in ("before", "after"):
        videos = sorted((out / "videos" / phase).glob("*.mp4"))
        grids = sorted((out / "videos" / phase).glob("*.png"))
        assert len(videos) == len(grids) > 0
    assert len(list((out / "videos" / "before").glob("*.mp4"))) == len(list((out / "videos" / "after").glob("*.mp4")))

    wandb_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    record = wandb_files[0].read_bytes()
    for key in ("train/loss", "video/target_rate_after", "clip/target_similarity_before", "videos/before",
                "fewshot/images"):
        assert key.encode() in record, f"W&B run lacks {key}"
    media = list((out / "wandb").glob("offline-run-*/files/media/videos/**/*.mp4"))
    assert media, "no video reached W&B"


def test_unlearning_ignores_clip_setting(tmp_path):
    # The CLIP scorer is built only when eval.clip_similarity is true, and building it draws from
    # torch's global generator. The unlearned encoder must come out the same either way.
    from safetensors.torch import load_file

    encoders = []
    for clip in ("true", "false"):
        out = tmp_path / f"clip_{clip}"
        run_in_process([*FAST, "logger=none", "eval.videos=false", "eval.images=false",
                        f"eval.clip_similarity={clip}"], out)
        encoders.append(load_file(str(out / "text_encoder" / "model.safetensors")))
    assert encoders[0].keys() == encoders[1].keys()
    for key in encoders[0]:
        assert torch.equal(encoders[0][key], encoders[1][key]), key
    # The second epoch moved the encoder, so the comparison above is between trained encoders.
    first_epoch = load_file(str(tmp_path / "clip_true" / "text_encoder_epoch_1" / "model.safetensors"))
    assert any(not torch.equal(first_epoch[key], encoders[0][key]) for key in first_epoch)


def test_multi_concept_mixes_images(tmp_path):
    out = tmp_path / "run"
    metrics = run_in_process([*FAST, "concept=snoopy_mickey", "logger=none", "eval.videos=false",
                              "eval.prompts_per_group=null"], out)
    names = sorted(p.name for p in (out / "fewshot").glob("*.png"))
    assert names == ["mickey_00.png", "mickey_01.png", "snoopy_00.png", "snoopy_01.png"]
    assert metrics["train/optimizer_steps"] == 4  # 4 images, batch 2, 2 epochs
    samples = json.loads((out / "eval_samples.json").read_text())
    targets = {s["concept"] for s in samples if s["group"] == "target"}
    others = {s["concept"] for s in samples if s["group"] == "other"}
    assert targets == {"snoopy", "mickey"}
    assert not others & {"snoopy", "mickey"}


def test_zero_shots_uses_random_latents(tmp_path):
    out = tmp_path / "run"
    metrics = run_in_process([*FAST, "shots=0", "logger=none", "eval.videos=false"], out)
    assert metrics["train/optimizer_steps"] == 2  # one batch of random latents per epoch
    assert json.loads((out / "fewshot" / "fewshot.json").read_text())["images"] == []


def test_failed_job_closes_wandb_run(tmp_path):
    import wandb
    from PIL import Image

    from t2v_unlearn.fewshot import FewShotError

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "only.png")
    # The few-shot step fails after the W&B run has started.
    with pytest.raises(FewShotError, match="contains only 1 images"):
        run_in_process([*FAST, "shots=3", f"concept.images_dir={folder}", "logger=wandb"], tmp_path / "run")
    assert wandb.run is None


def test_csv_logger_writes_metrics(tmp_path):
    out = tmp_path / "run"
    run_in_process([*FAST, "logger=csv", "eval.videos=false"], out)
    csv_files = list(out.glob("csv/**/metrics.csv"))
    assert csv_files
    header = csv_files[0].read_text().splitlines()[0]
    assert "train/loss" in header
    assert "image/target_rate_after" in header
    assert "time/total_s" in header


def test_overwrite_removes_stale_outputs(tmp_path):
    out = tmp_path / "run"
    run_in_process([*FAST, "epochs=2", "logger=none", "eval.videos=false"], out)
    assert (out / "text_encoder_epoch_2").is_dir()
    run_in_process([*FAST, "epochs=1", "seed=5", "logger=none", "eval.videos=false", "overwrite=true"], out)
    assert not (out / "text_encoder_epoch_2").exists()
    provenance = json.loads((out / "text_encoder_epoch_1" / "unlearning.json").read_text())
    assert provenance["seed"] == 5
    assert oct((out / "metrics.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("override,message", [
    ("epochs=0", "epochs=0 is invalid"),
    ("epochs=-1", "epochs=-1 is invalid"),
    ("batch_size=0", "batch_size=0 is invalid"),
    ("shots=-2", "shots=-2 is invalid"),
    ("trainable=bogus", "trainable='bogus' is not supported"),
    ("retain.space=bogus", "retain.space='bogus' is not supported"),
    ("eval.seeds_per_prompt=0", "eval.seeds_per_prompt=0 is invalid"),
    ("eval.frames_to_judge=0", "eval.frames_to_judge=0 is invalid"),
    ("shots=two", "shots='two' is invalid; pass a whole number"),
    ("epochs=1.5", "epochs=1.5 is invalid; pass a whole number"),
    ("optim.lr=abc", "optim.lr='abc' is invalid; pass a positive number"),
    ("optim.lr=0", "optim.lr=0 is invalid; pass a positive number"),
    ("eval.prompts_per_group=all", "eval.prompts_per_group='all' is invalid"),
])
def test_invalid_setting_rejected_before_loading(tmp_path, monkeypatch, override, message):
    import t2v_unlearn.run as run_module

    def fail_if_called(*args, **kwargs):
        raise AssertionError("the backend was built before the settings were checked")

    monkeypatch.setattr(run_module, "build_backend", fail_if_called)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_in_process([*FAST, override, "logger=none"], tmp_path / "run")


@pytest.mark.parametrize("override,hint", [("+lr=1e-3", "optim.lr=..."),
                                           ("+paraphrases=true", "Did you mean eval.paraphrases=...?"),
                                           ("+colour=red", "Use the full name without '+'")])
def test_cli_top_level_addition_rejected(tmp_path, override, hint):
    # Hydra suggests `+lr=...` for `lr=...`; the job would then run with the setting ignored.
    result = train_cli([*FAST, override, "logger=none"], tmp_path, check=False, timeout=120)
    assert result.returncode != 0
    assert f"Error: SettingsError: '{override}' adds a top-level setting" in result.stderr
    assert hint in result.stderr
    # The message names the fix; a traceback would bury it.
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("metrics.json"))


def test_cli_end_to_end_and_refuses_finished_folder(tmp_path):
    out = tmp_path / "run"
    train_cli([*FAST, "concept=eiffel", "logger=none", "eval.videos=false", f"hydra.run.dir={out}"], tmp_path)
    metrics_before = (out / "metrics.json").read_bytes()
    config_before = (out / ".hydra" / "config.yaml").read_bytes()

    again = train_cli([*FAST, "concept=van_gogh", "logger=none", f"hydra.run.dir={out}"], tmp_path, check=False)
    assert again.returncode != 0
    assert "already holds a finished run" in again.stderr
    assert "overwrite=true" in again.stderr
    assert "Traceback" not in again.stderr
    assert (out / "metrics.json").read_bytes() == metrics_before
    assert (out / ".hydra" / "config.yaml").read_bytes() == config_before


def test_cli_multirun_two_jobs_share_cache(tmp_path):
    sweep = tmp_path / "sweep"
    result = train_cli(["-m", *FAST, "concept=eiffel", "logger=none", "eval.videos=false", "eval.images=false",
                        "eval.clip_similarity=false", "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    assert "Reusing 2 cached few-shot images" in result.stderr + result.stdout
    seeds = [json.loads((job / "text_encoder" / "unlearning.json").read_text())["seed"] for job in jobs]
    assert sorted(seeds) == [0, 1]


@pytest.mark.parametrize("override,listed", [("concept=tower", "eiffel"), ("model=sd99", "animatediff_tiny")])
def test_cli_unknown_name_lists_options(tmp_path, override, listed):
    result = train_cli([override], tmp_path, check=False, timeout=120)
    assert result.returncode != 0
    assert "Could not find" in result.stderr
    assert listed in result.stderr


def test_cli_model_load_error_readable(tmp_path):
    result = train_cli(["model=animatediff", f"model.backend.sd_path={tmp_path / 'missing_sd'}",
                        f"model.backend.motion_adapter_path={tmp_path / 'missing_adapter'}",
                        "model.backend.device=cpu", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                       tmp_path, check=False, timeout=300)
    assert result.returncode != 0
    assert "ModelLoadError" in result.stderr
    assert "missing_sd" in result.stderr
    assert "missing_adapter" in result.stderr
    # The error reaches the terminal as itself, not as the quoted repr inside Hydra's wrapper.
    assert "Error in call to target" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir" in result.stderr


def test_cli_images_dir_with_too_few_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(folder / "only.png")
    result = train_cli([*FAST, "shots=3", f"concept.images_dir={folder}", "logger=none",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, check=False)
    assert result.returncode != 0
    assert "shots=3" in result.stderr
    assert "contains only 1 images" in result.stderr
