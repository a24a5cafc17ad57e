"""DynRefer's align module: DCNv4 deformable aggregation of one view's RoI features guided by the tight view.

Parameter names follow the official ``cvem_align`` module so its weights load unchanged:
    offset_mask_dw  Conv2d(2C → C, 3×3, pad 1, groups=C) on cat[input, reference] (channels first)
    offset_mask     Linear(C → P), P = 3·G·K rounded up to a multiple of 8, zero-initialised
    value_proj      Linear(C → C), xavier-uniform, zero bias
    output_proj     Linear(C → C), xavier-uniform, zero bias
Kernel 3, stride 1, pad 1, dilation 1, group 4, offset_scale 1.0 (``dynrefer.ops.dcnv4``).
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from dynrefer.nn import backend

__all__ = ["DeformableAlign"]


class DeformableAlign(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3, stride: Union[int, Tuple[int, int]] = 1,
                 pad: Union[int, Tuple[int, int]] = 1, dilation: Union[int, Tuple[int, int]] = 1, group: int = 4,
                 offset_scale: float = 1.0, dw_kernel_size: int = 3, remove_center: bool = False) -> None:
        super().__init__()
        if channels % group:
            raise ValueError(f"channels ({channels}) must be divisible by group ({group})")
        self.channels, self.kernel_size, self.stride, self.pad = channels, kernel_size, stride, pad
        self.dilation, self.group, self.offset_scale = dilation, group, offset_scale
        self.group_channels = channels // group
        self.remove_center = bool(remove_center)
        self.K = group * (kernel_size * kernel_size - int(self.remove_center))
        self.offset_mask_dw = nn.Conv2d(2 * channels, channels, dw_kernel_size, stride=1,
                                        padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, int(math.ceil(3 * self.K / 8) * 8))
        self.value_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, reference: Tensor, input: Tensor) -> Tensor:
        """reference, input: [N, C, H, W] (tight-view and other-view RoI features) → aligned input [N, C, H, W]."""
        if reference.shape != input.shape or input.dim() != 4 or input.shape[1] != self.channels:
            raise ValueError(f"reference and input must both be [N, {self.channels}, H, W]; got "
                             f"{list(reference.shape)} and {list(input.shape)}")
        N, C, H, W = input.shape
        x_last = input.permute(0, 2, 3, 1)  # [N, H, W, C]
        value = self.value_proj(x_last).contiguous()
        om = self.offset_mask_dw(torch.cat([input, reference], dim=1)).permute(0, 2, 3, 1)
        offset_mask = self.offset_mask(om).contiguous()
        out = backend.dcnv4(value, offset_mask, kernel_size=self.kernel_size, stride=self.stride,
                            padding=self.pad, dilation=self.dilation, group=self.group,
                            group_channels=self.group_channels, offset_scale=self.offset_scale,
                            remove_center=self.remove_center)
        return self.output_proj(out).permute(0, 3, 1, 2)
