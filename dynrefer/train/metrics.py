"""Rank-0 metrics: a JSONL file (one record per logging interval or evaluation) and a tqdm progress bar."""
from __future__ import annotations

import json
import logging
import math
import os
import sys

from dynrefer.train.checkpoint import atomic_write_bytes

__all__ = ["MetricsWriter", "progress_bar", "logger", "read_jsonl"]

logger = logging.getLogger("dynrefer.train")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


class MetricsWriter:
    """Appends JSON records to ``path`` (rank 0 only; other ranks get an inert writer)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop training records past ``step`` (left by a run that died after its last checkpoint)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def read_jsonl(path: str) -> list:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a killed process
    return out


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar when enabled and stderr is a terminal; otherwise an inert object with the same methods."""
    if not enabled or not sys.stderr.isatty():
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NullBar()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
