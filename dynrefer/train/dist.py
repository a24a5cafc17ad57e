"""Process groups: env:// initialisation under torchrun, rank queries, reductions, barriers."""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup_distributed", "barrier", "all_reduce_sum", "all_gather_object"]


class DistContext:
    """Where this process stands: rank, world size, local rank, device, and whether it owns the process group."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: Optional[torch.device] = None, owns_group: bool = False) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = device if device is not None else torch.device("cpu")
        self.owns_group = owns_group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(run: dict) -> DistContext:
    """Pick the device and, when launched by torchrun (or when a process group already exists), join the group.

    ``run.distributed``: ``auto`` or ``true`` join when ``WORLD_SIZE > 1`` in the environment and otherwise run
    one process (LAVIS behaves the same; the official configs say ``true``); ``false`` never joins.
    An already initialised default group (e.g. from ``torch.multiprocessing`` spawn) is used as is."""
    want = run["device"]
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device: 'cuda' requested but torch.cuda.is_available() is False")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
        local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1)))
    elif run["distributed"] in (True, "auto") and env_world > 1:
        if "RANK" not in os.environ:
            raise RuntimeError("run.distributed: WORLD_SIZE > 1 but RANK is not set (launch with torchrun)")
        backend = run["dist_backend"]
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method=run["dist_url"],
                                rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
        rank, world, owns = dist.get_rank(), dist.get_world_size(), True
    else:
        rank, world, local_rank, owns = 0, 1, 0, False
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistContext(rank, world, local_rank, device, owns)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over ranks (returned on the CPU)."""
    if not ctx.distributed:
        return values
    t = values.to(ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_gather_object(ctx: DistContext, obj: Any) -> list:
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
