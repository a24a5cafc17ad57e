"""The CLIP byte-level BPE tokenizer (the tokenizer of EVA-CLIP's text tower, which DynRefer's tag and prompt
embeddings come from).

Vocabulary: 256 byte symbols, the same 256 with the end-of-word marker ``</w>``, then one symbol per merge of the
first 48 894 merges of ``bpe_simple_vocab_16e6.txt.gz``, then ``<|startoftext|>`` (49406) and ``<|endoftext|>``
(49407): 49 408 ids. The merges file is read at run time from the installed ``open_clip`` package
(``pip install 'dynrefer[clip]'``) or from a path the caller gives; it is never bundled or downloaded.

Text → ids, as EVA-CLIP's ``tokenize``:
    1. clean: ``ftfy.fix_text``, HTML-unescape twice, strip; runs of whitespace → one space; lower-case;
    2. split with the CLIP pattern (the two special markers, English contractions, letter runs, single digits,
       runs of other non-space characters);
    3. each piece's UTF-8 bytes → printable stand-in characters → BPE merges (lowest rank first, every
       non-overlapping occurrence left to right) → ids;
    4. ``[SOT] + ids + [EOT]``, zero-padded to the context length (77); a longer sequence keeps its first 77 ids
       and its last id becomes EOT.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import os
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["CLIPTokenizer", "clip_bpe_path", "bytes_to_unicode", "clean_text"]

_NUM_MERGES = 49152 - 256 - 2   # the merges CLIP uses (the file has more)
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_path() -> str:
    """Where the installed ``open_clip`` package keeps the CLIP merges file (the package is located, not
    imported). Raises ``FileNotFoundError`` naming the file and where it is expected."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the CLIP BPE vocabulary ({_BPE_FILE}) is read from the open-clip-torch package, which is not installed; "
            "install it with pip install 'dynrefer[clip]', or give the file's path (bpe_path=, text_encoder.bpe_path)")
    for d in spec.submodule_search_locations:
        p = os.path.join(d, _BPE_FILE)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"{_BPE_FILE} is not in the installed open_clip package "
                            f"({', '.join(spec.submodule_search_locations)}); pass bpe_path=<path to the file>")


@lru_cache(maxsize=None)
def bytes_to_unicode() -> Dict[int, str]:
    """Byte value → a printable character standing for it: the printable Latin-1 bytes stand for themselves, the
    others (control, space, soft hyphen …) take the characters from U+0100 upwards in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def _regex():
    import regex

    return regex


def clean_text(text: str) -> str:
    """ftfy's fixes, two rounds of HTML unescaping, whitespace runs collapsed, lower case (CLIP's cleaning)."""
    import ftfy

    re = _regex()
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class CLIPTokenizer:
    """CLIP's BPE tokenizer. ``tok(texts)`` → ``LongTensor [N, context_length]``; ``tok.encode(text)`` → the ids
    without SOT/EOT; ``tok.decode(ids)`` → text (``</w>`` becomes a space, specials are kept as their names).

    ``bpe_path``: the merges file (default: the one in the installed ``open_clip`` package).
    """

    def __init__(self, bpe_path: Optional[str] = None, context_length: int = 77) -> None:
        path = bpe_path or clip_bpe_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CLIP BPE merges file not found: {path}")
        with gzip.open(path, "rb") as f:
            raw = f.read()
        lines = raw.decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:1 + _NUM_MERGES]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path}: expected {_NUM_MERGES} merges of two symbols after the header line")
        self.bpe_path = path
        self.context_length = int(context_length)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        if len(self.encoder) != len(vocab):
            raise ValueError(f"{path}: the merges give duplicate vocabulary entries")
        self.decoder = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.vocab_size = len(vocab)
        self.digest = hashlib.sha256(raw).hexdigest()[:16]
        re = _regex()
        self._pattern = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                                   r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", re.IGNORECASE)
        self._memo = {}

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"CLIPTokenizer(vocab {self.vocab_size}, context {self.context_length}, {self.bpe_path})"

    # ----------------------------------------------------------------------------------------------- BPE
    def _merge(self, piece):
        """A piece (already mapped to byte stand-ins) → its BPE symbols."""
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        ranks = self.ranks
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            a, b = best
            out, i, n = [], 0, len(word)
            while i < n:
                if i + 1 < n and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def _piece_ids(self, piece):
        ids = self._memo.get(piece)
        if ids is None:
            if piece in (SOT, EOT):
                ids = (self.encoder[piece],)
            else:
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids = tuple(self.encoder[s] for s in self._merge(mapped))
            if len(self._memo) >= 200_000:
                self._memo.clear()
            self._memo[piece] = ids
        return ids

    def encode(self, text: str) -> List[int]:
        """The ids of ``text`` (cleaned first), without SOT/EOT."""
        out = []
        for piece in self._pattern.findall(clean_text(text)):
            out.extend(self._piece_ids(piece))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text: stand-ins back to bytes (the special tokens' names are plain ASCII and come out as they are),
        UTF-8 with replacement characters for broken sequences, ``</w>`` → a space."""
        s = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in s).decode("utf-8", errors="replace").replace("</w>", " ")

    # ------------------------------------------------------------------------------------------ batches
    def ids(self, text: str, context_length: Optional[int] = None) -> List[int]:
        """``[SOT] + encode(text) + [EOT]`` cut to the context length with EOT last (a list, no padding)."""
        n = context_length or self.context_length
        ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
        if len(ids) > n:
            ids = ids[:n]
            ids[-1] = self.eot_token_id
        return ids

    def __call__(self, texts: Any, context_length: Optional[int] = None) -> Any:
        """``LongTensor [N, context_length]``: each row SOT, the text's ids, EOT, then zeros."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        if n < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {n}")
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for r, t in enumerate(texts):
            ids = self.ids(t, n)
            out[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    tokenize = __call__
