"""RoI-Align with torchvision's semantics, for NumPy arrays and PyTorch tensors."""
# Annotations stay unevaluated (no torch here); TorchScript reads them from the source.
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, List, Tuple, TypeVar, Union

import numpy as np

from dynrefer.ops._common import TorchSide, integer, pair, real
from dynrefer.ops.errors import BoxesShapeError

if TYPE_CHECKING:  # for type checkers only: TorchScript reads these names from the source
    from torch import Tensor

    _T = TypeVar("_T")
    BroadcastingList2 = Union[_T, Tuple[_T, _T], List[_T]]

_torch_side = TorchSide("dynrefer.ops._torch_roi_align")


def _numpy_rois(boxes: Any) -> np.ndarray:
    """[K,5] rois from an array [K,5] or a list of [L,4] arrays (batch index = position in the list)."""
    if isinstance(boxes, np.ndarray):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise BoxesShapeError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {boxes.shape}")
        rois = boxes
    elif isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            b = np.asarray(b)
            if b.ndim != 2 or b.shape[1] != 4:
                raise BoxesShapeError(
                    f"The shape of the tensor in the boxes list is not correct as List[Tensor[L, 4]], got {b.shape} at {i}"
                )
            parts.append(np.concatenate([np.full((b.shape[0], 1), i, dtype=b.dtype), b], axis=1))
        if not parts:
            raise BoxesShapeError("boxes is an empty list; expected one [L, 4] array per image")
        rois = np.concatenate(parts, axis=0)
    else:
        raise BoxesShapeError(f"boxes is expected to be a Tensor[L, 5] or a List[Tensor[K, 4]], got {type(boxes).__name__}")
    return rois


def pooled_shape(input: Any, rois: Any, ph: int, pw: int) -> Tuple[int, int, int, int]:
    """``(K, C, ph, pw)``, the output's shape, for allocating it before the kernel runs (NumPy and PyTorch) and for
    fake tensors. The kernel validates the arguments; this checks only what computing the shape needs."""
    if input.ndim != 4:
        raise ValueError(f"roi_align: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    if rois.ndim != 2:
        raise BoxesShapeError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(rois.shape)}")
    if ph > 0 and pw > 0 and rois.shape[0] * input.shape[1] * ph * pw >= 2 ** 62:
        raise ValueError(f"roi_align: output_size ({ph}, {pw}) is too large: the output [{rois.shape[0]}, "
                         f"{input.shape[1]}, {ph}, {pw}] would not fit in memory")
    return (rois.shape[0], input.shape[1], ph, pw)


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI-Align, a drop-in for ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` features (float32/float64/float16/bfloat16; any strides, channels-last included),
            or a quantized CPU tensor (``torch.quint8``/``qint8``/``qint32``, ``N == 1``; see below).
        boxes: ``[K, 5]`` rois ``(batch_index, x1, y1, x2, y2)`` or a list of ``[L, 4]`` boxes, one per image.
        output_size: ``int`` or ``(height, width)`` of each pooled map.
        spatial_scale: factor mapping box coordinates to feature coordinates.
        sampling_ratio: samples per bin along each axis; ``<= 0`` picks ``ceil(roi_size / output_size)``.
        aligned: shift boxes by -0.5 pixel (pixel-centre convention).

    Returns ``[K, C, output_h, output_w]`` in the input's type: an ndarray for NumPy input (forward only) or a
    tensor (differentiable, ``torch.compile``-able) for PyTorch input. A batch index outside ``[0, N)`` raises
    ValueError; non-finite box coordinates pool to zeros.

    With PyTorch, like torchvision's op, it is scriptable (``torch.jit.script`` of this function, of
    ``RoIAlign`` or of code calling either; the scripted graph calls ``torch.ops.dynrefer.roi_align``), a leaf for
    ``torch.fx`` (one ``call_function`` node), and it takes quantized inputs as torchvision does: rois quantized
    too, one image, the batch index column ignored, output quantized with the input's scale and zero point. The
    quantized path repeats torchvision's arithmetic (weighted sums of the integer values in float32, dequantized
    per bin, requantized) with ATen operations, so its results equal torchvision's bit for bit; it runs on the
    CPU, forward only, and not under TorchScript (as in torchvision).
    """
    # Under TorchScript the check below is static (input is a Tensor) and the other branch is not compiled.
    if isinstance(input, _torch_side.Tensor):
        return _torch_side.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    else:
        return _roi_align_other(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def _roi_align_other(
    input: Any, boxes: Any, output_size: Any, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Any:
    """NumPy arrays; torch.fx proxies (to the torch side, which ``torch.fx.wrap`` turns into one graph node)."""
    fx = sys.modules.get("torch.fx")
    if fx is not None and isinstance(input, fx.Proxy):
        # through the real module: its global is the one torch.fx patches while tracing
        return _torch_side.module().roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    if not isinstance(input, np.ndarray):
        raise TypeError(f"roi_align: input must be a NumPy array or a torch.Tensor, got {type(input).__name__}")
    ph, pw = pair(output_size, "output_size")
    scale = real(spatial_scale, "spatial_scale")
    sr = integer(sampling_ratio, "sampling_ratio")
    rois = _numpy_rois(boxes)
    from dynrefer import _C

    out = np.empty(pooled_shape(input, rois, ph, pw), dtype=input.dtype)
    _C.roi_align_forward(input, rois, out, scale, ph, pw, sr, bool(aligned))
    return out
