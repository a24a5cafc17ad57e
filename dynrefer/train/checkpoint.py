"""Atomic checkpoint files, RNG state capture, and trainable-only model state.

Every file is written to a temporary file in the destination directory, flushed and fsync'ed, then moved over the
destination with ``os.replace`` (atomic on POSIX and Windows) and the directory fsync'ed: a reader sees either the
previous complete file or the new complete file, never a partial one, whatever happens mid-write.

Checkpoint layout (a superset of LAVIS's ``model / optimizer / config / scaler / epoch``)::

    model        state dict (trainable parameters and all buffers; every parameter with save_all_params)
    optimizer    AdamW state dict
    scheduler    {"step_index", ...}
    scaler       GradScaler state dict or None
    epoch        epoch in progress (0-based)
    step         optimiser steps done in total
    epoch_step   optimiser steps done in this epoch
    sampler      {"epoch", "start_batch", "seed", "world_size"}
    rng          one entry per rank: python, numpy, torch CPU and CUDA generator states
    best         {"metric", "value", "epoch"} or None
    config       the resolved config dict
    version      layout version
    sha256       digest of everything above (:func:`content_digest`), verified by :func:`load_checkpoint`

Everything is stored as tensors and plain Python values, so ``torch.load(..., weights_only=True)`` reads it.
"""
from __future__ import annotations

import hashlib
import os
import random
import struct
import tempfile
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write_bytes", "atomic_save", "load_checkpoint", "get_rng_state", "set_rng_state",
           "model_state", "load_model_state", "TMP_PREFIX", "content_digest", "seal", "verify_seal",
           "IntegrityError"]

TMP_PREFIX = ".tmp-"
CHECKPOINT_VERSION = 1


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """0666 less the process umask: the mode ``open()`` would have given a new file. Read from /proc where Linux
    shows it; setting and restoring the umask, the only portable way to read it, would let another thread create
    a file under the temporary mask."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())   # mkstemp makes 0600: give the file the user's usual mode
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` atomically (temp file in the same directory + fsync + os.replace)."""
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temps(directory: str) -> None:
    """Delete temporary files left by a process killed mid-write."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


class IntegrityError(ValueError):
    """A checkpoint or bundle whose contents do not match the digest written with them (a corrupted file)."""


def _digest_update(h: Any, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(b"T" + str(t.dtype).encode() + struct.pack("<q", t.dim()) + struct.pack(f"<{t.dim()}q", *t.shape))
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]
    elif isinstance(obj, dict):
        h.update(b"D" + struct.pack("<q", len(obj)))
        for k in sorted(obj, key=repr):
            _digest_update(h, k)
            _digest_update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + struct.pack("<q", len(obj)))
        for v in obj:
            _digest_update(h, v)
    elif isinstance(obj, np.ndarray):
        _digest_update(h, torch.from_numpy(np.ascontiguousarray(obj)))
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(type(obj).__name__.encode() + b":" + (obj if isinstance(obj, bytes) else repr(obj).encode()) + b";")
    else:
        raise TypeError(f"content_digest: cannot digest a {type(obj).__name__}")


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint-like object (nested dicts, lists, tuples, tensors and plain values): dtypes, shapes
    and the exact bytes of every tensor, in a fixed order. Equal contents give equal digests, whatever the file."""
    h = hashlib.sha256()
    _digest_update(h, obj)
    return h.hexdigest()


def seal(payload: dict, key: str = "sha256") -> dict:
    """``payload`` with ``payload[key]`` = the digest of the rest."""
    body = {k: v for k, v in payload.items() if k != key}
    return {**body, key: content_digest(body)}


def verify_seal(payload: dict, path: str, key: str = "sha256") -> None:
    """Raise :class:`IntegrityError` when ``payload`` carries a digest that its contents do not match."""
    want = payload.get(key)
    if want is None:
        return
    got = content_digest({k: v for k, v in payload.items() if k != key})
    if got != want:
        raise IntegrityError(f"{path} is corrupted: its contents do not match the SHA-256 written with them "
                             f"({got[:12]}… != {want[:12]}…)")


def load_checkpoint(path: str, map_location: Any = "cpu", key: str = "run.resume_ckpt_path") -> dict:
    """Read a checkpoint (``weights_only``); errors name the config ``key`` the path came from."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which, without a traceback
        raise ValueError(f"{key}: {path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{key}: {path} is not a dynrefer/LAVIS checkpoint (no 'model' entry)")
    try:
        verify_seal(ckpt, path)
    except IntegrityError as e:
        raise IntegrityError(f"{key}: {e}") from None
    return ckpt


# ---------------------------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict:
    """Python, NumPy (legacy global), torch CPU and (if initialised) CUDA generator states, as tensors/lists."""
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),  # type: ignore[attr-defined]
                  "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            torch.cuda.set_rng_state(cuda_states[torch.cuda.current_device() % len(cuda_states)])


# ---------------------------------------------------------------------------------------------- model state
def model_state(model: torch.nn.Module, all_params: bool = False) -> dict:
    """The model's state dict without frozen parameters (LAVIS convention), unless ``all_params``. Buffers are kept."""
    state = model.state_dict()
    if all_params:
        return state
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def load_model_state(model: torch.nn.Module, state: dict, require_trainable: bool = True,
                     skipped: Optional[list] = None) -> list:
    """Load a (possibly trainable-only) state dict. Unknown keys are an error; so are missing trainable
    parameters or buffers unless ``require_trainable`` is False (fine-tuning from other weights), in which case
    their names are returned.

    ``skipped``: a list to start from a checkpoint of another model variant (e.g. a T5 captioning run's weights
    for a causal-LM model): tensors the model does not have, or has with another shape, are left out and their
    names appended to it instead of raising."""
    if skipped is not None:
        own = model.state_dict()
        keep = {}
        for k, v in state.items():
            if k in own and getattr(v, "shape", None) == own[k].shape:
                keep[k] = v
            else:
                skipped.append(k)
        state = keep
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint 'model': keys the model does not have: {sorted(result.unexpected_keys)[:8]}")
    trainable = {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(k for k in result.missing_keys if k in trainable or k in buffers)
    if missing and require_trainable:
        raise ValueError(f"checkpoint 'model': trainable parameters or buffers missing: {missing[:8]}")
    return missing
