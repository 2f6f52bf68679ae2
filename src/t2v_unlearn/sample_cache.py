"""A disk cache of rendered evaluation samples, shared by the runs of a sweep.

Runs that differ only in how they unlearn (method, learning rate, seed) render the same "before"
videos: same model, prompts and seeds. The cache keeps each rendered video and image under a key
of everything that determines it, so the second run reads them instead of rendering again:

- what the text encoder returns for the prompt, and for the empty and negative prompts of guidance
  (a digest over every layer, `evaluate.encoder_digests`). The encoder itself is not in the key, so
  a prompt that unlearning left untouched also hits after unlearning;
- a fingerprint of the rest of the pipeline's weights (UNet with its temporal layers, VAE) and its
  scheduler configuration;
- the call settings (size, frames, steps, guidance), the seed, the device type and dtype, and the
  torch and diffusers versions.

A sample read back is the one an earlier run rendered, bit for bit. Rendering it again could
differ in the last bits where the kernels depend on the batch a sample is rendered in (some GPU
kernels do); on the CPU the toy world's videos were equal at 4 and 8 per call. Backends with a
video post-processing stage (the upscaler) are never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import diffusers
import numpy as np
import torch

from t2v_unlearn.backends.bundle import Backend, fingerprint_module
from t2v_unlearn.evaluate import encoder_digests, guidance_texts
from t2v_unlearn.io import atomic_file

log = logging.getLogger(__name__)


def pipeline_fingerprint(pipeline) -> str:
    """Return a SHA-256 over a pipeline's weights except its text encoder, and its scheduler config."""
    digest = hashlib.sha256()
    for name in ("unet", "vae", "transformer", "motion_adapter"):
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            digest.update(name.encode())
            digest.update(fingerprint_module(module).encode())
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is not None:
        digest.update(type(scheduler).__name__.encode())
        digest.update(json.dumps(dict(scheduler.config), sort_keys=True, default=repr).encode())
    return digest.hexdigest()


class SampleCache:
    """Render videos and images through a backend, keeping each sample on disk under `root`.

    One `.npy` file per sample, written atomically; concurrent runs that render the same sample
    both write it, and either copy is the same sample.
    """

    def __init__(self, root: str | Path, backend: Backend):
        if backend.video_postprocess is not None:
            raise ValueError("the sample cache does not support backends with a video post-processing stage")
        self.root = Path(root).expanduser()
        self.backend = backend
        self._fingerprints: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def _pipeline_fingerprint(self, kind: str) -> str:
        if kind not in self._fingerprints:
            pipeline = self.backend.video_pipeline if kind == "video" else self.backend.image_pipeline
            self._fingerprints[kind] = pipeline_fingerprint(pipeline)
        return self._fingerprints[kind]

    def keys(self, kind: str, prompts: list[str], seeds: list[int], text_encoder: torch.nn.Module) -> list[str]:
        """Return the cache key of each (prompt, seed) rendered as `kind` ("video" or "image")."""
        guidance = guidance_texts(self.backend)
        digests = encoder_digests(self.backend.tokenizer, text_encoder, list(prompts) + guidance)
        kwargs = self.backend.video_kwargs if kind == "video" else self.backend.image_kwargs
        parameter = next(self.backend.unet.parameters())
        common = json.dumps({
            "kind": kind,
            "pipeline": self._pipeline_fingerprint(kind),
            "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())},
            "guidance": [digests[text] for text in guidance],
            "device": parameter.device.type,
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
        except (OSError, ValueError) as error:
            log.warning("Ignoring an unreadable cached sample %s (%s); rendering it again", path, error)
            return None
        if array.dtype != np.uint8:
            log.warning("Ignoring a cached sample of dtype %s in %s; rendering it again", array.dtype, path)
            return None
        return array

    def render(self, kind: str, prompts: list[str], seeds: list[int], text_encoder: torch.nn.Module | None = None,
               desc: str | None = None) -> np.ndarray:
        """Return uint8 samples like `Backend.generate_videos` / `generate_images`, from the cache where it has them."""
        if kind not in ("video", "image"):
            raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
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
                with atomic_file(self._path(keys[i])) as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        shapes = {array.shape for array in found}
        if len(shapes) > 1:
            raise RuntimeError(f"cached and rendered {kind}s differ in shape ({sorted(shapes)}); clear {self.root}")
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if len(prompts) > len(missing):
            log.info("%s: %d of %d %ss read from the sample cache in %s", desc or kind, len(prompts) - len(missing),
                     len(prompts), kind, self.root)
        return np.stack(found)
