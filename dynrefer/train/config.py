"""LAVIS-style training configuration: ``model:``, ``datasets:`` and ``run:`` sections.

A config file is YAML with three top-level sections, as LAVIS lays them out::

    model:              # free-form; handed to the model factory
      arch: dynrefer
    datasets:           # free-form; handed to the dataset factory
      vg_region: {...}
    run:                # the engine's settings, validated against RUN_SCHEMA
      init_lr: 1e-4
      max_epoch: 5

``load_config(path, overrides)`` reads the file, applies dotted-key overrides (``run.max_epoch=2``,
``model.arch=foo``; the right-hand side is parsed as YAML, so ``run.amp=false`` is a bool and
``run.valid_splits=[val,test]`` a list), fills the ``run`` defaults and validates every ``run`` key: unknown
keys, wrong types and out-of-range values raise ``ConfigError`` (a ``ValueError``) naming the key.
``Config.dump(path)`` writes the resolved config as YAML.

A file may start with ``base: [a.yaml, b.yaml]`` (the official DynRefer configs do): those files are merged in
order, then the file itself on top. ``run`` keys the official configs carry for other code (``task``,
``eval_dataset_name``, ``report_metric``, ...: ``PASSTHROUGH_RUN_KEYS``) are accepted and kept.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from typing import Any, Iterable, Optional, Tuple, Union

__all__ = ["Config", "ConfigError", "RUN_SCHEMA", "load_config", "parse_overrides", "apply_overrides", "safe_yaml",
           "MAX_YAML_BYTES", "MAX_YAML_VALUES", "MAX_YAML_DEPTH"]

#: Bounds on what a YAML text may become (aliases expanded): a config is a few hundred values.
MAX_YAML_BYTES = 4 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64

SECTIONS = ("model", "datasets", "run")


class ConfigError(ValueError):
    """A configuration key is missing, unknown, of the wrong type or out of range."""


def max_workers() -> int:
    """The most DataLoader workers a run may ask for: max(8, 4 x the CPUs this process may run on)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(8, 4 * cpus)


def _opt(kind: Any) -> Tuple[str, Any]:
    return ("optional", kind)


