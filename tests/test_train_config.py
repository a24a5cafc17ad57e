"""dynrefer.train.config: YAML loading, defaults, dotted overrides, validation errors, resolved dump."""
import os

import pytest
import yaml

from dynrefer.train.config import RUN_SCHEMA, Config, ConfigError, load_config

LAVIS_STYLE = """
model:
  arch: dynrefer
  model_type: vit_g
  load_finetuned: False
datasets:
  vg_region:
    vis_processor:
      train: {name: blip_image_train, image_size: 224}
    build_info:
      annotations: {train: {storage: vg/train.json}}
run:
  task: dynrefer
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-4
  min_lr: 0
  warmup_lr: 1e-8
  warmup_steps: 1000
  weight_decay: 0.05
  max_epoch: 5
  batch_size_train: 64
  num_workers: 4
  accum_grad_iters: 1
  seed: 42
  output_dir: "output/dynrefer/vg"
  amp: True
  resume_ckpt_path: null
  evaluate: False
  train_splits: ["train"]
  valid_splits: ["val"]
"""


def _write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_lavis_layout_loads_with_numeric_strings_and_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, LAVIS_STYLE))
    run = cfg.run
    # PyYAML reads 1e-4 and 1e-8 as strings; the schema makes them floats
    assert run["init_lr"] == 1e-4 and isinstance(run["init_lr"], float)
    assert run["warmup_lr"] == 1e-8 and run["min_lr"] == 0.0
    assert run["amp"] is True and run["max_epoch"] == 5 and run["batch_size_train"] == 64
    # defaults filled in: the official optimiser settings
    assert run["beta2"] == 0.999 and run["beta1"] == 0.9 and run["max_grad_norm"] is None
    assert run["test_splits"] == [] and run["best_metric"] is None and run["ckpt_freq_steps"] == 0
    assert set(run) == set(RUN_SCHEMA) | {"task"} and run["task"] == "dynrefer"  # kept for other code
    # free-form sections passed through untouched
    assert cfg.model == {"arch": "dynrefer", "model_type": "vit_g", "load_finetuned": False}
    assert cfg.datasets["vg_region"]["vis_processor"]["train"]["image_size"] == 224
    assert cfg.model_cfg is cfg.model and cfg.run_cfg is cfg.run


def test_unknown_run_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.tsk: unknown key \(did you mean run\.task\?\)"):
        load_config({"run": {"tsk": "dynrefer"}})
    with pytest.raises(ConfigError, match=r"run\.max_epochs: unknown key \(did you mean run\.max_epoch\?\)"):
        load_config({"run": {"max_epochs": 3}})


def test_dotted_overrides(tmp_path):
    text = LAVIS_STYLE
    cfg = load_config(_write(tmp_path, text), [
        "run.max_epoch=2", "run.amp=bf16", "run.init_lr=3e-5", "run.valid_splits=[val, test]",
        "model.arch=other", "datasets.vg_region.build_info.annotations.train.storage=x.json",
        "model.new.nested.key=7", "run.max_grad_norm=1.0", "run.resume_ckpt_path=auto"])
    assert cfg.run["max_epoch"] == 2 and cfg.run["amp"] == "bf16" and cfg.run["init_lr"] == 3e-5
    assert cfg.run["valid_splits"] == ["val", "test"] and cfg.run["max_grad_norm"] == 1.0
    assert cfg.run["resume_ckpt_path"] == "auto"
    assert cfg.model["arch"] == "other" and cfg.model["new"] == {"nested": {"key": 7}}
    assert cfg.datasets["vg_region"]["build_info"]["annotations"]["train"]["storage"] == "x.json"
    # the file on disk is not modified and later overrides win
    cfg2 = load_config(_write(tmp_path, text), ["run.max_epoch=2", "run.max_epoch=9"])
    assert cfg2.run["max_epoch"] == 9


@pytest.mark.parametrize("override, message", [
    ("run.max_epoch=0", r"run\.max_epoch: value 0 is out of range"),
    ("run.max_epoch=two", r"run\.max_epoch: expected an integer, got 'two'"),
    ("run.max_epoch=2.5", r"run\.max_epoch: expected an integer"),
    ("run.init_lr=fast", r"run\.init_lr: expected a number, got 'fast'"),
    ("run.init_lr=.nan", r"run\.init_lr: expected a finite number"),
    ("run.init_lr=-1", r"run\.init_lr: value -1.0 is out of range"),
    ("run.amp=fp8", r"run\.amp: expected one of False, True, 'bf16', 'fp16', got 'fp8'"),
    ("run.shuffle=maybe", r"run\.shuffle: expected a bool"),
    ("run.train_splits=[1, 2]", r"run\.train_splits: expected a list of strings"),
    ("run.beta2=1.0", r"run\.beta2: value 1.0 is out of range"),
    ("run.accum_grad_iters=0", r"run\.accum_grad_iters: value 0 is out of range"),
    ("run.min_lr=1", r"run\.min_lr: 1.0 is larger than run\.init_lr"),
    ("run.best_metric=acc", r"run\.best_metric: set, but run\.valid_splits is empty"),
    ("run.device=tpu", r"run\.device: expected one of 'auto', 'cpu', 'cuda'"),
    ("run.max_grad_norm=0", r"run\.max_grad_norm: value 0.0 is out of range"),
    ("train.max_epoch=1", r"unknown section 'train'"),
    ("run.max_epoch", r"expected 'section.key=value'"),
    ("run=3", r"expected a dotted key"),
    ("model.arch.sub=1", None),  # model.arch is a string: cannot descend
])
def test_bad_values_name_the_key(override, message):
    base = {"model": {"arch": "x"}, "run": {}}
    with pytest.raises(ConfigError, match=message or r"model\.arch is not a mapping"):
        load_config(base, [override])


