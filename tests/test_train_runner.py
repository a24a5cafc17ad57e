"""dynrefer.train runner: evaluate hook, best checkpoint, evaluate-only, logging, bad model/dataset contracts."""
import io
import os
import sys

import pytest
import torch
import yaml
from torch.utils.data import Dataset

import _train_toy as T
from dynrefer.train import load_config, run_training
from dynrefer.train.metrics import progress_bar, read_jsonl


def test_evaluate_hook_best_checkpoint_and_test_split(tmp_path):
    calls = []
    scores = iter([0.3, 0.9, 0.5])  # epoch 1 is the best

    def evaluate(model, split):
        calls.append((split, model.training, torch.is_grad_enabled()))
        if split == "val":
            return {"acc": next(scores), "n": torch.tensor(16)}
        return {"acc": float(model.fc2.weight.sum())}  # identifies the weights used for the test split

    cfg = load_config(T.config(tmp_path / "r", max_epoch=3, valid_splits=["val"], test_splits=["val_test"],
                               best_metric="val/acc"))
    s = run_training(cfg, T.build_model, T.build_datasets, evaluate)
    assert calls == [("val", False, False)] * 3 + [("val_test", False, False)]
    assert s["best"] == {"metric": "val/acc", "value": 0.9, "epoch": 1}
    assert s["eval"]["val@0"]["acc"] == 0.3 and s["eval"]["val@1"]["n"] == 16
    best = torch.load(tmp_path / "r" / "checkpoint_best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best"]["value"] == 0.9  # written after epoch 1 (resumes at epoch 2)
    assert s["eval"]["val_test"]["acc"] == pytest.approx(float(best["model"]["fc2.weight"].sum()))
    assert s["test_checkpoint"].endswith("checkpoint_best.pt")
    recs = read_jsonl(str(tmp_path / "r" / "metrics.jsonl"))
    evals = [r for r in recs if r["type"] == "eval"]
    assert [(r["split"], r["epoch"]) for r in evals] == [("val", 0), ("val", 1), ("val", 2), ("val_test", "test")]
    dumped = yaml.safe_load(open(tmp_path / "r" / "config.yaml"))
    assert dumped["run"]["best_metric"] == "val/acc" and dumped["run"]["beta2"] == 0.999

    # minimising a metric, named without its split
    cfg = load_config(T.config(tmp_path / "m", max_epoch=3, valid_splits=["val"], best_metric="acc",
                               best_metric_mode="min"))
    scores = iter([0.3, 0.9, 0.1])
    s = run_training(cfg, T.build_model, T.build_datasets, evaluate)
    assert s["best"]["value"] == 0.1 and s["best"]["epoch"] == 2


def test_best_metric_missing_is_reported(tmp_path):
    cfg = load_config(T.config(tmp_path / "r", max_epoch=1, valid_splits=["val"], best_metric="val/cider"))
    with pytest.raises(KeyError, match=r"run\.best_metric: 'val/cider' is not among the evaluated metrics"):
        run_training(cfg, T.build_model, T.build_datasets, lambda m, s: {"acc": 1.0})


def test_training_learns(tmp_path):
    raw = T.config(tmp_path / "l", max_epoch=4, valid_splits=["val"], batch_size_train=6)
    raw["datasets"]["toy"]["n"] = 36
    s = run_training(load_config(raw), T.build_model, T.build_datasets, T.accuracy)
    recs = [r for r in read_jsonl(str(tmp_path / "l" / "metrics.jsonl")) if r["type"] == "train"]
    first, last = [r["loss"] for r in recs[:4]], [r["loss"] for r in recs[-4:]]
    assert sum(last) < 0.7 * sum(first)
    assert s["eval"]["val@3"]["neg_loss"] > s["eval"]["val@0"]["neg_loss"] + 0.2
    assert s["eval"]["val@3"]["acc"] >= 0.75


