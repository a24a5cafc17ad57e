"""``dynrefer convert``: official-format weights (a DynRefer checkpoint and the EVA ViT-g, BLIP-2, EVA-CLIP text and
T5 files it is built on) → one sealed model bundle that ``dynrefer describe``, ``eval`` and ``chat`` load.

The files are named by the model configuration (:mod:`dynrefer.model.factory`): ``vit_checkpoint``, ``pretrained``,
``finetuned``, ``text_encoder.weights`` and ``llm.path``, in a config file's ``model`` section or by options; the
vocabularies by LAVIS's keys ``tag_list`` (one tag per line), ``ov_file`` (class names, JSON) and ``ovad_file``
(OVAD attributes, JSON), or a data folder (``tags.txt``, ``classes.json``, ``attributes.json``). The bundle holds
every tensor (ViT, Q-Former, decoders, text tower and its embeddings) except the LLM named by ``llm.path``, which
is reloaded from that directory together with its tokenizer; its config names no weight file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from dynrefer.model.loading import LoadReport

__all__ = ["convert_official", "VOCAB_KEYS"]

#: LAVIS's vocabulary keys of the model config: tag list, open-vocabulary classes, OVAD attributes.
VOCAB_KEYS = ("tag_list", "ov_file", "ovad_file")


def _read_tags(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [t.strip() for t in f if t.strip()]


def _read_json_list(path: str, key: str, field: str) -> list:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get(field)
    if not isinstance(data, list):
        from dynrefer.app.errors import UserError

        raise UserError(f"{key}: {path} holds no list of {field} (a JSON list, or a file with {field!r})")
    return data


def _vocab(section: Dict[str, Any], vocab_dir: Optional[str]) -> Tuple[List[str], list, list]:
    from dynrefer.app.errors import UserError

    if vocab_dir:
        from dynrefer.app.bundle import read_vocab

        for name in ("tags.txt", "classes.json", "attributes.json"):
            if not os.path.isfile(os.path.join(vocab_dir, name)):
                raise UserError(f"--vocab: {os.path.join(vocab_dir, name)} not found (a data folder holds tags.txt, "
                                "classes.json and attributes.json)")
        return read_vocab(vocab_dir)
    for key in VOCAB_KEYS:
        p = section.get(key)
        if p and not os.path.isfile(p):
            raise UserError(f"model.{key}: {p} not found")
    if not section.get("tag_list"):
        raise UserError("the tag list is missing: set model.tag_list (one tag per line, the official "
                        "ram_tag_list.txt), pass --tags FILE, or --vocab DIR")
    tags = _read_tags(section["tag_list"])
    classes = _read_json_list(section["ov_file"], "model.ov_file", "categories") if section.get("ov_file") else []
    classes = [c["name"] if isinstance(c, dict) else str(c) for c in classes]
    attrs = _read_json_list(section["ovad_file"], "model.ovad_file", "attributes") if section.get("ovad_file") else []
    return tags, classes, attrs


def _provided(config: Any, prefix: str) -> bool:
    """Whether a weight file of ``config`` holds keys under ``prefix`` (memory-mapped: nothing is read)."""
    from dynrefer.model.loading import read_checkpoint

    for key in ("pretrained", "finetuned"):
        path = getattr(config, key)
        if path and any(k.startswith(prefix) for k in read_checkpoint(path, key=key)):
            return True
    return False


def convert_official(out: str, model_section: Optional[Dict[str, Any]] = None, *, vocab_dir: Optional[str] = None,
                     log: Callable[[str], Any] = print) -> Tuple[str, List[LoadReport]]:
    """Build the model ``model_section`` describes (``preset`` — default "official" — plus DynReferConfig fields,
    the weight keys and the vocabulary keys; ``views`` are not needed) from its files and write the bundle ``out``.
    Returns (bundle path, the load reports). Every frozen tower must come from a file: the ViT (``vit_checkpoint``
    or a checkpoint with ``visual_encoder.*``), a T5 LLM (``llm.path`` or ``t5_model.*``) and an EVA-CLIP text tower
    (``text_encoder.weights`` or ``text_encoder.*``)."""
    from dynrefer.app.bundle import save_bundle
    from dynrefer.app.errors import UserError
    from dynrefer.app.schemes import model_config
    from dynrefer.model import build_dynrefer

    section = dict(model_section or {})
    section.setdefault("preset", "official")
    files = {k: section.pop(k) for k in VOCAB_KEYS if k in section}
    section.pop("views", None)
    cfg = model_config(section)
    tags, classes, attributes = _vocab(files, vocab_dir)
    if not tags:
        raise UserError("the tag list is empty")
    try:
        if not cfg.vit_checkpoint and not _provided(cfg, "visual_encoder."):
            raise UserError("vit_checkpoint: the EVA ViT-g weights are needed (LAVIS's eva_vit_g.pth), or a "
                            "checkpoint that holds visual_encoder.*")
        if cfg.llm.kind == "t5" and not cfg.llm.path and not _provided(cfg, "t5_model."):
            raise UserError("llm.path: the T5's Hugging Face directory is needed (e.g. google/flan-t5-xl, LAVIS's "
                            "t5_model), or a checkpoint that holds t5_model.*")
        if cfg.text_encoder.kind == "eva_clip" and not cfg.text_encoder.weights and not _provided(cfg, "text_encoder."):
            raise UserError("text_encoder.weights: the EVA-CLIP text weights are needed (the official "
                            "ckpts/eva_clip_psz14.pt), or a checkpoint that holds text_encoder.*")
        quiet = logging.getLogger("dynrefer.model.loading")   # the reports are printed below, once
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            model = build_dynrefer(cfg, tag_list=tags, classes=classes, attributes=attributes, seed=0)
        finally:
            quiet.setLevel(level)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    for rep in model.load_reports:
        log(str(rep))
    # The bundle holds the weights: its config names no file (the LLM directory stays, it is reloaded from there).
    model.config = dataclasses.replace(
        cfg, vit_checkpoint=None, pretrained=None, finetuned=None,
        text_encoder=dataclasses.replace(cfg.text_encoder, weights=None))
    model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    path = save_bundle(model, out, [], tags, classes, attributes,
                       {"num_views": cfg.num_views, "size": cfg.vision.image_size})
    log(f"model bundle → {path}")
    return path, list(model.load_reports)
