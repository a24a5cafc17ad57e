"""dynrefer's attention under LAVIS's own models (BLIP-2 and everything built on its ViTs and Q-Former).

:func:`use_dynrefer_ops` walks a loaded LAVIS model and swaps the class of its attention modules for a subclass
whose ``forward`` computes the same function through :func:`dynrefer.nn.backend.attention` (dynrefer's fused
attention kernel; on CUDA where the dispatch table measured it at least as fast as SDPA):

==========================================  ==============================================================
LAVIS module                                what the patched forward computes
==========================================  ==============================================================
``lavis.models.eva_vit.Attention``          EVA ViT-g (``eva_clip_g``): ``softmax(q·kᵀ·scale + bias)·v`` with
                                            the window's relative position bias and/or the shared one
``lavis.models.clip_vit                     CLIP ViT-L (``clip_L``): the block's ``nn.MultiheadAttention``
.ResidualAttentionBlock``                   (packed in-projection, out-projection)
``lavis.models.blip2_models.Qformer         the Q-Former's self- and cross-attention: ``softmax(q·kᵀ/√d +
.BertSelfAttention``                        mask)·v`` with BERT's additive extended masks, the returned
                                            ``past_key_value`` (generation) included
==========================================  ==============================================================

Parameters, buffers, ``state_dict`` keys and the module tree stay as they are (only ``__class__`` changes), so
checkpoints load either way and :func:`restore_lavis_ops` puts LAVIS's classes back. Where a call needs something
the fused kernel does not give — attention dropout in training (``attn_drop`` / ``attention_probs_dropout_prob``
> 0), the attention probabilities (``output_attentions``, the Q-Former's ``save_attention``), a head mask, BERT's
relative position embeddings, a trainable relative position bias under autograd, a CLIP attention mask or a
gradient-checkpointed block — that call runs LAVIS's own forward, so results are always LAVIS's up to rounding.

LAVIS's BLIP-2 models call no RoI-Align or other torchvision op in their forward (their language models, OPT and
T5, are Hugging Face's and are not touched); DynRefer's own LAVIS model, ``dynrefer_t5``, runs on dynrefer's ops
already.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple, Type

__all__ = ["use_dynrefer_ops", "restore_lavis_ops", "patched_modules"]

_FROM = "_dynrefer_lavis_base"        # on a patched class: the LAVIS class it replaces
_subclasses: Dict[type, type] = {}   # LAVIS class -> its patched subclass


def _lavis_classes() -> Dict[str, type]:
    try:
        from lavis.models.blip2_models.Qformer import BertSelfAttention
        from lavis.models.clip_vit import ResidualAttentionBlock
        from lavis.models.eva_vit import Attention
    except ImportError as e:
        raise ImportError("use_dynrefer_ops needs salesforce-lavis (pip install 'dynrefer[lavis]')") from e
    return {"eva_vit": Attention, "clip_vit": ResidualAttentionBlock, "qformer": BertSelfAttention}


def _attention(q: Any, k: Any, v: Any, mask: Any, scale: float) -> Any:
    from dynrefer.nn import backend

    if mask is not None:
        mask = mask.to(q.dtype)
    return backend.attention(q, k, v, attn_mask=mask, scale=scale)


def _eva_class(base: Any) -> type:
    import torch
    import torch.nn.functional as F

    class DynReferEvaAttention(base):  # type: ignore[valid-type, misc]
        """``lavis.models.eva_vit.Attention`` on dynrefer's attention (see :mod:`dynrefer.lavis.patch`)."""

        def forward(self, x: Any, rel_pos_bias: Any = None) -> Any:
            bias = None
            if self.relative_position_bias_table is not None:
                n = self.window_size[0] * self.window_size[1] + 1
                table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
                bias = table.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
            if rel_pos_bias is not None:
                bias = rel_pos_bias if bias is None else bias + rel_pos_bias
            if ((self.training and self.attn_drop.p > 0)
                    or (bias is not None and bias.requires_grad and torch.is_grad_enabled())):
                return base.forward(self, x, rel_pos_bias=rel_pos_bias)
            b, n_tok, _ = x.shape
            qkv_bias = None
            if self.q_bias is not None:
                qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
            qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
            qkv = qkv.reshape(b, n_tok, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            out = _attention(qkv[0], qkv[1], qkv[2], bias, float(self.scale))
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n_tok, -1)))

    return DynReferEvaAttention


