"""Building a DynRefer model from a config and vocabularies, all locally (no downloads), and loading the weights
its configuration names.

Weights by configuration (LAVIS's order; every path a local file, see :mod:`dynrefer.model.loading`):

    llm.path              the Hugging Face LLM directory (a T5 such as flan-t5-xl, or a causal LM) and its tokenizer
    text_encoder.weights  EVA-CLIP text weights (``text.*`` of eva_clip_psz14.pt), before the text embeddings
    vit_checkpoint        LAVIS's eva_vit_g.pth (position embedding interpolated when image_size differs)
    pretrained            a BLIP-2 checkpoint ``{"model": ...}`` (Q-Former, query tokens, ln_vision, t5_proj)
    finetuned             a DynRefer checkpoint (official: the trainable tensors of a LAVIS training checkpoint)

A later file overrides an earlier one on the keys both hold. Every tower some file provides (the ViT, the T5, the
EVA-CLIP text tower) is built on the meta device and receives the file's memory-mapped tensors by assignment, so
no second copy of its weights is ever made; the other parts (Q-Former, decoders, projections) are initialised as
in a fresh model and overwritten in place where a file has them. ``model.load_reports`` lists what each load did.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

from dynrefer.model.config import DynReferConfig, TextEncoderConfig
from dynrefer.model.dynrefer import DynRefer, attribute_prompts, class_prompts
from dynrefer.model.text import TextEncoder, build_bert_tokenizer, build_causal_tokenizer, build_t5_tokenizer

__all__ = ["build_dynrefer", "build_text_encoder", "external_keys", "WEIGHT_KEYS"]

log = logging.getLogger("dynrefer.model.loading")

_NO_CAP = 10_000_000

#: The configuration keys that name weight files, in the order they are loaded.
WEIGHT_KEYS = ("llm.path", "text_encoder.weights", "vit_checkpoint", "pretrained", "finetuned")

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_EMBEDS = ("clip_embeds", "att_embeds", "ov_embeds")


def build_text_encoder(cfg: TextEncoderConfig, texts: Iterable[object] = ()) -> Any:
    """The frozen text encoder of a :class:`~dynrefer.model.config.TextEncoderConfig`: kind "bert" trains its
    word-level tokenizer on ``texts``; kind "eva_clip" uses the CLIP BPE vocabulary (``texts`` unused) and loads
    ``cfg.weights`` when set."""
    if cfg.kind == "eva_clip":
        from dynrefer.model.clip_text import EVACLIPTextEncoder

        return EVACLIPTextEncoder(cfg)
    return TextEncoder(cfg, build_bert_tokenizer(texts, _NO_CAP))


def _meta_embed(width: int) -> Any:
    import torch

    def embed(texts: Iterable[object], cache_dir: Optional[str] = None) -> Any:
        return torch.empty(len(list(texts)), width, device="meta")

    return embed


def build_dynrefer(config: Union[DynReferConfig, str] = "tiny", texts: Iterable[object] = (),
                   tag_list: Sequence[str] = (), classes: Sequence[str] = (), attributes: Sequence[Any] = (),
                   t5_model: Any = None, t5_tokenizer: Any = None, text_encoder: Any = None,
                   embed_cache_dir: Optional[str] = None, seed: Optional[int] = None, llm_model: Any = None,
                   llm_tokenizer: Any = None, model_cls: Type[DynRefer] = DynRefer, *, load_weights: bool = True,
                   state_dict: Optional[Dict[str, Any]] = None, device: Optional[str] = None) -> DynRefer:
    """A DynRefer from ``config`` (a :class:`DynReferConfig` or a preset name): randomly initialised, then the weight
    files the config names are loaded (see the module docstring; ``load_weights=False`` skips them).

    Tokenizers that are not given are trained on ``texts`` (captions, …) plus the tag, class and attribute names
    (e.g. the vocabulary files of a dataset, read by the caller), so every word the model will see is in the
    vocabulary. ``seed`` fixes the initialisation. ``model_cls``: a subclass of :class:`DynRefer` to build instead
    (e.g. the LAVIS-facing class of :mod:`dynrefer.lavis`).

    With ``config.llm.kind == "causal"`` the LLM is ``llm_model`` / ``llm_tokenizer`` when given, else loaded from
    the local directory ``config.llm.path``, else built from ``config.llm.config`` (random weights, a word-level
    tokenizer trained on the same texts plus the chat template's words). With kind "t5" and ``config.llm.path``,
    the T5 and its tokenizer come from that directory.

    ``state_dict``: tensors loaded after the files (e.g. a model bundle's), assigned like them; towers it provides
    are built on the meta device too. ``device="meta"``: shapes only — every tensor on the meta device, the text
    embeddings not computed (empty tensors of their shapes), no file read.

    ``model.load_reports``: one :class:`~dynrefer.model.loading.LoadReport` per load, and one listing the tensors
    of meta-built towers that no file provided (initialised afresh), when there are any.
    """
    import torch

    if isinstance(config, str):
        config = DynReferConfig.from_preset(config)
    if device is not None and str(device) != "meta":
        raise ValueError(f"device must be None or 'meta' (shapes only), got {device!r}; move the model afterwards")
    meta = device is not None
    vocab = [str(t) for t in texts] + [str(t) for t in tag_list] + class_prompts(classes)
    vocab += [p for ps in attribute_prompts(attributes) for p in ps]
    sources = _read_sources(config if load_weights and not meta else None, state_dict)
    if meta and sources:
        raise ValueError("device='meta' builds shapes only; it does not load weights (pass load_weights=False)")
    reports: List[Any] = []
    ctx = torch.random.fork_rng() if seed is not None else None
    if ctx is not None:
        ctx.__enter__()
        torch.manual_seed(seed)
    try:
        # Word-level vocabularies keep every word given (no cap, so nothing the model is trained on becomes
        # <unk>); the T5 / BERT embedding tables grow to the tokenizer when it outgrows the config's vocab_size.
        lc = config.llm
        files = load_weights and not meta
        if lc.kind == "causal":
            if llm_model is None and lc.path and not meta:
                from dynrefer.model.causal import load_causal_lm

                llm_model, loaded_tok = load_causal_lm(lc.path, lc.dtype)
                llm_tokenizer = llm_tokenizer or loaded_tok
            if llm_tokenizer is None:
                llm_tokenizer = build_causal_tokenizer(vocab + [lc.system, lc.user, lc.assistant, lc.prompt], _NO_CAP)
        elif t5_model is None and lc.path and (files or state_dict is not None):
            from dynrefer.model.loading import load_t5_directory

            dtype = getattr(torch, _DTYPES[lc.dtype]) if lc.dtype else None
            t5_model, loaded_tok = load_t5_directory(lc.path, dtype, key="llm.path")
            t5_tokenizer = t5_tokenizer or loaded_tok
            reports.append(_t5_report(t5_model, str(lc.path)))
        text_done = False   # the text tower's keys already applied
        if text_encoder is None:
            text_encoder, text_done = _text_encoder(config.text_encoder, vocab, sources, files, meta, reports)
        if lc.kind == "t5" and t5_tokenizer is None:
            t5_tokenizer = build_t5_tokenizer(vocab, _NO_CAP)
        vit_from_file = not meta and any(_provides(sd, key, "visual_encoder.") for key, _, sd in sources)
        if lc.kind == "t5" and t5_model is None and not meta and any(_provides(sd, k, "t5_model.")
                                                                      for k, _, sd in sources):
            from dynrefer.model.decoders import build_t5

            with torch.device("meta"):
                t5_model = build_t5(config.t5, t5_tokenizer)
        llm = dict(t5_model=t5_model) if lc.kind == "t5" else dict(llm_model=llm_model)
        tok = t5_tokenizer if lc.kind == "t5" else llm_tokenizer
        if meta:
            with torch.device("meta"):
                return model_cls(config, tok, tag_list, text_encoder, classes=classes, attributes=attributes,
                                 embed_cache_dir=None, **llm)
        # A ViT that a file provides is built on the meta device: the model is made with an empty one (no
        # blocks), which is then replaced.
        build_cfg = dataclasses.replace(config, vision=dataclasses.replace(config.vision, depth=0)) \
            if vit_from_file else config
        # Text embeddings that the state dict holds (a bundle's) are taken from it, not computed again.
        stored = state_dict is not None and all(torch.is_tensor(state_dict.get(k)) for k in _EMBEDS)
        if stored:
            text_encoder.embed = _meta_embed(int(text_encoder.width))
        try:
            model = model_cls(build_cfg, tok, tag_list, text_encoder, classes=classes, attributes=attributes,
                              embed_cache_dir=embed_cache_dir, **llm)
        finally:
            if stored:
                del text_encoder.embed   # the class's own again
        if vit_from_file:
            from dynrefer.model.vision import build_vision_encoder

            with torch.device("meta"):
                model.visual_encoder = build_vision_encoder(config.vision)
            model.config = config
            model.apply_trainable_split()
        if sources:
            _load_sources(model, sources, reports, text_done)
        setattr(model, "load_reports", reports)   # what each load did (LoadReport list)
        return model
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------ weights
def _provides(sd: Dict[str, Any], key: str, prefix: str) -> bool:
    if key == "vit_checkpoint":          # eva_vit_g.pth holds the ViT's own keys
        return prefix == "visual_encoder."
    return any(k.startswith(prefix) for k in sd)


def _read_sources(config: Optional[DynReferConfig],
                  state_dict: Optional[Dict[str, Any]]) -> List[Tuple[str, str, Dict]]:
    """(config key, path, memory-mapped tensors) of every file ``config`` names (None: none), all opened before
    anything is built (an absent file is reported first), then ``state_dict``."""
    from dynrefer.model.loading import _check_path, read_checkpoint

    out = []
    if config is not None:
        if config.text_encoder.weights:
            _check_path(config.text_encoder.weights, "text_encoder.weights")
        if config.llm.path and not os.path.isdir(config.llm.path):
            raise FileNotFoundError(f"llm.path: the Hugging Face LLM directory {config.llm.path} was not found (a "
                                    "local directory, e.g. google/flan-t5-xl; nothing is downloaded)")
        for key in ("vit_checkpoint", "pretrained", "finetuned"):
            path = getattr(config, key)
            if path:
                out.append((key, str(path), read_checkpoint(path, key=key)))
    if state_dict is not None:
        import torch

        out.append(("", "", {k: v for k, v in state_dict.items() if torch.is_tensor(v)}))
    return out


def _text_encoder(cfg: TextEncoderConfig, vocab: List[str], sources: List[Tuple[str, str, Dict]], files: bool,
                  meta: bool, reports: List[Any]) -> Tuple[Any, bool]:
    """The text encoder; an EVA-CLIP tower that a file provides is built on the meta device and gets its weights
    (the file's tensors, assigned) before the model computes its text embeddings."""
    import torch

    from dynrefer.model.loading import load_clip_text_tower, load_state, materialize_meta

    weights = cfg.weights if files else None
    if weights and cfg.kind != "eva_clip":
        raise ValueError(f"text_encoder.weights: {weights} are EVA-CLIP text weights, which need text_encoder.kind "
                         f"'eva_clip' (the official preset's), not {cfg.kind!r}")
    plain = dataclasses.replace(cfg, weights=None)
    prefix = "text_encoder."
    from_sources = [(k, p, sd) for k, p, sd in sources if any(n.startswith(prefix) for n in sd)]
    if meta:
        with torch.device("meta"):
            enc = build_text_encoder(plain, vocab)
        enc.embed = _meta_embed(int(enc.width))
        return enc, False
    if cfg.kind != "eva_clip" or not (weights or from_sources):
        return build_text_encoder(plain, vocab), False
    with torch.device("meta"):
        enc = build_text_encoder(plain, vocab)
    if weights:
        reports.append(load_clip_text_tower(enc, weights))
    for key, path, sd in from_sources:   # applied here, before the embeddings; removed from the later pass
        sub = {n[len(prefix):]: sd.pop(n) for n in [n for n in sd if n.startswith(prefix)]}
        reports.append(load_state(enc, sub, [], "EVA-CLIP text" if key else "text encoder", path, key))
    init = materialize_meta(enc, prefix)
    for name, buf in list(enc.named_buffers()):
        if buf.is_meta and name == "attn_mask":
            enc.attn_mask = enc.build_attention_mask()
    _no_meta(enc, prefix)
    if init:
        reports.append(_init_report(init))
    enc._fingerprint = None
    return enc, True


def _t5_report(t5: Any, path: str) -> Any:
    """What ``from_pretrained`` loaded from the T5 directory (it reports its own missing keys)."""
    from dynrefer.model.loading import LoadReport, _log

    info = getattr(t5, "_dynrefer_loading_info", None) or {}
    rep = LoadReport(missing=sorted(info.get("missing_keys", [])), unexpected=sorted(info.get("unexpected_keys", [])),
                     loaded=len(t5.state_dict()), what="T5", path=path, key="llm.path")
    _log(rep)
    return rep


def _init_report(keys: List[str]) -> Any:
    from dynrefer.model.loading import LoadReport, _log

    rep = LoadReport(what="tensors of meta-built towers in no file (initialised afresh)", initialized=keys)
    _log(rep)
    return rep


def _no_meta(module: Any, prefix: str = "") -> None:
    left = [prefix + n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensors are still on the meta device after loading: {left[:5]}")


def _load_sources(model: DynRefer, sources: List[Tuple[str, str, Dict]], reports: List[Any],
                  text_done: bool) -> None:
    from dynrefer.model.loading import (BLIP2_PREFIXES, _fix_pos_embed, load_state, materialize_meta)

    own = model.state_dict()
    pos = getattr(model.visual_encoder, "pos_embed", None)
    for key, path, sd in sources:
        if key == "vit_checkpoint":
            _fix_pos_embed(sd, "pos_embed", pos)
            vit = model.visual_encoder
            reports.append(load_state(vit, sd, list(vit.state_dict()), "EVA ViT", path, key))
            sd.clear()
            continue
        _fix_pos_embed(sd, "visual_encoder.pos_embed", pos)
        if key == "pretrained":
            has_vit = any(k.startswith("visual_encoder.") for k in sd)
            prefixes = BLIP2_PREFIXES if has_vit else BLIP2_PREFIXES[1:]
            expected = [k for k in own if k.startswith(prefixes)]
            reports.append(load_state(model, sd, expected, "BLIP-2", path, key))
        elif key == "finetuned":
            expected = [n for n, _ in model.named_parameters() if model.is_trainable_name(n)]
            reports.append(load_state(model, sd, expected, "DynRefer", path, key))
        else:
            external = model.external_llm_keys() | _external_t5_keys(model)
            expected = [k for k in own if k not in external and not (text_done and k.startswith("text_encoder."))]
            reports.append(load_state(model, sd, expected, "state dict", path, key))
        sd.clear()   # done with this file: its mapping goes once no assigned tensor is a view of it
    init = materialize_meta(model)
    _no_meta(model)
    if init:
        reports.append(_init_report(init))


def _external_t5_keys(model: DynRefer) -> set:
    """The T5's keys when it comes from ``config.llm.path`` (model bundles reload it from there)."""
    if model.llm_kind != "t5" or not model.config.llm.path:
        return set()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k for k in model.state_dict() if k.startswith("t5_model.") and k not in trainable}


def external_keys(model: DynRefer) -> set:
    """State-dict keys a model bundle leaves out because they are reloaded from ``config.llm.path``."""
    return set(model.external_llm_keys()) | _external_t5_keys(model)
