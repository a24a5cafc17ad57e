"""dynrefer.ops: the kernels as framework-agnostic ops.

Each op takes NumPy arrays (returns arrays, forward only) or PyTorch tensors on CPU or CUDA (returns tensors,
differentiable through ``torch.library`` custom ops that also work under ``torch.compile`` and autocast).
Importing this package does not import PyTorch; the PyTorch registrations load on first use with a tensor.

Ops:
    roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)
        drop-in for ``torchvision.ops.roi_align``
    RoIAlign(output_size, spatial_scale, sampling_ratio, aligned=False)
        drop-in for ``torchvision.ops.RoIAlign`` (an ``nn.Module``; needs PyTorch)
    crop_resize(images, boxes, size=224, ...), phash(images, boxes, method=...), phash_hex(hashes),
    hamming(a, b), select_views(hashes, coeffs, num)
        nested-view kernels; see ``dynrefer.views`` for the transform built on them
    dcnv4(value, offset_mask, kernel_size=3, stride=1, padding=1, dilation=1, group=4, group_channels=None,
          offset_scale=1.0, remove_center=False)
        DCNv4 deformable aggregation (channels last), DCNv4's semantics on CPU and CUDA
    attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None)
        drop-in for ``torch.nn.functional.scaled_dot_product_attention`` (fused, forward and backward)
    check_errors(device=None)
        synchronise and raise the error a CUDA kernel recorded on the device (a RoI-Align batch index outside
        [0, N): checked on the device, without a host sync, and otherwise raised by the next call)
    set_cuda_index_checks(enabled)
        whether the next CUDA RoI-Align call raises such a recorded error (default True)
"""
from __future__ import annotations

from typing import Any

from dynrefer.ops._config import set_cuda_index_checks
from dynrefer.ops.errors import BoxesShapeError, check_errors
from dynrefer.ops.attention import attention
from dynrefer.ops.dcnv4 import dcnv4, offset_mask_channels
from dynrefer.ops.roi_align import roi_align
from dynrefer.ops.views import crop_resize, hamming, phash, phash_hex, select_views

__all__ = ["roi_align", "RoIAlign", "attention", "dcnv4", "offset_mask_channels", "crop_resize", "phash", "phash_hex",
           "hamming", "select_views", "BoxesShapeError", "check_errors", "set_cuda_index_checks"]


def __getattr__(name: str) -> Any:
    # nn.Module classes need torch: load them only when asked for.
    if name == "RoIAlign":
        from dynrefer.ops._torch_roi_align import RoIAlign

        return RoIAlign
    raise AttributeError(f"module 'dynrefer.ops' has no attribute {name!r}")
