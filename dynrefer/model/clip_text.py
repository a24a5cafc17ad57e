"""EVA-CLIP's text tower, the frozen text encoder of the official DynRefer.

State-dict layout (EVA-CLIP's ``TextTransformer``; the official model keeps it as ``text_encoder``, so its keys
read ``text_encoder.<key>``; an EVA-CLIP checkpoint stores it as ``text.<key>``):

    token_embedding.weight                       [vocab 49408, width 768]
    positional_embedding                         [context 77, width]
    transformer.resblocks.{i}.ln_1.{weight,bias} [width]
    transformer.resblocks.{i}.attn.in_proj_weight [3·width, width]   (nn.MultiheadAttention layout)
    transformer.resblocks.{i}.attn.in_proj_bias  [3·width]
    transformer.resblocks.{i}.attn.out_proj.{weight,bias} [width, width], [width]
    transformer.resblocks.{i}.ln_2.{weight,bias} [width]
    transformer.resblocks.{i}.mlp.c_fc.{weight,bias}   [4·width, width], [4·width]
    transformer.resblocks.{i}.mlp.c_proj.{weight,bias} [width, 4·width], [width]
    ln_final.{weight,bias}                       [width]
    text_projection                              [width, embed_dim 1024]   (used as x @ text_projection)
    logit_scale                                  []   (unused by DynRefer; kept so checkpoints load whole)
and a causal mask buffer ``attn_mask`` [77, 77] that is not part of the state dict.

Forward: token + positional embeddings → pre-LN blocks (causal self-attention, exact-GELU MLP; LayerNorm eps 1e-5)
→ ``ln_final`` → the features at each row's EOT token (the position of the largest id, EOT being 49407) →
``@ text_projection``. DynRefer embeds its tags and prompts with exactly this, with no normalisation.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from dynrefer.model.text import FrozenTextEncoder
from dynrefer.nn.attention import InProjAttention

__all__ = ["CLIPTextTransformer", "EVACLIPTextEncoder", "load_clip_text_weights", "ClipTextLoadReport",
           "eva_clip_text_keys"]


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = InProjAttention(width, heads, causal=True)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp_width)),
                                              ("gelu", _QuickGELU() if quick_gelu else nn.GELU()),
                                              ("c_proj", nn.Linear(mlp_width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads, mlp_width, quick_gelu=False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_width, quick_gelu)
                                       for _ in range(layers))

    def forward(self, x):
        for blk in self.resblocks:
            x = blk(x)
        return x


class CLIPTextTransformer(nn.Module):
    """EVA-CLIP's ``TextTransformer`` (batch-first; attention through ``dynrefer.nn.backend.attention``).

    ``forward(text)``: ids ``[B, L]`` (L ≤ context_length) → ``[B, embed_dim]``; ``forward_features`` stops before
    the projection; ``forward_tokens`` returns every position projected (the official ``forward_dynrefer``).
    """

    def __init__(self, vocab_size: int = 49408, width: int = 768, layers: int = 12, heads: int = 12,
                 context_length: int = 77, embed_dim: int = 1024, mlp_width: Optional[int] = None,
                 quick_gelu: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} not divisible by heads {heads}")
        self.vocab_size, self.context_length, self.embed_dim = vocab_size, context_length, embed_dim
        self.transformer = _Transformer(width, layers, heads, mlp_width or 4 * width, quick_gelu)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width, eps=1e-5)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.register_buffer("attn_mask", self.build_attention_mask(), persistent=False)
        self.init_parameters()

    def build_attention_mask(self) -> torch.Tensor:
        """The additive causal mask (−inf above the diagonal) EVA-CLIP keeps; the forward passes ``is_causal``
        to the attention instead, which is the same mask."""
        return torch.full((self.context_length, self.context_length), float("-inf")).triu_(1)

    @torch.no_grad()
    def init_parameters(self) -> None:
        """EVA-CLIP's initialisation (for randomly initialised towers; checkpoints overwrite it)."""
        w, n = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = w ** -0.5 * (2 * n) ** -0.5, w ** -0.5, (2 * w) ** -0.5
        for blk in self.transformer.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(blk.attn.in_proj_bias)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(blk.attn.out_proj.bias)
            nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def _hidden(self, text):
        if text.dim() != 2:
            raise ValueError(f"text must be token ids [B, L], got shape {tuple(text.shape)}")
        L = text.shape[1]
        if L > self.context_length:
            raise ValueError(f"{L} tokens exceed the context length {self.context_length}")
        x = self.token_embedding(text) + self.positional_embedding[:L]
        return self.ln_final(self.transformer(x))

    def forward_features(self, text: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids → ``[B, width]``: ``ln_final`` output at each row's largest id (EOT)."""
        x = self._hidden(text)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.forward_features(text) @ self.text_projection

    def forward_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """Every position's ``ln_final`` output projected: ``[B, L, embed_dim]``."""
        return self._hidden(text) @ self.text_projection


def eva_clip_text_keys(layers: int = 12) -> Dict[str, tuple]:
    """The state-dict keys of EVA-CLIP's ``TextTransformer`` with ``layers`` blocks, in module order."""
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    return (["positional_embedding", "text_projection", "logit_scale"]
            + [f"transformer.resblocks.{i}.{k}" for i in range(layers) for k in block]
            + ["token_embedding.weight", "ln_final.weight", "ln_final.bias"])


class EVACLIPTextEncoder(FrozenTextEncoder, CLIPTextTransformer):
    """The frozen EVA-CLIP text tower with its tokenizer: ``encode(texts)`` → ``[N, embed_dim]`` float32, the
    projected EOT features, unnormalised (as the official ``encode_text``).

    ``cfg``: a :class:`~dynrefer.model.config.TextEncoderConfig` (kind "eva_clip"); ``tokenizer``: a
    :class:`~dynrefer.model.clip_tokenizer.CLIPTokenizer` (default: one over the installed vocabulary file).
    With ``cfg.weights`` set, the weights are loaded from that file (:func:`load_clip_text_weights`).
    """

    kind = "eva_clip"

    def __init__(self, cfg: Any, tokenizer: Any = None) -> None:
        if tokenizer is None:
            from dynrefer.model.clip_tokenizer import CLIPTokenizer

            tokenizer = CLIPTokenizer(bpe_path=getattr(cfg, "bpe_path", None), context_length=cfg.max_length)
        if len(tokenizer) > cfg.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} ids but text_encoder.vocab_size is {cfg.vocab_size}")
        CLIPTextTransformer.__init__(self, vocab_size=cfg.vocab_size, width=cfg.hidden_size, layers=cfg.num_layers,
                                     heads=cfg.num_heads, context_length=cfg.max_length, embed_dim=cfg.embed_dim,
                                     mlp_width=cfg.intermediate_size)
        self.tokenizer = tokenizer
        self.max_length = cfg.max_length
        self.load_report = None
        if getattr(cfg, "weights", None):
            self.load_report = load_clip_text_weights(self, cfg.weights)
        self._init_frozen()

    @property
    def width(self) -> int:
        """The width of the embeddings it makes (the projection's, 1024 for EVA-CLIP ViT-g)."""
        return self.embed_dim

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        dev = self._device()
        outs = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[i:i + batch_size]), context_length=self.max_length).to(dev)
            outs.append(self(ids).float())
        if not outs:
            return torch.zeros(0, self.width, device=dev)
        return torch.cat(outs)

    def _fingerprint_parts(self):
        return self.state_dict(), f"clip-bpe:{self.tokenizer.digest}:{self.max_length}".encode()


