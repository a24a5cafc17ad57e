"""Decoder-only LLMs behind D_llm (the paper's Vicuna variant, Tables 5-6): loading, LoRA, and sequence packing.

Loading (nothing is downloaded):

* :func:`load_causal_lm` reads a local Hugging Face directory: ``AutoModelForCausalLM`` and ``AutoTokenizer`` with
  ``local_files_only``; a tokenizer without a pad token pads with its end-of-sequence token (padding is masked
  and never a target, so its id does not matter — the official code adds a ``[PAD]`` token and resizes the
  embedding table instead);
* :func:`build_causal_lm` builds a randomly initialised model from a config dict (``model_type`` plus sizes, e.g.
  a two-layer LLaMA), its vocabulary grown to the tokenizer's (tests, bundles).

LoRA: :func:`apply_lora` wraps the model with ``peft`` (imported only here, only when asked; an ``ImportError``
names the extra to install). The wrapped model's LoRA parameters are named ``...lora_A...`` / ``...lora_B...`` /
``...lora_embedding_A...`` and are the only trainable ones inside the LLM.

Packing: one training or generation sequence is a list of :class:`Segment` s — token ids or embedding rows
(projected region tokens), each marked as target or not, optionally with a vector added to every row (the control
memory). :func:`pack` embeds all ids of a batch with one lookup in the LLM's input embeddings, pads (right for
training, left for generation, so every prompt ends where generation starts) and returns ``inputs_embeds``,
``attention_mask``, ``position_ids`` (counting real tokens only) and ``labels`` (-100 everywhere except target
tokens: the loss is on answers only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dynrefer.model.config import LLMConfig

__all__ = ["Segment", "pack", "load_causal_lm", "build_causal_lm", "apply_lora", "special_ids", "text_ids",
           "hidden_size", "PEFT_MISSING"]

PEFT_MISSING = ("LoRA needs the 'peft' package (pip install 'dynrefer[llm]' or pip install peft); "
                "set llm.lora to false to keep the LLM frozen")

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}


@dataclass
class Segment:
    """A piece of a sequence: token ``ids`` or embedding rows ``embeds`` [L, d]; ``target``: its tokens are
    predicted (loss); ``add``: a [d] vector added to each of its rows (the control memory)."""
    ids: Optional[Sequence[int]] = None
    embeds: Optional[torch.Tensor] = None
    target: bool = False
    add: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(cast("Sequence[int]", self.ids)) if self.embeds is None else int(self.embeds.shape[0])


def special_ids(tokenizer: Any) -> Tuple[Optional[int], int, int]:
    """(bos, eos, pad) token ids; bos may be None, pad falls back to eos, then to 0."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the LLM's tokenizer has no end-of-sequence token (eos_token); answers need one to stop")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos
    return bos, eos, pad


def text_ids(tokenizer: Any, texts: Sequence[str], max_length: Optional[int] = None) -> List[List[int]]:
    """Token ids of each text, without special tokens (the caller places <s> and </s>)."""
    if not texts:
        return []
    kw = {"truncation": True, "max_length": max_length} if max_length else {}
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False, **kw)["input_ids"]]


def hidden_size(model: Any) -> int:
    """The width of the LLM's input embeddings."""
    return int(model.get_input_embeddings().weight.shape[1])


