"""A minimal stand-in for the ``lavis`` package (salesforce-lavis 1.0.2), installed into ``sys.modules`` by tests.

It reproduces the parts of LAVIS that DynRefer's integration touches, with LAVIS's names and behaviour:
``lavis.common.registry.registry`` (decorator registration that asserts the base class and refuses duplicate
names, ``get_*_class``, paths), ``BaseModel`` (``from_pretrained`` via ``default_config_path``, whose default joins
LAVIS's library root), ``BaseProcessor``, ``BaseDatasetBuilder``, ``BaseTask`` (``setup_task``, ``train_step`` →
``model(samples)["loss"]``, an ``evaluation`` loop), ``lavis.common.config.Config`` (model config = the model
type's default file + the project's model keys; dataset config = the builder's default file, found by the
dataset's name, + the project's keys), ``lavis.models.load_model`` / ``load_preprocess`` and a ``blip_caption``
processor. Config nodes are plain dicts here (OmegaConf is not installed in the test environment).
"""
import copy
import os
import sys
import types

import yaml

LIBRARY_ROOT = "/nonexistent/lavis"   # LAVIS's library root: default config paths are joined to it


def _merge(base, top):
    out = copy.deepcopy(base)
    for k, v in (top or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def build():
    """The fake package as ``{module name: module}``."""
    import torch.nn as nn

    mods = {}

    def mod(name):
        m = types.ModuleType(name)
        m.__path__ = []   # a package, so submodule imports resolve through sys.modules
        mods[name] = m
        return m

    for name in ("lavis", "lavis.common", "lavis.common.registry", "lavis.common.config", "lavis.models",
                 "lavis.models.base_model", "lavis.processors", "lavis.processors.base_processor",
                 "lavis.datasets", "lavis.datasets.builders", "lavis.datasets.builders.base_dataset_builder",
                 "lavis.tasks", "lavis.tasks.base_task"):
        mod(name)

    class BaseModel(nn.Module):
        def __init__(self):
            super().__init__()

        @property
        def device(self):
            return list(self.parameters())[0].device

        @classmethod
        def from_pretrained(cls, model_type):
            return cls.from_config(_load(cls.default_config_path(model_type))["model"])

        @classmethod
        def default_config_path(cls, model_type):
            assert model_type in cls.PRETRAINED_MODEL_CONFIG_DICT, f"Unknown model type {model_type}"
            return os.path.join(LIBRARY_ROOT, cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])

        def before_evaluation(self, **kwargs):
            pass

    class BaseProcessor:
        def __init__(self):
            self.transform = lambda x: x

        def __call__(self, item):
            return self.transform(item)

        @classmethod
        def from_config(cls, cfg=None):
            return cls()

    class BaseDatasetBuilder:
        train_dataset_cls, eval_dataset_cls = None, None

        def __init__(self, cfg=None):
            self.config = cfg
            self.data_type = cfg["data_type"]

    class BaseTask:
        def __init__(self, **kwargs):
            super().__init__()
            self.inst_id_key = "instance_id"

        @classmethod
        def setup_task(cls, **kwargs):
            return cls()

        def build_model(self, cfg):
            return registry.get_model_class(cfg.model_cfg["arch"]).from_config(cfg.model_cfg)

        def train_step(self, model, samples):
            return model(samples)["loss"]

        def valid_step(self, model, samples):
            raise NotImplementedError

        def before_evaluation(self, model, dataset, **kwargs):
            model.before_evaluation(dataset=dataset, task_type=type(self))

        def after_evaluation(self, **kwargs):
            pass

        def evaluation(self, model, data_loader, cuda_enabled=True):
            results = []
            for samples in data_loader:
                results.extend(self.valid_step(model=model, samples=samples))
            return results

    class Registry:
        def __init__(self):
            self.mapping = {"builder_name_mapping": {}, "task_name_mapping": {}, "processor_name_mapping": {},
                            "model_name_mapping": {}, "paths": {}}

        def _register(self, kind, base, name):
            def wrap(cls):
                assert issubclass(cls, base), f"All {kind}s must inherit {base.__name__} class"
                table = self.mapping[f"{kind}_name_mapping"]
                if name in table:
                    raise KeyError(f"Name '{name}' already registered for {table[name]}.")
                table[name] = cls
                return cls

            return wrap

        def register_model(self, name):
            return self._register("model", BaseModel, name)

        def register_processor(self, name):
            return self._register("processor", BaseProcessor, name)

        def register_builder(self, name):
            return self._register("builder", BaseDatasetBuilder, name)

        def register_task(self, name):
            return self._register("task", BaseTask, name)

        def get_model_class(self, name):
            return self.mapping["model_name_mapping"].get(name)

        def get_processor_class(self, name):
            return self.mapping["processor_name_mapping"].get(name)

        def get_builder_class(self, name):
            return self.mapping["builder_name_mapping"].get(name)

        def get_task_class(self, name):
            return self.mapping["task_name_mapping"].get(name)

        def register_path(self, name, path):
            self.mapping["paths"][name] = path

        def get_path(self, name):
            return self.mapping["paths"].get(name)

    registry = Registry()
    registry.register_path("library_root", LIBRARY_ROOT)

    @registry.register_processor("blip_caption")
    class BlipCaptionProcessor(BaseProcessor):
        def __call__(self, caption):
            return caption.lower().strip()

        @classmethod
        def from_config(cls, cfg=None):
            return cls()

    class Config:
        """LAVIS's Config: ``args.cfg_path`` and dotted ``args.options`` (here: a dict merged on top)."""

        def __init__(self, cfg_path, options=None):
            config = _load(cfg_path)
            model = config["model"]
            model_cls = registry.get_model_class(model["arch"])
            assert model_cls is not None, f"Model '{model['arch']}' has not been registered."
            model_cfg = _merge(_load(model_cls.default_config_path(model_type=model["model_type"])),
                               {"model": model})
            datasets = {}
            for name, ds in config["datasets"].items():
                builder_cls = registry.get_builder_class(name)
                path = builder_cls.default_config_path(type=(ds or {}).get("type", "default"))
                datasets = _merge(_merge(datasets, _load(path)), {"datasets": {name: ds}})
            self.config = _merge(_merge(_merge({"run": config["run"]}, model_cfg), datasets), options or {})

        run_cfg = property(lambda self: self.config["run"])
        model_cfg = property(lambda self: self.config["model"])
        datasets_cfg = property(lambda self: self.config["datasets"])

    def load_model(name, model_type, is_eval=False, device="cpu", checkpoint=None):
        model = registry.get_model_class(name).from_pretrained(model_type=model_type)
        return model.eval() if is_eval else model

    def load_preprocess(config):
        def proc(cfg):
            return registry.get_processor_class(cfg["name"]).from_config(cfg) if cfg is not None else BaseProcessor()

        vis, txt = config.get("vis_processor") or {}, config.get("text_processor") or {}
        return ({"train": proc(vis.get("train")), "eval": proc(vis.get("eval"))},
                {"train": proc(txt.get("train")), "eval": proc(txt.get("eval"))})

    mods["lavis.common.registry"].registry = registry
    mods["lavis.common.config"].Config = Config
    mods["lavis.models.base_model"].BaseModel = BaseModel
    mods["lavis.models"].BaseModel = BaseModel
    mods["lavis.models"].load_model = load_model
    mods["lavis.models"].load_preprocess = load_preprocess
    mods["lavis.processors.base_processor"].BaseProcessor = BaseProcessor
    mods["lavis.processors"].BaseProcessor = BaseProcessor
    mods["lavis.datasets.builders.base_dataset_builder"].BaseDatasetBuilder = BaseDatasetBuilder
    mods["lavis.tasks.base_task"].BaseTask = BaseTask
    for name, m in mods.items():   # parent.child attributes, as the import system sets them
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(mods[parent], child, m)
    return mods


def install(monkeypatch):
    """Put a fresh fake ``lavis`` into ``sys.modules`` and drop ``dynrefer.lavis`` so its next import sees it;
    the caller's monkeypatch restores everything afterwards. Returns the fake modules."""
    import dynrefer

    for name in [n for n in sys.modules if n == "lavis" or n.startswith("lavis.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n == "dynrefer.lavis" or n.startswith("dynrefer.lavis.")]:
        monkeypatch.delitem(sys.modules, name)
    if "lavis" in vars(dynrefer):   # not hasattr: dynrefer's module __getattr__ would import dynrefer.lavis now
        monkeypatch.delattr(dynrefer, "lavis")
    mods = build()
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    return mods