# key: (type, default, check or None, help). Types: int, float, bool, str, "list[str]", ("optional", t),
# ("choice", values...). Floats accept ints and numeric strings (PyYAML reads "1e-4" as a string).
RUN_SCHEMA = {
    # schedule and optimiser (the official DynRefer settings are the defaults)
    "lr_sched": (("choice", "linear_warmup_cosine_lr", "constant_lr"), "linear_warmup_cosine_lr", None,
                 "learning-rate schedule, set before every optimiser step"),
    "lr_decay": (("choice", "epoch", "step"), "epoch", None,
                 "epoch: LAVIS's schedule (warm-up within epoch 0, then the cosine value of each epoch held for the "
                 "epoch); step: warm-up, then a cosine over optimiser steps"),
    "init_lr": (float, 1e-4, lambda v: v > 0, "peak learning rate"),
    "min_lr": (float, 0.0, lambda v: v >= 0, "learning rate at the end of the cosine"),
    "warmup_lr": (_opt(float), None, lambda v: v >= 0,
                  "learning rate at step 0 of the linear warm-up (null: init_lr with lr_decay epoch, as LAVIS "
                  "without warmup_lr, i.e. no ramp; 0 with lr_decay step)"),
    "warmup_steps": (int, 0, lambda v: v >= 0, "optimiser steps of linear warm-up"),
    "weight_decay": (float, 0.05, lambda v: v >= 0, "AdamW weight decay (not on biases, norms, 1-D params)"),
    "beta1": (float, 0.9, lambda v: 0 <= v < 1, "AdamW beta1"),
    "beta2": (float, 0.999, lambda v: 0 <= v < 1, "AdamW beta2"),
    "eps": (float, 1e-8, lambda v: v > 0, "AdamW epsilon"),
    "accum_grad_iters": (int, 1, lambda v: v >= 1, "micro-batches accumulated per optimiser step"),
    "max_grad_norm": (_opt(float), None, lambda v: v > 0, "clip the global gradient norm (null: no clipping)"),
    "amp": ((("choice", False, True, "bf16", "fp16")), False, None,
            "mixed precision: false, bf16 (CPU/GPU autocast), fp16 (GPU, with GradScaler), "
            "true (fp16 on CUDA, bf16 on CPU)"),
    # length
    "max_epoch": (int, 1, lambda v: v >= 1, "epochs"),
    "stop_after_steps": (_opt(int), None, lambda v: v >= 0,
                         "end this invocation after this many optimiser steps in total (a checkpoint is written "
                         "first; the schedule keeps its full length) -- for time-sliced jobs"),
    "stop_signals": ("list[str]", ["SIGTERM", "SIGUSR1"], None,
                     "signals that make the run write latest.pt at the next optimiser step and stop (preemption); "
                     "[] leaves signal handling alone"),
    # data
    "batch_size_train": (int, 8, lambda v: v >= 1, "micro-batch size per process"),
    "batch_size_eval": (int, 8, lambda v: v >= 1, "evaluation batch size per process (for the evaluate hook)"),
    "num_workers": (int, 0, lambda v: 0 <= v <= max_workers(),
                    "DataLoader worker processes, at most max(8, 4 x this machine's CPUs)"),
    "shuffle": (bool, True, None, "shuffle the training set; the order is a function of (seed, epoch)"),
    "drop_last": (bool, True, None, "drop the last incomplete micro-batch of an epoch"),
    "seed_per_sample": (bool, True, None,
                        "seed python/numpy/torch before each sample from (seed, epoch, index), so data "
                        "augmentation does not depend on worker count or resumption"),
    "train_splits": ("list[str]", ["train"], None, "dataset splits trained on"),
    "valid_splits": ("list[str]", [], None, "splits evaluated after each epoch"),
    "test_splits": ("list[str]", [], None, "splits evaluated at the end"),
    "evaluate": (bool, False, None, "evaluate only (no training)"),
    # reproducibility, devices, processes
    "seed": (int, 42, lambda v: 0 <= v < 2**63, "seed for python, numpy and torch"),
    "device": (("choice", "auto", "cpu", "cuda"), "auto", None, "auto: cuda when available"),
    "distributed": (("choice", "auto", True, False), "auto", None,
                    "auto or true: on when launched by torchrun (WORLD_SIZE > 1), else one process (as LAVIS); "
                    "false: one process per launch"),
    "dist_backend": (("choice", "auto", "nccl", "gloo"), "auto", None, "auto: nccl on CUDA, gloo on CPU"),
    "dist_url": (str, "env://", None, "process-group init method"),
    "find_unused_parameters": (bool, False, None, "DistributedDataParallel find_unused_parameters"),
    # outputs
    "output_dir": (str, "output", None, "checkpoints, metrics.jsonl and config.yaml go here"),
    "resume_ckpt_path": (_opt(str), None, None, "checkpoint to resume from; 'auto' = output_dir/latest.pt if present"),
    "load_ckpt_path": (_opt(str), None, None,
                       "model weights to start from (fine-tuning; ignored when resuming from resume_ckpt_path)"),
    "ckpt_freq_steps": (int, 0, lambda v: v >= 0, "also write latest.pt every N optimiser steps (0: epoch ends only)"),
    "save_epoch_ckpts": (bool, True, None, "keep checkpoint_{epoch}.pt after each epoch"),
    "save_all_params": (bool, False, None, "checkpoint frozen parameters too (default: trainable only)"),
    "best_metric": (_opt(str), None, None,
                    "'split/key' (or 'key' for the first valid split) tracked for checkpoint_best.pt"),
    "best_metric_mode": (("choice", "max", "min"), "max", None, "whether larger or smaller is better"),
    "log_freq": (int, 50, lambda v: v >= 1, "optimiser steps per JSONL metrics record"),
    "progress_bar": (bool, True, None, "tqdm bar on rank 0 (when stderr is a terminal, or a widget in a notebook)"),
    "console": (bool, True, None, "rank 0 prints a kept line per epoch (loss, lr, throughput, ETA), the evaluations, "
                "and a line per logged interval when no bar is shown (nohup, SLURM)"),
    "tensorboard": (bool, True, None, "TensorBoard event files under output_dir/tensorboard (needs tensorboard)"),
    "plot": (bool, True, None, "output_dir/metrics.png, the loss and evaluation curves, at the end (needs "
             "matplotlib)"),
}


# run keys of the official DynRefer / LAVIS configs that the engine itself does not use: accepted and kept as given
# (the model, data and evaluation code may read them).
PASSTHROUGH_RUN_KEYS = frozenset({
    "task", "eval_dataset_name", "report_metric", "visualize", "world_size", "max_len", "min_len", "num_beams",
    "inference_method", "prompt", "length_penalty", "repetition_penalty", "use_dist_eval_sampler", "k_test",
    "lr_layer_decay", "job_name", "eval_benchmark", "caption_metrics", "eval_gt_file", "tag_thr",
})


