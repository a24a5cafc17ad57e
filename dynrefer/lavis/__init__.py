"""LAVIS compatibility: DynRefer's model, processor, dataset builder and task under the official registry names,
with LAVIS's APIs and YAML configs in LAVIS's model / datasets / run layout.

When ``salesforce-lavis`` is importable, importing this module registers (into ``lavis.common.registry``):

=========  ===================================  =====================================================
kind       name                                 class
=========  ===================================  =====================================================
model      ``dynrefer_t5``                      :class:`DynRefer` + ``BaseModel`` (model types
                                                ``flant5xl``, ``flant5xl_vitL``, ``medium``, ``tiny``)
processor  ``dynrefer``                         nested views (``processor(image, segs)``)
builder    ``dynrefer`` and one per dataset      official-format annotation files → datasets
           (``vg1.2``, ``refcocog``, ``ovad``,
           ``coco``, ...: :data:`DATASET_CONFIGS`)
task       ``dynrefer``                         train / predict / score with :mod:`dynrefer.eval`
=========  ===================================  =====================================================

so that LAVIS scripts run DynRefer from a config::

    import dynrefer.lavis                       # registers (LAVIS installed)
    from lavis.models import load_model
    model = load_model("dynrefer_t5", "tiny")   # builds from dynrefer/lavis/configs/models/dynrefer_tiny.yaml

Without LAVIS (or into another registry, e.g. a test double): ``register(registry)`` with an object that has
LAVIS's ``register_model`` / ``register_processor`` / ``register_builder`` / ``register_task`` decorator
factories; the classes then derive from stand-ins unless ``bases`` gives LAVIS's.

Configs ship with the package (:func:`config_path`): ``models/`` (one per model type: a ``model`` and a
``preprocess`` section), ``datasets/`` (one per dataset, the official ``build_info`` keys) and ``projects/train``
/ ``projects/eval`` (the official training and evaluation runs: VG V1.2 5 epochs, RefCOCOg fine-tuning, dense
captioning, region captioning, OVAD, COCO; and a tiny run on the synthetic benchmark). A project file names its
model type and datasets; :func:`load_config` resolves it the way LAVIS's ``Config`` does (the model type's and
datasets' defaults, then the project's keys on top), without needing LAVIS or OmegaConf. File paths inside are
relative to the working directory, as in the official configs.
"""
from __future__ import annotations

import copy
import os
import sys
from collections import namedtuple
from typing import Any, Dict, Optional, Tuple

from dynrefer.lavis._common import CONFIG_ROOT, get, read_yaml
from dynrefer.lavis.builder import DATASET_CONFIGS
from dynrefer.lavis.model import IGNORED_MODEL_KEYS, MODEL_TYPES, config_from_lavis
from dynrefer.lavis.patch import patched_modules, restore_lavis_ops, use_dynrefer_ops

__all__ = ["register", "registered", "config_from_lavis", "config_path", "load_config", "LAVIS_NAME", "NAMES",
           "MODEL_TYPES", "DATASET_CONFIGS", "IGNORED_MODEL_KEYS", "lavis_classes", "Classes", "use_dynrefer_ops",
           "restore_lavis_ops", "patched_modules"]

LAVIS_NAME = "dynrefer_t5"
NAMES = {"model": LAVIS_NAME, "processor": "dynrefer", "builder": "dynrefer", "task": "dynrefer"}

Classes = namedtuple("Classes", ["model", "processor", "builder", "task"])

_MARK = "_dynrefer_lavis"
_registered: Dict[int, Classes] = {}   # id(registry) -> Classes


def config_path(rel: str = "") -> str:
    """Absolute path of the packaged configs folder, or of a file in it (e.g. ``"projects/train/vg1.2_5e.yaml"``)."""
    return os.path.join(CONFIG_ROOT, rel) if rel else CONFIG_ROOT


def lavis_classes(bases: Optional[Dict[str, type]] = None, registry: Any = None) -> Classes:
    """Build the four classes (model, processor, builder, task) on ``bases`` (a dict with any of ``model``,
    ``processor``, ``builder``, ``task``: LAVIS's base classes); ``registry`` resolves names inside the builder
    and the task."""
    from dynrefer.lavis.builder import builder_class
    from dynrefer.lavis.model import model_class
    from dynrefer.lavis.processor import caption_processor_class, processor_class
    from dynrefer.lavis.task import task_class

    bases = dict(bases or {})
    proc = processor_class(bases.get("processor"))
    caption = caption_processor_class(bases.get("processor"))
    classes = Classes(model=model_class(bases.get("model")), processor=proc,
                      builder=builder_class(bases.get("builder"), registry,
                                            {"dynrefer": proc, "blip_caption": caption}),
                      task=task_class(bases.get("task"), registry))
    for c in classes:
        setattr(c, _MARK, True)
    return classes


def _lavis() -> Tuple[Any, Dict[str, type]]:
    try:
        from lavis.common.registry import registry
        from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
        from lavis.models.base_model import BaseModel
        from lavis.processors.base_processor import BaseProcessor
        from lavis.tasks.base_task import BaseTask
    except ImportError as e:
        raise ImportError("dynrefer.lavis.register() needs salesforce-lavis (pip install dynrefer[lavis]); "
                          "or pass a registry object") from e
    return registry, {"model": BaseModel, "processor": BaseProcessor, "builder": BaseDatasetBuilder,
                      "task": BaseTask}


