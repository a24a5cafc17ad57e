"""Building a DynRefer model from a config and vocabularies, all locally (no downloads)."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Type, Union

from dynrefer.model.config import DynReferConfig, TextEncoderConfig
from dynrefer.model.dynrefer import DynRefer, attribute_prompts, class_prompts
from dynrefer.model.text import TextEncoder, build_bert_tokenizer, build_causal_tokenizer, build_t5_tokenizer

__all__ = ["build_dynrefer", "build_text_encoder"]


_NO_CAP = 10_000_000


def build_text_encoder(cfg: TextEncoderConfig, texts: Iterable[object] = ()) -> Any:
    """The frozen text encoder of a :class:`~dynrefer.model.config.TextEncoderConfig`: kind "bert" trains its
    word-level tokenizer on ``texts``; kind "eva_clip" uses the CLIP BPE vocabulary (``texts`` unused) and loads
    ``cfg.weights`` when set."""
    if cfg.kind == "eva_clip":
        from dynrefer.model.clip_text import EVACLIPTextEncoder

        return EVACLIPTextEncoder(cfg)
    return TextEncoder(cfg, build_bert_tokenizer(texts, _NO_CAP))


def build_dynrefer(config: Union[DynReferConfig, str] = "tiny", texts: Iterable[object] = (),
                   tag_list: Sequence[str] = (), classes: Sequence[str] = (), attributes: Sequence[Any] = (),
                   t5_model: Any = None, t5_tokenizer: Any = None, text_encoder: Any = None,
                   embed_cache_dir: Optional[str] = None, seed: Optional[int] = None, llm_model: Any = None,
                   llm_tokenizer: Any = None, model_cls: Type[DynRefer] = DynRefer) -> DynRefer:
    """A DynRefer with randomly initialised weights from ``config`` (a :class:`DynReferConfig` or a preset name).

    Tokenizers that are not given are trained on ``texts`` (captions, …) plus the tag, class and attribute names
    (e.g. the vocabulary files of a dataset, read by the caller), so every word the model will see is in the
    vocabulary. ``seed`` fixes the initialisation. ``model_cls``: a subclass of :class:`DynRefer` to build instead
    (e.g. the LAVIS-facing class of :mod:`dynrefer.lavis`).

    With ``config.llm.kind == "causal"`` the LLM is ``llm_model`` / ``llm_tokenizer`` when given, else loaded from
    the local directory ``config.llm.path``, else built from ``config.llm.config`` (random weights, a word-level
    tokenizer trained on the same texts plus the chat template's words).
    """
    import torch

    if isinstance(config, str):
        config = DynReferConfig.from_preset(config)
    vocab = [str(t) for t in texts] + [str(t) for t in tag_list] + class_prompts(classes)
    vocab += [p for ps in attribute_prompts(attributes) for p in ps]
    ctx = torch.random.fork_rng() if seed is not None else None
    if ctx is not None:
        ctx.__enter__()
        torch.manual_seed(seed)
    try:
        # Word-level vocabularies keep every word given (no cap, so nothing the model is trained on becomes
        # <unk>); the T5 / BERT embedding tables grow to the tokenizer when it outgrows the config's vocab_size.
        lc = config.llm
        if lc.kind == "causal":
            if llm_model is None and lc.path:
                from dynrefer.model.causal import load_causal_lm

                llm_model, loaded_tok = load_causal_lm(lc.path, lc.dtype)
                llm_tokenizer = llm_tokenizer or loaded_tok
            if llm_tokenizer is None:
                llm_tokenizer = build_causal_tokenizer(vocab + [lc.system, lc.user, lc.assistant, lc.prompt], _NO_CAP)
        if text_encoder is None:
            text_encoder = build_text_encoder(config.text_encoder, vocab)
        if lc.kind == "causal":
            return model_cls(config, llm_tokenizer, tag_list, text_encoder, classes=classes, attributes=attributes,
                             embed_cache_dir=embed_cache_dir, llm_model=llm_model)
        if t5_tokenizer is None:
            t5_tokenizer = build_t5_tokenizer(vocab, _NO_CAP)
        return model_cls(config, t5_tokenizer, tag_list, text_encoder, classes=classes, attributes=attributes,
                         t5_model=t5_model, embed_cache_dir=embed_cache_dir)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