def test_config_error_is_value_error_and_bad_sections():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match=r"runs: unknown top-level section"):
        load_config({"runs": {}})
    with pytest.raises(ConfigError, match=r"run: expected a mapping"):
        load_config({"run": [1, 2]})
    with pytest.raises(ConfigError, match=r"model: expected a mapping"):
        load_config({"model": "x"})
    with pytest.raises(TypeError, match="config: expected a path"):
        load_config(3)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config("/nonexistent/cfg.yaml")


def test_invalid_yaml_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "run: [unclosed"))
    cfg = load_config(_write(tmp_path, ""))
    assert cfg.run["max_epoch"] == 1 and cfg.model == {}


def test_dump_round_trips(tmp_path):
    cfg = load_config({"model": {"arch": "x", "layers": [1, 2]}, "run": {"init_lr": "2e-4", "amp": "bf16"}})
    path = str(tmp_path / "out" / "config.yaml")
    cfg.dump(path)
    raw = yaml.safe_load(open(path))
    assert raw["run"]["init_lr"] == 2e-4 and raw["run"]["amp"] == "bf16" and raw["model"]["layers"] == [1, 2]
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".tmp-")]
    # a Config passes through load_config with new overrides
    assert load_config(cfg, ["run.max_epoch=4"]).run["max_epoch"] == 4
    assert isinstance(Config.from_dict({}), Config)


def test_non_yaml_values_are_rejected_and_tuples_become_lists():
    import pathlib

    cfg = load_config({"model": {"sizes": (1, 2), "nested": [{"a": (3,)}]},
                       "run": {"output_dir": pathlib.Path("/tmp/x")}})
    assert cfg.model == {"sizes": [1, 2], "nested": [{"a": [3]}]} and cfg.run["output_dir"] == "/tmp/x"
    with pytest.raises(ConfigError, match=r"model\.nested\[0\]\.fn: values must be YAML scalars"):
        load_config({"model": {"nested": [{"fn": print}]}})
    with pytest.raises(ConfigError, match=r"run\.output_dir: values must be YAML scalars"):
        load_config({"run": {"output_dir": object()}})


def test_official_layout_with_base_includes_and_passthrough_keys(tmp_path, monkeypatch):
    """The official DynRefer configs: a file lists `base` files (paths relative to the repository root), the
    run section carries keys for other code (task, eval_dataset_name, report_metric, ...)."""
    (tmp_path / "configs" / "base" / "runs").mkdir(parents=True)
    (tmp_path / "configs" / "base" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "train").mkdir(parents=True)
    (tmp_path / "configs" / "base" / "runs" / "train.yaml").write_text(
        "run:\n  task: dynrefer\n  init_lr: 1e-4\n  max_epoch: 5\n  eval_dataset_name: vg1.0\n"
        "  report_metric: True\n  world_size: 1\n  distributed: True\n  load_ckpt_path: null\n"
        "  valid_splits: [val]\n")
    (tmp_path / "configs" / "base" / "models" / "m.yaml").write_text(
        "model:\n  arch: dynrefer\n  vit: {precision: fp16, depth: 39}\n")
    (tmp_path / "configs" / "train" / "vg.yaml").write_text(
        'base: ["configs/base/runs/train.yaml",\n       "configs/base/models/m.yaml",\n]\n'
        "model:\n  vit: {depth: 2}\nrun:\n  max_epoch: 3\n  eval_dataset_name: vg1.2\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/train/vg.yaml", ["run.max_epoch=1"])
    assert cfg.model == {"arch": "dynrefer", "vit": {"precision": "fp16", "depth": 2}}  # deep merge, file on top
    assert cfg.run["max_epoch"] == 1 and cfg.run["init_lr"] == 1e-4 and cfg.run["task"] == "dynrefer"
    assert cfg.run["eval_dataset_name"] == "vg1.2" and cfg.run["report_metric"] is True
    assert cfg.run["distributed"] is True and cfg.run["valid_splits"] == ["val"]
    # base paths relative to the including file also work
    (tmp_path / "configs" / "train" / "rel.yaml").write_text("base: ../base/models/m.yaml\n")
    assert load_config("configs/train/rel.yaml").model["vit"]["depth"] == 39
    (tmp_path / "configs" / "train" / "bad.yaml").write_text("base: [nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=r"base config 'nowhere.yaml' not found"):
        load_config("configs/train/bad.yaml")
    (tmp_path / "configs" / "train" / "loop.yaml").write_text("base: [configs/train/loop.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config("configs/train/loop.yaml")
