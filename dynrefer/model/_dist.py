"""Distributed utilities: all_gather with or without the gradient of the local shard, rank and world size."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_dist", "rank", "world_size", "all_gather_with_grad", "all_gather_no_grad"]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every process computes a loss over the gathered tensor; the gradient of the total with respect to this
        # process's shard is the sum over processes of their gradient for that slice.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * n:(r + 1) * n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0 (equal shapes); gradients flow back to each shard.

    Without an initialised process group (or with one process) it returns ``x`` itself.
    """
    if world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, with no gradient through the result (LAVIS's
    ``concat_all_gather``: in a process group even the local shard of the output is detached).

    Without an initialised process group (or with one process) it returns ``x`` itself, gradient included.
    """
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    with torch.no_grad():
        dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)