# ------------------------------------------------------------------------------------------------ loading
class ClipTextLoadReport:
    """What :func:`load_clip_text_weights` did: ``loaded``, ``missing`` (tower keys the file lacks, left as they
    were) and ``unexpected`` (text keys of the file the tower does not have), each a sorted list of tower keys."""

    def __init__(self, path: str, prefix: str, loaded: List[str], missing: List[str], unexpected: List[str]) -> None:
        self.path, self.prefix = path, prefix
        self.loaded, self.missing, self.unexpected = loaded, missing, unexpected

    def __repr__(self) -> str:
        return (f"ClipTextLoadReport({self.path}: prefix {self.prefix!r}, {len(self.loaded)} loaded, "
                f"missing {self.missing}, unexpected {self.unexpected})")


_PREFIXES = ("text_encoder.", "text.", "")


def _text_state(sd, own_keys):
    """The tower's entries of a checkpoint dict and the prefix they carried: ``text_encoder.`` (a DynRefer model),
    ``text.`` (an EVA-CLIP model, as the official code reads ``eva_clip_psz14.pt``) or none (the tower alone)."""
    for mk in ("model", "module", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(mk), dict):
            sd = sd[mk]
            break
    if not isinstance(sd, dict):
        raise ValueError("not a state dict")
    if sd and all(str(k).startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    best, best_n = None, 0
    for p in _PREFIXES:
        n = sum(1 for k in sd if str(k).startswith(p) and str(k)[len(p):] in own_keys)
        if n > best_n:
            best, best_n = p, n
    if best is None:
        return "", {}
    if best == "":
        return "", dict(sd)
    return best, {k[len(best):]: v for k, v in sd.items() if k.startswith(best)}


def load_clip_text_weights(tower: Any, path: str, strict: bool = False) -> "ClipTextLoadReport":
    """Load EVA-CLIP text weights from ``path`` into ``tower`` (a :class:`CLIPTextTransformer`).

    The file is a ``torch.save``d dict: an EVA-CLIP checkpoint (keys ``text.*``, others ignored), a DynRefer state
    dict (``text_encoder.*``) or the tower's own keys; a ``model`` / ``module`` / ``state_dict`` wrapper and a
    ``module.`` prefix are undone. A shape mismatch raises ``ValueError`` naming the file and the key; a missing
    file raises ``FileNotFoundError`` naming the path (nothing is downloaded). With ``strict``, missing or
    unexpected keys raise too. Returns a :class:`ClipTextLoadReport`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"EVA-CLIP text weights not found at {path} (text_encoder.weights; the official code reads "
            "ckpts/eva_clip_psz14.pt, the EVA-CLIP ViT-g/14 checkpoint whose text.* entries are the text tower)")
    own = tower.state_dict()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    prefix, text = _text_state(sd, set(own))
    if not any(k in own for k in text):
        raise ValueError(f"{path}: no EVA-CLIP text-tower keys found (looked for text_encoder.*, text.* and bare "
                         "keys such as token_embedding.weight)")
    loaded, unexpected = [], []
    if prefix != "":
        unexpected = sorted(k for k in text if k not in own)
    else:
        unexpected = sorted(k for k in text if k not in own and not k.startswith(("visual.", "text_encoder.")))
    for k, v in text.items():
        if k in own:
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"{path}: {prefix}{k} is not a tensor")
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"{path}: {prefix}{k} has shape {tuple(v.shape)}, the text tower expects "
                                 f"{tuple(own[k].shape)}")
            loaded.append(k)
    missing = sorted(k for k in own if k not in text)
    if strict and (missing or unexpected):
        raise ValueError(f"{path}: missing text-tower keys {missing}, unexpected keys {unexpected}")
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(text[k].to(own[k].dtype))
    if hasattr(tower, "_fingerprint"):
        tower._fingerprint = None
    return ClipTextLoadReport(path, prefix, sorted(loaded), missing, unexpected)
