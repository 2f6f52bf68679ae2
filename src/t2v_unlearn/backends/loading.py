"""Find and load the components of a pretrained diffusers model: a local folder or a Hub id.

A model source is either a local folder laid out like a Hub repository (`model_index.json` plus one
subfolder per component, as `save_pretrained` and `hf download --local-dir` write it) or a Hub id
such as `stable-diffusion-v1-5/stable-diffusion-v1-5`. Before anything heavy loads, the components
are checked: in the folder, or with `HF_HUB_OFFLINE` set, in the Hugging Face cache. Every missing
component is named in one `ModelLoadError`, with the command that downloads it. Nothing here
downloads on import; a download happens only when a builder loads a Hub id with the network allowed.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import HfApi, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

log = logging.getLogger(__name__)

# Seconds to wait for the Hub's response to the repository check before falling back to the cache.
HUB_TIMEOUT_S = 10.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


class ModelLoadError(RuntimeError):
    """A model source is missing, incomplete or could not be loaded."""


@dataclass(frozen=True)
class Component:
    """One part of a model repository and the files that must be present to load it."""

    name: str
    # Folder inside the repository; "" for a repository that is a single model (motion adapters).
    subfolder: str
    # At least one group must be fully present; each group is a tuple of file names.
    required_files: tuple[tuple[str, ...], ...]
    needs_weights: bool = True

    def folder(self, root: Path) -> Path:
        return root / self.subfolder if self.subfolder else root

    def problem(self, root: Path) -> str | None:
        """Return why the component cannot load from `root`, or None when it looks complete."""
        folder = self.folder(root)
        if not folder.is_dir():
            return f"folder {folder} not found"
        if not any(all((folder / name).is_file() for name in group) for group in self.required_files):
            expected = " or ".join(" + ".join(group) for group in self.required_files)
            return f"{expected} not found in {folder}"
        if self.needs_weights and not weight_files(folder):
            return f"no weight file (*.safetensors or *.bin) in {folder}"
        return None


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


TOKENIZER = Component("tokenizer", "tokenizer", (("vocab.json", "merges.txt"), ("tokenizer.json",)),
                      needs_weights=False)
TEXT_ENCODER = Component("text_encoder", "text_encoder", (("config.json",),))
UNET = Component("unet", "unet", (("config.json",),))
VAE = Component("vae", "vae", (("config.json",),))
SCHEDULER = Component("scheduler", "scheduler", (("scheduler_config.json",),), needs_weights=False)
MOTION_ADAPTER = Component("motion_adapter", "", (("config.json",),))

# The components each kind of repository must provide for this package's backends.
TEXT_TO_IMAGE_COMPONENTS = (TOKENIZER, TEXT_ENCODER, UNET, VAE, SCHEDULER)
TEXT_TO_VIDEO_COMPONENTS = (TOKENIZER, TEXT_ENCODER, UNET, VAE, SCHEDULER)
MOTION_ADAPTER_COMPONENTS = (MOTION_ADAPTER,)


def transport_errors() -> tuple[type[BaseException], ...]:
    """Return the exception classes of a failed connection to the Hub.

    huggingface_hub raises its HTTP client's errors (httpx2 in 2.x, httpx in 1.x, requests before,
    whose errors subclass OSError) when no connection can be made.
    """
    errors: list[type[BaseException]] = [OSError]
    for module_name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module_name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def hub_offline() -> bool:
    """Return whether `HF_HUB_OFFLINE` is set to a true value now (huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_local_path(path: str) -> bool:
    """Return whether `path` names a local folder rather than a Hub id (`owner/name`).

    An existing path, a leading `/`, `.` or `~`, or more than one `/` marks a folder.
    """
    return os.path.exists(path) or path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


@dataclass
class ModelSource:
    """Location of one repository's components, resolved before loading."""

    # The path or Hub id the user passed.
    spec: str
    # Local folder to load from: the user's folder or a cached Hub snapshot. None for a Hub id that
    # from_pretrained resolves (and may download) itself.
    root: Path | None
    revision: str | None
    cache_dir: str | None
    # Names the model in messages, e.g. "the SD 1.5 text-to-image model".
    label: str
    # The published Hub id, for the download command in error messages.
    hub_id: str
    # The config key that sets the path, e.g. "model.backend.sd_path".
    option: str
    # Every component the backend loads from this repository.
    components: tuple[Component, ...] = ()

    @property
    def load_path(self) -> str:
        return str(self.root) if self.root is not None else self.spec

    def from_pretrained(self, loader: Callable[..., Any], component: Component, **kwargs: Any) -> Any:
        """Call `loader(path, subfolder=..., ...)` for one component; failures raise `ModelLoadError`."""
        if component.subfolder:
            kwargs["subfolder"] = component.subfolder
        if self.root is None:
            kwargs.update(revision=self.revision, cache_dir=self.cache_dir)
        try:
            return loader(self.load_path, local_files_only=self.root is not None or hub_offline(), **kwargs)
        except (OSError, ValueError, EntryNotFoundError) as error:
            message = f"failed to load the {component.name} of {self.label} from {self.load_path}: {error}\n"
            missing = [component]
            if self.root is None:
                # Without network every later component fails too, so name all that the cache lacks.
                missing = self.missing_from_cache() or missing
                message += f"Not in the Hugging Face cache: {', '.join(c.name for c in missing)}.\n"
            raise ModelLoadError(
                message + how_to_get(self.hub_id, self.spec, self.revision, missing, self.option)
            ) from error

    def missing_from_cache(self) -> list[Component]:
        """Return the components of a Hub id that its cached snapshot lacks (all, without a snapshot)."""
        snapshot = cached_snapshot(self.spec, self.revision, self.cache_dir, self.components)
        if snapshot is None:
            return list(self.components)
        return [c for c in self.components if c.problem(snapshot) is not None]

    def model_id(self) -> str:
        """Identify the weights: the Hub id and commit, or the folder and a digest of its files.

        The folder digest covers each component file's name, size and modification time. It is cheap
        and changes whenever a file is rewritten, so the few-shot image cache never reuses images
        of replaced weights (a copied, unchanged folder only costs a cache miss).
        """
        if not looks_like_local_path(self.spec):
            commit = cached_commit(self.spec, self.revision, self.cache_dir, self.components)
            return f"{self.spec}@{commit or self.revision or 'main'}"
        digest = hashlib.sha256()
        for component in self.components:
            folder = component.folder(self.root)
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if path.is_file():
                    stat = path.stat()
                    digest.update(f"{component.name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return f"{self.root.resolve()}#files-{digest.hexdigest()[:12]}"


def how_to_get(hub_id: str, spec: str, revision: str | None, components: list[Component], option: str) -> str:
    """Return the commands that download a repository into a local folder and select it.

    A Hub id in `spec` is downloaded as given; for a local folder, the published `hub_id` is.
    """
    if looks_like_local_path(spec):
        local_dir = spec
    else:
        hub_id, local_dir = spec, f"/path/to/{spec.split('/')[-1]}"
    revision_flag = f" --revision {revision}" if revision else ""
    names = ", ".join(c.name for c in components)
    return (
        f"To get {names}, download the repository on a machine with network access "
        f"(huggingface_hub's CLI; `huggingface-cli download` in versions before 1.0):\n"
        f"  hf download {hub_id}{revision_flag} --local-dir {local_dir}\n"
        f"then select the folder with {option}={local_dir}"
    )


def cached_snapshot(repo_id: str, revision: str | None, cache_dir: str | None,
                    components: tuple[Component, ...]) -> Path | None:
    """Return the Hugging Face cache's snapshot folder of `repo_id`, or None when nothing is cached."""
    candidates = ["model_index.json"] + [
        f"{c.subfolder}/{group[0]}" if c.subfolder else group[0]
        for c in components for group in c.required_files
    ]
    for filename in candidates:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(hit, str):
            snapshot = Path(hit)
            for _ in filename.split("/"):
                snapshot = snapshot.parent
            return snapshot
    return None


def cached_commit(repo_id: str, revision: str | None, cache_dir: str | None,
                  components: tuple[Component, ...]) -> str | None:
    """Return the commit hash of the cached snapshot (its folder name in the Hub cache layout)."""
    snapshot = cached_snapshot(repo_id, revision, cache_dir, components)
    return snapshot.name if snapshot is not None else None


def resolve_source(spec: str, components: tuple[Component, ...], *, label: str, option: str, hub_id: str,
                   revision: str | None = None, cache_dir: str | None = None) -> ModelSource:
    """Check that every component of `spec` is present, without loading any.

    A local folder is checked directly. A Hub id is checked in the Hugging Face cache when
    `HF_HUB_OFFLINE` is set, and otherwise left to from_pretrained, which downloads what is missing.
    Raises `ModelLoadError` naming each missing component and the command that downloads it.
    """
    source = ModelSource(spec, None, revision, cache_dir, label, hub_id, option, components)
    if not spec:
        raise ModelLoadError(f"{option} is empty; set it to a Hub id (e.g. {hub_id}) or a local folder of {label}")
    if looks_like_local_path(spec):
        source.root = Path(spec).expanduser()
        if not source.root.is_dir():
            raise ModelLoadError(
                f"the folder of {label} was not found: {option}={spec}. It must contain the components "
                f"{', '.join(c.name for c in components)}.\n"
                + how_to_get(hub_id, spec, revision, list(components), option)
            )
        check_components(source, components)
        return source

    if hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        reason = hub_unreachable_reason(source)
        if reason is None:
            return source
        log.warning("%s, so %s loads from the Hugging Face cache", reason, spec)
    source.root = cached_snapshot(spec, revision, cache_dir, components)
    if source.root is None:
        raise ModelLoadError(
            f"{reason} and {label} ({option}={spec}{'@' + revision if revision else ''}) "
            f"is not in the Hugging Face cache, so none of its components "
            f"({', '.join(c.name for c in components)}) can load.\n"
            + how_to_get(hub_id, spec, revision, list(components), option)
            + "\nor run again with network access so that the loader downloads it."
        )
    check_components(source, components)
    return source


def hub_unreachable_reason(source: ModelSource) -> str | None:
    """Ask the Hub for the repository; return why it cannot be reached, or None when it can.

    A missing or gated repository raises `ModelLoadError`. A failed connection returns a reason, so
    the caller falls back to the cache instead of letting every from_pretrained call retry.
    """
    try:
        HfApi().model_info(source.spec, revision=source.revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as error:
        raise ModelLoadError(
            f"{source.spec} ({source.option}) is gated: accept its license on the Hub, log in with "
            f"`hf auth login`, and run again. {error}"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ModelLoadError(
            f"{source.spec}{'@' + source.revision if source.revision else ''} ({source.option}) was not "
            f"found on the Hub; check the id and revision, or pass a local folder. {error}"
        ) from error
    except transport_errors() as error:
        return f"the Hub could not be reached ({type(error).__name__}: {error})"
    return None


def check_components(source: ModelSource, components: tuple[Component, ...]) -> None:
    """Raise `ModelLoadError` listing every component that `source.root` lacks."""
    missing = [(c, c.problem(source.root)) for c in components]
    missing = [(c, problem) for c, problem in missing if problem is not None]
    if not missing:
        return
    details = "\n".join(f"  - {c.name}: {problem}" for c, problem in missing)
    raise ModelLoadError(
        f"{source.label} ({source.option}={source.spec}) is missing {len(missing)} component(s) "
        f"in {source.root}:\n{details}\n"
        + how_to_get(source.hub_id, source.spec, source.revision, [c for c, _ in missing], source.option)
    )


def check_tokenizer(tokenizer, text_encoder: torch.nn.Module, source: ModelSource) -> None:
    """Raise `ModelLoadError` unless the tokenizer's vocabulary fits the text encoder's embedding table.

    transformers 5.25 returns a 2-token tokenizer, without an error, when the tokenizer files of a Hub
    id are missing, so a successful load alone proves nothing.
    """
    vocab_size = int(text_encoder.config.vocab_size)
    if len(tokenizer) == vocab_size:
        return
    raise ModelLoadError(
        f"the tokenizer of {source.label} ({source.load_path}) has {len(tokenizer)} tokens but its text "
        f"encoder embeds {vocab_size}, so the tokenizer files (vocab.json and merges.txt, or "
        f"tokenizer.json) are missing or belong to another model.\n"
        + how_to_get(source.hub_id, source.spec, source.revision, [TOKENIZER], source.option)
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """Map "auto" to cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device} is invalid because CUDA is not available; pass device=auto or cpu")
    return resolved


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_frozen_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Return the dtype of the frozen UNet and VAE: "auto" is float16 on a GPU and float32 on a CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is invalid; pass auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
