"""PyTorch face of RoI-Align: ``dynrefer::roi_align`` and its backward as ``torch.library`` custom ops.

* eager, ``torch.compile(fullgraph=True)`` (fake implementations give shapes, dtypes and strides), autocast (the
  op runs natively in the input's dtype with float32 accumulation and returns that dtype, as torchvision's
  autocast wrapper does);
* backward: gradient for the input only (boxes get None, as in torchvision); the backward op is itself
  differentiable (it is linear in the gradient, its derivative is the forward op), so double backward works;
* CUDA: runs on PyTorch's current stream; backward uses atomics unless
  ``torch.use_deterministic_algorithms(True)`` is on, then a fixed-order gather; batch indices are checked on
  the device without a host synchronisation: a bad one pools to zeros and raises at the next call on that device
  or at ``dynrefer.ops.check_errors()``;
* ``roi_align`` and ``RoIAlign`` are scriptable (``torch.jit.script``; the graph calls
  ``torch.ops.dynrefer.roi_align``) and ``roi_align`` is a ``torch.fx`` leaf (``torch.fx.wrap``), as torchvision's;
* quantized CPU inputs: torchvision's quantized RoI-Align, repeated with ATen operations (``_qroi_align``).
"""
from typing import List, Union

import torch
import torch.fx
from torch import Tensor
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from dynrefer import _C
from dynrefer.ops._common import integer, pair, real
from dynrefer.ops._config import cuda_index_checks
from dynrefer.ops._torch_util import _desc, _device_of, _stream  # noqa: F401 (re-exported)
from dynrefer.ops.errors import BoxesShapeError
from dynrefer.ops.roi_align import pooled_shape


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("dynrefer::roi_align", mutates_args=())
def roi_align_op(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
) -> Tensor:
    out = torch.empty(pooled_shape(input, rois, pooled_height, pooled_width), dtype=input.dtype, device=input.device)
    # CUDA: batch indices are checked on the device; a bad one found by an earlier call is raised here (no sync)
    with _device_of(input):
        _C.roi_align_forward(
            _desc(input), _desc(rois), _desc(out), spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
            stream=_stream(input), raise_pending=cuda_index_checks(),
        )
    return out


@roi_align_op.register_fake
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty(pooled_shape(input, rois, pooled_height, pooled_width))


@torch.library.custom_op("dynrefer::roi_align_backward", mutates_args=())
def roi_align_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    batch_size: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    channels_last: bool,
) -> Tensor:
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gi = torch.empty((batch_size, grad.shape[1], height, width), dtype=acc, device=grad.device, memory_format=fmt)
    with _device_of(grad):
        _C.roi_align_backward(
            _desc(grad), _desc(rois), _desc(gi), spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
            deterministic=torch.are_deterministic_algorithms_enabled(), stream=_stream(grad),
            raise_pending=cuda_index_checks(),
        )
    return gi if gi.dtype == dtype else gi.to(dtype)


@roi_align_backward_op.register_fake
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                             batch_size, height, width, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((batch_size, grad.shape[1], height, width), dtype=dtype, device=grad.device, memory_format=fmt)


def _setup(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw, sr, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, ph, pw, sr, aligned)
    ctx.in_shape = (input.shape[0], input.shape[2], input.shape[3])
    ctx.in_dtype = input.dtype
    ctx.channels_last = _channels_last(input)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    n, h, w = ctx.in_shape
    gi = roi_align_backward_op(grad, rois, *ctx.params, n, h, w, ctx.in_dtype, ctx.channels_last)
    return gi, None, None, None, None, None, None


roi_align_op.register_autograd(_backward, setup_context=_setup)


def _bwd_setup(ctx, inputs, output):
    grad, rois, spatial_scale, ph, pw, sr, aligned = inputs[:7]
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, ph, pw, sr, aligned)
    ctx.grad_dtype = grad.dtype


def _bwd_backward(ctx, ggi):
    (rois,) = ctx.saved_tensors
    gg = roi_align_op(ggi.to(ctx.grad_dtype), rois, *ctx.params)
    return (gg,) + (None,) * 11


roi_align_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup)


