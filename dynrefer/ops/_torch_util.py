"""Helpers shared by the PyTorch faces of the ops: kernel descriptors, devices, streams."""
import contextlib

import torch
from torch import Tensor


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3, torch.uint8: 4, torch.int32: 5,
                torch.int64: 6, torch.uint64: 7, torch.bool: 8}


def _desc(t: Tensor):
    """The kernel descriptor of a CPU or CUDA tensor, read from its properties (zero-copy; no DLPack round trip)."""
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"dynrefer ops run on CPU and CUDA tensors, got a tensor on {t.device}")
    if t.dtype not in _DTYPE_CODES:
        raise TypeError(f"unsupported dtype {t.dtype}")
    return (t.data_ptr(), _DTYPE_CODES[t.dtype], int(t.is_cuda), t.device.index or 0, tuple(t.shape), tuple(t.stride()))


def _device_of(t: Tensor):
    # the launchers run on the current device's stream: make the tensor's device current for the call
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