def test_evaluate_only_loads_weights(tmp_path):
    run_training(load_config(T.config(tmp_path / "t", max_epoch=1)), T.build_model, T.build_datasets)
    saved = torch.load(tmp_path / "t" / "latest.pt", weights_only=True)["model"]
    seen = {}

    def evaluate(model, split):
        seen[split] = model.fc1.weight.detach().clone()
        return {"ok": 1}

    cfg = load_config(T.config(tmp_path / "e", evaluate=True, valid_splits=["val"], test_splits=["test"],
                               resume_ckpt_path=str(tmp_path / "t" / "latest.pt")))
    s = run_training(cfg, T.build_model, T.build_datasets, evaluate)
    assert set(seen) == {"val", "test"} and torch.equal(seen["test"], saved["fc1.weight"])
    assert s["eval"] == {"val": {"ok": 1}, "test": {"ok": 1}}
    assert not os.path.exists(tmp_path / "e" / "latest.pt")


def test_log_frequency_averages_the_interval(tmp_path):
    run_training(load_config(T.config(tmp_path / "a", max_epoch=1, log_freq=1)), T.build_model, T.build_datasets)
    run_training(load_config(T.config(tmp_path / "b", max_epoch=1, log_freq=4)), T.build_model, T.build_datasets)
    a = [r for r in read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))]
    b = [r for r in read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))]
    assert [r["step"] for r in b] == [4, 6]  # every 4 steps and at the end of the epoch
    assert b[0]["loss"] == pytest.approx(sum(r["loss"] for r in a[:4]) / 4, rel=1e-12)
    assert b[1]["loss"] == pytest.approx(sum(r["loss"] for r in a[4:6]) / 2, rel=1e-12)
    assert b[1]["lr"] == a[5]["lr"]


class _Plain(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((2,), float(i))


@pytest.mark.parametrize("forward_out, message", [
    (lambda x: x.sum(), r"model\.forward: expected a dict with a 'loss' entry, got Tensor"),
    (lambda x: {"total": x.sum()}, r"got dict with keys \['total'\]"),
    (lambda x: {"loss": x.sum().detach()}, r"'loss' must be a scalar tensor that requires grad"),
    (lambda x: {"loss": x.sum(1)}, r"'loss' must be a scalar tensor"),
])
def test_bad_model_outputs(tmp_path, forward_out, message):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return forward_out(x * self.w)

    cfg = load_config(T.config(tmp_path / "x", max_epoch=1))
    with pytest.raises(TypeError, match=message):
        run_training(cfg, lambda c: M(), lambda c: {"train": _Plain()})


def test_bad_factories_and_splits(tmp_path):
    cfg = load_config(T.config(tmp_path / "x", max_epoch=1))
    with pytest.raises(TypeError, match="build_model: expected a torch.nn.Module, got str"):
        run_training(cfg, lambda c: "model", T.build_datasets)
    with pytest.raises(TypeError, match="build_datasets: expected a dict"):
        run_training(cfg, T.build_model, lambda c: [1])
    with pytest.raises(TypeError, match="build_model: expected a callable"):
        run_training(cfg, None, T.build_datasets)
    with pytest.raises(TypeError, match=r"evaluate: must accept \(model, split\)"):
        run_training(cfg, T.build_model, T.build_datasets, lambda m: {})
    with pytest.raises(ValueError, match=r"run\.train_splits: split\(s\) \['missing'\] not among"):
        run_training(load_config(T.config(tmp_path / "x", train_splits=["missing"])), T.build_model,
                     T.build_datasets)
    with pytest.raises(ValueError, match=r"run\.batch_size_train: 64 x 1 process\(es\) is larger"):
        run_training(load_config(T.config(tmp_path / "x", batch_size_train=64)), T.build_model, T.build_datasets)
    with pytest.raises(TypeError, match="evaluate: expected a dict of metrics"):
        run_training(load_config(T.config(tmp_path / "x", max_epoch=1, valid_splits=["val"])), T.build_model,
                     T.build_datasets, lambda m, s: 3.0)


def test_collater_attribute_and_multiple_train_splits(tmp_path):
    class WithCollater(T.ToyDataset):
        used = 0

        def collater(self, items):
            WithCollater.used += 1
            return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}

    s = run_training(load_config(T.config(tmp_path / "c", max_epoch=1, train_splits=["a", "b"])), T.build_model,
                     lambda c: {"a": WithCollater(n=8), "b": WithCollater(n=8, seed=1)})
    assert WithCollater.used == 4 and s["step"] == 4  # 16 samples in batches of 4


