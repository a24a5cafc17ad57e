"""PyTorch face of DCNv4: ``dynrefer::dcnv4`` and ``dynrefer::dcnv4_backward`` as ``torch.library`` custom ops.

* eager and ``torch.compile(fullgraph=True)`` (fake implementations give shapes and dtypes);
* autograd: gradients for value and offset_mask (offsets and modulation weights; the padding channels of
  offset_mask get zero), computed in float32 (float64 for float64) and returned in the inputs' dtypes;
* CUDA: runs on PyTorch's current stream; the value gradient uses atomics unless
  ``torch.use_deterministic_algorithms(True)`` is on, then a fixed-order gather. The CPU backward is always
  deterministic.
"""
import torch
from torch import Tensor

from dynrefer import _C
from dynrefer.ops._torch_roi_align import _desc, _device_of, _stream
from dynrefer.ops.dcnv4 import dcnv4_params, out_shape


@torch.library.custom_op("dynrefer::dcnv4", mutates_args=())
def dcnv4_op(
    value: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int,
    pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int, offset_scale: float,
    remove_center: bool,
) -> Tensor:
    shape = out_shape(value.shape, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    out = torch.empty(shape, dtype=value.dtype, device=value.device)
    with _device_of(value):
        _C.dcnv4_forward(
            _desc(value), _desc(offset_mask), _desc(out), kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
            dilation_h, dilation_w, group, group_channels, offset_scale, remove_center, stream=_stream(value),
        )
    return out


@dcnv4_op.register_fake
def _dcnv4_fake(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                group, group_channels, offset_scale, remove_center):
    return value.new_empty(
        out_shape(value.shape, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w))


@torch.library.custom_op("dynrefer::dcnv4_backward", mutates_args=())
def dcnv4_backward_op(
    grad: Tensor, value: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
    pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int, offset_scale: float,
    remove_center: bool,
) -> tuple[Tensor, Tensor]:
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    gv = torch.empty(value.shape, dtype=acc, device=value.device)
    gom = torch.empty(offset_mask.shape, dtype=acc, device=value.device)
    if grad.dtype != value.dtype:
        grad = grad.to(value.dtype)
    with _device_of(value):
        _C.dcnv4_backward(
            _desc(value), _desc(offset_mask), _desc(grad), _desc(gv), _desc(gom), kernel_h, kernel_w, stride_h,
            stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
            deterministic=torch.are_deterministic_algorithms_enabled(), stream=_stream(value),
        )
    return gv.to(value.dtype), gom.to(offset_mask.dtype)


@dcnv4_backward_op.register_fake
def _dcnv4_backward_fake(grad, value, offset_mask, *params):
    return torch.empty_like(value, memory_format=torch.contiguous_format), torch.empty_like(
        offset_mask, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    value, offset_mask = inputs[:2]
    ctx.save_for_backward(value, offset_mask)
    ctx.params = inputs[2:]


def _backward(ctx, grad):
    value, offset_mask = ctx.saved_tensors
    gv, gom = dcnv4_backward_op(grad, value, offset_mask, *ctx.params)
    return (gv, gom) + (None,) * len(ctx.params)


dcnv4_op.register_autograd(_backward, setup_context=_setup)


def dcnv4(value: Tensor, offset_mask, kernel_size=3, stride=1, padding=1, dilation=1, group=4, group_channels=None,
          offset_scale=1.0, remove_center=False) -> Tensor:
    if not isinstance(offset_mask, Tensor):
        raise TypeError(f"dcnv4: offset_mask must be a torch.Tensor like value, got {type(offset_mask).__name__}")
    # Devices are checked here too: a meta tensor among the inputs would route the op to its fake implementation.
    if offset_mask.device != value.device:
        raise ValueError(f"dcnv4: offset_mask is on {offset_mask.device} but value is on {value.device}")
    params, _ = dcnv4_params(tuple(value.shape), kernel_size, stride, padding, dilation, group, group_channels,
                             offset_scale, remove_center)
    return dcnv4_op(value, offset_mask, *params)