def _existing(registry: Any, kind: str, name: str) -> Optional[type]:
    """The class registered as ``name`` if it is ours; None if the name is free; KeyError if it is taken."""
    getter = getattr(registry, f"get_{kind}_class", None)
    have = getter(name) if getter is not None else None
    if have is not None and not getattr(have, _MARK, False):
        raise KeyError(f"the LAVIS registry already has a {kind} named {name!r} ({have.__module__}."
                       f"{have.__qualname__}); is the official DynRefer code imported too?")
    return have


def _register_one(registry: Any, kind: str, name: str, cls: type) -> type:
    return _existing(registry, kind, name) or getattr(registry, f"register_{kind}")(name)(cls)


def register(registry: Any = None, bases: Optional[Dict[str, type]] = None) -> Classes:
    """Register the model, processor, builders and task; returns :class:`Classes` (model, processor, builder,
    task). Idempotent: a second call with the same registry returns the classes registered first.

    ``registry=None`` uses LAVIS's (``lavis.common.registry.registry``) and LAVIS's base classes; another
    registry needs ``register_model``, ``register_processor``, ``register_builder`` and ``register_task``
    (decorator factories, as LAVIS's), and optionally its ``get_*_class`` look-ups and ``get_path``."""
    if registry is None:
        registry, lavis_bases = _lavis()
        bases = dict(lavis_bases, **(bases or {}))
    missing = [f"register_{k}" for k in NAMES if not hasattr(registry, f"register_{k}")]
    if missing:
        raise TypeError(f"registry must provide {', '.join(missing)}")
    if id(registry) in _registered:
        return _registered[id(registry)]
    for kind, name in [*NAMES.items(), *(("builder", ds) for ds in DATASET_CONFIGS)]:
        _existing(registry, kind, name)   # refuse before registering anything
    c = lavis_classes(bases, registry)
    out = Classes(model=_register_one(registry, "model", NAMES["model"], c.model),
                  processor=_register_one(registry, "processor", NAMES["processor"], c.processor),
                  builder=_register_one(registry, "builder", NAMES["builder"], c.builder),
                  task=_register_one(registry, "task", NAMES["task"], c.task))
    for ds, rel in DATASET_CONFIGS.items():   # LAVIS's Config finds a dataset's builder by the dataset's name
        sub = type(f"DynReferBuilder_{ds.replace('.', '_')}", (out.builder,), {"DATASET_CONFIG_DICT": {"default": rel}})
        setattr(sub, _MARK, True)
        _register_one(registry, "builder", ds, sub)
    _registered[id(registry)] = out
    return out


def registered(registry: Any = None) -> Optional[Classes]:
    """The classes registered into ``registry`` (LAVIS's by default), or None."""
    if registry is None:
        try:
            registry, _ = _lavis()
        except ImportError:
            return None
    return _registered.get(id(registry))


# ---- project configs ---------------------------------------------------------------------------------------

def _merge(base: Dict[str, Any], top: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (top or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A project config resolved as LAVIS's ``Config`` resolves it, as a plain dict with ``model``, ``datasets``,
    ``run`` (and ``preprocess`` from the model type's file):

    * ``model``: the file of ``model.model_type`` (:data:`MODEL_TYPES`), then the project's ``model`` keys;
    * ``datasets``: per dataset, its default file (:data:`DATASET_CONFIGS`, or the file of ``type`` under
      ``datasets/``), then the project's keys;
    * ``run``: as written.

    ``overrides``: ``{"model": {...}, "datasets": {...}, "run": {...}}`` merged last (e.g. data paths in tests).
    A relative ``path`` that is not found is looked up in the packaged configs (``"projects/train/vg1.2_5e.yaml"``).
    """
    if not os.path.isfile(path) and os.path.isfile(config_path(path)):
        path = config_path(path)
    raw = _merge(read_yaml(path), overrides or {})
    model = raw.get("model") or {}
    arch, mtype = model.get("arch", LAVIS_NAME), model.get("model_type")
    if arch != LAVIS_NAME:
        raise ValueError(f"{path}: model.arch is {arch!r}; this loader knows {LAVIS_NAME!r}")
    if mtype is None:
        raise ValueError(f"{path}: model.model_type is missing (one of {', '.join(MODEL_TYPES)})")
    if mtype not in MODEL_TYPES:
        raise ValueError(f"{path}: unknown model.model_type {mtype!r}; choose from {', '.join(MODEL_TYPES)}")
    base = read_yaml(config_path(MODEL_TYPES[mtype]))
    out = {"model": _merge(base.get("model") or {}, model), "datasets": {}, "run": dict(raw.get("run") or {})}
    if "preprocess" in base:
        out["preprocess"] = base["preprocess"]
    for name, ds in (raw.get("datasets") or {}).items():
        ds = ds or {}
        rel = DATASET_CONFIGS.get(name) if get(ds, "type", "default") == "default" else None
        if rel is None and get(ds, "type") is not None:
            rel = f"datasets/{ds['type']}.yaml"
        default: Dict[str, Any] = {}
        if rel is not None:
            default = (read_yaml(config_path(rel)).get("datasets") or {})
            default = next(iter(default.values())) if default else {}
        out["datasets"][name] = _merge(default, {k: v for k, v in ds.items() if k != "type"})
    return out


def _auto_register() -> None:
    """Register into LAVIS's registry when LAVIS is installed (importing it is what makes it importable here)."""
    import importlib.util
    import warnings

    try:
        present = "lavis" in sys.modules or importlib.util.find_spec("lavis") is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        return
    try:
        register()
    except Exception as e:  # a broken LAVIS install must not break `import dynrefer.lavis`
        warnings.warn(f"dynrefer.lavis: LAVIS is installed but registration failed: {e}", RuntimeWarning,
                      stacklevel=2)


_auto_register()
