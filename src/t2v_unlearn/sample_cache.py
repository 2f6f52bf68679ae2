"""A disk cache of rendered evaluation samples, shared by the runs of a sweep.

Runs that differ only in how they unlearn (method, learning rate, seed) render the same "before"
videos: same model, prompts and seeds. The cache keeps each of those videos and images under a key
of everything that determines it, so the next run reads them instead of rendering again:

- what the text encoder returns for the prompt, and for the empty and negative prompts of guidance
  (a digest over every layer, `evaluate.encoder_digests`). The encoder itself is not in the key, so
  a prompt that unlearning left untouched also hits after unlearning;
- a fingerprint of the rest of the pipeline: the weights and configs of its UNet (with the
  temporal layers) and VAE, its scheduler's config and the pipeline class;
- the call settings (size, frames, steps, guidance), the seed, the device (the GPU's name, CUDA and
  cuDNN versions and TF32 switches on CUDA), the dtype, the torch and diffusers versions, and
  `CACHE_VERSION`, which changes whenever this repository renders differently.

A sample read back is the one an earlier run rendered, bit for bit. Rendering it again could
differ in the last bits where kernels depend on the batch a sample is rendered in, as some GPU
kernels do. On the CPU the toy world's videos were equal at 4 and 8 per call. Backends with a video
post-processing stage (the upscaler) are never cached. Delete `<cache_dir>/samples` to clear it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import diffusers
import numpy as np
import torch

import t2v_unlearn
from t2v_unlearn.backends.bundle import Backend, fingerprint_module
from t2v_unlearn.evaluate import encoder_digests, guidance_texts
from t2v_unlearn.io import atomic_file

log = logging.getLogger(__name__)

# Change this when the repository starts rendering differently (pipelines, seeding, conversion to
# uint8), so that samples rendered by the old code are no longer read.
CACHE_VERSION = 1


def _public_config(config) -> str:
    """Serialise a diffusers config without its private keys.

    The private `_use_default_values` is a list built from a set, so its order changes with Python's
    hash seed, and with it any hash of the whole config.
    """
    return json.dumps({k: v for k, v in dict(config).items() if not str(k).startswith("_")}, sort_keys=True,
                      default=repr)


def pipeline_fingerprint(pipeline) -> str:
    """Return a SHA-256 over a pipeline's class, its components except the text encoder (weights and
    configs), and its scheduler's config."""
    digest = hashlib.sha256()
    digest.update(f"{type(pipeline).__module__}.{type(pipeline).__qualname__}".encode())
    for name in ("unet", "vae", "transformer", "motion_adapter"):
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            digest.update(f"{name}:{type(module).__qualname__}".encode())
            digest.update(fingerprint_module(module).encode())
            if getattr(module, "config", None) is not None:
                digest.update(_public_config(module.config).encode())
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is not None:
        digest.update(type(scheduler).__name__.encode())
        digest.update(_public_config(scheduler.config).encode())
    return digest.hexdigest()


def _weights_state(pipeline) -> tuple:
    """Return a cheap signature that changes when a weight of the pipeline is replaced or changed in place.

    Every in-place change of a tensor (an optimizer step, `copy_`, `load_state_dict`) raises its
    version counter, so a fingerprint computed earlier stays valid while this signature is equal.
    """
    state = []
    for name in ("unet", "vae", "transformer", "motion_adapter"):
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            state += [(id(t), t._version, t.data_ptr()) for t in module.state_dict(keep_vars=True).values()]
    return tuple(state)


