"""One switch for the model's heavy primitives: attention, RoI-Align and deformable (DCNv4) sampling.

Backends:
    "dynrefer"  dynrefer.ops.attention / roi_align / dcnv4; an op that dynrefer.ops does not provide (yet) falls
                back to its peer, so the model runs on dynrefer's kernels as soon as they exist. On a CUDA device
                an op runs on dynrefer's kernel only where it was measured at least as fast as its peer on that
                kind of GPU (the table ``cuda_dispatch.json`` next to this file, written by the GPU check;
                :func:`set_cuda_dispatch` / ``DYNREFER_CUDA_DISPATCH`` override it) — so the backend never loses.
    "peer"      torch.nn.functional.scaled_dot_product_attention, torchvision.ops.roi_align and
                :func:`dcnv4_reference` (pure PyTorch; also the peer of the A/B benchmarks).

    set_backend("peer"); with use_backend("dynrefer"): ...; get_backend()
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

_IntPair = Union[int, Tuple[int, int], Sequence[int]]

__all__ = ["set_backend", "get_backend", "use_backend", "attention", "roi_align", "dcnv4", "dcnv4_reference",
           "resolved_ops", "BACKENDS", "OPS", "set_cuda_dispatch", "get_cuda_dispatch", "cuda_dispatch_table",
           "cuda_kind"]

BACKENDS = ("dynrefer", "peer")
OPS = ("attention", "roi_align", "dcnv4")
CUDA_DISPATCH = ("table", "dynrefer", "peer")
_state = threading.local()
_default = ["dynrefer"]
_cuda_dispatch: List[Optional[str]] = [None]      # None: DYNREFER_CUDA_DISPATCH, else "table"
_table_cache: Dict[str, Dict[str, Any]] = {}


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide backend ("dynrefer" or "peer")."""
    _default[0] = _check(name)


def get_backend() -> str:
    """The backend in effect in this thread (a ``use_backend`` block wins over ``set_backend``)."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _default[0]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the block with the given backend (thread-local, nestable)."""
    _check(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def set_cuda_dispatch(mode: Optional[str]) -> None:
    """How the "dynrefer" backend chooses on CUDA devices: "table" (default: dynrefer's kernel only where
    ``cuda_dispatch.json`` measured it at least as fast as the peer on this kind of GPU), "dynrefer" (always
    dynrefer's kernels: for tests and benchmarks of the kernels themselves), "peer" (never). ``None`` restores the
    default (``DYNREFER_CUDA_DISPATCH`` when set, else "table")."""
    if mode is not None and mode not in CUDA_DISPATCH:
        raise ValueError(f"cuda dispatch must be one of {CUDA_DISPATCH} or None, got {mode!r}")
    _cuda_dispatch[0] = mode


def get_cuda_dispatch() -> str:
    """The CUDA dispatch mode in effect (see :func:`set_cuda_dispatch`)."""
    if _cuda_dispatch[0] is not None:
        return _cuda_dispatch[0]
    env = os.environ.get("DYNREFER_CUDA_DISPATCH", "").strip().lower() or "table"
    if env not in CUDA_DISPATCH:
        raise ValueError(f"DYNREFER_CUDA_DISPATCH must be one of {CUDA_DISPATCH}, got {env!r}")
    return env


def cuda_dispatch_table(path: Optional[str] = None) -> Dict[str, Any]:
    """The measured table: ``{"devices": {"sm_XY": {"ops": {op: {pass: peer time / dynrefer time}}}}}``."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_dispatch.json")
    if path not in _table_cache:
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except FileNotFoundError:
            table = {}
        if not isinstance(table.get("devices", {}), dict):
            raise ValueError(f"{path}: 'devices' must be a mapping of compute capabilities")
        _table_cache[path] = table
    return _table_cache[path]


def cuda_kind(device: Union[torch.device, str, int, None]) -> str:
    """The table's key for a CUDA device: its compute capability, ``"sm_90"`` for an H100."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _measured_faster(name: str, kind: str, table: Optional[Dict[str, Any]] = None) -> bool:
    passes = (table or cuda_dispatch_table()).get("devices", {}).get(kind, {}).get("ops", {}).get(name)
    return bool(passes) and all(float(r) >= 1.0 for r in passes.values())


def _dr_op(name: str, device: Union[torch.device, str, None] = None) -> Optional[Callable[..., Any]]:
    """dynrefer's op for ``name`` when the backend in effect should use it on ``device``, else None."""
    if get_backend() != "dynrefer":
        return None
    if device is not None and torch.device(device).type == "cuda":
        mode = get_cuda_dispatch()
        if mode == "peer" or (mode == "table" and not _measured_faster(name, cuda_kind(device))):
            return None
    try:
        import dynrefer.ops as ops
    except ImportError:  # extension not built
        return None
    return getattr(ops, name, None)


def resolved_ops(device: Union[torch.device, str, None] = None) -> Dict[str, str]:
    """Which implementation each primitive uses right now on ``device`` (default: the CPU):
    ``{"attention": "dynrefer" | "peer", "roi_align": ..., "dcnv4": ...}``."""
    return {n: ("dynrefer" if _dr_op(n, device) is not None else "peer") for n in OPS}


# --------------------------------------------------------------------------------------------- attention
def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
              scale: Optional[float] = None) -> Tensor:
    """``F.scaled_dot_product_attention`` semantics on [B, H, L, D]; no dropout (the model uses none)."""
    op = _dr_op("attention", q.device)
    if op is not None and q.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return op(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal,
                                          scale=scale)