def _type_name(kind: Any) -> str:
    if isinstance(kind, tuple) and kind[0] == "optional":
        return f"{_type_name(kind[1])} or null"
    if isinstance(kind, tuple) and kind[0] == "choice":
        return "one of " + ", ".join(repr(c) for c in kind[1:])
    return kind if isinstance(kind, str) else kind.__name__


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Return value converted to kind, or raise ConfigError naming key."""
    where = f"run.{key}"
    if isinstance(kind, tuple) and kind[0] == "optional":
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(key, kind[1], value)
    if isinstance(kind, tuple) and kind[0] == "choice":
        for c in kind[1:]:
            # bool and str choices compare by type too (1 is not True here)
            if type(c) is type(value) and c == value:
                return value
        if isinstance(value, str):
            low = value.lower()
            for c in kind[1:]:
                if isinstance(c, bool) and low == str(c).lower():
                    return c
                if isinstance(c, str) and c == low:
                    return c
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected a bool (true/false), got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        else:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return out
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if kind == "list[str]":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    raise AssertionError(kind)


def validate_run(run: dict) -> dict:
    """Fill defaults and validate the ``run`` section; returns a new dict."""
    if not isinstance(run, dict):
        raise ConfigError(f"run: expected a mapping, got {type(run).__name__}")
    out = {}
    for key in run:
        if key in PASSTHROUGH_RUN_KEYS:
            out[key] = copy.deepcopy(run[key])
        elif key not in RUN_SCHEMA:
            near = difflib.get_close_matches(str(key), list(RUN_SCHEMA) + sorted(PASSTHROUGH_RUN_KEYS), n=1)
            hint = f" (did you mean run.{near[0]}?)" if near else ""
            raise ConfigError(f"run.{key}: unknown key{hint}")
    for key, (kind, default, check, _help) in RUN_SCHEMA.items():
        value = _coerce(key, kind, run[key]) if key in run else copy.deepcopy(default)
        if check is not None and value is not None and not check(value):
            raise ConfigError(f"run.{key}: value {value!r} is out of range ({_help})")
        out[key] = value
    import signal as _signal

    for name in out["stop_signals"]:
        if not name.startswith("SIG") or not isinstance(getattr(_signal, name, None), _signal.Signals):
            raise ConfigError(f"run.stop_signals: {name!r} is not a signal name on this platform")
    if out["min_lr"] > out["init_lr"]:
        raise ConfigError(f"run.min_lr: {out['min_lr']} is larger than run.init_lr ({out['init_lr']})")
    if out["best_metric"] is not None and not out["valid_splits"]:
        raise ConfigError("run.best_metric: set, but run.valid_splits is empty (nothing is evaluated per epoch)")
    return out


def _plain(value: Any, where: str) -> Any:
    """A copy of value made of dict/list/str/int/float/bool/None (tuples become lists, paths strings); anything
    else is an error
    (the config is dumped as YAML and stored in checkpoints)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)):
                raise ConfigError(f"{where}: keys must be strings or numbers, got {type(k).__name__}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where}: values must be YAML scalars, lists or mappings, got {type(value).__name__}")


class Config:
    """A resolved configuration: ``model``, ``datasets`` and ``run`` dicts (``run`` validated, defaults filled).

    ``model_cfg``, ``datasets_cfg`` and ``run_cfg`` are aliases, as LAVIS names them."""

    def __init__(self, model: Optional[dict] = None, datasets: Optional[dict] = None,
                 run: Optional[dict] = None) -> None:
        for name, sec in (("model", model), ("datasets", datasets)):
            if sec is not None and not isinstance(sec, dict):
                raise ConfigError(f"{name}: expected a mapping, got {type(sec).__name__}")
        self.model = _plain(model, "model") if model else {}
        self.datasets = _plain(datasets, "datasets") if datasets else {}
        self.run = validate_run(_plain(run, "run") if isinstance(run, dict) else (run or {}))
        #: the run keys the file (or caller) set; the others hold the engine's defaults, which a preset's own
        #: training defaults may replace (dynrefer.app.schemes) — explicit keys always win
        self.run_explicit = frozenset(run) if isinstance(run, dict) else frozenset()

    model_cfg = property(lambda self: self.model)
    datasets_cfg = property(lambda self: self.datasets)
    run_cfg = property(lambda self: self.run)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a mapping with sections {SECTIONS}, got {type(d).__name__}")
        for key in d:
            if key not in SECTIONS:
                raise ConfigError(f"{key}: unknown top-level section (expected {', '.join(SECTIONS)})")
        return cls(d.get("model"), d.get("datasets"), d.get("run"))

    def to_dict(self) -> dict:
        return {"model": copy.deepcopy(self.model), "datasets": copy.deepcopy(self.datasets),
                "run": copy.deepcopy(self.run)}

    def dump(self, path: str) -> None:
        """Write the resolved config as YAML (atomically)."""
        import yaml

        from dynrefer.train.checkpoint import atomic_write_bytes

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        atomic_write_bytes(path, text.encode())

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"


