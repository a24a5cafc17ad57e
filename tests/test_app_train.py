"""`dynrefer train` means what its config says: explicit keys win, the preset supplies defaults, every run key acts
(validation splits are evaluated and logged), the saved config.yaml reproduces the run, and every YAML the package
ships loads."""
import glob
import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
yaml = pytest.importorskip("yaml")

from dynrefer.cli import main  # noqa: E402

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dynrefer")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dynrefer.data.synthetic import generate

    d = tmp_path_factory.mktemp("train_cfg")
    generate(str(d / "data"), seed=0, splits={"train": 6, "val": 2})
    return d


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _losses(path):
    return [(r["type"], r["step"], r.get("loss"), r.get("CIDEr"), r.get("attr_mAP")) for r in _records(path)]


def test_preset_defaults_fill_what_the_config_leaves_out(data, capsys):
    cfg = data / "minimal.yaml"
    cfg.write_text(f"model: {{preset: tiny}}\ndatasets: {{root: {data / 'data'}}}\n"
                   f"run: {{output_dir: {data / 'a'}, max_epoch: 1}}\n")
    assert main(["train", str(cfg)]) == 0
    saved = yaml.safe_load((data / "a" / "config.yaml").read_text())
    from dynrefer.app.schemes import PRESET_RUN_DEFAULTS

    tiny = PRESET_RUN_DEFAULTS["tiny"]
    assert saved["run"]["init_lr"] == tiny["init_lr"] and saved["run"]["warmup_steps"] == tiny["warmup_steps"]
    assert saved["run"]["max_grad_norm"] == tiny["max_grad_norm"] and saved["run"]["seed"] == tiny["seed"]
    assert saved["run"]["max_epoch"] == 1                                  # the config's own key wins
    assert saved["model"] == {"preset": "tiny"} and saved["datasets"] == {"root": str(data / "data")}


def test_explicit_keys_win_and_validation_splits_are_logged(data, capsys):
    cfg = data / "explicit.yaml"
    cfg.write_text(f"model: {{preset: tiny}}\ndatasets: {{root: {data / 'data'}}}\n"
                   f"run: {{output_dir: {data / 'b'}, max_epoch: 2, init_lr: 0.001, seed: 7, warmup_steps: 0,\n"
                   f"      valid_splits: [val]}}\n")
    assert main(["train", str(cfg)]) == 0
    saved = yaml.safe_load((data / "b" / "config.yaml").read_text())
    assert saved["run"]["init_lr"] == 0.001 and saved["run"]["seed"] == 7 and saved["run"]["warmup_steps"] == 0
    evals = [r for r in _records(data / "b" / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [0, 1] and all(r["split"] == "val" for r in evals)
    assert all({"CIDEr", "attr_mAP", "acc"} <= set(r) for r in evals)
    out = capsys.readouterr().out
    assert out.count("eval val (epoch") == 2


def test_the_saved_config_reproduces_the_run(data, capsys):
    cfg = data / "repro.yaml"
    cfg.write_text(f"model: {{preset: tiny, views: {{prior: stochastic}}}}\ndatasets: {{root: {data / 'data'}}}\n"
                   f"run: {{output_dir: {data / 'c1'}, max_epoch: 2, valid_splits: [val]}}\n")
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(data / "c1" / "config.yaml"), f"run.output_dir={data / 'c2'}"]) == 0
    assert _losses(data / "c1" / "metrics.jsonl") == _losses(data / "c2" / "metrics.jsonl")


def test_a_validation_split_without_files_fails_before_training(data, capsys):
    cfg = data / "nosplit.yaml"
    cfg.write_text(f"model: {{preset: tiny}}\ndatasets: {{root: {data / 'data'}}}\n"
                   f"run: {{output_dir: {data / 'd'}, valid_splits: [test]}}\n")
    assert main(["train", str(cfg)]) == 2
    assert "test_caption.json" in capsys.readouterr().err
    assert not (data / "d" / "metrics.jsonl").exists()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(PKG, "lavis", "configs", "projects", "*", "*.yaml"))))
