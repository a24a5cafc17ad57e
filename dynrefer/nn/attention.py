"""Attention layers over the backend switch (dynrefer.nn.backend.attention).

Three projection layouts, each named as the checkpoints it must load name them:
    SeparateQKVAttention   query / key / value Linear (BERT, BLIP-2 Q-Former, tag and attribute decoders)
    FusedQKVAttention      qkv Linear without bias + q_bias, v_bias (k has no bias) + proj (EVA ViT-g, LAVIS layout)
    InProjAttention        in_proj_weight, in_proj_bias, out_proj (CLIP ViT, nn.MultiheadAttention layout)
No attention-probability dropout: the backend's attention has none (the frozen ViT uses 0; the trainable
decoders are trained with 0 here).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dynrefer.nn import backend

__all__ = ["split_heads", "merge_heads", "key_padding_mask", "SeparateQKVAttention", "FusedQKVAttention",
           "InProjAttention"]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, L, H*D] → [B, H, L, D]."""
    B, L, C = x.shape
    return x.view(B, L, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, D] → [B, L, H*D]."""
    B, H, L, D = x.shape
    return x.transpose(1, 2).reshape(B, L, H * D)


def key_padding_mask(mask: Optional[Tensor]) -> Optional[Tensor]:
    """A [B, Lk] 0/1 (or bool) key mask → a boolean [B, 1, 1, Lk] attention mask (True = attend), or None."""
    if mask is None:
        return None
    return mask.to(torch.bool)[:, None, None, :]


class SeparateQKVAttention(nn.Module):
    """Self- or cross-attention with ``query``, ``key``, ``value`` projections (BERT naming).

    forward(x, context=None, mask=None): context defaults to x; mask is a [B, Lk] key mask (1 = attend).
    Returns [B, Lq, hidden] before any output projection (BERT applies its own ``output.dense``).
    ``dropout``: BERT's dropout on the attention probabilities, in train mode only (then PyTorch's SDPA runs).
    """

    def __init__(self, hidden: int, num_heads: int, context_width: Optional[int] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden {hidden} not divisible by num_heads {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_heads = num_heads
        self.dropout = float(dropout)
        kv = context_width or hidden
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv, hidden)
        self.value = nn.Linear(kv, hidden)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        ctx = x if context is None else context
        q = split_heads(self.query(x), self.num_heads)
        k = split_heads(self.key(ctx), self.num_heads)
        v = split_heads(self.value(ctx), self.num_heads)
        if self.training and self.dropout > 0:
            return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask(mask),
                                                              dropout_p=self.dropout))
        return merge_heads(backend.attention(q, k, v, attn_mask=key_padding_mask(mask)))


class FusedQKVAttention(nn.Module):
    """EVA/BEiT attention: one ``qkv`` matrix (no bias) with separate ``q_bias`` and ``v_bias`` and ``proj``."""

    q_bias: Optional[nn.Parameter]
    v_bias: Optional[nn.Parameter]

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:  # both or neither
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(B, L, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(merge_heads(backend.attention(q, k, v)))


class InProjAttention(nn.Module):
    """``nn.MultiheadAttention`` parameter layout (in_proj_weight, in_proj_bias, out_proj) on the backend.
    ``causal``: each token attends to itself and the tokens before it (CLIP's text tower)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.causal = bool(causal)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        o = backend.attention(split_heads(q, self.num_heads), split_heads(k, self.num_heads),
                              split_heads(v, self.num_heads), is_causal=self.causal)
        return self.out_proj(merge_heads(o))


