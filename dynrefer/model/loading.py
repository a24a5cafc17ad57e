"""Weights from local files: EVA ViT-g ``.pth``, BLIP-2 ``{"model": ...}`` checkpoints, EVA-CLIP text weights,
Hugging Face T5 directories and DynRefer checkpoints with the official key names.

Every loader returns a :class:`LoadReport` (``missing`` and ``unexpected`` key lists, ``loaded`` count; ``str()``
groups the keys, ``layer.0`` … ``layer.11`` under one ``layer.*`` line) and logs the missing and unexpected keys as
warnings; a key whose shape disagrees with the model raises ``ValueError`` naming the file, the key and both shapes.
An absent file raises ``FileNotFoundError`` naming the configuration key it came from and the path; nothing is
downloaded (a URL is refused).

Files are memory-mapped (``torch.load(mmap=True, weights_only=True)``); their tensors are *assigned* to a tower built
on the meta device (``load_state_dict(assign=True)``, converted only where the model's dtype differs), which
therefore never holds a second copy of its weights — :func:`dynrefer.model.factory.build_dynrefer` builds every
tower a file provides that way — and copied into tensors that already exist, which keep their identity.
``weights_only=False`` is for a checkpoint the caller trusts that pickles more than tensors.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from dynrefer.model.vision import interpolate_pos_embed

if TYPE_CHECKING:
    from dynrefer.model.dynrefer import DynRefer

_PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["LoadReport", "group_keys", "read_checkpoint", "load_state", "load_eva_vit", "load_blip2_checkpoint",
           "load_dynrefer_checkpoint", "load_clip_text_tower", "materialize_meta", "save_dynrefer_checkpoint",
           "load_t5_directory", "save_t5_directory"]

log = logging.getLogger("dynrefer.model.loading")

BLIP2_PREFIXES = ("visual_encoder.", "ln_vision.", "query_tokens", "Qformer.", "t5_proj.", "llm_proj.")

# What each configuration key names (for messages).
WHAT = {"vit_checkpoint": "EVA ViT-g weights (LAVIS's eva_vit_g.pth)",
        "pretrained": "BLIP-2 checkpoint (e.g. blip2_pretrained_flant5xl.pth)",
        "finetuned": "DynRefer checkpoint",
        "text_encoder.weights": "EVA-CLIP text weights (the official ckpts/eva_clip_psz14.pt)",
        "llm.path": "Hugging Face LLM directory (e.g. google/flan-t5-xl)"}


def group_keys(keys: Iterable[str], limit: int = 8) -> List[str]:
    """Keys grouped by their pattern with numbers as ``*`` (``blocks.*.attn.qkv.weight (x39)``), in first-seen
    order, at most ``limit`` lines (then ``… and N more``)."""
    groups: Dict[str, int] = {}
    for k in keys:
        g = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", k)
        groups[g] = groups.get(g, 0) + 1
    lines = [g if n == 1 else f"{g} (x{n})" for g, n in groups.items()]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more key patterns"]
    return lines


@dataclass
class LoadReport:
    """What one load did: ``loaded`` tensors, ``missing`` keys (expected of this file but absent), ``unexpected``
    keys (in the file, not in the model; skipped), ``initialized`` keys (built on the meta device, provided by no
    file, initialised afresh). ``what`` / ``path``: the file; ``key``: the configuration key that named it."""
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    loaded: int = 0
    what: str = ""
    path: str = ""
    key: str = ""
    initialized: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{self.what or 'weights'}"
        if self.path:
            head += f" {self.path}"
        if self.key:
            head += f" ({self.key})"
        lines = [f"{head}: loaded {self.loaded} tensors; missing {len(self.missing)}; "
                 f"unexpected {len(self.unexpected)}" + (f"; initialised {len(self.initialized)}"
                                                         if self.initialized else "")]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("initialised", self.initialized)):
            if keys:
                lines.append(f"  {name}: " + "; ".join(group_keys(keys)))
        return "\n".join(lines)


def _where(key: str, path: _PathLike) -> str:
    what = WHAT.get(key, "checkpoint")
    return f"{key}: the {what} at {os.fspath(path)}" if key else f"the {what} at {os.fspath(path)}"


def _check_path(path: Any, key: str = "") -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{key or 'checkpoint'} path must be a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", p):
        raise ValueError(f"{key or 'checkpoint'}: weights are read from local files only (nothing is "
                         f"downloaded), got the URL {p!r}; download it and name the local file")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{_where(key, p)} was not found (set {key or 'the path'} to a local file; nothing is "
                                "downloaded)" if key else f"checkpoint not found: {p}")
    return p


def _torch_load(path: str, weights_only: bool) -> Any:
    try:   # memory-mapped: tensors are read from the page cache when used, never copied into a second buffer
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e) and "zip" not in str(e).lower():
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)   # the legacy (non-zip) format


def _read(p: str, weights_only: bool, key: str) -> Any:
    try:
        return _torch_load(p, weights_only)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:   # not a torch file, or
        # pickled code refused
        raise ValueError(f"{_where(key, p)} could not be read as a checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def read_checkpoint(path: _PathLike, weights_only: bool = True, key: str = "") -> Dict[str, Tensor]:
    """A state dict from ``path``: a raw state dict, or the ``"model"`` / ``"state_dict"`` / ``"module"`` entry of a
    checkpoint (LAVIS writes ``{"model": ..., "optimizer": ..., "config": ..., "epoch": ...}``); a ``module.`` prefix
    (DistributedDataParallel) is removed. Memory-mapped; ``key``: the configuration key the path came from."""
    p = _check_path(path, key)
    ckpt = _read(p, weights_only, key)
    if isinstance(ckpt, dict):
        for k in ("model", "state_dict", "module"):
            if k in ckpt and isinstance(ckpt[k], dict):
                ckpt = ckpt[k]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(k, str) for k in ckpt):
        raise ValueError(f"{p}: not a state dict (or a checkpoint holding one under 'model')")
    sd = {k: v for k, v in ckpt.items() if torch.is_tensor(v)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state(module: nn.Module, sd: Mapping[str, Tensor], expected: Collection[str], what: str,
               path: str = "", key: str = "") -> LoadReport:
    """Load ``sd`` into ``module``: a tensor still on the meta device is replaced by the file's tensor
    (``load_state_dict(assign=True)``, converted only when the dtype differs: no copy is made of it); a tensor that
    already has storage is copied into in place, so the module's parameters keep their identity (an optimizer
    holding them stays valid). ``missing`` = the ``expected`` keys absent from ``sd``; ``unexpected`` = keys of
    ``sd`` the module does not have. A shape mismatch raises ``ValueError`` naming ``path``, the key and both
    shapes, before anything is loaded."""
    own = module.state_dict(keep_vars=True)
    unexpected = [k for k in sd if k not in own]
    src = path or what
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{src}: {k} has shape {list(v.shape)} in the file but {list(own[k].shape)} in the "
                             f"model ({what}{'; ' + key if key else ''}: wrong file or wrong config?)")
    assign, copy = {}, {}
    for k, v in sd.items():
        if k in own:
            t = own[k]
            if not t.is_meta:
                copy[k] = v
            else:
                same = v.dtype == t.dtype or not (v.is_floating_point() and t.is_floating_point())
                assign[k] = v if same else v.to(t.dtype)
    with torch.no_grad():
        if copy:
            module.load_state_dict(copy, strict=False)
        if assign:
            module.load_state_dict(assign, strict=False, assign=True)
    use = {**copy, **assign}
    rep = LoadReport(missing=[k for k in expected if k not in sd], unexpected=unexpected, loaded=len(use),
                     what=what, path=path, key=key)
    _log(rep)
    return rep


def _log(rep: LoadReport) -> None:
    if rep.missing or rep.unexpected or rep.initialized:
        log.warning("%s", rep)
    else:
        log.info("%s", rep)


def _fix_pos_embed(sd: Dict[str, Tensor], key: str, module_pos: Optional[Tensor]) -> None:
    if key in sd and module_pos is not None and sd[key].dim() == 3 and sd[key].shape[1] != module_pos.shape[1]:
        sd[key] = interpolate_pos_embed(sd[key], module_pos.shape[1] - 1)


def load_eva_vit(target: nn.Module, path: _PathLike, weights_only: bool = True,
                 key: str = "vit_checkpoint") -> LoadReport:
    """Load LAVIS's ``eva_vit_g.pth`` layout into an :class:`EVAViT` or a DynRefer's ``visual_encoder``.

    The position embedding is resized when the checkpoint was made for another grid (LAVIS's
    ``interpolate_pos_embed``: bicubic on the patch grid, the class token kept).
    """
    vit = getattr(target, "visual_encoder", target)
    sd = read_checkpoint(path, weights_only, key)
    _fix_pos_embed(sd, "pos_embed", getattr(vit, "pos_embed", None))
    return load_state(vit, sd, list(vit.state_dict().keys()), "EVA ViT", os.fspath(path), key)


def load_blip2_checkpoint(model: DynRefer, path: _PathLike, weights_only: bool = True,
                          key: str = "pretrained") -> LoadReport:
    """Load a BLIP-2 checkpoint (``{"model": state_dict}``, LAVIS names) into a DynRefer.

    Expected keys: the model's ln_vision.*, query_tokens, Qformer.* and t5_proj.* (llm_proj.* with a decoder-only
    LLM, as blip2_pretrained_vicuna7b.pth names it), and visual_encoder.* when the file has any ViT key (the
    released BLIP-2 checkpoints leave the ViT to eva_vit_g.pth); those absent are reported missing, keys the model
    does not have (e.g. the Q-Former's removed text layers) are reported unexpected and skipped.
    """
    sd = read_checkpoint(path, weights_only, key)
    _fix_pos_embed(sd, "visual_encoder.pos_embed", getattr(model.visual_encoder, "pos_embed", None))
    has_vit = any(k.startswith("visual_encoder.") for k in sd)
    prefixes = BLIP2_PREFIXES if has_vit else BLIP2_PREFIXES[1:]
    expected = [k for k in model.state_dict() if k.startswith(prefixes)]
    return load_state(model, sd, expected, "BLIP-2", os.fspath(path), key)


def load_dynrefer_checkpoint(model: DynRefer, path: _PathLike, weights_only: bool = True,
                             key: str = "finetuned") -> LoadReport:
    """Load a DynRefer checkpoint with the official key names (``{"model": state_dict}``, as LAVIS's runner writes
    it with its ``optimizer``, ``config`` and ``epoch``).

    Official checkpoints hold the trainable parameters only (the ViT and the LLM come from their own files), so
    ``missing`` lists the trainable parameters the file lacks; other keys present are loaded too.
    """
    sd = read_checkpoint(path, weights_only, key)
    if "visual_encoder.pos_embed" in sd:
        _fix_pos_embed(sd, "visual_encoder.pos_embed", getattr(model.visual_encoder, "pos_embed", None))
    expected = [n for n, _ in model.named_parameters() if model.is_trainable_name(n)]
    return load_state(model, sd, expected, "DynRefer", os.fspath(path), key)


def load_clip_text_tower(tower: nn.Module, path: _PathLike, key: str = "text_encoder.weights") -> LoadReport:
    """Assign EVA-CLIP text weights to ``tower`` (a :class:`~dynrefer.model.clip_text.CLIPTextTransformer`, e.g. built
    on the meta device): an EVA-CLIP checkpoint's ``text.*`` entries (the official code reads them from
    ``eva_clip_psz14.pt``; the CLIP's other entries are ignored), a DynRefer state dict's ``text_encoder.*`` or the
    tower's own keys. ``logit_scale``, which EVA-CLIP keeps outside its text tower, is reported missing."""
    from dynrefer.model.clip_text import _text_state

    p = _check_path(path, key)
    raw = _read(p, True, key)
    try:
        prefix, text = _text_state(raw, set(tower.state_dict()))
    except ValueError:
        raise ValueError(f"{_where(key, p)} is not a state dict") from None
    own = tower.state_dict()
    if not any(k in own for k in text):
        raise ValueError(f"{_where(key, p)} holds no EVA-CLIP text-tower keys (looked for text.*, text_encoder.* and "
                         "bare keys such as token_embedding.weight)")
    if prefix == "":   # a whole EVA-CLIP without prefixes is not expected; keep the tower's keys only
        text = {k: v for k, v in text.items() if k in own or not k.startswith(("visual.", "text_encoder."))}
    text = {k: v for k, v in text.items() if torch.is_tensor(v)}
    return load_state(tower, text, list(own), "EVA-CLIP text", p, key)


@torch.no_grad()
def materialize_meta(module: nn.Module, prefix: str = "") -> List[str]:
    """Give every parameter still on the meta device (built there, provided by no file) storage and a fresh
    initialisation: the owning layer's ``reset_parameters()`` for a linear, convolution, embedding or LayerNorm layer
    whose parameters are all unloaded, else truncated normal (std 0.02) for matrices and embeddings and zeros for
    vectors and scalars (a CLIP ``logit_scale``: log(1/0.07)). Returns the keys initialised (with ``prefix``)."""
    done: List[str] = []
    for mname, mod in module.named_modules():
        own = [(n, p) for n, p in mod.named_parameters(recurse=False) if p.is_meta]
        if not own:
            continue
        allmeta = all(p.is_meta for p in mod.parameters(recurse=False))
        for n, p in own:
            setattr(mod, n, nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad))
        if allmeta and isinstance(mod, (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm)):
            mod.reset_parameters()
        else:
            for n, _ in own:
                t = getattr(mod, n)
                if n == "logit_scale":
                    t.fill_(math.log(1 / 0.07))
                elif t.dim() >= 2:
                    nn.init.trunc_normal_(t, std=0.02)
                elif isinstance(mod, nn.LayerNorm) and n == "weight":
                    t.fill_(1.0)
                else:
                    t.zero_()
        done += [prefix + (f"{mname}." if mname else "") + n for n, _ in own]
    return done


