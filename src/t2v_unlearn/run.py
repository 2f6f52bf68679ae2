"""The main job: few-shot images, unlearning, saving, evaluation before and after."""

from __future__ import annotations

import inspect
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from t2v_unlearn.backends.bundle import fingerprint_module
from t2v_unlearn.backends.loading import ModelLoadError
from t2v_unlearn.backends.shared_encoder import EncoderMismatchError
from t2v_unlearn.backends.upscaler import check_upscaler_concepts
from t2v_unlearn.concepts import PromptTemplates, evaluation_items, load_concepts
from t2v_unlearn.data import LatentPromptDataset, UnlearningDataModule, encode_images, random_latents
from t2v_unlearn.early_stopping import JudgeEarlyStopping
from t2v_unlearn.encoder_change import EncoderSnapshot
from t2v_unlearn.errors import SettingsError
from t2v_unlearn.evaluate import (
    EvalSettings,
    encoder_digests,
    expand,
    guidance_texts,
    per_sample_records,
    phase_metrics,
    run_phase,
    seen_in_target_metrics,
    unchanged_prompts,
)
from t2v_unlearn.export import BASE_FINGERPRINT_KEY, SaveTextEncoderEachEpoch, save_text_encoder
from t2v_unlearn.fewshot import FewShotError, collect_fewshot
from t2v_unlearn.hydra_callbacks import FINISHED_MARKER, FinishedRunError, check_run_dir
from t2v_unlearn.io import write_json_atomic
from t2v_unlearn.judges.clip import clip_scorer_for
from t2v_unlearn.quiet import silence_known_training_messages
from t2v_unlearn.sample_cache import SampleCache
from t2v_unlearn.tracking import finish, log_media, log_metrics
from t2v_unlearn.unlearn import (
    RETAIN_SPACES,
    TRAINABLE_CHOICES,
    DivergenceError,
    TextEncoderUnlearning,
    expected_optimizer_steps,
)

log = logging.getLogger(__name__)

# Errors whose message names the bad input and the fix, so `train.py` prints them without a traceback.
# NOTE: FileNotFoundError (a toy-world weights folder with a missing part) is not listed, so it still
# prints a traceback.
INPUT_ERRORS = (SettingsError, FewShotError, FinishedRunError, ModelLoadError, EncoderMismatchError, DivergenceError)


def build_judge(judge_cfg: DictConfig, backend):
    """Instantiate the judge config; its factory receives the backend when it takes one."""
    factory = instantiate(judge_cfg, _partial_=True)
    target = getattr(factory, "func", factory)
    parameters = inspect.signature(target).parameters
    return factory(backend=backend) if "backend" in parameters else factory()


