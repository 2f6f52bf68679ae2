import os
from pathlib import Path

import pytest

# Nothing may download during tests: every model is built locally or loaded from files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Give every test its own few-shot cache and W&B folders."""
    monkeypatch.setenv("T2V_UNLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    yield


@pytest.fixture
def tiny_backend():
    from t2v_unlearn.backends.tiny import build_tiny_animatediff_backend

    return build_tiny_animatediff_backend(seed=0, num_inference_steps=2)


def compose_config(overrides: list[str]):
    """Compose conf/train.yaml with `overrides`, as `python train.py ...` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import t2v_unlearn.resolvers  # noqa: F401

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)
