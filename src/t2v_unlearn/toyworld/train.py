"""Train every toy-world model from scratch: `python -m t2v_unlearn.toyworld.train`.

Stages run in order and each one is skipped once finished (a `done/<stage>.json` file in the
scratch folder contains its metrics). A stopped stage resumes from its last checkpoint; batches and
noise come from generators seeded by (seed, step), so a resumed run draws the same batches.

    data      render training images, held-out images and clips
    vae       AutoencoderKL, 32x32x3 -> 8x8x4
    decoder   VAE decoder fine-tuned longer with the encoder frozen, so latents keep their meaning
    latents   encode images and clip frames once; decode some images for the detector
    detector  concept CNN on renders and VAE reconstructions, thresholds from held-out renders
    clip      small open_clip model, contrastive on renders and captions
    unet      CLIPTextModel and UNet2DConditionModel jointly (DDPM loss, EMA); one or more cosine
              learning-rate cycles, so a longer schedule extends a finished run step for step
    motion    AnimateDiff MotionAdapter on clips, text encoder and image UNet frozen
    lavie     LaVie's temporal layers on the same frozen image UNet and text encoder
    card      quality gates and MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import pickle
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from t2v_unlearn.toyworld import data as toy_data
from t2v_unlearn.toyworld.grammar import concept_keys

logger = logging.getLogger("t2v_unlearn.toyworld.train")

STAGES = ["data", "vae", "decoder", "latents", "detector", "clip", "unet", "motion", "lavie", "card"]
# Seeds of the per-step generators. Fixed numbers, so adding a stage keeps every other stage's batches.
STAGE_SEED_IDS = {"data": 0, "vae": 1, "latents": 2, "detector": 3, "clip": 4, "unet": 5, "motion": 6, "card": 7,
                  "decoder": 8, "lavie": 9}
CHECKPOINT_EVERY = 100
LOG_EVERY = 50
SMOKE_COUNTS = {
    ("data", "train_images"): 600, ("data", "heldout_images"): 200, ("data", "train_clips"): 40,
    ("data", "reconstructed_images"): 300, ("vae", "steps"): 20, ("unet", "steps"): 20,
    ("unet", "warmup_steps"): 5, ("motion_adapter", "steps"): 5, ("clip", "steps"): 10,
    ("detector", "steps"): 20, ("decoder", "steps"): 10, ("lavie", "steps"): 5,
}


def default_weights_dir() -> Path:
    return Path(str(resources.files("t2v_unlearn.toyworld").joinpath("weights")))


def load_train_config(smoke: bool = False) -> dict:
    text = resources.files("t2v_unlearn.toyworld").joinpath("train_config.yaml").read_text()
    config = yaml.safe_load(text)
    if smoke:
        for (section, key), value in SMOKE_COUNTS.items():
            config[section][key] = value
        for cycle in config["unet"].get("extra_cycles", []):
            cycle.update(steps=10, warmup_steps=2)
    return config


def unet_cycles(cfg: dict) -> list[dict]:
    """Return the UNet stage's cosine learning-rate cycles: the first from `steps`, `lr` and
    `warmup_steps`, then `extra_cycles` (warm restarts), each starting where the previous one ended."""
    first = {"steps": cfg["steps"], "lr": cfg["lr"], "warmup_steps": cfg["warmup_steps"]}
    return [first, *cfg.get("extra_cycles", [])]


def cycle_lr(step: int, cycles: list[dict]) -> float:
    """Return the learning rate at a global step of a chain of cosine cycles."""
    start = 0
    for cycle in cycles:
        if step < start + cycle["steps"]:
            return _cosine_lr(step - start, cycle["steps"], cycle["warmup_steps"], cycle["lr"])
        start += cycle["steps"]
    raise ValueError(f"step {step} is past the last learning-rate cycle, which ends at step {start}")


class Run:
    """Paths, config and the done/checkpoint bookkeeping shared by the stages."""

    def __init__(self, config: dict, scratch: Path, weights: Path):
        self.config = config
        self.scratch = scratch
        self.weights = weights
        self.seed = int(config["seed"])
        for sub in ("done", "checkpoints", "arrays"):
            (scratch / sub).mkdir(parents=True, exist_ok=True)
        weights.mkdir(parents=True, exist_ok=True)

    def is_done(self, stage: str) -> bool:
        return (self.scratch / "done" / f"{stage}.json").exists()

    def mark_done(self, stage: str, metrics: dict) -> None:
        metrics = {**metrics, "torch_threads": torch.get_num_threads(), "finished_at": time.time()}
        (self.scratch / "done" / f"{stage}.json").write_text(json.dumps(metrics, indent=2))

    def metrics(self, stage: str) -> dict:
        path = self.scratch / "done" / f"{stage}.json"
        if not path.exists():
            return {}
        metrics = json.loads(path.read_text())
        metrics.setdefault("finished_at", path.stat().st_mtime)
        return metrics

    def array_path(self, name: str) -> Path:
        return self.scratch / "arrays" / name

    def load_pickle(self, name: str):
        with open(self.array_path(name), "rb") as handle:
            return pickle.load(handle)

    def save_pickle(self, name: str, value) -> None:
        path = self.array_path(name)
        with open(path.with_suffix(".tmp"), "wb") as handle:
            pickle.dump(value, handle, protocol=4)
        path.with_suffix(".tmp").replace(path)

    def checkpoint_path(self, stage: str) -> Path:
        return self.scratch / "checkpoints" / f"{stage}.pt"

    def save_checkpoint(self, stage: str, state: dict) -> None:
        path = self.checkpoint_path(stage)
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def load_checkpoint(self, stage: str) -> dict | None:
        path = self.checkpoint_path(stage)
        if not path.exists():
            return None
        logger.info("resuming stage %s from %s", stage, path)
        return torch.load(path, weights_only=True)

    def step_rng(self, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
        """Return numpy and torch generators that depend only on (seed, stage, step)."""
        stage_id = STAGE_SEED_IDS[stage]
        rng = np.random.default_rng([self.seed, stage_id, step])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return rng, generator


def _cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 `(n, h, w, 3)` -> float `(n, 3, h, w)` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _from_unit_range(tensor: torch.Tensor) -> np.ndarray:
    array = ((tensor.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).numpy()


def _save_half(model: torch.nn.Module, directory: Path) -> None:
    """Save a diffusers/transformers model folder with fp16 safetensors (the model stays fp32)."""
    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(str(directory), safe_serialization=True)


# ---------------------------------------------------------------------------------------------
# Stages


def stage_data(run: Run) -> dict:
    cfg = run.config["data"]
    size = run.config["image_size"]
    started = time.time()
    train = toy_data.make_image_set(cfg["train_images"], run.seed, size)
    heldout = toy_data.make_image_set(cfg["heldout_images"], run.seed + 1, size)
    clips = toy_data.make_clip_set(cfg["train_clips"], run.seed + 2, size, run.config["num_frames"])
    run.save_pickle("train.pkl", train)
    run.save_pickle("heldout.pkl", heldout)
    run.save_pickle("clips.pkl", clips)
    seconds = time.time() - started
    logger.info("rendered %d images, %d held out, %d clips in %.0f s", len(train["images"]),
                len(heldout["images"]), len(clips["clips"]), seconds)
    return {"train_images": len(train["images"]), "heldout_images": len(heldout["images"]),
            "train_clips": len(clips["clips"]), "seconds": seconds}


def build_vae(cfg: dict, size: int):
    from diffusers import AutoencoderKL

    blocks = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"], norm_num_groups=cfg["norm_num_groups"], sample_size=size,
    )


def _train_autoencoder(run: Run, stage: str, vae, optimizer, cfg: dict, images: np.ndarray,
                       loss_fn) -> tuple[list[float], float]:
    """Train `vae` for `cfg["steps"]` steps of `loss_fn(images, generator) -> (loss, mse)` on random
    batches of `images`, resuming from the stage's checkpoint.

    Returns the MSE of every step and the seconds spent, earlier runs of a resumed stage included.
    """
    start, losses, elapsed = 0, [], 0.0
    state = run.load_checkpoint(stage)
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    started = time.time() - elapsed
    vae.train()
    for step in tqdm(range(start, cfg["steps"]), desc=stage, initial=start, total=cfg["steps"]):
        rng, generator = run.step_rng(stage, step)
        index = rng.integers(0, len(images), cfg["batch_size"])
        loss, mse = loss_fn(_to_unit_range(images[index]), generator)
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg["steps"], 50, cfg["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(mse.item())
        if (step + 1) % LOG_EVERY == 0:
            logger.info("%s step %d: reconstruction mse %.5f", stage, step + 1, np.mean(losses[-LOG_EVERY:]))
        if (step + 1) % CHECKPOINT_EVERY == 0:
            run.save_checkpoint(stage, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                                        "step": step + 1, "losses": losses, "elapsed": time.time() - started})
    return losses, time.time() - started


def stage_vae(run: Run) -> dict:
    cfg = run.config["vae"]
    train = run.load_pickle("train.pkl")
    heldout = run.load_pickle("heldout.pkl")
    torch.manual_seed(run.seed)
    vae = build_vae(cfg, run.config["image_size"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    logger.info("vae: %.2fM parameters, %d steps", sum(p.numel() for p in vae.parameters()) / 1e6, cfg["steps"])

    def vae_loss(images, generator):
        posterior = vae.encode(images).latent_dist
        mse = torch.nn.functional.mse_loss(vae.decode(posterior.sample(generator=generator)).sample, images)
        return mse + cfg["kl_weight"] * posterior.kl().mean(), mse

    losses, seconds = _train_autoencoder(run, "vae", vae, optimizer, cfg, train["images"], vae_loss)

    vae.eval()
    with torch.no_grad():
        held = _to_unit_range(heldout["images"][:512])
        means = vae.encode(held).latent_dist.mean
        heldout_mse = float(torch.nn.functional.mse_loss(vae.decode(means).sample, held))
        scaling_factor = float(1.0 / means.flatten().std())
    vae.register_to_config(scaling_factor=scaling_factor)
    torch.save(vae.state_dict(), run.array_path("vae_fp32.pt"))
    _save_half(vae, run.weights / "vae")
    logger.info("vae: held-out mse %.5f, scaling factor %.4f, %.0f s", heldout_mse, scaling_factor, seconds)
    return {"parameters": sum(p.numel() for p in vae.parameters()), "steps": cfg["steps"],
            "batch_size": cfg["batch_size"], "first_loss": float(np.mean(losses[:LOG_EVERY])),
            "final_loss": float(np.mean(losses[-LOG_EVERY:])), "heldout_mse": heldout_mse,
            "scaling_factor": scaling_factor, "seconds": seconds}


def stage_decoder(run: Run) -> dict:
    cfg = run.config["decoder"]
    train = run.load_pickle("train.pkl")
    heldout = run.load_pickle("heldout.pkl")
    vae = build_vae(run.config["vae"], run.config["image_size"])
    vae.load_state_dict(torch.load(run.array_path("vae_fp32.pt"), weights_only=True))
    scaling_factor = run.metrics("vae")["scaling_factor"]
    # Only the decoder side learns: the latents the UNet is trained on stay exactly the same.
    vae.requires_grad_(False)
    trainable = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=0.0)
    logger.info("decoder: %.2fM trainable parameters, %d steps", sum(p.numel() for p in trainable) / 1e6,
                cfg["steps"])

    def decoder_loss(images, generator):
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
        mse = torch.nn.functional.mse_loss(vae.decode(posterior.sample(generator=generator)).sample, images)
        return mse, mse

    losses, seconds = _train_autoencoder(run, "decoder", vae, optimizer, cfg, train["images"], decoder_loss)

    vae.eval()
    with torch.no_grad():
        heldout_batch = _to_unit_range(heldout["images"][:512])
        reconstruction = vae.decode(vae.encode(heldout_batch).latent_dist.mean).sample
        heldout_mse = float(torch.nn.functional.mse_loss(reconstruction, heldout_batch))
    vae.register_to_config(scaling_factor=scaling_factor)
    torch.save(vae.state_dict(), run.array_path("vae_decoder_fp32.pt"))
    _save_half(vae, run.weights / "vae")
    logger.info("decoder: held-out mse %.5f (before %.5f), %.0f s", heldout_mse, run.metrics("vae")["heldout_mse"],
                seconds)
    return {"trainable_parameters": sum(p.numel() for p in trainable), "steps": cfg["steps"],
            "batch_size": cfg["batch_size"], "first_loss": float(np.mean(losses[:LOG_EVERY])),
            "final_loss": float(np.mean(losses[-LOG_EVERY:])), "heldout_mse": heldout_mse, "seconds": seconds}


def load_trained_vae(run: Run):
    """Load the trained VAE, with the fine-tuned decoder once the decoder stage has run."""
    vae = build_vae(run.config["vae"], run.config["image_size"])
    path = run.array_path("vae_decoder_fp32.pt" if run.is_done("decoder") else "vae_fp32.pt")
    vae.load_state_dict(torch.load(path, weights_only=True))
    vae.register_to_config(scaling_factor=run.metrics("vae")["scaling_factor"])
    return vae.eval()


@torch.no_grad()
def _encode(vae, images: np.ndarray, batch: int = 256, desc: str = "encode") -> np.ndarray:
    chunks = []
    for start in tqdm(range(0, len(images), batch), desc=desc):
        means = vae.encode(_to_unit_range(images[start : start + batch])).latent_dist.mean
        chunks.append((means * vae.config.scaling_factor).numpy())
    return np.concatenate(chunks)


@torch.no_grad()
def _decode(vae, latents: np.ndarray, batch: int = 256, desc: str = "decode") -> np.ndarray:
    chunks = []
    for start in tqdm(range(0, len(latents), batch), desc=desc):
        decoded = vae.decode(torch.from_numpy(latents[start : start + batch]) / vae.config.scaling_factor).sample
        chunks.append(_from_unit_range(decoded))
    return np.concatenate(chunks)


def stage_latents(run: Run) -> dict:
    started = time.time()
    vae = load_trained_vae(run)
    train = run.load_pickle("train.pkl")
    heldout = run.load_pickle("heldout.pkl")
    clips = run.load_pickle("clips.pkl")
    count = run.config["data"]["reconstructed_images"]
    latents = _encode(vae, train["images"], desc="encode images")
    np.save(run.array_path("latents.npy"), latents)
    np.save(run.array_path("reconstructions.npy"), _decode(vae, latents[:count], desc="decode images"))
    held_latents = _encode(vae, heldout["images"], desc="encode held-out")
    np.save(run.array_path("heldout_reconstructions.npy"), _decode(vae, held_latents, desc="decode held-out"))
    n, f = clips["clips"].shape[:2]
    frames = clips["clips"].reshape(n * f, *clips["clips"].shape[2:])
    clip_latents = _encode(vae, frames, desc="encode clips").reshape(n, f, *latents.shape[1:])
    np.save(run.array_path("clip_latents.npy"), clip_latents.transpose(0, 2, 1, 3, 4))  # (n, c, f, h, w)
    seconds = time.time() - started
    logger.info("latents: %s images, %s clips in %.0f s", latents.shape, clip_latents.shape, seconds)
    return {"seconds": seconds, "latent_shape": list(latents.shape[1:])}


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise, blur, colour jitter, flips and 1-2 px shifts on `(n, 3, h, w)` in [0, 1]."""
    n = images.shape[0]
    gains = 1.0 + (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.16
    brightness = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.3
    images = images * gains * brightness
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    use_blur = (torch.rand(n, 1, 1, 1, generator=generator) < 0.3).float()
    images = use_blur * blurred + (1 - use_blur) * images
    sigma = torch.rand(n, 1, 1, 1, generator=generator) * 0.08
    images = images + sigma * torch.randn(images.shape, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    images[flip] = images[flip].flip(-1)
    shift = torch.randint(-2, 3, (2,), generator=generator)
    images = torch.roll(images, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
    return images.clamp(0, 1)


def stage_detector(run: Run) -> dict:
    from t2v_unlearn.toyworld.detector_model import ConceptDetector, images_to_tensor, save_detector

    cfg = run.config["detector"]
    size = run.config["image_size"]
    train = run.load_pickle("train.pkl")
    heldout = run.load_pickle("heldout.pkl")
    reconstructions = np.load(run.array_path("reconstructions.npy"))
    held_reconstructions = np.load(run.array_path("heldout_reconstructions.npy"))
    keys = concept_keys()
    torch.manual_seed(run.seed)
    model = ConceptDetector(keys, cfg["channels"], size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    start, losses, elapsed = 0, [], 0.0
    state = run.load_checkpoint("detector")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    started = time.time() - elapsed
    labels = torch.from_numpy(train["labels"])
    model.train()
    for step in tqdm(range(start, cfg["steps"]), desc="detector", initial=start, total=cfg["steps"]):
        rng, generator = run.step_rng("detector", step)
        index = rng.integers(0, len(train["images"]), cfg["batch_size"])
        # Half of each batch comes from VAE reconstructions, which look like generated images.
        use_reconstruction = (rng.random(len(index)) < 0.5) & (index < len(reconstructions))
        batch = np.where(use_reconstruction[:, None, None, None],
                         reconstructions[np.minimum(index, len(reconstructions) - 1)], train["images"][index])
        images = _augment(images_to_tensor(batch, size), generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), labels[index])
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg["steps"], 50, cfg["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            logger.info("detector step %d: bce %.4f", step + 1, np.mean(losses[-LOG_EVERY:]))
        if (step + 1) % CHECKPOINT_EVERY == 0:
            run.save_checkpoint("detector", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                             "step": step + 1, "losses": losses, "elapsed": time.time() - started})
    seconds = time.time() - started

    model.eval()
    with torch.no_grad():
        clean = torch.sigmoid(model(images_to_tensor(heldout["images"], size))).numpy()
        recon = torch.sigmoid(model(images_to_tensor(held_reconstructions, size))).numpy()
    # Calibrate on the first half of the held-out renders and report accuracy on the second half.
    half = len(clean) // 2
    truth = heldout["labels"] > 0.5
    grid = np.linspace(0.05, 0.95, 19)
    thresholds = []
    for column in range(len(keys)):
        scores = np.concatenate([clean[:half, column], recon[:half, column]])
        target = np.concatenate([truth[:half, column], truth[:half, column]])
        accuracy = [((scores >= t) == target).mean() for t in grid]
        best = np.flatnonzero(np.isclose(accuracy, max(accuracy)))
        thresholds.append(float(grid[best[len(best) // 2]]))
    thresholds_array = np.asarray(thresholds)
    clean_accuracy = ((clean[half:] >= thresholds_array) == truth[half:]).mean(axis=0)
    recon_accuracy = ((recon[half:] >= thresholds_array) == truth[half:]).mean(axis=0)
    save_detector(model, thresholds, run.weights / "detector", {"trained_steps": cfg["steps"]})
    per_concept = {key: {"clean": float(c), "reconstructed": float(r), "threshold": t}
                   for key, c, r, t in zip(keys, clean_accuracy, recon_accuracy, thresholds)}
    logger.info("detector: min held-out accuracy clean %.4f, reconstructed %.4f", clean_accuracy.min(),
                recon_accuracy.min())
    return {"parameters": sum(p.numel() for p in model.parameters()), "steps": cfg["steps"],
            "first_loss": float(np.mean(losses[:LOG_EVERY])), "final_loss": float(np.mean(losses[-LOG_EVERY:])),
            "heldout_images": int(len(clean) - half), "accuracy": per_concept, "seconds": seconds}


def stage_clip(run: Run) -> dict:
    import open_clip

    from t2v_unlearn.toyworld.clip_model import CLIP_MEAN, CLIP_STD, MODEL_NAME, write_clip_config

    cfg = run.config["clip"]
    directory = run.weights / "clip"
    config_path = write_clip_config(cfg, directory)
    open_clip.add_model_config(str(config_path))
    train = run.load_pickle("train.pkl")
    torch.manual_seed(run.seed)
    model = open_clip.create_model(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.05)
    start, losses, elapsed = 0, [], 0.0
    state = run.load_checkpoint("clip")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    started = time.time() - elapsed
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    # Only images with a subject or a scene: empty renders have no caption to match.
    usable = np.flatnonzero(train["labels"].sum(axis=1) > 0)
    model.train()
    for step in tqdm(range(start, cfg["steps"]), desc="clip", initial=start, total=cfg["steps"]):
        rng, generator = run.step_rng("clip", step)
        index = usable[rng.integers(0, len(usable), cfg["batch_size"])]
        images = torch.from_numpy(train["images"][index]).permute(0, 3, 1, 2).float() / 255.0
        images = (_augment(images, generator) - mean) / std
        texts = tokenizer([toy_data.caption_for(train["scenes"][i], rng) for i in index])
        image_features, text_features, logit_scale = model(images, texts)
        logits = logit_scale * image_features @ text_features.T
        # Images with the same concepts count as matches of each other's captions.
        labels = torch.from_numpy(train["labels"][index])
        same = (labels @ labels.T == labels.sum(1, keepdim=True)) & (labels @ labels.T == labels.sum(1)[None, :])
        targets = same.float() / same.float().sum(1, keepdim=True)
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, targets)
                      + torch.nn.functional.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True)))
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg["steps"], 100, cfg["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            logger.info("clip step %d: contrastive loss %.4f", step + 1, np.mean(losses[-LOG_EVERY:]))
        if (step + 1) % CHECKPOINT_EVERY == 0:
            run.save_checkpoint("clip", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "step": step + 1, "losses": losses, "elapsed": time.time() - started})
    seconds = time.time() - started
    from safetensors.torch import save_file

    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return {"parameters": sum(p.numel() for p in model.parameters()), "steps": cfg["steps"],
            "first_loss": float(np.mean(losses[:LOG_EVERY])), "final_loss": float(np.mean(losses[-LOG_EVERY:])),
            "seconds": seconds}


def build_text_encoder(cfg: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet(cfg: dict, latent_size: int, latent_channels: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    blocks = len(cfg["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * blocks, up_block_types=("CrossAttnUpBlock2D",) * blocks,
        block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
        attention_head_dim=cfg["attention_head_dim"], norm_num_groups=cfg["norm_num_groups"],
        cross_attention_dim=cross_attention_dim,
    )


def build_noise_scheduler(cfg: dict):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg["num_train_timesteps"], beta_schedule=cfg["beta_schedule"],
                         beta_start=cfg["beta_start"], beta_end=cfg["beta_end"], prediction_type="epsilon",
                         clip_sample=False, steps_offset=1)


def _tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def stage_unet(run: Run) -> dict:
    from t2v_unlearn.tokenizer import build_clip_tokenizer

    cfg = run.config["unet"]
    latents = np.load(run.array_path("latents.npy"))
    train = run.load_pickle("train.pkl")
    tokenizer = build_clip_tokenizer(run.weights / "tokenizer")
    torch.manual_seed(run.seed)
    text_encoder = build_text_encoder(run.config["text_encoder"])
    unet = build_unet(cfg, latents.shape[-1], latents.shape[1], run.config["text_encoder"]["hidden_size"])
    scheduler = build_noise_scheduler(run.config["scheduler"])
    parameters = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=cfg["lr"], weight_decay=0.0, fused=True)
    ema = [p.detach().clone() for p in parameters]
    start, losses, elapsed = 0, [], 0.0
    state = run.load_checkpoint("unet")
    if state is not None:
        text_encoder.load_state_dict(state["text_encoder"])
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema = state["ema"]
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    cycles = unet_cycles(cfg)
    total = sum(cycle["steps"] for cycle in cycles)
    logger.info("unet: %.2fM parameters, text encoder %.2fM, steps %d..%d",
                sum(p.numel() for p in unet.parameters()) / 1e6,
                sum(p.numel() for p in text_encoder.parameters()) / 1e6, start, total)
    started = time.time() - elapsed
    text_encoder.train()
    unet.train()
    for step in tqdm(range(start, total), desc="unet", initial=start, total=total):
        rng, generator = run.step_rng("unet", step)
        index = rng.integers(0, len(latents), cfg["batch_size"])
        captions = [toy_data.caption_for(train["scenes"][i], rng) for i in index]
        captions = ["" if rng.random() < cfg["empty_caption_probability"] else c for c in captions]
        batch_latents = torch.from_numpy(latents[index])
        noise = torch.randn(batch_latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy_latents = scheduler.add_noise(batch_latents, noise, timesteps)
        encoder_hidden_states = text_encoder(_tokenize(tokenizer, captions))[0]
        noise_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        loss = torch.nn.functional.mse_loss(noise_pred, noise)
        for group in optimizer.param_groups:
            group["lr"] = cycle_lr(step, cycles)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(cfg["ema_decay"], (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in parameters], 1 - decay)
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            logger.info("unet step %d: loss %.4f", step + 1, np.mean(losses[-LOG_EVERY:]))
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == total:
            run.save_checkpoint("unet", {"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict(),
                                         "optimizer": optimizer.state_dict(), "ema": ema, "step": step + 1,
                                         "losses": losses, "elapsed": time.time() - started})
    seconds = time.time() - started

    with torch.no_grad():
        for parameter, averaged in zip(parameters, ema):
            parameter.copy_(averaged)
    text_encoder.eval()
    unet.eval()
    torch.save({"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict()}, run.array_path("unet_ema.pt"))
    _save_half(text_encoder, run.weights / "text_encoder")
    _save_half(unet, run.weights / "unet")
    scheduler.save_pretrained(str(run.weights / "scheduler"))
    _write_model_index(run.weights)
    return {"unet_parameters": sum(p.numel() for p in unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
            "steps": total, "cycles": cycles, "batch_size": cfg["batch_size"],
            "first_loss": float(np.mean(losses[:LOG_EVERY])), "final_loss": float(np.mean(losses[-LOG_EVERY:])),
            "seconds": seconds}


def _write_model_index(weights: Path) -> None:
    """Write model_index.json so `StableDiffusionPipeline.from_pretrained(weights)` also works."""
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (weights / "model_index.json").write_text(json.dumps(index, indent=2))


def _frozen_image_models(run: Run, clip_latents: np.ndarray):
    """Load the trained (EMA) text encoder and image UNet, frozen, for the video stages."""
    trained = torch.load(run.array_path("unet_ema.pt"), weights_only=True)
    text_encoder = build_text_encoder(run.config["text_encoder"])
    text_encoder.load_state_dict(trained["text_encoder"])
    text_encoder.eval().requires_grad_(False)
    unet = build_unet(run.config["unet"], clip_latents.shape[-1], clip_latents.shape[1],
                      run.config["text_encoder"]["hidden_size"])
    unet.load_state_dict(trained["unet"])
    return text_encoder, unet


def _train_temporal_layers(run: Run, stage: str, cfg: dict, model, trainable: list, text_encoder,
                           clip_latents: np.ndarray, clips: dict, text_per_frame: bool) -> tuple[list, float]:
    """Train `trainable` (the temporal layers of `model`) on clips and return the losses and seconds.

    `text_per_frame` repeats each prompt embedding once per frame, as `UNetMotionModel` expects.
    """
    from t2v_unlearn.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    scheduler = build_noise_scheduler(run.config["scheduler"])
    empty_caption_probability = run.config["unet"]["empty_caption_probability"]
    optimizer = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=0.0)
    start, losses, elapsed = 0, [], 0.0
    state = run.load_checkpoint(stage)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], state["losses"], state["elapsed"]
    logger.info("%s: %.2fM trainable parameters, steps %d..%d", stage, sum(p.numel() for p in trainable) / 1e6,
                start, cfg["steps"])
    started = time.time() - elapsed
    model.train()
    for step in tqdm(range(start, cfg["steps"]), desc=stage, initial=start, total=cfg["steps"]):
        rng, generator = run.step_rng(stage, step)
        index = rng.integers(0, len(clip_latents), cfg["batch_size"])
        captions = [toy_data.caption_for(clips["scenes"][i], rng) for i in index]
        captions = ["" if rng.random() < empty_caption_probability else c for c in captions]
        latents = torch.from_numpy(clip_latents[index])  # (b, c, f, h, w)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy_latents = scheduler.add_noise(latents, noise, timesteps[:, None, None, None, None])
        with torch.no_grad():
            encoder_hidden_states = text_encoder(_tokenize(tokenizer, captions))[0]
        if text_per_frame:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(latents.shape[2], dim=0)
        noise_pred = model(noisy_latents, timesteps, encoder_hidden_states).sample
        loss = torch.nn.functional.mse_loss(noise_pred, noise)
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg["steps"], 50, cfg["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            logger.info("%s step %d: loss %.4f", stage, step + 1, np.mean(losses[-LOG_EVERY:]))
        if (step + 1) % CHECKPOINT_EVERY == 0:
            run.save_checkpoint(stage, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "step": step + 1, "losses": losses, "elapsed": time.time() - started})
    model.eval()
    return losses, time.time() - started


def _temporal_metrics(cfg: dict, trainable: list, losses: list, seconds: float) -> dict:
    return {"trainable_parameters": sum(p.numel() for p in trainable), "steps": cfg["steps"],
            "batch_size_clips": cfg["batch_size"], "first_loss": float(np.mean(losses[:LOG_EVERY])),
            "final_loss": float(np.mean(losses[-LOG_EVERY:])), "seconds": seconds}


def stage_motion(run: Run) -> dict:
    """Train an AnimateDiff MotionAdapter on the frozen image UNet and text encoder."""
    from diffusers import MotionAdapter, UNetMotionModel

    cfg = run.config["motion_adapter"]
    unet_cfg = run.config["unet"]
    clip_latents = np.load(run.array_path("clip_latents.npy"))  # (n, c, f, h, w)
    clips = run.load_pickle("clips.pkl")
    text_encoder, unet = _frozen_image_models(run, clip_latents)
    torch.manual_seed(run.seed)
    adapter = MotionAdapter(
        block_out_channels=tuple(unet_cfg["block_out_channels"]), motion_layers_per_block=unet_cfg["layers_per_block"],
        motion_num_attention_heads=cfg["motion_num_attention_heads"],
        motion_norm_num_groups=unet_cfg["norm_num_groups"], motion_max_seq_length=cfg["motion_max_seq_length"],
        use_motion_mid_block=True,
    )
    # Zero output projections: the untrained video model equals the image model on every frame.
    for name, parameter in adapter.named_parameters():
        if "proj_out" in name:
            torch.nn.init.zeros_(parameter)
    model = UNetMotionModel.from_unet2d(unet, adapter)
    model.freeze_unet2d_params()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # UNetMotionModel expects one prompt embedding per frame, as AnimateDiffPipeline passes them.
    losses, seconds = _train_temporal_layers(run, "motion", cfg, model, trainable, text_encoder, clip_latents, clips,
                                             text_per_frame=True)
    directory = run.weights / "motion_adapter"
    model.save_motion_modules(str(directory))
    saved = MotionAdapter.from_pretrained(str(directory))
    _save_half(saved, directory)
    return _temporal_metrics(cfg, trainable, losses, seconds)


def stage_lavie(run: Run) -> dict:
    """Train LaVie's temporal layers (rotary temporal attention) on the frozen image UNet."""
    from safetensors.torch import save_file

    from t2v_unlearn.models.lavie import LaVieUNet3DConditionModel

    cfg = run.config["lavie"]
    clip_latents = np.load(run.array_path("clip_latents.npy"))  # (n, c, f, h, w)
    clips = run.load_pickle("clips.pkl")
    text_encoder, unet2d = _frozen_image_models(run, clip_latents)
    torch.manual_seed(run.seed)
    model = LaVieUNet3DConditionModel.from_unet2d(unet2d, rotary_dim=cfg["rotary_dim"])
    model.requires_grad_(False)
    trainable = [parameter for name, parameter in model.named_parameters() if "_temp" in name]
    for parameter in trainable:
        parameter.requires_grad_(True)
    losses, seconds = _train_temporal_layers(run, "lavie", cfg, model, trainable, text_encoder, clip_latents, clips,
                                             text_per_frame=False)
    # Only the temporal layers are new: the rest is the image UNet, which ships once in unet/.
    directory = run.weights / "lavie_temporal"
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to(torch.float16).contiguous()
             for name, tensor in model.state_dict().items() if "_temp" in name}
    save_file(state, str(directory / "temporal_layers.safetensors"))
    (directory / "config.json").write_text(json.dumps(
        {"rotary_dim": cfg["rotary_dim"], "trained_steps": cfg["steps"], "temporal_keys": len(state)}, indent=2) + "\n")
    return _temporal_metrics(cfg, trainable, losses, seconds)


def stage_card(run: Run) -> dict:
    from t2v_unlearn.toyworld.gates import measure_gates, write_model_card

    gates = measure_gates(str(run.weights), quick=run.config.get("smoke", False))
    metrics = {stage: run.metrics(stage) for stage in STAGES if stage != "card"}
    write_model_card(run.weights / "MODEL_CARD.md", run.config, metrics, gates)
    return gates


STAGE_FUNCTIONS = {"data": stage_data, "vae": stage_vae, "decoder": stage_decoder, "latents": stage_latents,
                   "detector": stage_detector, "clip": stage_clip, "unet": stage_unet, "motion": stage_motion, "lavie": stage_lavie,
                   "card": stage_card}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", default=".toyworld_scratch",
                        help="folder for rendered data, latents, checkpoints and stage metrics")
    parser.add_argument("--weights", default=None, help="output folder (default: the package's weights/)")
    parser.add_argument("--stages", nargs="*", default=STAGES, choices=STAGES, help="stages to run, in order")
    parser.add_argument("--smoke", action="store_true", help="tiny counts to check the pipeline in minutes")
    # `make toyworld` passes 2 because on an idle 2-core CPU a UNet step takes 0.44 s with two threads
    # and 0.74 s with one. On a 2-core CPU shared with other jobs, two threads made a step 3x slower.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config = load_train_config(args.smoke)
    config["smoke"] = args.smoke
    run = Run(config, Path(args.scratch), Path(args.weights) if args.weights else default_weights_dir())
    for stage in STAGES:
        if stage not in args.stages:
            continue
        if run.is_done(stage):
            logger.info("stage %s already finished; skipping", stage)
            continue
        logger.info("stage %s: starting", stage)
        metrics = STAGE_FUNCTIONS[stage](run)
        run.mark_done(stage, metrics)
        logger.info("stage %s: finished", stage)


if __name__ == "__main__":
    main()
