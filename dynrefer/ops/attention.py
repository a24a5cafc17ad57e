"""Fused scaled-dot-product attention with the semantics of ``torch.nn.functional.scaled_dot_product_attention``,
for NumPy arrays and PyTorch tensors."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from dynrefer.ops._common import is_torch_tensor

def check_scalars(q_last_dim: int, dropout_p: float, is_causal: bool, scale: Optional[float]
                  ) -> Tuple[bool, float]:
    """(is_causal, scale) as the kernel takes them, shared by the NumPy and PyTorch paths: rejects dropout, which
    the kernel does not have, converts types and fills the default scale (the kernel checks that it is finite)."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"attention: dropout_p must be a real number, got {type(dropout_p).__name__}")
    if float(dropout_p) != 0.0:
        raise ValueError(
            f"attention: dropout_p={dropout_p!r} is not supported (dynrefer's attention has no dropout; apply "
            "dropout outside or pass dropout_p=0.0)"
        )
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"attention: is_causal must be a bool, got {type(is_causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(q_last_dim) if q_last_dim > 0 else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"attention: scale must be a real number or None, got {type(scale).__name__}")
    return bool(is_causal), float(scale)


def check_shapes(qs: Sequence[int], ks: Sequence[int], vs: Sequence[int], ms: Optional[Sequence[int]],
                 enable_gqa: bool = False) -> None:
    """Check what folding q/k/v ([..., L, D], any rank >= 2) into the kernel's [B, H, L, D] and broadcasting the
    mask need: equal ranks, equal leading dims (with ``enable_gqa``, k and v may have fewer heads in dim -3, a
    divisor of q's), a mask broadcastable to [..., Lq, Lk] (ms may be None). The kernel checks the rest (head dims,
    lengths, dtypes, devices)."""
    if len(qs) < 2 or len(ks) != len(qs) or len(vs) != len(qs):
        raise ValueError(
            f"attention: q, k, v must have the same rank >= 2 ([..., L, D]), got shapes {qs}, {ks}, {vs}"
        )
    if enable_gqa and len(qs) >= 3:
        if ks[:-3] != qs[:-3] or vs[:-2] != ks[:-2] or ks[-3] < 1 or qs[-3] % ks[-3] != 0:
            raise ValueError(
                "attention: with enable_gqa, q, k, v must share their leading dims and k, v their head count "
                f"(dim -3), a divisor of q's, got {qs}, {ks}, {vs}"
            )
    elif ks[:-2] != qs[:-2] or vs[:-2] != qs[:-2]:
        raise ValueError(f"attention: q, k, v must share their leading (batch, head) dims, got {qs}, {ks}, {vs}")
    if ms is not None:
        full = tuple(qs[:-1]) + (ks[-2],)
        if len(ms) > len(full) or any(m not in (1, f) for m, f in zip(ms[::-1], full[::-1])):
            raise ValueError(f"attention: attn_mask of shape {tuple(ms)} does not broadcast to {full}")


def check_gqa(enable_gqa: bool) -> bool:
    if not isinstance(enable_gqa, (bool, np.bool_)):
        raise TypeError(f"attention: enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    return bool(enable_gqa)


def _as4d_numpy(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim > 4:
        return x.reshape((-1,) + x.shape[-3:])
    return x


def attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, attn_mask: Optional[np.ndarray] = None,
                    is_causal: bool = False, scale: Optional[float] = None, impl: str = "fast",
                    return_lse: bool = False, enable_gqa: bool = False
                    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The NumPy entry point: ``attention`` on arrays (forward only), optionally returning the log-sum-exp
    (float32; float64 for float64 data) and choosing the CPU implementation (``impl``: 'fast', 'elementwise' —
    the CUDA kernels' per-row bodies run on the CPU — 'portable', 'avx2', 'avx512')."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"attention: {name} must be a NumPy array, got {type(x).__name__}")
    is_causal, scale = check_scalars(q.shape[-1] if q.ndim else 0, 0.0, is_causal, scale)
    if attn_mask is not None and not isinstance(attn_mask, np.ndarray):
        raise TypeError(f"attention: attn_mask must be a NumPy array or None, got {type(attn_mask).__name__}")
    check_shapes(q.shape, k.shape, v.shape, None if attn_mask is None else attn_mask.shape, check_gqa(enable_gqa))
    lead = q.shape[:-2]
    lq, lk, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    mask4 = None
    if attn_mask is not None:
        mask4 = _as4d_numpy(np.broadcast_to(attn_mask, lead + (lq, lk)))  # stride 0 on broadcast dims
    q4, k4, v4 = _as4d_numpy(q), _as4d_numpy(k), _as4d_numpy(v)
    out = np.empty(q4.shape[:3] + (dv,), dtype=q.dtype)
    lse = np.empty(q4.shape[:3], dtype=np.float64 if q.dtype == np.float64 else np.float32)
    from dynrefer import _C

    _C.attention_forward(q4, k4, v4, mask4, out, lse, scale, is_causal, impl=impl)
    out = out.reshape(lead + (lq, dv))
    return (out, lse.reshape(lead + (lq,))) if return_lse else out


def attention(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
              scale: Optional[float] = None, enable_gqa: bool = False) -> Any:
    """Scaled-dot-product attention, a drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        q: ``[..., Lq, D]`` queries (usually ``[B, H, Lq, D]``; rank >= 2); k: ``[..., Lk, D]``; v: ``[..., Lk, Dv]``
            (same leading dims; D, Dv in 1..256). float32/float64/float16/bfloat16, any strides.
        attn_mask: None, a bool mask (True = attend) or an additive float mask, broadcastable to
            ``[..., Lq, Lk]`` (broadcast through strides, never materialised for 3-D and 4-D inputs).
        dropout_p: must be 0 (dropout is not implemented; anything else raises ValueError).
        is_causal: top-left aligned causal mask (query i sees keys j <= i), exclusive with attn_mask.
        scale: score scale, default ``1 / sqrt(D)``.
        enable_gqa: grouped-query attention: k and v may have fewer heads (dim -3), a divisor of q's; query head
            h reads key/value head ``h // (Hq // Hkv)`` (no copies); their gradients sum over each group.

    Returns ``[..., Lq, Dv]``: an ndarray for NumPy input (forward only), a tensor for PyTorch input
    (differentiable in q, k, v; the mask gets no gradient; ``torch.compile``-able). A row whose keys are all
    masked gives zeros and zero gradients (as PyTorch >= 2.5 does; older math backends gave NaN) when its inputs
    are finite; NaN and infinities in q, k, v or an additive mask propagate exactly as in PyTorch's SDPA (bool and
    causal masks act as an added -inf, masked keys still enter the products with weight 0).
    """
    if is_torch_tensor(q):
        from dynrefer.ops import _torch_attention

        return _torch_attention.attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if not isinstance(q, np.ndarray):
        raise TypeError(f"attention: q must be a NumPy array or a torch.Tensor, got {type(q).__name__}")
    check_scalars(q.shape[-1] if q.ndim else 0, dropout_p, is_causal, scale)
    return attention_numpy(q, k, v, attn_mask, is_causal, scale, enable_gqa=enable_gqa)
