"""Weights from local files: EVA ViT-g ``.pth``, BLIP-2 ``{"model": ...}`` checkpoints, Hugging Face T5 directories
and full DynRefer checkpoints with the official key names.

Every loader returns a :class:`LoadReport` (``missing`` and ``unexpected`` key lists, ``loaded`` count) and logs
the missing and unexpected keys as warnings; a key whose shape disagrees with the model raises ``ValueError``.
Files are read with ``torch.load(weights_only=True)`` unless the caller passes ``weights_only=False`` for a
checkpoint it trusts that pickles more than tensors.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from dynrefer.model.vision import interpolate_pos_embed

if TYPE_CHECKING:
    from dynrefer.model.dynrefer import DynRefer

_PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["LoadReport", "read_checkpoint", "load_eva_vit", "load_blip2_checkpoint", "load_dynrefer_checkpoint",
           "save_dynrefer_checkpoint", "load_t5_directory", "save_t5_directory"]

log = logging.getLogger("dynrefer.model.loading")

BLIP2_PREFIXES = ("visual_encoder.", "ln_vision.", "query_tokens", "Qformer.", "t5_proj.", "llm_proj.")


@dataclass
class LoadReport:
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    loaded: int = 0

    def __str__(self) -> str:
        return f"loaded {self.loaded} tensors; missing {len(self.missing)}; unexpected {len(self.unexpected)}"


def read_checkpoint(path: _PathLike, weights_only: bool = True) -> Dict[str, Tensor]:
    """A state dict from ``path``: a raw state dict, or the ``"model"`` / ``"state_dict"`` entry of a checkpoint."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict", "module"):
            if key in ckpt and isinstance(ckpt[key], dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(k, str) for k in ckpt):
        raise ValueError(f"{path}: not a state dict (or a checkpoint holding one under 'model')")
    return {k: v for k, v in ckpt.items() if torch.is_tensor(v)}


def _load_into(module: nn.Module, sd: Dict[str, Tensor], expected: Collection[str], what: str) -> LoadReport:
    """Copy ``sd`` into ``module``; missing = ``expected`` keys absent from ``sd``."""
    own = module.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{what}: {k} has shape {list(v.shape)} in the checkpoint but {list(own[k].shape)} "
                             "in the model (wrong config?)")
    use = {k: v for k, v in sd.items() if k in own}
    module.load_state_dict(use, strict=False)
    rep = LoadReport(missing=sorted(k for k in expected if k not in sd), unexpected=unexpected, loaded=len(use))
    if rep.missing:
        log.warning("%s: %d missing keys: %s", what, len(rep.missing), ", ".join(rep.missing[:20]))
    if rep.unexpected:
        log.warning("%s: %d unexpected keys: %s", what, len(rep.unexpected), ", ".join(rep.unexpected[:20]))
    return rep


def _fix_pos_embed(sd: Dict[str, Tensor], key: str, module_pos: Optional[Tensor]) -> None:
    if key in sd and module_pos is not None and sd[key].dim() == 3 and sd[key].shape[1] != module_pos.shape[1]:
        sd[key] = interpolate_pos_embed(sd[key], module_pos.shape[1] - 1)


def load_eva_vit(target: nn.Module, path: _PathLike, weights_only: bool = True) -> LoadReport:
    """Load LAVIS's ``eva_vit_g.pth`` layout into an :class:`EVAViT` or a DynRefer's ``visual_encoder``.

    The position embedding is resized (bicubic) when the checkpoint was made for another image size.
    """
    vit = getattr(target, "visual_encoder", target)
    sd = read_checkpoint(path, weights_only)
    _fix_pos_embed(sd, "pos_embed", getattr(vit, "pos_embed", None))
    return _load_into(vit, sd, vit.state_dict().keys(), f"EVA ViT {os.path.basename(str(path))}")


def load_blip2_checkpoint(model: DynRefer, path: _PathLike, weights_only: bool = True) -> LoadReport:
    """Load a BLIP-2 checkpoint (``{"model": state_dict}``, LAVIS names) into a DynRefer.

    Expected keys: the model's visual_encoder.*, ln_vision.*, query_tokens, Qformer.* and t5_proj.* (llm_proj.* with
    a decoder-only LLM, as blip2_pretrained_vicuna7b.pth names it); those absent are reported missing, keys the
    model does not have (e.g. the Q-Former's removed text layers) are reported unexpected and skipped.
    """
    sd = read_checkpoint(path, weights_only)
    _fix_pos_embed(sd, "visual_encoder.pos_embed", getattr(model.visual_encoder, "pos_embed", None))
    expected = [k for k in model.state_dict() if k.startswith(BLIP2_PREFIXES)]
    return _load_into(model, sd, expected, f"BLIP-2 {os.path.basename(str(path))}")


def load_dynrefer_checkpoint(model: DynRefer, path: _PathLike, weights_only: bool = True) -> LoadReport:
    """Load a DynRefer checkpoint with the official key names (``{"model": state_dict}``).

    Official checkpoints hold the trainable parameters only (the ViT and the LLM come from their own files), so
    ``missing`` lists the trainable parameters the file lacks; other keys present are loaded too.
    """
    sd = read_checkpoint(path, weights_only)
    if "visual_encoder.pos_embed" in sd:
        _fix_pos_embed(sd, "visual_encoder.pos_embed", getattr(model.visual_encoder, "pos_embed", None))
    expected = [n for n, _ in model.named_parameters() if model.is_trainable_name(n)]
    return _load_into(model, sd, expected, f"DynRefer {os.path.basename(str(path))}")


def save_dynrefer_checkpoint(model: DynRefer, path: _PathLike, full: bool = False) -> None:
    """Write ``{"model": state_dict, "config": dict}``: the trainable parameters (official layout) or, with
    ``full=True``, everything (ViT, LLM, text encoder and the text-embedding buffers included)."""
    sd = model.state_dict() if full else model.trainable_state_dict()
    torch.save({"model": {k: v.detach().cpu() for k, v in sd.items()}, "config": model.config.to_dict()}, path)


def save_t5_directory(model: DynRefer, path: _PathLike) -> None:
    """Save the model's T5 and its tokenizer as a Hugging Face directory (``from_pretrained`` loads it)."""
    model.t5_model.save_pretrained(path)
    model.t5_tokenizer.save_pretrained(path)


def load_t5_directory(path: _PathLike, torch_dtype: Optional[torch.dtype] = None) -> Tuple[Any, Any]:
    """(T5ForConditionalGeneration, tokenizer) from a local Hugging Face directory (e.g. flan-t5-xl); no network."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    if not os.path.isdir(path):
        raise FileNotFoundError(f"T5 directory not found: {path}")
    kw: Dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kw["dtype"] = torch_dtype
    t5 = T5ForConditionalGeneration.from_pretrained(path, **kw)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return t5, tok
