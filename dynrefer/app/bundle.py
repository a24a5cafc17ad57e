"""Model bundles: one file with everything ``dynrefer describe``, ``eval`` and ``chat`` need — the model's
configuration, the texts its tokenizers are rebuilt from, the vocabularies and the weights — written atomically
and read without executing pickled code."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from dynrefer.model.dynrefer import DynRefer

__all__ = ["BUNDLE_FORMAT", "save_bundle", "load_bundle", "build_bundle_model", "load_bundle_model", "read_vocab"]

BUNDLE_FORMAT = "dynrefer-bundle-1"


def read_vocab(data_dir: str) -> Tuple[List[str], list, list]:
    """The tag list (``tags.txt``), classes (``classes.json``) and attributes (``attributes.json``) of a data folder
    as ``dynrefer.data.synthetic`` and the converters write it."""
    tags = [t.strip() for t in open(os.path.join(data_dir, "tags.txt"), encoding="utf-8") if t.strip()]
    classes = json.load(open(os.path.join(data_dir, "classes.json"), encoding="utf-8"))
    attributes = json.load(open(os.path.join(data_dir, "attributes.json"), encoding="utf-8"))
    return tags, classes, attributes


def build_bundle_model(bundle: Mapping[str, Any]) -> DynRefer:
    """Rebuild a model saved by :func:`save_bundle` (tokenizers are rebuilt from the saved texts; deterministic).
    Towers the bundle holds are built on the meta device and get the bundle's tensors by assignment (no second
    copy); an LLM the config names by ``llm.path`` is reloaded from that directory. Weight files the config names
    are not read: the bundle holds the weights."""
    from dynrefer.model import DynReferConfig, build_dynrefer
    from dynrefer.model.factory import external_keys

    cfg = DynReferConfig.from_dict(bundle["config"])
    model = build_dynrefer(cfg, texts=bundle["texts"], tag_list=bundle["tags"], classes=bundle["classes"],
                           attributes=bundle["attributes"], seed=0, state_dict=bundle["model"], load_weights=False)
    rep = model.load_reports[-1] if model.load_reports else None
    missing = [] if rep is None else [k for k in rep.missing if not k.endswith("_embeds")]
    external = external_keys(model)  # a frozen LLM reloaded from config.llm.path
    missing = [k for k in missing if k not in external]
    unexpected = [] if rep is None else rep.unexpected
    if unexpected or missing or any(r.initialized for r in model.load_reports):
        raise RuntimeError(f"bundle does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model


def save_bundle(model: DynRefer, path: str, texts: Iterable[str], tags: Iterable[str], classes: Iterable[str],
                attributes: Iterable[Any], views: Dict[str, Any]) -> str:
    """Everything ``dynrefer describe`` needs in one file, written atomically."""
    from dynrefer.train.checkpoint import atomic_save, seal

    from dynrefer.model.factory import external_keys

    external = external_keys(model)  # a frozen LLM from config.llm.path is reloaded from there
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in external}
    _check_finite(state, path)
    atomic_save(seal({"format": BUNDLE_FORMAT, "config": model.config.to_dict(), "texts": list(texts),
                      "tags": list(tags), "classes": list(classes), "attributes": list(attributes), "views": views,
                      "model": state}), path)
    return path


def _check_finite(state: Mapping[str, Any], path: str) -> None:
    import torch

    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise ValueError(f"{path}: weight {k} has {bad} NaN or infinite value{'s' if bad > 1 else ''}; a model "
                             "bundle must hold finite weights (did training diverge?)")


def load_bundle(path: str) -> Dict[str, Any]:
    """Read a bundle written by :func:`save_bundle`: without executing pickled code, its SHA-256 verified (a
    corrupted file is refused) and every weight finite."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model bundle at {path} (run `dynrefer demo` first, or pass --checkpoint)")
    try:  # tensors, lists, dicts and strings only: no pickled code is executed
        b = torch.load(path, map_location="cpu", weights_only=True, mmap=True)   # read as used, never copied
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a bundle" to the user
        raise ValueError(f"{path} is not a dynrefer model bundle ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(b, dict) or b.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a dynrefer model bundle (written by `dynrefer demo` / save_bundle)")
    from dynrefer.train.checkpoint import verify_seal

    missing = [k for k in ("config", "texts", "tags", "classes", "attributes", "views", "model") if k not in b]
    if missing:
        raise ValueError(f"{path} is not a complete dynrefer model bundle: no {', '.join(missing)}")
    verify_seal(b, path)   # a bundle written with a digest must match it
    if not isinstance(b["model"], dict):
        raise ValueError(f"{path}: 'model' is not a state dict")
    _check_finite(b["model"], path)
    return b


def load_bundle_model(path: str, bundle: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], DynRefer]:
    """``(bundle, model)`` for the bundle at ``path`` (``bundle``: its already loaded contents); a missing,
    unreadable or mismatched bundle is a :class:`~dynrefer.app.errors.UserError` naming the file."""
    from dynrefer.app.errors import UserError

    if bundle is None:
        try:
            bundle = load_bundle(path)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
    try:
        return bundle, build_bundle_model(bundle)
    except (FileNotFoundError, ImportError, RuntimeError) as e:  # weights that do not fit the config, a lost LLM
        raise UserError(f"{path}: {e}") from None
