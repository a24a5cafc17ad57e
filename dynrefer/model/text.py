"""Locally built tokenizers and the frozen BERT text encoder (with an on-disk embedding cache); EVA-CLIP's text
tower, the official one, is :mod:`dynrefer.model.clip_text`.

Nothing here downloads: a word-level ``tokenizers`` tokenizer is trained on the texts the caller passes
(captions, tag names, class and attribute names) and wrapped in ``PreTrainedTokenizerFast``, so it saves and
loads with ``save_pretrained``/``from_pretrained`` next to a Hugging Face T5.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["build_t5_tokenizer", "build_bert_tokenizer", "build_causal_tokenizer", "FrozenTextEncoder", "TextEncoder",
           "normalize_text"]


def normalize_text(s: object) -> str:
    return " ".join(str(s).lower().strip().split())


def _word_level(texts, vocab_size, specials, unk):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(specials), min_frequency=1)
    tok.train_from_iterator([str(t) for t in texts], trainer=trainer)
    return tok


def build_t5_tokenizer(texts: Iterable[object], vocab_size: int = 32128) -> Any:
    """A word-level tokenizer with T5's special ids: <pad> = 0, </s> = 1 (appended to every sequence), <unk> = 2.

    ``texts``: an iterable of strings (captions, tags, …); '|' and ',' are always in the vocabulary (control
    sentences use them).
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) + [", |"]
    tok = _word_level(texts, vocab_size, ["<pad>", "</s>", "<unk>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=True, model_max_length=512)


def build_bert_tokenizer(texts: Iterable[object], vocab_size: int = 30522) -> Any:
    """A word-level tokenizer with BERT's specials: [PAD] = 0, [UNK], [CLS] … [SEP]."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _word_level(list(texts), vocab_size, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def build_causal_tokenizer(texts: Iterable[object], vocab_size: int = 32000) -> Any:
    """A word-level tokenizer with LLaMA's special ids: <unk> = 0, <s> = 1, </s> = 2, and <pad> = 3. It adds no
    special tokens itself (the model places <s> and </s>). '|', ',' and ':' are always in the vocabulary."""
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) + [", | :"]
    tok = _word_level(texts, vocab_size, ["<unk>", "<s>", "</s>", "<pad>"], "<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=True, model_max_length=4096)


class FrozenTextEncoder:
    """What the model needs of a frozen text encoder (a mixin for an ``nn.Module``): ``width`` (the embedding
    width), ``encode(texts)`` → float ``[N, width]``, and from here ``encode_memo``, ``embed`` (with an on-disk cache
    keyed by ``fingerprint()``) and a ``train`` that keeps it in eval mode.

    Subclasses: :class:`TextEncoder` (a BERT) and :class:`dynrefer.model.clip_text.EVACLIPTextEncoder`."""

    kind = None

    def _init_frozen(self):
        self.requires_grad_(False)
        self.eval()
        self._fingerprint = None
        self._memo = {}

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        raise NotImplementedError

    def encode_memo(self, texts: Sequence[str], max_entries: int = 200_000) -> torch.Tensor:
        """``encode`` through an in-memory memo per text (the encoder is frozen, so a text's embedding is fixed);
        training embeds each caption once. Each new text is encoded on its own (no padding, no batch company), so
        an embedding does not depend on which batch first held its text, nor on whether the memo was emptied or
        rebuilt after a resume: training resumes bit for bit."""
        new = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if new:
            if len(self._memo) + len(new) > max_entries:
                self._memo.clear()
            for t in new:
                self._memo[t] = self.encode([t])[0].cpu()
        return torch.stack([self._memo[t] for t in texts]).to(self._device())

    def train(self, mode: bool = True) -> "FrozenTextEncoder":  # always frozen and in eval mode
        return super().train(False)

    def _fingerprint_parts(self) -> Tuple[dict, bytes]:
        """(state dict, vocabulary bytes) that identify the encoder."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            state, vocab = self._fingerprint_parts()
            for k, v in sorted(state.items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().numpy().tobytes())
            h.update(vocab)
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def embed(self, texts: Iterable[object], cache_dir: Optional[str] = None) -> torch.Tensor:
        texts = [str(t) for t in texts]
        if cache_dir is None:
            return self.encode(texts).cpu()
        key = hashlib.sha256((self.fingerprint() + "\x01" + "\x00".join(texts)).encode()).hexdigest()[:32]
        path = os.path.join(cache_dir, f"text_embeds_{key}.pt")
        if os.path.exists(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        emb = self.encode(texts).cpu()
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".tmp{os.getpid()}"
        torch.save(emb, tmp)
        os.replace(tmp, path)
        return emb


class TextEncoder(FrozenTextEncoder, nn.Module):
    """A frozen BERT text encoder (``transformers.BertModel``): texts → the mean of the last hidden states
    over the text's tokens (specials included).

    ``encode(texts)`` runs it; ``embed(texts, cache_dir=None)`` memoises the result on disk under a key made of the
    encoder's weights and the texts, so the thousands of tag / attribute prompts are embedded once.
    """

    kind = "bert"

    def __init__(self, cfg: Any, tokenizer: Any, model: Any = None) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if model is None:
            bc = BertConfig(vocab_size=max(cfg.vocab_size, len(tokenizer)), hidden_size=cfg.hidden_size,
                            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                            intermediate_size=cfg.intermediate_size, max_position_embeddings=512,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            model = BertModel(bc, add_pooling_layer=False)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = cfg.max_length
        self.width = model.config.hidden_size
        self._init_frozen()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        dev = self._device()
        outs = []
        for i in range(0, len(texts), batch_size):
            t = self.tokenizer([normalize_text(x) for x in texts[i:i + batch_size]], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(dev)
            h = self.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
            m = t["attention_mask"].unsqueeze(-1).to(h.dtype)
            outs.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).float())
        if not outs:
            return torch.zeros(0, self.width, device=dev)
        return torch.cat(outs)

    def _fingerprint_parts(self):
        vocab = "\x00".join(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))).encode()
        return self.model.state_dict(), vocab
