"""Building a DynRefer model from a config and vocabularies, all locally (no downloads)."""
from __future__ import annotations

from dynrefer.model.config import DynReferConfig
from dynrefer.model.dynrefer import DynRefer, attribute_prompts, class_prompts
from dynrefer.model.text import TextEncoder, build_bert_tokenizer, build_t5_tokenizer

__all__ = ["build_dynrefer"]

_NO_CAP = 10_000_000


def build_dynrefer(config="tiny", texts=(), tag_list=(), classes=(), attributes=(), t5_model=None,
                   t5_tokenizer=None, text_encoder=None, embed_cache_dir=None, seed=None, model_cls=DynRefer):
    """A DynRefer with randomly initialised weights from ``config`` (a :class:`DynReferConfig` or a preset name).

    Tokenizers that are not given are trained on ``texts`` (captions, …) plus the tag, class and attribute names
    (e.g. the vocabulary files of a dataset, read by the caller), so every word the model will see is in the
    vocabulary. ``seed`` fixes the initialisation. ``model_cls``: a subclass of :class:`DynRefer` to build instead
    (e.g. the LAVIS-facing class of :mod:`dynrefer.lavis`).
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
        if t5_tokenizer is None:
            t5_tokenizer = build_t5_tokenizer(vocab, _NO_CAP)
        if text_encoder is None:
            tok = build_bert_tokenizer(vocab, _NO_CAP)
            text_encoder = TextEncoder(config.text_encoder, tok)
        return model_cls(config, t5_tokenizer, tag_list, text_encoder, classes=classes, attributes=attributes,
                        t5_model=t5_model, embed_cache_dir=embed_cache_dir)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