def build_latents(backend, images_by_concept: dict[str, np.ndarray], concepts, shots: int, batch_size: int,
                  seed: int) -> tuple[torch.Tensor, list[int]]:
    """Encode all concepts' images once; for shots=0, draw `batch_size` random latents per concept."""
    generator = torch.Generator().manual_seed(seed)
    latents, concept_index = [], []
    height, width = int(backend.image_kwargs["height"]), int(backend.image_kwargs["width"])
    factor = 2 ** (len(backend.vae.config.block_out_channels) - 1)
    latent_shape = (int(backend.vae.config.latent_channels), height // factor, width // factor)
    for i, concept in enumerate(concepts):
        if shots == 0:
            latents.append(random_latents(batch_size, latent_shape, generator))
        else:
            latents.append(encode_images(backend.vae, images_by_concept[concept.key], generator))
        concept_index += [i] * len(latents[-1])
    return torch.cat(latents), concept_index


def retain_prompts(concepts, generic_prompts=(), include_similar: bool = False) -> list[str]:
    """Return the retain prompts, the empty prompt first.

    The empty prompt is always in: classifier-free guidance runs it through the same encoder. Then
    come the preservation prompts and the generic captions, minus any that name an unlearned
    concept, and minus the preservation prompts of the concepts' similar concepts unless
    `include_similar` (so leakage to them stays measurable).
    """
    target_keys = {c.key for c in concepts}
    names = [c.name.lower() for c in concepts] + [p.lower() for c in concepts for p in c.paraphrases]
    excluded = set(target_keys)
    if not include_similar:
        excluded |= {key for c in concepts for key in c.similar}
    prompts = [""]
    candidates = [p.prompt for c in concepts for p in c.preserve_prompts if p.concept not in excluded]
    candidates += list(generic_prompts)
    for prompt in candidates:
        if prompt not in prompts and not any(name in prompt.lower() for name in names):
            prompts.append(prompt)
    return prompts


def shared_token_prompts(concepts, generic_prompts=()) -> list[str]:
    """Prompts whose tokens `trainable=concept_tokens` leaves fixed: the retain prompts with the
    similar concepts' preservation prompts included (a word such as "tower", which Tokyo Tower
    shares with the Eiffel Tower, is not the concept's own). Prompts that name an unlearned concept
    are left out, as in the retain set."""
    return [p for p in retain_prompts(concepts, generic_prompts, include_similar=True) if p]


def _config_choice(group: str) -> str | None:
    """Return the option chosen for a config group (e.g. method=retain), when Hydra composed the run."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_settings(cfg: DictConfig) -> None:
    """Reject invalid settings before any model loads or image is generated."""
    for key in ("shots", "epochs", "batch_size", "seed", "eval.seeds_per_prompt", "eval.frames_to_judge"):
        value = OmegaConf.select(cfg, key)
        if not _whole_number(value):
            raise SettingsError(f"{key}={value!r} is invalid; pass a whole number")
    if cfg.eval.prompts_per_group is not None and not _whole_number(cfg.eval.prompts_per_group):
        raise SettingsError(f"eval.prompts_per_group={cfg.eval.prompts_per_group!r} is invalid; pass null (all) or a "
                         f"whole number")
    lr = OmegaConf.select(cfg, "optim.lr")
    if not _number(lr) or lr <= 0:
        raise SettingsError(f"optim.lr={lr!r} is invalid; pass a positive number such as optim.lr=1e-5")
    if not _number(cfg.retain.weight):
        raise SettingsError(f"retain.weight={cfg.retain.weight!r} is invalid; pass 0 (off) or a positive number")
    checks = [
        (cfg.shots >= 0, f"shots={cfg.shots} is invalid; pass 0 (random latents) or a positive image count"),
        (cfg.epochs >= 1, f"epochs={cfg.epochs} is invalid; pass 1 or more"),
        (cfg.batch_size >= 1, f"batch_size={cfg.batch_size} is invalid; pass 1 or more"),
        (cfg.trainable in TRAINABLE_CHOICES,
         f"trainable='{cfg.trainable}' is not supported; use one of {list(TRAINABLE_CHOICES)}"),
        (cfg.retain.space in RETAIN_SPACES,
         f"retain.space='{cfg.retain.space}' is not supported; use one of {list(RETAIN_SPACES)}"),
        (cfg.retain.weight >= 0, f"retain.weight={cfg.retain.weight} is invalid; pass 0 (off) or a positive weight"),
        (cfg.eval.seeds_per_prompt >= 1, f"eval.seeds_per_prompt={cfg.eval.seeds_per_prompt} is invalid; pass 1 or more"),
        (cfg.eval.prompts_per_group is None or cfg.eval.prompts_per_group >= 1,
         f"eval.prompts_per_group={cfg.eval.prompts_per_group} is invalid; pass null (all) or 1 or more"),
        (cfg.eval.frames_to_judge >= 1, f"eval.frames_to_judge={cfg.eval.frames_to_judge} is invalid; pass 1 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(message)


# Outputs of a run. `overwrite=true` removes these from the folder before the new run starts.
RUN_OUTPUTS = ("metrics.json", "eval_samples.json", "fewshot", "videos", "images", "text_encoder")


def clear_previous_run(out_dir: Path) -> None:
    """Remove a previous run's outputs, the finished marker first, so that no file of the old run
    stays next to the new one."""
    for name in [*RUN_OUTPUTS, *(p.name for p in out_dir.glob("text_encoder_epoch_*"))]:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.warning("overwrite=true: removed the previous run's outputs from %s", out_dir)


def build_backend(model_cfg: DictConfig):
    """Instantiate the backend; a loading error surfaces as itself rather than wrapped by Hydra."""
    try:
        return instantiate(model_cfg.backend)
    except InstantiationException as error:
        if isinstance(error.__cause__, (ModelLoadError, ValueError, FileNotFoundError)):
            raise error.__cause__ from None
        raise


def _paths_named(node, name: str, prefix: str = "") -> list[str]:
    """Return the dotted paths of every setting called `name` below `node` (concept files excluded)."""
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path == "concepts":
            continue
        if key == name and prefix:
            paths.append(path)
        if isinstance(value, dict):
            paths += _paths_named(value, name, f"{path}.")
    return paths


def reject_unread_additions(cfg: DictConfig) -> None:
    """Reject `+name=value` overrides that add a top-level setting, because the job reads none of them.

    Hydra suggests the `+` form when an override names a setting that does not exist (`lr=1e-3`),
    and the run would then go on with the setting ignored.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    groups = set(hydra_cfg.runtime.choices.keys())
    for override in hydra_cfg.overrides.task:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].split("=", 1)[0]
        if "." in key or "/" in key or "@" in key or key in groups:
            continue
        named = _paths_named(OmegaConf.to_container(cfg, resolve=False), key)
        hint = f" Did you mean {' or '.join(f'{path}=...' for path in named)}?" if named else ""
        raise SettingsError(f"'{override}' adds a top-level setting '{key}' that the job does not read.{hint} Use "
                         f"the full name without '+'; `python train.py --cfg job` prints every setting.")


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run the whole job into `out_dir` and return the metrics that `metrics.json` holds."""
    start = time.perf_counter()
    silence_known_training_messages()
    out_dir = Path(out_dir)
    check_run_dir(out_dir, bool(cfg.overwrite))
    reject_unread_additions(cfg)
    validate_settings(cfg)
    if cfg.overwrite and (out_dir / FINISHED_MARKER).exists():
        clear_previous_run(out_dir)
    pl.seed_everything(int(cfg.seed), workers=True)

    concepts = load_concepts(cfg.concepts, OmegaConf.select(cfg, "concept.images_dir"))
    templates = PromptTemplates(**OmegaConf.to_container(cfg.prompts, resolve=True))
    log.info("Unlearning %s with %d shot(s) per concept", ", ".join(c.name for c in concepts), cfg.shots)
    backend = build_backend(cfg.model)
    check_upscaler_concepts(backend, [c.key for c in concepts])
    judge = build_judge(cfg.judge, backend)
    scorer = clip_scorer_for(backend.clip, backend.device) if cfg.eval.clip_similarity else None
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        metrics = _unlearn_and_measure(cfg, out_dir, start, concepts, templates, backend, judge, scorer, logger)
    except BaseException:
        # A W&B run left open would be reused by the next job of a multirun in this process.
        finish(logger, "failed")
        raise
    finish(logger)
    # metrics.json is written last: its presence marks a finished run.
    write_json_atomic(out_dir / FINISHED_MARKER, metrics)
    log.info("Metrics: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})
    log.info("Done in %.0f s. %s. Results: %s", metrics["time/total_s"], summary_line(metrics),
             out_dir / FINISHED_MARKER)
    return metrics


def _unlearn_and_measure(cfg: DictConfig, out_dir: Path, start: float, concepts, templates, backend, judge, scorer,
                         logger) -> dict:
    """Make the few-shot images, measure the original model, unlearn, measure again; return the metrics."""
    # 1. Few-shot images.
    t0 = time.perf_counter()
    images_by_concept, records = collect_fewshot(backend, concepts, int(cfg.shots), int(cfg.fewshot_seed),
                                                 cfg.cache_dir, out_dir / "fewshot")
    fewshot_s = time.perf_counter() - t0

    # 2. Videos and images of the original model, before the encoder changes in place.
    settings = EvalSettings(**{k: v for k, v in cfg.eval.items()
                               if k not in ("clip_similarity", "prompts_per_group", "paraphrases", "reuse_unchanged",
                                            "cache_samples")})
    items = evaluation_items(concepts, cfg.eval.prompts_per_group, bool(cfg.eval.paraphrases))
    samples, seeds = expand(items, settings)
    t0 = time.perf_counter()
    # A video post-processing stage can depend on the encoder in ways the digests do not see (the
    # upscaler's prompt_mode=unlearned switches to another encoder once this one changed), so
    # nothing is taken over when one is set.
    reuse = (bool(cfg.eval.reuse_unchanged) and backend.video_postprocess is None
             and (settings.videos or settings.images))
    prompts = [item.prompt for item in items]
    shared = guidance_texts(backend)
    texts = prompts + shared
    digests_before = encoder_digests(backend.tokenizer, backend.text_encoder, texts) if reuse else {}
    # The same exclusion as above: a post-processing stage is not covered by the cache key.
    cache = (SampleCache(Path(cfg.cache_dir) / "samples", backend)
             if cfg.eval.cache_samples and cfg.cache_dir and backend.video_postprocess is None else None)
    before = run_phase("before", backend, judge, scorer, items, backend.text_encoder, out_dir, settings, cache=cache)
    eval_s = time.perf_counter() - t0

    # 3. Unlearning.
    t0 = time.perf_counter()
    snapshot = EncoderSnapshot(backend.tokenizer, backend.text_encoder, items)
    latents, concept_index = build_latents(backend, images_by_concept, concepts, int(cfg.shots),
                                           int(cfg.batch_size), int(cfg.seed))
    dataset = LatentPromptDataset(latents, concepts, templates, concept_index)
    module = TextEncoderUnlearning(
        text_encoder=backend.text_encoder,
        unet=backend.unet,
        noise_scheduler=backend.noise_scheduler,
        tokenizer=backend.tokenizer,
        optimizer=instantiate(cfg.optim),
        trainable=cfg.trainable,
        retain_weight=float(cfg.retain.weight),
        retain_prompts=retain_prompts(concepts, cfg.retain.generic_prompts, bool(cfg.retain.include_similar)),
        retain_batch_size=int(cfg.retain.batch_size),
        retain_space=str(cfg.retain.space),
        concept_names=[c.name for c in concepts],
        shared_token_prompts=shared_token_prompts(concepts, cfg.retain.generic_prompts)
        if cfg.concept_tokens_skip_shared else (),
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
    )
    provenance = {
        "concepts": [c.key for c in concepts],
        "concept_names": [c.name for c in concepts],
        "shots": int(cfg.shots),
        "epochs": int(cfg.epochs),
        "batch_size": int(cfg.batch_size),
        "trainable": cfg.trainable,
        "trainable_token_ids": module.trainable_token_ids,
        "retain": OmegaConf.to_container(cfg.retain, resolve=True),
        "method": _config_choice("method"),
        "optimizer": OmegaConf.to_container(cfg.optim, resolve=True),
        "base_model_id": backend.model_id,
        # Computed before the training below changes the encoder.
        BASE_FINGERPRINT_KEY: fingerprint_module(backend.text_encoder),
        "backend": backend.name,
        "seed": int(cfg.seed),
        "fewshot_seed": int(cfg.fewshot_seed),
        "fewshot_sources": sorted({r.source if r.prompt is None else "generated" for r in records})
        or ["uniform random latents"],
        "prompt_templates": sorted({c.kind for c in concepts}),
    }
    callbacks = [SaveTextEncoderEachEpoch(out_dir, provenance)]
    early_stopping = None
    if cfg.early_stop.enabled:
        early_stopping = JudgeEarlyStopping(backend, judge, items, threshold=float(cfg.early_stop.threshold),
                                            seeds=int(cfg.early_stop.seeds_per_prompt))
        # Before the saving callback, so the saved epoch folders see the decision.
        callbacks.insert(0, early_stopping)
    trainer = instantiate(cfg.trainer, logger=logger if logger is not None else False, callbacks=callbacks,
                          default_root_dir=str(out_dir))
    # The noise, timesteps and batch order of unlearning come from the global generators. Loading
    # models initialises weights from them (the backend, the judge, the CLIP scorer only when
    # eval.clip_similarity is true), so seed again here. The unlearned encoder then depends on the
    # seed and the training settings, not on which evaluation ran before.
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    trainer.fit(module, datamodule=UnlearningDataModule(dataset, batch_size=int(cfg.batch_size)))
    # NOTE: under DDP every rank runs this function; only rank zero saves and evaluates. The ranks
    # before fit each generate (or read from the cache) the same few-shot images.
    if not trainer.is_global_zero:
        return {}
    # Lightning moves the module to the CPU when fit ends; the pipelines expect the backend's device.
    module.to(backend.device)
    module.text_encoder.eval()
    final = {**provenance, "epoch": trainer.current_epoch, "optimizer_steps": module.applied_steps,
             "expected_optimizer_steps": expected_optimizer_steps(len(dataset), int(cfg.batch_size), int(cfg.epochs)),
             "diverged_at_step": module.diverged_at_step,
             "early_stopped_epoch": early_stopping.stopped_epoch if early_stopping else None}
    save_text_encoder(module.text_encoder, out_dir / "text_encoder", final)
    unlearn_s = time.perf_counter() - t0
    if module.diverged_at_step is not None:
        raise DivergenceError(
            f"the unlearning loss or a gradient became non-finite at step {module.diverged_at_step}; "
            f"the last finite encoder is saved in {out_dir / 'text_encoder'}. Lower optim.lr "
            f"(now {cfg.optim.lr}) or use method=retain, then run again in a new folder."
        )

    try:
        change = snapshot.change_metrics(module.text_encoder)
    except (ValueError, RuntimeError) as error:  # renamed parameters (FSDP), out of memory
        log.warning("Not measuring how far the encoder moved: %s", error)
        change = {}
    del snapshot

    # 4. The same prompts and seeds with the unlearned encoder.
    t0 = time.perf_counter()
    reusable = frozenset()
    if reuse:
        digests_after = encoder_digests(backend.tokenizer, module.text_encoder, texts)
        reusable = unchanged_prompts(digests_before, digests_after, prompts, shared)
    after = run_phase("after", backend, judge, scorer, items, module.text_encoder, out_dir, settings,
                      reuse_from=before, reusable_prompts=reusable, cache=cache)
    eval_s += time.perf_counter() - t0

    metrics = {**phase_metrics("before", before, samples), **phase_metrics("after", after, samples)}
    metrics.update({
        "time/fewshot_s": fewshot_s,
        "time/unlearn_s": unlearn_s,
        "time/eval_s": eval_s,
        "time/total_s": time.perf_counter() - start,
        "eval/after_samples_reused": int(after.reused.sum()),
        "eval/videos_from_cache": cache.hits["video"] if cache is not None else 0,
        "eval/images_from_cache": cache.hits["image"] if cache is not None else 0,
        "train/optimizer_steps": module.applied_steps,
        "train/epochs_run": int(trainer.current_epoch),
        "train/early_stopped_epoch": early_stopping.stopped_epoch if early_stopping else None,
    })
    metrics.update(change)
    metrics.update(seen_in_target_metrics(before, after, samples))
    write_json_atomic(out_dir / "eval_samples.json", per_sample_records(samples, seeds, before, after))
    if logger is not None:
        log_metrics(logger, metrics)
        log_media(logger, out_dir, records, before, after, samples)
    return metrics


def summary_line(metrics: dict) -> str:
    """Return the headline rates, before -> after, of the kinds of sample the run judged."""
    parts = []
    for kind in ("video", "image"):
        for group, label in (("target", "target"), ("other", "other concepts")):
            before, after = metrics.get(f"{kind}/{group}_rate_before"), metrics.get(f"{kind}/{group}_rate_after")
            if before is not None and after is not None:
                parts.append(f"{label} in {before:.2f} -> {after:.2f} of {kind}s")
        if parts:
            break
    return "; ".join(parts) or "no videos or images were judged"