def _rois(boxes, input: Tensor) -> Tensor:
    """torchvision's check_roi_boxes_shape + convert_boxes_to_roi_format."""
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise TypeError(f"roi_align: boxes[{i}] must be a tensor, got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != 4:
                raise BoxesShapeError(
                    f"The shape of the tensor in the boxes list is not correct as List[Tensor[L, 4]], got {tuple(b.shape)} at {i}"
                )
            parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
        if not parts:
            raise BoxesShapeError("boxes is an empty list; expected one [L, 4] tensor per image")
        rois = torch.cat(parts, dim=0)
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise BoxesShapeError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(boxes.shape)}")
        rois = boxes
    else:
        raise BoxesShapeError(f"boxes is expected to be a Tensor[L, 5] or a List[Tensor[K, 4]], got {type(boxes).__name__}")
    # Devices are checked here too: a meta tensor among the inputs would route the op to its fake implementation.
    if rois.device != input.device:
        raise ValueError(f"roi_align: boxes are on {rois.device} but input is on {input.device}")
    return rois


def _script_rois(boxes: Union[Tensor, List[Tensor]], input: Tensor) -> Tensor:
    """``_rois`` in TorchScript (torchvision's check_roi_boxes_shape + convert_boxes_to_roi_format); shape errors
    are AssertionErrors, as torchvision's."""
    if isinstance(boxes, Tensor):
        torch._assert(boxes.dim() == 2 and boxes.size(1) == 5, "The boxes tensor shape is not correct as Tensor[K, 5]")
        rois = boxes
    else:
        torch._assert(len(boxes) > 0, "boxes is an empty list; expected one [L, 4] tensor per image")
        parts: List[Tensor] = []
        for i, b in enumerate(boxes):
            torch._assert(b.dim() == 2 and b.size(1) == 4,
                          "The shape of the tensor in the boxes list is not correct as List[Tensor[L, 4]]")
            parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
        rois = torch.cat(parts, dim=0)
    if rois.device != input.device:
        raise ValueError("roi_align: boxes and input are on different devices")
    return rois


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """See ``dynrefer.ops.roi_align``."""
    if not torch.jit.is_scripting():
        ph, pw = pair(output_size, "output_size")
        scale, sr = real(spatial_scale, "spatial_scale"), integer(sampling_ratio, "sampling_ratio")
        if input.is_quantized:
            return _qroi_align(input, boxes, scale, ph, pw, sr, bool(aligned))
        rois = _rois(boxes, input)
        return roi_align_op(input, rois, scale, ph, pw, sr, bool(aligned))
    size = _pair(output_size)
    rois = _script_rois(boxes, input)
    return torch.ops.dynrefer.roi_align(input, rois, spatial_scale, size[0], size[1], sampling_ratio, aligned)