def test_progress_bar_only_on_a_terminal(monkeypatch):
    assert type(progress_bar(5, "x", True)).__name__ == "_NullBar"  # pytest's stderr is not a TTY
    fake = io.StringIO()
    fake.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", fake)
    bar = progress_bar(5, "epoch 0", True)
    bar.update(2)
    bar.close()
    assert "epoch 0" in fake.getvalue()
    assert type(progress_bar(5, "x", False)).__name__ == "_NullBar"


def test_device_and_distributed_requests_that_cannot_be_met(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    # distributed: true (as the official configs say) outside torchrun runs one process, as LAVIS does
    s = run_training(load_config(T.config(tmp_path / "d", distributed=True, max_epoch=1)), T.build_model,
                     T.build_datasets)
    assert s["world_size"] == 1 and s["step"] == 6
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"run\.distributed: WORLD_SIZE > 1 but RANK is not set"):
        run_training(load_config(T.config(tmp_path / "d", distributed=True)), T.build_model, T.build_datasets)
    monkeypatch.delenv("WORLD_SIZE")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"run\.device: 'cuda' requested"):
            run_training(load_config(T.config(tmp_path / "c", device="cuda")), T.build_model, T.build_datasets)


def test_load_ckpt_path_starts_from_weights_only(tmp_path):
    run_training(load_config(T.config(tmp_path / "pre", max_epoch=1)), T.build_model, T.build_datasets)
    pre = torch.load(tmp_path / "pre" / "latest.pt", weights_only=True)
    seen = {}

    def evaluate(model, split):
        seen["w"] = model.fc1.weight.detach().clone()
        return {}

    cfg = load_config(T.config(tmp_path / "ft", evaluate=True, valid_splits=["val"],
                               load_ckpt_path=str(tmp_path / "pre" / "latest.pt")))
    run_training(cfg, T.build_model, T.build_datasets, evaluate)
    assert torch.equal(seen["w"], pre["model"]["fc1.weight"])
    # fine-tuning: weights loaded, but a fresh optimiser, schedule and epoch count
    s = run_training(load_config(T.config(tmp_path / "ft2", max_epoch=1,
                                          load_ckpt_path=str(tmp_path / "pre" / "latest.pt"))),
                     T.build_model, T.build_datasets)
    assert s["step"] == 6 and s["epoch"] == 1
    # weights from a model with an extra head: the missing trainable tensors keep their initialisation
    partial = {k: v for k, v in pre["model"].items() if not k.startswith("fc2")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    run_training(load_config(T.config(tmp_path / "ft3", evaluate=True, valid_splits=["val"],
                                      load_ckpt_path=str(tmp_path / "partial.pth"))),
                 T.build_model, T.build_datasets, evaluate)
    assert torch.equal(seen["w"], pre["model"]["fc1.weight"])
    # weights of another model variant: tensors this model lacks, or has with another shape, are skipped (named
    # in a warning); the matching ones load
    other = dict(pre["model"])
    other["t5_proj.weight"] = torch.zeros(3, 3)
    other["fc2.weight"] = torch.zeros(other["fc2.weight"].shape[0] + 1, other["fc2.weight"].shape[1])
    torch.save({"model": other}, tmp_path / "other.pth")
    run_training(load_config(T.config(tmp_path / "ft4", evaluate=True, valid_splits=["val"],
                                      load_ckpt_path=str(tmp_path / "other.pth"))),
                 T.build_model, T.build_datasets, evaluate)
    assert torch.equal(seen["w"], pre["model"]["fc1.weight"])
    with pytest.raises(FileNotFoundError, match=r"run\.load_ckpt_path: checkpoint not found"):
        run_training(load_config(T.config(tmp_path / "x", load_ckpt_path=str(tmp_path / "nope.pth"))),
                     T.build_model, T.build_datasets)