def safe_yaml(text: Union[str, bytes], source: str = "YAML") -> Any:
    """Parse YAML ``text`` (str or bytes) with the safe loader, refusing what would blow up: more than
    ``MAX_YAML_BYTES`` of text, more than ``MAX_YAML_VALUES`` values once aliases are expanded (an alias bomb: a few
    lines that expand to millions of values), nesting deeper than ``MAX_YAML_DEPTH`` (a self-referencing alias
    is infinitely deep). Errors are :class:`ConfigError` naming ``source``."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes of YAML, more than the {MAX_YAML_BYTES} a config may have")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from None
        if node is None:
            return None
        # count values as a consumer walking the result would meet them: every alias expanded
        count, stack = 0, [(node, 1)]
        while stack:
            n, depth = stack.pop()
            count += 1
            if count > MAX_YAML_VALUES:
                raise ConfigError(f"{source}: the YAML expands to more than {MAX_YAML_VALUES} values (aliases "
                                  "that repeat aliases?); a config this large is refused")
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{source}: YAML nested deeper than {MAX_YAML_DEPTH} levels (a self-referencing "
                                  "alias?)")
            if isinstance(n, yaml.SequenceNode):
                stack.extend((c, depth + 1) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    stack.append((k, depth + 1))
                    stack.append((v, depth + 1))
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def parse_overrides(items: Optional[Iterable[str]]) -> list:
    """Parse ``["run.max_epoch=2", ...]`` into ``[(["run", "max_epoch"], 2), ...]`` (values parsed as YAML)."""
    out = []
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r}: expected 'section.key=value'")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected a dotted key such as run.max_epoch")
        if parts[0] not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {parts[0]!r} (expected {', '.join(SECTIONS)})")
        try:
            value = safe_yaml(raw, f"override {key}") if raw.strip() else None
        except ConfigError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw[:200]!r}: {e}") from None
        out.append((parts, value))
    return out


def apply_overrides(d: dict, overrides: Optional[Iterable[str]]) -> dict:
    """Return a copy of the raw config dict with dotted-key overrides applied."""
    d = copy.deepcopy(d)
    for parts, value in parse_overrides(overrides):
        node = d
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return d


def _merge(base: dict, top: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else in ``top`` replaces ``base``."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: str, stack: Tuple[str, ...] = ()) -> dict:
    """Read a config file, resolving its ``base:`` list (files merged in order, this file on top). Base paths are
    looked up relative to the working directory first (the official configs' convention), then to this file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    real = os.path.realpath(path)
    if real in stack:
        raise ConfigError(f"{path}: 'base' includes form a cycle")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    raw = safe_yaml(text, path)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {SECTIONS}, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a list of config file paths")
    merged: dict = {}
    for b in bases:
        cand = b if os.path.isabs(b) or os.path.isfile(b) else os.path.join(os.path.dirname(path), b)
        if not os.path.isfile(cand):
            raise ConfigError(f"{path}: base config {b!r} not found (relative to the working directory or to "
                              f"{os.path.dirname(path) or '.'})")
        merged = _merge(merged, _read_yaml(cand, stack + (real,)))
    return _merge(merged, raw)


def load_config(path_or_dict: Union[str, "os.PathLike[str]", dict, Config],
                overrides: Optional[Iterable[str]] = None) -> Config:
    """Load a YAML file (or take a dict), apply dotted-key overrides, fill defaults and validate."""
    if isinstance(path_or_dict, Config):
        raw = path_or_dict.to_dict()
    elif isinstance(path_or_dict, dict):
        raw = path_or_dict
    elif isinstance(path_or_dict, (str, os.PathLike)):
        raw = _read_yaml(os.fspath(path_or_dict))
    else:
        raise TypeError(f"config: expected a path, a dict or a Config, got {type(path_or_dict).__name__}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping with sections {SECTIONS}, got {type(raw).__name__}")
    return Config.from_dict(apply_overrides(raw, overrides))