def _device_description(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"type": device.type}
    return {
        "type": "cuda",
        "name": torch.cuda.get_device_name(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


class SampleCache:
    """Render videos and images through a backend, reading samples from `root` where it has them.

    One `.npy` file per sample, written atomically. Concurrent runs that render the same sample
    both write it, and either copy is the same sample. Counts of samples read back are kept per kind
    in `hits`.
    """

    def __init__(self, root: str | Path, backend: Backend):
        if backend.video_postprocess is not None:
            raise ValueError("the sample cache does not support backends with a video post-processing stage")
        self.root = Path(root).expanduser()
        self.backend = backend
        self._fingerprints: dict[str, tuple[tuple, str]] = {}
        self.hits = {"video": 0, "image": 0}
        self.misses = {"video": 0, "image": 0}

    def _pipeline(self, kind: str):
        return self.backend.video_pipeline if kind == "video" else self.backend.image_pipeline

    def _pipeline_fingerprint(self, kind: str) -> str:
        pipeline = self._pipeline(kind)
        state = _weights_state(pipeline)
        cached = self._fingerprints.get(kind)
        if cached is None or cached[0] != state:
            self._fingerprints[kind] = (state, pipeline_fingerprint(pipeline))
        return self._fingerprints[kind][1]

    def keys(self, kind: str, prompts: list[str], seeds: list[int], text_encoder: torch.nn.Module) -> list[str]:
        """Return the cache key of each (prompt, seed) rendered as `kind` ("video" or "image")."""
        guidance = guidance_texts(self.backend)
        digests = encoder_digests(self.backend.tokenizer, text_encoder, list(prompts) + guidance)
        kwargs = self.backend.video_kwargs if kind == "video" else self.backend.image_kwargs
        parameter = next(self.backend.unet.parameters())
        common = json.dumps({
            "version": CACHE_VERSION,
            "package": t2v_unlearn.__version__,
            "kind": kind,
            "pipeline": self._pipeline_fingerprint(kind),
            "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())},
            "guidance": [digests[text] for text in guidance],
            "device": _device_description(parameter.device),
            "dtype": str(parameter.dtype),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        }, sort_keys=True)
        return [hashlib.sha256(f"{common}|{digests[p]}|{int(s)}".encode()).hexdigest() for p, s in zip(prompts, seeds)]

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def _read(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # A truncated, empty or foreign file is rendered again.
            log.warning("Ignoring an unreadable cached sample %s (%s: %s); rendering it again", path,
                        type(error).__name__, error)
            return None
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
            log.warning("Ignoring a cached sample in %s that is not a uint8 array; rendering it again", path)
            return None
        return array

    def _write(self, key: str, array: np.ndarray) -> None:
        path = self._path(key)
        try:
            with atomic_file(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as error:
            # The cache only saves time: a full disk or a read-only folder must not end the run.
            log.warning("Failed to write %s to the sample cache (%s); the run continues without it", path, error)

    def render(self, kind: str, prompts: list[str], seeds: list[int], text_encoder: torch.nn.Module | None = None,
               desc: str | None = None, store: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Return uint8 samples like `Backend.generate_videos` / `generate_images`, reading the cached
        ones, and a bool mask of the samples that came from the cache.

        With `store`, the samples rendered here are written to the cache. The job stores only the
        first phase's samples: those are the ones other runs share.
        """
        if kind not in ("video", "image"):
            raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; pass one seed per prompt, "
                             f"and at least one prompt")
        encoder = text_encoder if text_encoder is not None else self.backend.text_encoder
        keys = self.keys(kind, prompts, seeds, encoder)
        found = [self._read(key) for key in keys]
        missing = [i for i, array in enumerate(found) if array is None]
        if missing:
            generate = self.backend.generate_videos if kind == "video" else self.backend.generate_images
            rendered = generate([prompts[i] for i in missing], [seeds[i] for i in missing], text_encoder=encoder,
                                desc=desc or f"{kind}s")
            for i, array in zip(missing, rendered):
                found[i] = array
                if store:
                    self._write(keys[i], array)
        shapes = {array.shape for array in found}
        if len(shapes) > 1:
            raise RuntimeError(f"cached and rendered {kind}s differ in shape ({sorted(shapes)}); "
                               f"delete {self.root} and run again")
        from_cache = np.ones(len(prompts), dtype=bool)
        from_cache[missing] = False
        self.hits[kind] += int(from_cache.sum())
        self.misses[kind] += len(missing)
        if from_cache.any():
            log.info("%s: %d of %d %ss read from the sample cache in %s", desc or kind, int(from_cache.sum()),
                     len(prompts), kind, self.root)
        return np.stack(found), from_cache