def test_every_shipped_project_config_loads_into_the_engine(path):
    """LAVIS resolution of the file, then the engine's validation of its run section (no unknown key)."""
    import dynrefer.lavis as L
    from dynrefer.train import load_config

    resolved = L.load_config(path)
    cfg = load_config({k: resolved[k] for k in ("model", "datasets", "run")})
    assert cfg.run["max_epoch"] >= 1


@pytest.mark.parametrize("path", sorted(set(glob.glob(os.path.join(PKG, "**", "*.yaml"), recursive=True))))
def test_every_shipped_yaml_parses_within_the_bounds(path):
    from dynrefer.train.config import safe_yaml

    with open(path, encoding="utf-8") as f:
        doc = safe_yaml(f.read(), path)
    assert isinstance(doc, dict) and doc


def test_the_shipped_referring_config_loads():
    from dynrefer.train import load_config

    cfg = load_config(os.path.join(PKG, "configs", "referring_vicuna_lora.yaml"))
    assert "conversations" in cfg.datasets


def test_feedback_files_and_modes(data, capsys):
    """Not a terminal (as under nohup): a line per logged interval and per evaluation, flushed as training goes;
    TensorBoard event files, a metrics.png, and files with the user's umask (not 0600)."""
    import stat

    old = os.umask(0o022)
    try:
        cfg = data / "feedback.yaml"
        cfg.write_text(f"model: {{preset: tiny}}\ndatasets: {{root: {data / 'data'}}}\n"
                       f"run: {{output_dir: {data / 'f'}, max_epoch: 2, log_freq: 1, valid_splits: [val]}}\n")
        assert main(["train", str(cfg)]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("epoch ") and "| step " in line]
    assert len(steps) >= 2 and all("loss" in line and "ETA" in line and "samples/s" in line for line in steps)
    assert sum(line.startswith("eval val (epoch") for line in out) == 2
    run = data / "f"
    assert glob.glob(str(run / "tensorboard" / "events.out.tfevents.*"))
    png = (run / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("latest.pt", "model.pt", "config.yaml", "metrics.png"):
        assert stat.S_IMODE(os.stat(run / name).st_mode) == 0o644, name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(glob.glob(str(run / "tensorboard"))[0])
    ea.Reload()
    assert {"train/loss", "train/lr", "val/CIDEr", "val/attr_mAP"} <= set(ea.Tags()["scalars"])


def test_eval_out_writes_metrics_and_every_region(data, capsys):
    bundle = data / "b" / "model.pt"
    if not bundle.exists():
        pytest.skip("needs the bundle of test_explicit_keys_win_and_validation_splits_are_logged")
    cfg = data / "explicit.yaml"
    out = data / "eval.json"
    assert main(["eval", str(cfg), "--checkpoint", str(bundle), "--prior", "none", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"CIDEr", "attr_mAP", "acc"} and doc["settings"]["prior"] == "none"
    from dynrefer.data import load_annotations

    n = len(load_annotations(str(data / "data" / "val_caption.json")))
    assert len(doc["regions"]) == n
    r = doc["regions"][0]
    assert {"id", "box", "ground_truth", "caption", "category", "attributes", "view_coeffs"} <= set(r)


def test_model_category_weight_trains_on_the_category_file(data, capsys):
    """``model.category_weight`` turns the category loss on: the regions of train_caption.json get the categories
    of train_category.json and every logged training record has a positive ``loss_cat``."""
    cfg = data / "category.yaml"
    cfg.write_text(f"model: {{preset: tiny, category_weight: 0.5}}\ndatasets: {{root: {data / 'data'}}}\n"
                   f"run: {{output_dir: {data / 'cat'}, max_epoch: 1, log_freq: 1}}\n")
    assert main(["train", str(cfg)]) == 0
    train = [r for r in _records(data / "cat" / "metrics.jsonl") if r["type"] == "train"]
    assert train and all(r["loss_cat"] > 0 for r in train)
