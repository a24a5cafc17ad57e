"""AdamW with the official DynRefer/LAVIS parameter groups, and the per-step learning-rate schedule.

Parameter groups: every parameter with ``requires_grad`` goes to the decayed group, except 1-D parameters
(biases, norm scales, learned scalars), parameters named ``*.bias``, and parameters owned by a normalisation
module (LayerNorm, GroupNorm, BatchNorm*, InstanceNorm*, LocalResponseNorm, RMSNorm), which get no weight decay.

Schedule (``linear_warmup_cosine_lr``), per optimiser step s of S in total:
``s < warmup_steps``: ``warmup_lr + (init_lr - warmup_lr) * s / warmup_steps``; afterwards a cosine from
``init_lr`` to ``min_lr`` over the remaining steps: ``min_lr + (init_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
``p = (s - warmup_steps) / max(1, S - warmup_steps)``. ``constant_lr`` keeps ``init_lr`` after the warm-up.
(LAVIS steps its cosine once per epoch; the DynRefer training settings decay per iteration, as here.)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

__all__ = ["param_groups", "build_optimizer", "LinearWarmupCosineLR"]

_NORM_TYPES = tuple(
    t for t in (
        getattr(torch.nn, n, None) for n in (
            "LayerNorm", "GroupNorm", "LocalResponseNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
            "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
    ) if t is not None
)


def param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and a non-decayed group (shared parameters
    appear once). Returns ``[{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0}]``
    with the names in ``"names"`` (popped before the optimiser sees the groups)."""
    norm_params: set = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or name.endswith(".bias") or name == "bias" or id(p) in norm_params:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: torch.nn.Module, run: dict) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the settings of a validated ``run`` section."""
    groups = param_groups(model, run["weight_decay"])
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups if g["params"]]
    if not groups:
        raise ValueError("model: no parameter has requires_grad=True; nothing to train")
    return torch.optim.AdamW(groups, lr=run["init_lr"], betas=(run["beta1"], run["beta2"]), eps=run["eps"])


class LinearWarmupCosineLR:
    """Sets every group's ``lr`` before each optimiser step from the step index alone (resumable by position)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, init_lr: float, min_lr: float = 0.0,
                 warmup_steps: int = 0, warmup_lr: float = 0.0, cosine: bool = True) -> None:
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.init_lr = float(init_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.cosine = cosine
        self.step_index = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        if not self.cosine:
            return self.init_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self) -> float:
        """Set the learning rate of the coming step; returns it."""
        lr = self.lr_at(self.step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step_index += 1

    def state_dict(self) -> dict:
        return {"step_index": self.step_index, "total_steps": self.total_steps, "init_lr": self.init_lr,
                "min_lr": self.min_lr, "warmup_steps": self.warmup_steps, "warmup_lr": self.warmup_lr,
                "cosine": self.cosine}

    def load_state_dict(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
