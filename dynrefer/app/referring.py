"""Referring reasoning: instruction fine-tuning on region conversations, and the model bundles ``dynrefer chat``
and ``dynrefer ferret-bench`` load.

``dynrefer train CONFIG`` routes here when the config has ``datasets.conversations``::

    model:
      preset: tiny                  # any DynReferConfig preset, plus overrides
      llm: {kind: causal, path: /models/vicuna-7b-v1.5, lora: true}   # or config: {model_type: llama, ...}
      views: {prior: stochastic}    # NestedViews keywords for training
    datasets:
      conversations:
        train: conversations.json   # LLaVA / Osprey style (dynrefer.data.conversations)
        image_root: images/         # default: the file's folder
        tags: tags.txt              # the tag vocabulary, one per line (the tag decoder's; D_llm's control words)
    run: {...}                      # the training engine's section (dynrefer.train)

The model trains with the engine (LLM loss on every gpt turn; the LLM stays frozen unless ``llm.lora`` or
``train_llm``); ``run.load_ckpt_path`` starts from a DynRefer checkpoint (e.g. a captioning run's), matching
tensors by name. At the end ``output_dir/model.pt`` is a model bundle. A bundle whose LLM comes from
``llm.path`` leaves the frozen LLM weights out and reloads them from that directory.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

if TYPE_CHECKING:
    from dynrefer.model.config import DynReferConfig
    from dynrefer.model.dynrefer import DynRefer

__all__ = ["train_conversations", "conversation_model_config", "ConversationConfigError", "load_chat_model"]


class ConversationConfigError(ValueError):
    """The config's model or datasets.conversations section is incomplete or wrong (the message names the key)."""


def conversation_model_config(model_section: Optional[dict]) -> DynReferConfig:
    """A :class:`DynReferConfig` from a config's ``model`` section (``preset`` + overrides; ``views`` and ``arch``
    are not model fields)."""
    from dynrefer.model import DynReferConfig

    m = dict(model_section or {})
    preset = m.pop("preset", "tiny")
    for k in ("arch", "views"):
        m.pop(k, None)
    try:
        cfg = DynReferConfig.from_preset(preset, **m)
    except (TypeError, ValueError) as e:
        raise ConversationConfigError(f"model: {e}") from None
    if cfg.llm.kind != "causal":
        raise ConversationConfigError("conversation training needs a decoder-only LLM: set model.llm.kind to 'causal' "
                         "(with llm.path or llm.config)")
    return cfg


def _read_tags(path: Optional[str]) -> List[str]:
    from dynrefer.data import load_tag_vocab

    if not path:
        raise ConversationConfigError("datasets.conversations.tags: a tag vocabulary file (one tag per line) is needed")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datasets.conversations.tags: no file {path}")
    tags = load_tag_vocab(path)
    if not tags:
        raise ConversationConfigError(f"datasets.conversations.tags: {path} has no tags")
    return tags


def train_conversations(cfg: Any, log: Callable[[str], Any] = print) -> Tuple[DynRefer, dict, str]:
    """Train on ``datasets.conversations`` with the training engine (see the module docstring).

    ``cfg``: a :class:`dynrefer.train.Config` (or what ``load_config`` takes). Returns (model, summary, bundle path).
    """
    import torch

    from dynrefer.data.conversation_dataset import ConversationDataset
    from dynrefer.data.conversations import conversation_texts, load_conversations
    from dynrefer.app.bundle import save_bundle
    from dynrefer.model import build_dynrefer
    from dynrefer.train import load_config, run_training
    from dynrefer.views import NestedViews

    cfg = load_config(cfg)
    conv = dict(cfg.datasets.get("conversations") or {})
    if not conv.get("train"):
        raise ConversationConfigError("datasets.conversations.train: the conversation file to train on is needed")
    mcfg = conversation_model_config(cfg.model)
    tags = _read_tags(conv.get("tags"))
    records = load_conversations(conv["train"], image_root=conv.get("image_root"))
    texts = conversation_texts(records)
    views = dict((cfg.model or {}).get("views") or {})
    for k, source in (("size", "model vision.image_size"), ("seed", "run.seed"), ("num_views", "model num_views")):
        if k in views:
            raise ConversationConfigError(f"model.views.{k}: set by {source}, not in views")
    views.setdefault("prior", "stochastic")  # training samples its views
    views["num_views"] = mcfg.num_views
    run = dict(cfg.run)
    # conversations train D_llm only: the tag and region-text heads get no gradient, which DDP must be told
    run["find_unused_parameters"] = True
    seed = run["seed"]
    ds = ConversationDataset(records, NestedViews(size=mcfg.vision.image_size, seed=seed, **views))
    built: List[DynRefer] = []

    def build(_: Any) -> DynRefer:
        built.append(build_dynrefer(mcfg, texts=texts, tag_list=tags, seed=seed))
        return built[-1]

    log(f"training on {len(records)} conversations ({sum(len(r.turns) for r in records)} answers), "
        f"LLM {'LoRA' if mcfg.llm.lora else 'trained' if mcfg.train_llm else 'frozen'}")
    summary = run_training({"model": cfg.model, "datasets": cfg.datasets, "run": run}, build,
                           lambda _: {"train": ds})
    model = built[-1]
    model.eval()
    with torch.no_grad():
        path = save_bundle(model, os.path.join(run["output_dir"], "model.pt"), texts, tags, [], [],
                           {"num_views": mcfg.num_views, "size": mcfg.vision.image_size})
    return model, summary, path


def load_chat_model(checkpoint: str) -> DynRefer:
    """The model of the bundle ``checkpoint`` for chat (it must have a decoder-only LLM)."""
    from dynrefer.app.bundle import load_bundle, load_bundle_model
    from dynrefer.app.errors import UserError

    try:
        bundle = load_bundle(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if bundle["config"].get("llm", {}).get("kind", "t5") != "causal":
        raise UserError(f"{checkpoint}: this model's D_llm is a T5; chat needs a model with a decoder-only LLM "
                        "(train one on conversations: datasets.conversations and model.llm.kind causal)")
    return load_bundle_model(checkpoint, bundle)[1]
