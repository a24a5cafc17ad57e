"""BERT-style blocks with BLIP-2 / LAVIS state-dict names: the Q-Former and the cross-attention-only decoders.

Q-Former (``Qformer.bert.*`` in BLIP-2 checkpoints; the learned queries are the model's ``query_tokens``):
    embeddings.LayerNorm
    encoder.layer.i.attention.{self.{query,key,value}, output.{dense,LayerNorm}}
    encoder.layer.i.crossattention.{self.{query,key,value}, output.{dense,LayerNorm}}   (i % freq == 0)
    encoder.layer.i.intermediate_query.dense, encoder.layer.i.output_query.{dense,LayerNorm}
Only the query path exists (BLIP-2-T5 removes the word/position embeddings and the text FFN).

Dropout (``dropout`` of the config; 0.1 in the official model, as bert-base and DynRefer's tag-decoder config set
it) sits where BERT has it: after the embeddings' LayerNorm, on the attention probabilities, and after each
``output.dense`` before its residual LayerNorm; it acts in train mode only.

CrossDecoder (DynRefer's ``tag_head`` / ``attr_head``: a BERT whose layers keep only cross-attention):
    encoder.layer.i.crossattention.{self.*, output.*}, encoder.layer.i.intermediate.dense,
    encoder.layer.i.output.{dense,LayerNorm}
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from dynrefer.model.config import HeadConfig, QFormerConfig

from dynrefer.nn.attention import SeparateQKVAttention

__all__ = ["QFormer", "CrossDecoder", "BertAttention"]


class _Dense(nn.Module):
    """``dense`` + dropout + ``LayerNorm`` on the residual (BertSelfOutput / BertOutput)."""

    def __init__(self, d_in: int, d_out: int, eps: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Intermediate(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float, context_width: Optional[int] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self = SeparateQKVAttention(hidden, heads, context_width, dropout=dropout)
        self.output = _Dense(hidden, hidden, eps, dropout)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.output(self.self(x, context, mask), x)


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int, encoder_width: int) -> None:
        super().__init__()
        h, eps, p = cfg.hidden_size, cfg.layer_norm_eps, cfg.dropout
        self.attention = BertAttention(h, cfg.num_heads, eps, dropout=p)
        self.has_cross = index % cfg.cross_attention_freq == 0
        if self.has_cross:
            self.crossattention = BertAttention(h, cfg.num_heads, eps, context_width=encoder_width, dropout=p)
        self.intermediate_query = _Intermediate(h, cfg.intermediate_size)
        self.output_query = _Dense(cfg.intermediate_size, h, eps, p)

    def forward(self, x: Tensor, context: Tensor, context_mask: Optional[Tensor] = None) -> Tensor:
        x = self.attention(x)
        if self.has_cross:
            x = self.crossattention(x, context, context_mask)
        return self.output_query(self.intermediate_query(x), x)


class _Embeddings(nn.Module):
    def __init__(self, hidden: int, eps: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)


class _Encoder(nn.Module):
    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class _QFormerBert(nn.Module):
    def __init__(self, cfg: QFormerConfig, encoder_width: int) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg.hidden_size, cfg.layer_norm_eps, cfg.dropout)
        self.encoder = _Encoder(QFormerLayer(cfg, i, encoder_width) for i in range(cfg.num_layers))

    def forward(self, query_embeds: Tensor, encoder_hidden_states: Tensor,
                encoder_attention_mask: Optional[Tensor] = None) -> Tensor:
        x = self.embeddings.dropout(self.embeddings.LayerNorm(query_embeds))
        for layer in self.encoder.layer:
            x = layer(x, encoder_hidden_states, encoder_attention_mask)
        return x


class QFormer(nn.Module):
    """BLIP-2 Q-Former (query path). forward(query_embeds [B,Q,H], visual [B,L,Cv], mask=None) → [B,Q,H]."""

    def __init__(self, cfg: QFormerConfig, encoder_width: int) -> None:
        super().__init__()
        self.bert = _QFormerBert(cfg, encoder_width)
        self.apply(lambda m: _init_bert(m, cfg.init_std))

    def forward(self, query_embeds: Tensor, encoder_hidden_states: Tensor,
                encoder_attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.bert(query_embeds, encoder_hidden_states, encoder_attention_mask)


class CrossDecoderLayer(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        h, eps, p = cfg.hidden_size, cfg.layer_norm_eps, cfg.dropout
        self.crossattention = BertAttention(h, cfg.num_heads, eps, context_width=h, dropout=p)
        self.intermediate = _Intermediate(h, cfg.intermediate_size)
        self.output = _Dense(cfg.intermediate_size, h, eps, p)

    def forward(self, x: Tensor, context: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = self.crossattention(x, context, mask)
        return self.output(self.intermediate(x), x)


class CrossDecoder(nn.Module):
    """forward(queries [B,Lq,h], context [B,Lk,h], mask=None) → [B,Lq,h] (no self-attention, no embeddings)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(CrossDecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(lambda m: _init_bert(m, cfg.init_std))

    def forward(self, queries: Tensor, context: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = queries
        for layer in self.encoder.layer:
            x = layer(x, context, mask)
        return x


def _init_bert(m: nn.Module, std: float) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