def _clip_class(base: Any) -> type:
    import torch.nn as nn
    import torch.nn.functional as F

    class DynReferClipBlock(base):  # type: ignore[valid-type, misc]
        """``lavis.models.clip_vit.ResidualAttentionBlock`` whose attention runs on dynrefer's kernel."""

        def attention(self, x: Any) -> Any:
            mha = self.attn
            if (not isinstance(mha, nn.MultiheadAttention) or self.attn_mask is not None or mha.batch_first
                    or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn
                    or (self.training and mha.dropout > 0)):
                return base.attention(self, x)
            length, b, width = x.shape
            heads = mha.num_heads
            q, k, v = (t.reshape(length, b, heads, width // heads).permute(1, 2, 0, 3)
                       for t in F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1))
            out = _attention(q, k, v, None, 1.0 / math.sqrt(width // heads))
            return mha.out_proj(out.permute(2, 0, 1, 3).reshape(length, b, width))

    return DynReferClipBlock


def _qformer_class(base: Any) -> type:
    import torch

    class DynReferBertSelfAttention(base):  # type: ignore[valid-type, misc]
        """The Q-Former's ``BertSelfAttention`` on dynrefer's attention (see :mod:`dynrefer.lavis.patch`)."""

        def forward(self, hidden_states: Any, attention_mask: Any = None, head_mask: Any = None,
                    encoder_hidden_states: Any = None, encoder_attention_mask: Any = None,
                    past_key_value: Any = None, output_attentions: bool = False) -> Tuple[Any, ...]:
            cross = encoder_hidden_states is not None
            mask = encoder_attention_mask if cross else attention_mask
            if (output_attentions or head_mask is not None or (cross and self.save_attention)
                    or self.position_embedding_type != "absolute" or (self.training and self.dropout.p > 0)
                    or (mask is not None and mask.requires_grad and torch.is_grad_enabled())):
                return base.forward(self, hidden_states, attention_mask, head_mask, encoder_hidden_states,
                                    encoder_attention_mask, past_key_value, output_attentions)
            if cross:
                key = self.transpose_for_scores(self.key(encoder_hidden_states))
                value = self.transpose_for_scores(self.value(encoder_hidden_states))
            else:
                key = self.transpose_for_scores(self.key(hidden_states))
                value = self.transpose_for_scores(self.value(hidden_states))
                if past_key_value is not None:
                    key = torch.cat([past_key_value[0], key], dim=2)
                    value = torch.cat([past_key_value[1], value], dim=2)
            query = self.transpose_for_scores(self.query(hidden_states))
            ctx = _attention(query, key, value, mask, 1.0 / math.sqrt(self.attention_head_size))
            b, _, length, _ = ctx.shape
            ctx = ctx.permute(0, 2, 1, 3).reshape(b, length, self.all_head_size)
            return ctx, (key, value)

    return DynReferBertSelfAttention


_MAKERS = {"eva_vit": _eva_class, "clip_vit": _clip_class, "qformer": _qformer_class}


def _patched_class(kind: str, base: type) -> type:
    cls = _subclasses.get(base)
    if cls is None:
        cls = _MAKERS[kind](base)
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
        setattr(cls, _FROM, base)
        _subclasses[base] = cls
    return cls


def use_dynrefer_ops(model: Any, *, vit: bool = True, qformer: bool = True) -> Dict[str, int]:
    """Run the attention of a LAVIS ``model`` (any ``torch.nn.Module`` holding LAVIS's EVA / CLIP ViT or Q-Former,
    e.g. ``load_model("blip2_t5", "pretrain_flant5xl")``) on dynrefer's kernels, in place.

    Args:
        model: the module to patch (every submodule of the kinds below is swapped; others are left alone).
        vit: the vision encoder's attention (EVA ViT-g ``Attention``, CLIP ViT-L ``ResidualAttentionBlock``).
        qformer: the Q-Former's self- and cross-attention (``BertSelfAttention``).

    Returns how many modules of each kind were swapped, ``{"eva_vit": n, "clip_vit": n, "qformer": n}`` (modules
    already swapped count again; nothing is swapped twice). Needs salesforce-lavis.
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"use_dynrefer_ops: model must be a torch.nn.Module, got {type(model).__name__}")
    classes = _lavis_classes()
    wanted = [k for k, on in (("eva_vit", vit), ("clip_vit", vit), ("qformer", qformer)) if on]
    counts = {k: 0 for k in _MAKERS}
    for module in model.modules():
        for kind in wanted:
            base = classes[kind]
            if type(module) is base:
                module.__class__ = _patched_class(kind, base)
                counts[kind] += 1
            elif getattr(type(module), _FROM, None) is base:
                counts[kind] += 1
    return counts


def restore_lavis_ops(model: Any) -> int:
    """Undo :func:`use_dynrefer_ops` on ``model``: every swapped module gets its LAVIS class back. Returns how many
    modules were restored."""
    n = 0
    for module in model.modules():
        base: Optional[Type[Any]] = getattr(type(module), _FROM, None)
        if base is not None:
            module.__class__ = base
            n += 1
    return n


def patched_modules(model: Any) -> List[str]:
    """Names (as in ``model.named_modules()``) of the modules running on dynrefer's attention."""
    return [name for name, m in model.named_modules() if getattr(type(m), _FROM, None) is not None]