# --------------------------------------------------------------------------------------------- RoI-Align
def roi_align(input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: _IntPair, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` semantics."""
    op = _dr_op("roi_align", input.device)
    if op is not None:
        return op(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    import torchvision

    return torchvision.ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


# --------------------------------------------------------------------------------------------- DCNv4
def _pair(x: _IntPair) -> Tuple[int, ...]:
    return (x, x) if isinstance(x, int) else tuple(x)


def dcnv4_reference(value: Tensor, offset_mask: Tensor, kernel_size: _IntPair = 3, stride: _IntPair = 1,
                    padding: _IntPair = 1, dilation: _IntPair = 1, group: int = 4, group_channels: Optional[int] = None,
                    offset_scale: float = 1.0, remove_center: bool = False) -> Tensor:
    """Pure-PyTorch DCNv4 (``dynrefer.ops.dcnv4``'s semantics): value [N,H,W,G*D] channels-last, offset_mask [N,Ho,Wo,P].

    For each output pixel, group g and tap k (kernel x outer, y inner): sample value bilinearly at
    (h, w) = (ho*s - p + (dil*(kh-1))//2*(1-os) + (j*dil + dy)*os, likewise w with i, dx), only when
    -1 < h < H and -1 < w < W, corners outside the map reading 0; weight by the raw modulation m (no softmax).
    Differentiable through autograd (value, offsets and masks).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    N, H, W, C = value.shape
    G = group
    D = group_channels if group_channels is not None else C // G
    if G * D != C:
        raise ValueError(f"value channels {C} != group {G} * group_channels {D}")
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    taps = [(i, j) for i in range(kw) for j in range(kh)]  # kernel x outer, kernel y inner
    if remove_center:
        taps = [(i, j) for (i, j) in taps if not (i == kw // 2 and j == kh // 2)]
    K = len(taps)
    if offset_mask.shape[:3] != (N, Ho, Wo) or offset_mask.shape[3] < 3 * G * K:
        raise ValueError(f"offset_mask must be [{N},{Ho},{Wo},>= {3 * G * K}], got {list(offset_mask.shape)}")
    om = offset_mask[..., : 3 * G * K].reshape(N, Ho, Wo, G, 3 * K)
    off = om[..., : 2 * K].reshape(N, Ho, Wo, G, K, 2)
    dx, dy = off[..., 0], off[..., 1]
    m = om[..., 2 * K:]  # [N,Ho,Wo,G,K]
    dt = value.dtype
    ti = torch.tensor([t[0] for t in taps], dtype=dt, device=value.device)
    tj = torch.tensor([t[1] for t in taps], dtype=dt, device=value.device)
    base_w = (torch.arange(Wo, dtype=dt, device=value.device) * sw - pw
              + (dw * (kw - 1)) // 2 * (1 - offset_scale)).view(1, 1, Wo, 1, 1)
    base_h = (torch.arange(Ho, dtype=dt, device=value.device) * sh - ph
              + (dh * (kh - 1)) // 2 * (1 - offset_scale)).view(1, Ho, 1, 1, 1)
    w = base_w + (ti * dw + dx) * offset_scale  # [N,Ho,Wo,G,K]
    h = base_h + (tj * dh + dy) * offset_scale
    # Bilinear sampling with zero outside the map is F.grid_sample(padding_mode="zeros"); a point with h <= -1,
    # w <= -1, h >= H or w >= W has all four corners outside, so DCNv4's validity test changes nothing. Pixel
    # coordinates map to align_corners=False grid units by g = (2x + 1) / size - 1.
    grid = torch.stack([(2 * w + 1) / W - 1, (2 * h + 1) / H - 1], dim=-1)  # [N,Ho,Wo,G,K,2]
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(N * G, Ho, Wo * K, 2)
    vg = value.reshape(N, H, W, G, D).permute(0, 3, 4, 1, 2).reshape(N * G, D, H, W)
    sampled = F.grid_sample(vg, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(N, G, D, Ho, Wo, K)
    mg = m.permute(0, 3, 1, 2, 4).unsqueeze(2)  # [N,G,1,Ho,Wo,K]
    out = (sampled * mg).sum(-1)  # [N,G,D,Ho,Wo]
    return out.permute(0, 3, 4, 1, 2).reshape(N, Ho, Wo, C)


def dcnv4(value: Tensor, offset_mask: Tensor, kernel_size: _IntPair = 3, stride: _IntPair = 1, padding: _IntPair = 1,
          dilation: _IntPair = 1, group: int = 4, group_channels: Optional[int] = None, offset_scale: float = 1.0,
          remove_center: bool = False) -> Tensor:
    """DCNv4 deformable aggregation through the active backend."""
    op = _dr_op("dcnv4", value.device)
    if op is not None:
        return op(value, offset_mask, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                  group=group, group_channels=group_channels, offset_scale=offset_scale,
                  remove_center=remove_center)
    return dcnv4_reference(value, offset_mask, kernel_size, stride, padding, dilation, group, group_channels,
                           offset_scale, remove_center)