def _qroi_align(input: Tensor, boxes, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                aligned: bool) -> Tensor:
    """torchvision's quantized RoI-Align (``torchvision::qroi_align``), with its arithmetic, step for step.

    ``input``: a quantized ``[1, C, H, W]`` CPU tensor; the rois must be quantized as well (any scale and zero
    point); the batch index column is ignored (one image). Per bin, the bilinear weights are computed in float32
    exactly as torchvision's CPU kernel computes them, the integer values are summed with them in float32 in the
    kernel's order (samples row by row, the four corners left to right), and the sum is dequantized, averaged
    and requantized with the input's scale and zero point (round half to even, clamped). The samples of every
    roi advance together, one sample position per step (padded to the largest grid with zero weights, which add
    nothing), so the work is ``max_grid_h * max_grid_w`` vectorised steps over ``[C, K, ph, pw]``.

    Dequantizing, pooling with the float kernel and requantizing would not do: its sums are rounded differently,
    and about one value in 250 then lands one quantization step away from torchvision's.
    """
    rois = _rois(boxes, input)
    if not rois.is_quantized:
        raise ValueError("If input is quantized, rois must also be quantized.")
    if input.device.type != "cpu" or rois.device.type != "cpu":
        raise ValueError("roi_align: quantized inputs must be on the CPU")
    if input.dim() != 4:
        raise ValueError(f"roi_align: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    if input.shape[0] != 1:
        raise RuntimeError("roi_align: Only one image per batch is allowed with quantized inputs")
    if ph < 1 or pw < 1:
        raise ValueError("roi_align: output_size must be positive")
    f32 = torch.float32

    def c32(v):  # a float32 scalar: the kernel's float operands
        return torch.tensor(v, dtype=f32)

    _, channels, height, width = input.shape
    k = rois.shape[0]
    q = input.int_repr()
    scale, zp = c32(input.q_scale()), input.q_zero_point()
    out_int = torch.empty((k, channels, ph, pw), dtype=q.dtype)
    if out_int.numel() == 0:
        return torch._make_per_tensor_quantized_tensor(out_int, input.q_scale(), zp)
    vals = q.reshape(channels, height * width).to(f32)

    # rois: dequantized as float(scale) * (value - float(zero_point)), scaled, shifted
    r = c32(rois.q_scale()) * (rois.int_repr()[:, 1:].to(f32) - c32(rois.q_zero_point()))
    r = r * c32(spatial_scale) - c32(0.5 if aligned else 0.0)
    start_w, start_h, end_w, end_h = r.unbind(1)
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if not aligned:  # malformed rois become 1x1
        roi_w, roi_h = roi_w.clamp_min(1.0), roi_h.clamp_min(1.0)
    bin_h, bin_w = roi_h / c32(ph), roi_w / c32(pw)
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(bin_h).nan_to_num(0.0, 0.0, 0.0).clamp(0, 1 << 20).to(torch.int64)
        grid_w = torch.ceil(bin_w).nan_to_num(0.0, 0.0, 0.0).clamp(0, 1 << 20).to(torch.int64)
    count = (grid_h * grid_w).clamp_min(1).to(f32)
    gh_f, gw_f = grid_h.to(f32), grid_w.to(f32)
    # y of sample iy in bin p: (start + p * bin) + ((iy + 0.5) * bin) / grid
    y0 = start_h[:, None] + torch.arange(ph, dtype=f32)[None, :] * bin_h[:, None]  # [K, ph]
    x0 = start_w[:, None] + torch.arange(pw, dtype=f32)[None, :] * bin_w[:, None]  # [K, pw]

    def axis(base, bin_size, grid_f, grid, i, size):
        """Per roi and bin, along one axis: low and high index, low and high weight, validity."""
        pos = base + ((bin_size * c32(i + 0.5)) / grid_f)[:, None]  # a zero grid gives inf/nan: masked below
        ok = (pos >= -1.0) & (pos <= size) & (i < grid)[:, None]
        pos = torch.where(ok, pos, 0.0).clamp_min(0.0)
        low = pos.to(torch.int64)
        edge = low >= size - 1
        low = torch.where(edge, size - 1, low)
        high = torch.where(edge, low, low + 1)
        pos = torch.where(edge, low.to(f32), pos)
        lw = pos - low.to(f32)
        return low, high, c32(1.0) - lw, lw, ok

    acc = torch.zeros((channels, k, ph, pw), dtype=f32)
    sum_w = torch.zeros((k, ph, pw), dtype=f32)
    for iy in range(int(grid_h.max())):
        y_low, y_high, hy, ly, y_ok = axis(y0, bin_h, gh_f, grid_h, iy, height)
        for ix in range(int(grid_w.max())):
            x_low, x_high, hx, lx, x_ok = axis(x0, bin_w, gw_f, grid_w, ix, width)
            ok = y_ok[:, :, None] & x_ok[:, None, :]  # [K, ph, pw]
            zero = c32(0.0)
            ws = [torch.where(ok, a[:, :, None] * b[:, None, :], zero)
                  for a, b in ((hy, hx), (hy, lx), (ly, hx), (ly, lx))]
            ps = [torch.where(ok, a[:, :, None] * width + b[:, None, :], 0) for a, b in
                  ((y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high))]
            term = ws[0] * vals[:, ps[0]] + ws[1] * vals[:, ps[1]] + ws[2] * vals[:, ps[2]] + ws[3] * vals[:, ps[3]]
            acc = acc + term
            sum_w = sum_w + (((ws[0] + ws[1]) + ws[2]) + ws[3])
    out = scale * (acc - c32(float(zp)) * sum_w)
    out = out / count[:, None, None]
    qv = (c32(float(zp)) + torch.round(out * (c32(1.0) / scale))).to(torch.int64)
    info = torch.iinfo(q.dtype)
    out_int.copy_(qv.clamp(info.min, info.max).permute(1, 0, 2, 3))
    return torch._make_per_tensor_quantized_tensor(out_int, input.q_scale(), zp)


class RoIAlign(torch.nn.Module):
    """Drop-in for ``torchvision.ops.RoIAlign``."""

    def __init__(
        self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int, aligned: bool = False
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )
