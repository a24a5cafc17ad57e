"""DCNv4 deformable aggregation, for NumPy arrays and PyTorch tensors.

Semantics are those of DCNv4's ``DCNv4Function`` (OpenGVLab/DCNv4) with softmax off, on CPU and CUDA.
"""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from dynrefer.ops._common import is_torch_tensor, pair, real

if TYPE_CHECKING:
    from torch import Tensor

# an ndarray in, an ndarray out; a tensor in, a tensor out
_ArrayT = TypeVar("_ArrayT", np.ndarray, "Tensor")
_IntPair = Union[int, Tuple[int, int], Sequence[int]]
_Params = Tuple[int, int, int, int, int, int, int, int, int, int, float, bool]
def out_shape(shape: Sequence[int], kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int,
              dw: int) -> Tuple[int, int, int, int]:
    """``(N, H_out, W_out, C)`` for value's shape ``[N, H, W, C]``, for allocating the output before the kernel runs
    (NumPy and PyTorch) and for fake tensors. The kernel validates the arguments; this checks only what computing
    the shape needs (a kernel that does not fit gives 0 here, and the kernel reports it)."""
    if len(shape) != 4:
        raise ValueError(f"dcnv4: value must be 4-D [N, H, W, C] (channels last), got shape {tuple(shape)}")
    ho = (shape[1] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (shape[2] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    return (shape[0], max(ho, 0), max(wo, 0), shape[3])


def dcnv4_params(shape: Sequence[int], kernel_size: _IntPair, stride: _IntPair, padding: _IntPair, dilation: _IntPair,
                 group: int, group_channels: Optional[int], offset_scale: float,
                 remove_center: bool) -> Tuple[_Params, Tuple[int, int, int, int]]:
    """The kernel's parameter tuple (kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale,
    remove_center) from the Python arguments, and the output shape for value's shape [N, H, W, C]. Converts types
    and fills the group_channels default; the kernel checks the values."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation")
    shape = out_shape(shape, kh, kw, sh, sw, ph, pw, dh, dw)
    if isinstance(group, bool) or not isinstance(group, numbers.Integral):
        raise TypeError(f"group must be an int, got {type(group).__name__}")
    group = int(group)
    if group_channels is None:
        C = int(shape[3])
        if group < 1:
            raise ValueError(f"group must be positive, got {group}")
        if C % group:
            raise ValueError(f"dcnv4: value has {C} channels, not divisible by group={group}")
        group_channels = C // group
    elif isinstance(group_channels, bool) or not isinstance(group_channels, numbers.Integral):
        raise TypeError(f"group_channels must be an int or None, got {type(group_channels).__name__}")
    params = (kh, kw, sh, sw, ph, pw, dh, dw, group, int(group_channels), real(offset_scale, "offset_scale"),
              bool(remove_center))
    return params, shape


def offset_mask_channels(group: int, kernel_size: _IntPair = 3, remove_center: bool = False) -> int:
    """P for DCNv4's offset_mask: 3 * group * K rounded up to a multiple of 8 (K taps, minus the centre when
    ``remove_center``)."""
    kh, kw = pair(kernel_size, "kernel_size")
    k = kh * kw - (1 if remove_center else 0)
    return -(-3 * group * k // 8) * 8


def dcnv4(value: _ArrayT, offset_mask: _ArrayT, kernel_size: _IntPair = 3, stride: _IntPair = 1, padding: _IntPair = 1,
          dilation: _IntPair = 1, group: int = 4, group_channels: Optional[int] = None, offset_scale: float = 1.0,
          remove_center: bool = False) -> _ArrayT:
    """DCNv4 deformable aggregation (``DCNv4Function`` with softmax off).

    Args:
        value: ``[N, H, W, G*D]`` features, channels last (float32/float64/float16/bfloat16; any strides).
        offset_mask: ``[N, H_out, W_out, P]`` in value's dtype: for group g, ``[g*3K, g*3K+2K)`` holds K pairs
            ``(dx, dy)`` and ``[g*3K+2K, g*3K+3K)`` K modulation weights (no softmax); ``P >= 3*G*K`` (DCNv4 pads it
            to a multiple of 8, see :func:`offset_mask_channels`; the padding is ignored).
        kernel_size, stride, padding, dilation: int or ``(h, w)``.
        group: G; group_channels: D (default ``C // group``).
        offset_scale: scale applied to the offsets (and to the kernel grid around its centre).
        remove_center: drop the kernel's centre tap (K = kh*kw - 1).

    Returns ``[N, H_out, W_out, G*D]`` in value's type: an ndarray for NumPy input (forward only) or a tensor
    (differentiable in value and offset_mask, ``torch.compile``-able) for PyTorch input. Taps run kernel-x outer,
    kernel-y inner; samples outside ``(-1, H) x (-1, W)`` contribute nothing, corners off the map read zero.
    """
    if is_torch_tensor(value):
        from dynrefer.ops import _torch_dcnv4

        return _torch_dcnv4.dcnv4(value, offset_mask, kernel_size, stride, padding,  # type: ignore[arg-type,return-value]
                                  dilation, group, group_channels, offset_scale, remove_center)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"dcnv4: value must be a NumPy array or a torch.Tensor, got {type(value).__name__}")
    if not isinstance(offset_mask, np.ndarray):
        raise TypeError(f"dcnv4: offset_mask must be a NumPy array like value, got {type(offset_mask).__name__}")
    params, shape = dcnv4_params(value.shape, kernel_size, stride, padding, dilation, group, group_channels,
                                 offset_scale, remove_center)
    from dynrefer import _C

    out = np.empty(shape, dtype=value.dtype)
    _C.dcnv4_forward(value, offset_mask, out, *params)
    return out
