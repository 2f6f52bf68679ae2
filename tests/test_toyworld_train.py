"""Toy-world training script: learning-rate cycles, per-step seeds and the stages on smoke counts."""

import json
import shutil
import time

import numpy as np
import pytest
import torch

from t2v_unlearn.toyworld import train as toy_train


def test_cycle_lr_chains_cosine_cycles():
    cycles = [{"steps": 100, "lr": 1e-3, "warmup_steps": 10}, {"steps": 50, "lr": 4e-4, "warmup_steps": 5}]
    assert toy_train.cycle_lr(0, cycles) == pytest.approx(1e-4)
    assert toy_train.cycle_lr(9, cycles) == pytest.approx(1e-3)
    # The first cycle decays to a tenth of its peak; the second one restarts with its own warm-up.
    assert toy_train.cycle_lr(99, cycles) == pytest.approx(1e-4, rel=0.01)
    assert toy_train.cycle_lr(100, cycles) == pytest.approx(4e-4 / 5)
    assert toy_train.cycle_lr(104, cycles) == pytest.approx(4e-4)
    # Inside the first cycle, the chain equals that cycle's own cosine schedule.
    assert toy_train.cycle_lr(50, cycles) == toy_train._cosine_lr(50, 100, 10, 1e-3)
    with pytest.raises(ValueError, match="step 150 is past the last learning-rate cycle"):
        toy_train.cycle_lr(150, cycles)


def test_unet_cycles_from_config():
    config = toy_train.load_train_config()
    cycles = toy_train.unet_cycles(config["unet"])
    assert cycles[0] == {"steps": config["unet"]["steps"], "lr": config["unet"]["lr"],
                         "warmup_steps": config["unet"]["warmup_steps"]}
    assert cycles[1:] == config["unet"].get("extra_cycles", [])
    smoke = toy_train.load_train_config(smoke=True)
    assert sum(c["steps"] for c in toy_train.unet_cycles(smoke["unet"])) < 100


def test_stage_seed_ids_are_fixed(tmp_path):
    # The committed weights were trained with these ids; a new stage must not shift them.
    original = ["data", "vae", "latents", "detector", "clip", "unet", "motion", "card"]
    assert [toy_train.STAGE_SEED_IDS[stage] for stage in original] == list(range(8))
    assert sorted(toy_train.STAGE_SEED_IDS) == sorted(toy_train.STAGES)
    assert len(set(toy_train.STAGE_SEED_IDS.values())) == len(toy_train.STAGES)
    run = toy_train.Run({"seed": 0}, tmp_path / "scratch", tmp_path / "weights")
    first, _ = run.step_rng("unet", 7)
    again, _ = run.step_rng("unet", 7)
    other, _ = run.step_rng("decoder", 7)
    assert first.integers(2**62) == again.integers(2**62) != other.integers(2**62)


def test_smoke_training_stages(tmp_path):
    scratch, weights = tmp_path / "scratch", tmp_path / "weights"
    started = time.time()
    toy_train.main(["--smoke", "--scratch", str(scratch), "--weights", str(weights), "--stages",
                    "data", "vae", "decoder", "latents", "unet", "lavie"])
    # The decoder stage changes the decoder only, so the UNet's training latents keep their meaning.
    before = torch.load(scratch / "arrays" / "vae_fp32.pt")
    after = torch.load(scratch / "arrays" / "vae_decoder_fp32.pt")
    encoder_keys = [key for key in before if key.startswith(("encoder.", "quant_conv."))]
    decoder_keys = [key for key in before if key.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(before[key], after[key]) for key in encoder_keys)
    assert any(not torch.equal(before[key], after[key]) for key in decoder_keys)
    unet_metrics = json.loads((scratch / "done" / "unet.json").read_text())
    assert unet_metrics["steps"] == sum(cycle["steps"] for cycle in unet_metrics["cycles"])
    # The model card's wall clock and thread column come from these.
    assert unet_metrics["torch_threads"] == torch.get_num_threads()
    assert unet_metrics["seconds"] > 0
    assert started <= unet_metrics["finished_at"] <= time.time()

    from t2v_unlearn.backends.toyworld import build_toyworld_backend

    backend = build_toyworld_backend(str(weights), video_model="lavie")
    assert backend.name == "toyworld_lavie"
    assert backend.video_pipeline.text_encoder is backend.text_encoder
    temporal = {k: v for k, v in backend.video_pipeline.unet.state_dict().items() if "_temp" in k}
    assert any(v.abs().sum() > 0 for k, v in temporal.items() if "attn_temp.to_out" in k)
    videos = backend.generate_videos(["a cat walking in the park"], [0], num_inference_steps=2)
    assert videos.shape == (1, 8, 32, 32, 3)
    assert videos.dtype == np.uint8
    with pytest.raises(FileNotFoundError, match="motion_adapter"):
        build_toyworld_backend(str(weights))


class _Stop(Exception):
    pass


def test_unet_stage_resume_matches_unbroken(tmp_path, monkeypatch):
    # A stage stopped after a checkpoint and started again ends with the weights of an unbroken run.
    load_train_config = toy_train.load_train_config

    def small_config(smoke=False):
        config = load_train_config(smoke)
        config["unet"].update(steps=8, warmup_steps=2, batch_size=8, extra_cycles=[])
        return config

    monkeypatch.setattr(toy_train, "load_train_config", small_config)
    scratch, weights = tmp_path / "scratch", tmp_path / "weights"
    smoke = ["--smoke", "--weights", str(weights)]
    toy_train.main([*smoke, "--scratch", str(scratch), "--stages", "data", "vae", "latents"])
    stopped = tmp_path / "stopped"
    shutil.copytree(scratch, stopped)
    toy_train.main([*smoke, "--scratch", str(scratch), "--stages", "unet"])
    unbroken = torch.load(scratch / "arrays" / "unet_ema.pt", weights_only=True)

    monkeypatch.setattr(toy_train, "CHECKPOINT_EVERY", 4)
    cycle_lr = toy_train.cycle_lr

    def stop_at_step_6(step, cycles):
        if step == 6:
            raise _Stop
        return cycle_lr(step, cycles)

    monkeypatch.setattr(toy_train, "cycle_lr", stop_at_step_6)
    with pytest.raises(_Stop):
        toy_train.main([*smoke, "--scratch", str(stopped), "--stages", "unet"])
    assert torch.load(stopped / "checkpoints" / "unet.pt", weights_only=True)["step"] == 4
    assert not (stopped / "done" / "unet.json").exists()

    monkeypatch.setattr(toy_train, "cycle_lr", cycle_lr)
    toy_train.main([*smoke, "--scratch", str(stopped), "--stages", "unet"])
    resumed = torch.load(stopped / "arrays" / "unet_ema.pt", weights_only=True)
    for part in ("text_encoder", "unet"):
        assert resumed[part].keys() == unbroken[part].keys()
        changed = [key for key in unbroken[part] if not torch.equal(resumed[part][key], unbroken[part][key])]
        assert changed == []
