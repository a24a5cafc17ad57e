"""Vision encoders with the state-dict layouts of the checkpoints DynRefer starts from.

EVAViT   LAVIS's EVA ViT-g (``eva_vit_g.pth``): cls_token, pos_embed, patch_embed.proj,
         blocks.i.{norm1, attn.{qkv, q_bias, v_bias, proj}, norm2, mlp.{fc1, fc2}}; no final norm (BLIP-2 applies
         its own ``ln_vision``); exact GELU; LayerNorm eps 1e-6.
CLIPViT  OpenAI CLIP ViT (LAVIS ``clip_vit``): conv1, class_embedding, positional_embedding, ln_pre,
         transformer.resblocks.i.{ln_1, attn.{in_proj_weight, in_proj_bias, out_proj}, ln_2, mlp.{c_fc, c_proj}};
         QuickGELU; no ln_post (LAVIS drops the last block and the head).
Both return [B, 1 + grid², width] tokens (CLS first) and expose ``width``, ``patch_size``, ``image_size``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dynrefer.nn.attention import FusedQKVAttention, InProjAttention

if TYPE_CHECKING:
    from dynrefer.model.config import VisionConfig

__all__ = ["EVAViT", "CLIPViT", "build_vision_encoder", "interpolate_pos_embed"]


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class EVAMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EVABlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = FusedQKVAttention(dim, heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = EVAMlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EVAViT(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.width = cfg.image_size, cfg.patch_size, cfg.width
        n = cfg.grid ** 2
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.width))
        self.blocks = nn.ModuleList(EVABlock(cfg.width, cfg.num_heads, cfg.mlp_hidden, cfg.eps)
                                    for _ in range(cfg.depth))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_linear)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return x


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class CLIPBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = InProjAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CLIPTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(CLIPBlock(dim, heads, hidden, eps) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.resblocks:
            x = blk(x)
        return x


class CLIPViT(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.width = cfg.image_size, cfg.patch_size, cfg.width
        self.input_resolution, self.num_features = cfg.image_size, cfg.width
        scale = cfg.width ** -0.5
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid ** 2 + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.transformer = CLIPTransformer(cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_hidden, cfg.eps)

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.transformer(self.ln_pre(x))


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_vision_encoder(cfg: VisionConfig) -> Union[EVAViT, CLIPViT]:
    if cfg.arch == "eva":
        return EVAViT(cfg)
    if cfg.arch == "clip":
        return CLIPViT(cfg)
    raise ValueError(f"vision arch must be 'eva' or 'clip', got {cfg.arch!r}")


def interpolate_pos_embed(pos_embed: Tensor, num_patches: int) -> Tensor:
    """Resize a [1, 1 + g², C] position embedding to [1, 1 + num_patches, C] (bicubic, CLS kept), as LAVIS does."""
    n_old = pos_embed.shape[1] - 1
    if n_old == num_patches:
        return pos_embed
    g_old, g_new = int(round(n_old ** 0.5)), int(round(num_patches ** 0.5))
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    C = grid.shape[-1]
    grid = grid.reshape(1, g_old, g_old, C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, g_new * g_new, C).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)
