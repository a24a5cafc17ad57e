"""A small model and dataset for the training-engine tests (importable by spawned worker processes)."""
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """Fixed random features and labels, plus random augmentation from python, NumPy and torch generators."""

    def __init__(self, n=48, dim=6, classes=3, augment=True, seed=0):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, classes, generator=g)
        self.x = torch.randn(n, dim, generator=g)
        self.y = (self.x @ w).argmax(1)
        self.augment = augment

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i].clone()
        if self.augment:
            x = x + 0.1 * torch.randn(x.shape) + float(np.random.uniform(-0.05, 0.05)) + 0.01 * random.random()
        return {"x": x, "y": self.y[i]}


class ToyModel(nn.Module):
    """Linear -> LayerNorm -> GELU -> Dropout -> Linear, a frozen embedding and a buffer."""

    def __init__(self, dim=6, hidden=16, classes=3, dropout=0.1):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)
        self.scale = nn.Parameter(torch.ones(classes))
        self.frozen = nn.Linear(dim, hidden)
        self.frozen.requires_grad_(False)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.seen_dtypes = []

    def forward(self, samples):
        x = samples["x"]
        h = self.fc1(x) + 0.1 * self.frozen(x)
        self.seen_dtypes.append(h.dtype)
        h = self.drop(torch.nn.functional.gelu(self.norm(h)))
        logits = self.fc2(h) * self.scale
        loss = torch.nn.functional.cross_entropy(logits.float(), samples["y"])
        if self.training:
            self.calls += 1
        reg = 1e-3 * (self.fc2.weight.float() ** 2).sum()
        return {"loss": loss + reg, "loss_ce": loss.detach(), "loss_reg": reg.detach()}


def build_model(cfg):
    m = cfg.model
    return ToyModel(dropout=m.get("dropout", 0.1), hidden=m.get("hidden", 16))


def build_datasets(cfg):
    d = cfg.datasets.get("toy", {})
    return {"train": ToyDataset(n=d.get("n", 48), augment=d.get("augment", True)),
            "val": ToyDataset(n=16, augment=False, seed=0)}


def accuracy(model, split):
    ds = ToyDataset(n=16, augment=False, seed=0)
    with torch.no_grad():
        out = model.fc2(torch.nn.functional.gelu(model.norm(model.fc1(ds.x) + 0.1 * model.frozen(ds.x))))
    return {"acc": float((out.argmax(1) == ds.y).float().mean()), "neg_loss": -float(
        torch.nn.functional.cross_entropy(out, ds.y))}


def config(out_dir, **run):
    base = {"output_dir": str(out_dir), "max_epoch": 2, "batch_size_train": 4, "init_lr": 1e-2, "warmup_steps": 2,
            "log_freq": 1, "progress_bar": False, "seed": 3}
    base.update(run)
    return {"model": {"dropout": 0.1}, "datasets": {"toy": {"n": 24}}, "run": base}


def params(model_or_state):
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.clone() for k, v in state.items()}
