"""OmegaConf resolvers used by the configs under `conf/`; imported before Hydra composes."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _join_keys(node, separator: str = "+") -> str:
    """`${join_keys:${concepts}}` gives "snoopy+mickey" for a run that unlearns both."""
    return separator.join(str(k) for k in node.keys()) if node else "none"


def _sweep_group() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    config = HydraConfig.get()
    if config.mode == RunMode.MULTIRUN:
        return Path(config.sweep.dir).name
    return None


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("join_keys", _join_keys, replace=True)
    OmegaConf.register_new_resolver("sweep_group", _sweep_group, replace=True)


register_resolvers()