def save_dynrefer_checkpoint(model: DynRefer, path: _PathLike, full: bool = False) -> None:
    """Write ``{"model": state_dict, "config": dict}``: the trainable parameters (official layout) or, with
    ``full=True``, everything (ViT, LLM, text encoder and the text-embedding buffers included)."""
    sd = model.state_dict() if full else model.trainable_state_dict()
    torch.save({"model": {k: v.detach().cpu() for k, v in sd.items()}, "config": model.config.to_dict()}, path)


def save_t5_directory(model: DynRefer, path: _PathLike) -> None:
    """Save the model's T5 and its tokenizer as a Hugging Face directory (``from_pretrained`` loads it)."""
    model.t5_model.save_pretrained(path)
    model.t5_tokenizer.save_pretrained(path)


def load_t5_directory(path: _PathLike, torch_dtype: Optional[torch.dtype] = None, key: str = "") -> Tuple[Any, Any]:
    """(T5ForConditionalGeneration, tokenizer) from a local Hugging Face directory (e.g. flan-t5-xl); no network.
    ``key``: the configuration key the path came from (for the message when it is absent)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    if not os.path.isdir(path):
        raise FileNotFoundError(f"T5 directory not found: {path}" + (
            f" ({key}: a local Hugging Face directory of the T5, e.g. google/flan-t5-xl; nothing is downloaded)"
            if key else ""))
    kw: Dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kw["dtype"] = torch_dtype
    t5, info = T5ForConditionalGeneration.from_pretrained(path, output_loading_info=True, **kw)
    t5._dynrefer_loading_info = {k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys")}
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return t5, tok
