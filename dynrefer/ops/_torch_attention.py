"""PyTorch face of attention: ``dynrefer::attention`` and ``dynrefer::attention_backward`` as ``torch.library``
custom ops.

* eager, ``torch.compile(fullgraph=True)`` (fake implementations give shapes and dtypes), autocast (the op runs in
  the dtype it is given, float32 accumulation for float16/bfloat16);
* autograd: gradients for q, k and v from the saved output and log-sum-exp (no Lq x Lk matrix is kept); an
  additive float mask gets no gradient;
* masks are broadcast with ``expand`` (stride 0, never materialised for 2-D, 3-D and 4-D inputs);
* grouped-query attention (``enable_gqa``): k and v keep their fewer heads (no copies); dK and dV sum over each
  group's query heads in the kernel;
* CUDA: runs on PyTorch's current stream; the backward is a gather, deterministic.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from dynrefer import _C
from dynrefer.ops._torch_roi_align import _desc, _device_of, _stream
from dynrefer.ops.attention import check_gqa, check_scalars, check_shapes

def _out_specs(q, v):
    """Shapes and dtypes of (out, lse) for 4-D q and v, for allocating them before the kernel runs and for fake
    tensors. The kernel validates the arguments; this checks only what computing the shapes needs."""
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q and v must be 4-D [B, H, L, D], got shapes {tuple(q.shape)}, {tuple(v.shape)}")
    b, h, lq, _ = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return ((b, h, lq, v.shape[3]), q.dtype), ((b, h, lq), lse_dtype)


@torch.library.custom_op("dynrefer::attention", mutates_args=())
def attention_op(
    q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, scale: float
) -> Tuple[Tensor, Tensor]:
    (os, od), (ls, ld) = _out_specs(q, v)
    out = torch.empty(os, dtype=od, device=q.device)
    lse = torch.empty(ls, dtype=ld, device=q.device)
    with _device_of(q):
        _C.attention_forward(
            _desc(q), _desc(k), _desc(v), None if mask is None else _desc(mask), _desc(out), _desc(lse), scale,
            is_causal, stream=_stream(q),
        )
    return out, lse


@attention_op.register_fake
def _attention_fake(q, k, v, mask, is_causal, scale):
    (os, od), (ls, ld) = _out_specs(q, v)
    return q.new_empty(os, dtype=od), q.new_empty(ls, dtype=ld)


@torch.library.custom_op("dynrefer::attention_backward", mutates_args=())
def attention_backward_op(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Optional[Tensor], is_causal: bool,
    scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    grad = grad.to(q.dtype)
    with _device_of(q):
        _C.attention_backward(
            _desc(q), _desc(k), _desc(v), None if mask is None else _desc(mask), _desc(out), _desc(lse), _desc(grad),
            _desc(dq), _desc(dk), _desc(dv), scale, is_causal, stream=_stream(q),
        )
    return dq, dk, dv


@attention_backward_op.register_fake
def _attention_backward_fake(grad, q, k, v, out, lse, mask, is_causal, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format
    ), torch.empty_like(v, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    q, k, v, mask, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.is_causal, ctx.scale = is_causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None, None
    dq, dk, dv = attention_backward_op(grad_out, q, k, v, out, lse, mask, ctx.is_causal, ctx.scale)
    return dq, dk, dv, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup)


def _as4d(x: Tensor) -> Tensor:
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() > 4:
        return x.reshape((-1,) + tuple(x.shape[-3:]))
    return x


def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False) -> Tensor:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(x).__name__}")
    # Devices are checked here too: a meta tensor among the inputs would route the op to its fake implementation.
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    is_causal, scale = check_scalars(q.shape[-1] if q.dim() else 0, dropout_p, is_causal, scale)
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attention: attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.device != q.device:
            raise ValueError(f"attention: attn_mask is on {attn_mask.device} but q is on {q.device}")
    check_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape), None if attn_mask is None else tuple(attn_mask.shape),
                 check_gqa(enable_gqa))
    lead, lq, lk, dv = tuple(q.shape[:-2]), q.shape[-2], k.shape[-2], v.shape[-1]
    mask4 = None
    if attn_mask is not None:
        mask4 = _as4d(attn_mask.expand(lead + (lq, lk)))  # stride 0 on broadcast dims
    out, _ = attention_op(_as4d(q), _as4d(k), _as4d(v), mask4, is_causal, scale)
    return out.reshape(lead + (lq, dv))
