"""Rank-0 feedback: a JSONL file (one record per logging interval or evaluation), a progress bar where someone
watches (a terminal or a notebook), plain lines where nobody does (nohup, SLURM: stdout is a file), a kept line
per epoch, TensorBoard event files and a loss-curve PNG at the end."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import IO, Any, Optional, Union

from dynrefer.train.checkpoint import atomic_write_bytes

__all__ = ["MetricsWriter", "progress_bar", "logger", "read_jsonl", "Console", "TensorBoard", "plot_metrics",
           "in_notebook"]

logger = logging.getLogger("dynrefer.train")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


class MetricsWriter:
    """Appends JSON records to ``path`` (rank 0 only; other ranks get an inert writer)."""

    def __init__(self, path: str, enabled: bool = True) -> None:
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
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, *a: Any, **k: Any) -> None:
        pass

    def close(self) -> None:
        pass


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget bar replaces the terminal bar)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _tqdm_class() -> Any:
    """tqdm's notebook widget where a notebook can show it (ipywidgets installed), else the terminal bar — without
    tqdm.auto's warning when the widgets are missing."""
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    """A tqdm bar when enabled and someone watches (stderr is a terminal, or a notebook); otherwise an inert object
    with the same methods (the :class:`Console` prints plain lines instead)."""
    if not enabled or not (sys.stderr.isatty() or in_notebook()):
        return _NullBar()
    try:
        tqdm = _tqdm_class()
    except ImportError:
        return _NullBar()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Console:
    """Plain progress lines on rank 0: one kept line per epoch (loss, lr, throughput, ETA) always, and one per
    logged interval when nobody watches a bar (stdout is not a terminal and not a notebook). Lines are flushed,
    so ``nohup`` and SLURM logs fill as training goes."""

    def __init__(self, enabled: bool, total_steps: int, stream: Optional[IO[str]] = None) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = stream
        self.t0: Optional[float] = None
        self.step0 = 0
        self.bar_shown = False
        self._printed_step: Any = None

    def _out(self) -> IO[str]:
        return self.stream or sys.stdout

    def start(self, step: int, bar_shown: bool) -> None:
        self.t0, self.step0, self.bar_shown = time.perf_counter(), step, bar_shown

    def _eta(self, step: int) -> str:
        if self.t0 is None or step <= self.step0:
            return "?"
        rate = (time.perf_counter() - self.t0) / (step - self.step0)
        return _fmt_time(rate * max(0, self.total_steps - step))

    def _line(self, prefix: str, record: dict) -> str:
        parts = [prefix, f"step {record.get('step')}/{self.total_steps}"]
        for k in ("loss", "lr", "grad_norm"):
            v = record.get(k)
            if isinstance(v, (int, float)):
                parts.append(f"{k} {v:.3e}" if k == "lr" else f"{k} {v:.4f}")
        if isinstance(record.get("samples_per_s"), (int, float)):
            parts.append(f"{record['samples_per_s']:.1f} samples/s")
        parts.append(f"ETA {self._eta(int(record.get('step', 0)))}")
        return " | ".join(parts)

    def interval(self, record: dict) -> None:
        if self.enabled and not self.bar_shown and not (self._out().isatty() or in_notebook()):
            print(self._line(f"epoch {record.get('epoch')}", record), file=self._out(), flush=True)
            self._printed_step = record.get("step")

    def epoch_end(self, epoch: int, record: dict) -> None:
        # kept whether or not a bar was shown; not repeated when the interval line just said the same
        if self.enabled and record and self._printed_step != record.get("step"):
            print(self._line(f"epoch {epoch} done", record), file=self._out(), flush=True)

    def evaluation(self, split: str, epoch: Union[int, str, None], result: dict) -> None:
        if self.enabled and result:
            vals = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool))
            print(f"eval {split} (epoch {epoch}): {vals}", file=self._out(), flush=True)


class TensorBoard:
    """TensorBoard event files under ``log_dir`` (``torch.utils.tensorboard``; needs the ``tensorboard`` package,
    else a one-time warning and nothing is written). ``purge_step`` drops the events a killed run wrote after its
    last checkpoint, so a resumed run's curves join without duplicates."""

    def __init__(self, log_dir: str, enabled: bool, purge_step: Optional[int] = None) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("run.tensorboard: the tensorboard package is not installed; no event files are written "
                           "(pip install tensorboard)")
            return
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        kind = record.get("type")
        prefix = "train" if kind == "train" else str(record.get("split", kind))
        step = int(record.get("step", 0))
        for k, v in record.items():
            if k in ("type", "split", "epoch", "step") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def plot_metrics(metrics_path: str, png_path: str) -> Optional[str]:
    """A PNG of the training losses (left) and the evaluation metrics (right) of a ``metrics.jsonl`` over the
    steps; returns the path, or None when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("run.plot: matplotlib is not installed; no loss curve is drawn (pip install matplotlib)")
        return None
    recs = read_jsonl(metrics_path) if os.path.isfile(metrics_path) else []
    train = [r for r in recs if r.get("type") == "train"]
    evals = [r for r in recs if r.get("type") == "eval"]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    keys = [k for k in train[0] if k == "loss" or k.startswith("loss_")] if train else []
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if isinstance(r.get(k), (int, float))]
        if pts:
            ax.plot(*zip(*pts), label=k, lw=2 if k == "loss" else 1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=8)
    if evals:
        ax2 = axes[0][1]
        names = sorted({k for r in evals for k, v in r.items()
                        if k not in ("type", "split", "epoch", "step") and isinstance(v, (int, float))})
        for split in sorted({str(r.get("split")) for r in evals}):
            for k in names:
                pts = [(r["step"], r[k]) for r in evals if str(r.get("split")) == split and isinstance(r.get(k), (int, float))]
                if pts:
                    ax2.plot(*zip(*pts), marker="o", label=f"{split} {k}")
        ax2.set_xlabel("optimiser step")
        ax2.set_ylabel("evaluation")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    from dynrefer.train.checkpoint import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
    return png_path
