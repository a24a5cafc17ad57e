"""The control sentence of DynRefer's caption decoder.

The LLM is prompted with control words — tags of the region — as ``"tag1,tag2,...|"`` (``|`` plays the
separator; an empty control is just ``"|"``). In training (the official ``parse_sentence``): the region's tag
names (both sets, without repeats) are the candidates; with probability ``p_drop_all`` = 0.5 the whole control is
dropped, otherwise each candidate is kept independently with probability ``1 - p_drop_word`` = 0.5 and the kept
words are shuffled. At inference every given word is used (predicted tags above the threshold), in the order
given, without repeats.

Unlike the official code (which uses Python's unordered ``set`` and the global random state) the candidates keep
their order of first appearance and all randomness comes from the ``rng`` passed in, so a seed reproduces the
sentence exactly.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["SEPARATOR", "control_sentence", "sample_control_words", "unique_words", "control_from_scores",
           "TAG_THRESHOLDS"]

#: Inference thresholds on the tag decoder's sigmoid scores (docs/DESIGN.md §8): 0.7 by default, 0.76 for RefCOCOg, 0.8 for
#: VG region captioning.
TAG_THRESHOLDS = {"default": 0.7, "refcocog": 0.76, "vg": 0.8}

SEPARATOR = "|"


def unique_words(words: Iterable[str]) -> List[str]:
    """Words without repeats or blanks, first appearance first; each stripped."""
    if isinstance(words, (str, bytes)):
        raise TypeError("control words must be a sequence of strings, not a single string")
    out, seen = [], set()
    for w in words:
        if not isinstance(w, str):
            raise TypeError(f"control words must be str, got {type(w).__name__}")
        w = w.strip()
        if w and w not in seen:
            seen.add(w)
            out.append(w)
    return out


def control_sentence(words: Iterable[str]) -> str:
    """``"w1,w2,...|"`` from the words as given (repeats and blanks removed). Commas and ``|`` inside a word
    would change the sentence's structure and raise ``ValueError``."""
    ws = unique_words(words)
    for w in ws:
        if "," in w or SEPARATOR in w:
            raise ValueError(f"control word {w!r} contains ',' or '|'")
    return ",".join(ws) + SEPARATOR


def sample_control_words(words: Sequence[str], rng: Optional[np.random.Generator] = None, *,
                         training: bool = True, p_drop_all: float = 0.5, p_drop_word: float = 0.5) -> str:
    """The control sentence for one region (see the module docstring). ``rng``: a NumPy Generator (or a seed);
    needed only when ``training``."""
    for name, p in (("p_drop_all", p_drop_all), ("p_drop_word", p_drop_word)):
        if not (0.0 <= float(p) <= 1.0):
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    ws = unique_words(words)
    if not training:
        return control_sentence(ws)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if rng.random() < p_drop_all or not ws:
        return SEPARATOR
    keep = rng.random(len(ws)) >= p_drop_word
    kept = [w for w, k in zip(ws, keep) if k]
    order = rng.permutation(len(kept))
    return control_sentence([kept[i] for i in order])


def control_from_scores(scores: ArrayLike, vocab: Sequence[str], threshold: float = 0.7) -> List[str]:
    """Inference control sentences from tag probabilities: for each row of ``scores`` (``[T]`` or ``[R, T]``,
    sigmoid outputs), the tags scoring above ``threshold``, in vocabulary order, as ``"t1,t2,...|"``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] != len(vocab):
        raise ValueError(f"scores must be [T] or [R, T] with T = {len(vocab)} tags, got shape {np.shape(scores)}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    return [control_sentence([vocab[j] for j in np.flatnonzero(row > threshold).tolist()]) for row in s]
