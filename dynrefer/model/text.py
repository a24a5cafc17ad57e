"""Locally built tokenizers and the frozen text encoder (with an on-disk embedding cache).

Nothing here downloads: a word-level ``tokenizers`` tokenizer is trained on the texts the caller passes
(captions, tag names, class and attribute names) and wrapped in ``PreTrainedTokenizerFast``, so it saves and
loads with ``save_pretrained``/``from_pretrained`` next to a Hugging Face T5.
"""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

    from dynrefer.model.config import TextEncoderConfig

__all__ = ["build_t5_tokenizer", "build_bert_tokenizer", "build_causal_tokenizer", "TextEncoder", "normalize_text"]


def normalize_text(s: object) -> str:
    return " ".join(str(s).lower().strip().split())


def _word_level(texts: Iterable[object], vocab_size: int, specials: Sequence[str], unk: str) -> Tokenizer:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(specials), min_frequency=1)
    tok.train_from_iterator([str(t) for t in texts], trainer=trainer)
    return tok


def build_t5_tokenizer(texts: Iterable[str], vocab_size: int = 32128) -> PreTrainedTokenizerFast:
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


def build_bert_tokenizer(texts: Iterable[str], vocab_size: int = 30522) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with BERT's specials: [PAD] = 0, [UNK], [CLS] … [SEP]."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _word_level(list(texts), vocab_size, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def build_causal_tokenizer(texts: Iterable[str], vocab_size: int = 32000) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with LLaMA's special ids: <unk> = 0, <s> = 1, </s> = 2, and <pad> = 3. It adds no
    special tokens itself (the model places <s> and </s>). '|', ',' and ':' are always in the vocabulary."""
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) + [", | :"]
    tok = _word_level(texts, vocab_size, ["<unk>", "<s>", "</s>", "<pad>"], "<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=True, model_max_length=4096)


class TextEncoder(nn.Module):
    """A frozen BERT text encoder (``transformers.BertModel``): texts → the mean of the last hidden states
    over the text's tokens (specials included).

    ``encode(texts)`` runs it; ``embed(texts, cache_dir=None)`` memoises the result on disk under a key made of the
    encoder's weights and the texts, so the thousands of tag / attribute prompts are embedded once.
    """

    def __init__(self, cfg: TextEncoderConfig, tokenizer: PreTrainedTokenizerBase,
                 model: Optional[PreTrainedModel] = None) -> None:
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
        self.requires_grad_(False)
        self.eval()
        self._fingerprint: Optional[str] = None
        self._memo: Dict[str, Tensor] = {}

    def encode_memo(self, texts: Sequence[str], max_entries: int = 200_000) -> Tensor:
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
        dev = next(self.model.parameters()).device
        return torch.stack([self._memo[t] for t in texts]).to(dev)

    def train(self, mode: bool = True) -> TextEncoder:  # always frozen and in eval mode
        return super().train(False)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        dev = next(self.model.parameters()).device
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

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().numpy().tobytes())
            h.update("\x00".join(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))).encode())
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def embed(self, texts: Iterable[object], cache_dir: Optional[str] = None) -> Tensor:
        strs = [str(t) for t in texts]
        if cache_dir is None:
            return self.encode(strs).cpu()
        key = hashlib.sha256((self.fingerprint() + "\x01" + "\x00".join(strs)).encode()).hexdigest()[:32]
        path = os.path.join(cache_dir, f"text_embeds_{key}.pt")
        if os.path.exists(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        emb = self.encode(strs).cpu()
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".tmp{os.getpid()}"
        torch.save(emb, tmp)
        os.replace(tmp, path)
        return emb