def pack(sequences: Sequence[List[Segment]], embed_tokens: Any, *, side: str = "right",
         max_len: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> Dict[str, Tensor]:
    """Batch ``sequences`` (lists of segments) into LLM inputs.

    Returns ``inputs_embeds`` [B, L, d], ``attention_mask`` [B, L] (long), ``position_ids`` [B, L] and ``labels``
    [B, L] (the token id at target positions, -100 elsewhere; a causal LM shifts them itself). ``side``: where the
    padding goes. ``max_len``: sequences longer than this lose their end.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not sequences:
        raise ValueError("pack needs at least one sequence")
    weight = embed_tokens.weight
    device = weight.device
    dtype = dtype or weight.dtype
    all_ids = [i for seq in sequences for s in seq if s.embeds is None for i in cast("Sequence[int]", s.ids)]
    table: Any = embed_tokens(torch.tensor(all_ids, dtype=torch.long, device=device)) if all_ids else None
    rows: List[Tensor] = []
    labels: List[Tensor] = []
    pos = 0
    for seq in sequences:
        parts: List[Tensor] = []
        labs: List[Tensor] = []
        for s in seq:
            if s.embeds is None:
                ids = cast("Sequence[int]", s.ids)
                n = len(ids)
                if n == 0:
                    continue
                e = table[pos:pos + n]
                pos += n
                lab = torch.tensor(list(ids), dtype=torch.long) if s.target else torch.full((n,), -100)
            else:
                e = s.embeds
                n = int(e.shape[0])
                if s.target:
                    raise ValueError("an embedding segment cannot be a target")
                lab = torch.full((n,), -100)
            if s.add is not None:
                e = e + s.add
            parts.append(e.to(device=device, dtype=dtype))
            labs.append(lab)
        if not parts:
            raise ValueError("empty sequence")
        e, lab = torch.cat(parts), torch.cat(labs)
        if max_len is not None and e.shape[0] > max_len:
            e, lab = e[:max_len], lab[:max_len]
        rows.append(e)
        labels.append(lab)
    B, L, d = len(rows), max(r.shape[0] for r in rows), rows[0].shape[1]
    embeds = rows[0].new_zeros(B, L, d)
    mask = torch.zeros(B, L, dtype=torch.long, device=device)
    lab_out = torch.full((B, L), -100, dtype=torch.long, device=device)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        n = r.shape[0]
        sl = slice(L - n, L) if side == "left" else slice(0, n)
        embeds[b, sl] = r
        mask[b, sl] = 1
        lab_out[b, sl] = lab.to(device)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": position_ids, "labels": lab_out}


def load_causal_lm(path: Union[str, "os.PathLike[str]"], dtype: Optional[str] = None) -> Tuple[Any, Any]:
    """(model, tokenizer) from a local Hugging Face causal-LM directory (e.g. vicuna-7b-v1.5); no network.
    ``dtype``: "fp16", "bf16", "fp32" or None (the directory's own)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        raise FileNotFoundError(f"causal LM directory not found: {path}")
    kw: Dict[str, Any] = {"local_files_only": True}
    if _DTYPES.get(dtype) is not None:
        kw["dtype"] = _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return model, tok


def build_causal_lm(hf_config: Optional[Dict[str, Any]], tokenizer: Any) -> Any:
    """A randomly initialised causal LM from a Hugging Face config dict (``model_type`` names the architecture,
    e.g. ``{"model_type": "llama", "hidden_size": 32, ...}``); vocabulary at least the tokenizer's, the special
    ids set from the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = dict(hf_config or {})
    if "model_type" not in d:
        raise ValueError("llm.config needs a 'model_type' (e.g. 'llama')")
    model_type = d.pop("model_type")
    bos, eos, pad = special_ids(tokenizer)
    d["vocab_size"] = max(int(d.get("vocab_size", 0)), len(tokenizer))
    d.setdefault("bos_token_id", bos)
    d.setdefault("eos_token_id", eos)
    d.setdefault("pad_token_id", pad)
    cfg = AutoConfig.for_model(model_type, **d)
    return AutoModelForCausalLM.from_config(cfg)


def apply_lora(model: Any, llm_config: LLMConfig) -> Any:
    """Wrap ``model`` with LoRA adapters (``peft``): rank ``lora_r``, ``lora_alpha``, ``lora_dropout`` on the
    modules named in ``lora_targets``. Only the adapters are trainable afterwards."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError(PEFT_MISSING) from None
    cfg = LoraConfig(r=int(llm_config.lora_r), lora_alpha=int(llm_config.lora_alpha),
                     lora_dropout=float(llm_config.lora_dropout), target_modules=list(llm_config.lora_targets))
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # e.g. no module matches the targets
        raise ValueError(f"llm.lora_targets {list(llm_config.lora_targets)}: {e}") from None
