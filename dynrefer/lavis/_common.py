"""Helpers shared by the LAVIS-facing classes: config access that works on dicts and OmegaConf nodes alike, the
packaged config files."""
from __future__ import annotations

import os
from typing import Any, Dict

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for a dict, an OmegaConf node or any object with attributes; ``default`` when absent."""
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def to_plain(cfg: Any) -> Any:
    """A plain dict/list copy of an OmegaConf node (dicts and lists are copied as they are)."""
    if cfg is None:
        return None
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    if isinstance(cfg, dict):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def as_int(value: Any, name: str) -> int:
    """An integer from an int, a float or a string such as ``"1e7"`` (YAML reads that as a string)."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def config_file(rel: str) -> str:
    """Absolute path of a packaged config file (``rel`` relative to ``dynrefer/lavis/configs``)."""
    path = os.path.join(CONFIG_ROOT, rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"packaged LAVIS config not found: {path}")
    return path


def read_yaml(path: str) -> Dict[str, Any]:
    """A YAML file through dynrefer's bounded safe loader (:func:`dynrefer.train.config.safe_yaml`)."""
    from dynrefer.train.config import safe_yaml

    with open(path, encoding="utf-8") as f:
        data = safe_yaml(f.read(), path)
    return {} if data is None else data
