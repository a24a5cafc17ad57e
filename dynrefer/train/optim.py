"""AdamW with the official DynRefer/LAVIS parameter groups, and the learning-rate schedule.

Parameter groups: every parameter with ``requires_grad`` goes to the decayed group, except 1-D parameters
(biases, norm scales, learned scalars), parameters named ``*.bias``, and parameters owned by a normalisation
module (LayerNorm, GroupNorm, BatchNorm*, InstanceNorm*, LocalResponseNorm, RMSNorm), which get no weight decay.

Schedule (``linear_warmup_cosine_lr``), two ways (``run.lr_decay``):

``epoch`` (default; LAVIS's ``LinearWarmupCosineLRScheduler``, which the official DynRefer training uses): optimiser
step s is step i = s mod P of epoch e = s div P (P steps per epoch, E epochs). In epoch 0,
``min(init_lr, warmup_lr + (init_lr - warmup_lr) * i / max(1, warmup_steps))``; from epoch 1 on, the cosine value of
the epoch, held for the whole epoch: ``min_lr + (init_lr - min_lr) * (1 + cos(pi * e / E)) / 2``. ``warmup_lr``
unset (LAVIS's ``warmup_lr`` absent, as in the official settings) means ``init_lr``: no ramp at all, epoch 0 runs at
``init_lr``. (LAVIS counts i in iterations; here it counts optimiser steps — the same without gradient
accumulation.)

``step``: per optimiser step s of S in total, ``s < warmup_steps``: ``warmup_lr + (init_lr - warmup_lr) * s /
warmup_steps`` (``warmup_lr`` unset: 0); afterwards a cosine from ``init_lr`` to ``min_lr`` over the remaining
steps: ``min_lr + (init_lr - min_lr) * (1 + cos(pi * p)) / 2`` with ``p = (s - warmup_steps) / max(1, S -
warmup_steps)``.

``constant_lr`` keeps ``init_lr`` after the warm-up (in epoch 0 only with ``epoch``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

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
                 warmup_steps: int = 0, warmup_lr: Optional[float] = 0.0, cosine: bool = True,
                 epoch_steps: int = 0) -> None:
        """``epoch_steps`` > 0: LAVIS's per-epoch schedule with that many steps an epoch (``total_steps`` a multiple
        of it); 0: the per-step schedule. ``warmup_lr`` None: ``init_lr`` per epoch (LAVIS), 0 per step."""
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        if epoch_steps < 0:
            raise ValueError(f"epoch_steps must be >= 0, got {epoch_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.init_lr = float(init_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps)
        self.epoch_steps = int(epoch_steps)
        if warmup_lr is None:
            warmup_lr = self.init_lr if self.epoch_steps else 0.0
        self.warmup_lr = float(warmup_lr)
        self.cosine = cosine
        self.step_index = 0

    def lr_at(self, step: int) -> float:
        if self.epoch_steps:
            return self._lr_per_epoch(step)
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        if not self.cosine:
            return self.init_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _lr_per_epoch(self, step: int) -> float:
        epoch, i = divmod(step, self.epoch_steps)
        if epoch == 0:
            return min(self.init_lr,
                       self.warmup_lr + (self.init_lr - self.warmup_lr) * i / max(self.warmup_steps, 1))
        if not self.cosine:
            return self.init_lr
        epochs = max(1, self.total_steps // self.epoch_steps)
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))

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
                "cosine": self.cosine, "epoch_steps": self.epoch_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
