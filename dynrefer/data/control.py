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

The official training candidates also hold the caption's noun and adjective phrases (``caption_phrases``; the
dataset's ``control_phrases``): each noun or adjective starts a phrase that runs on over the nouns after it. The
official code tags with TextBlob's default tagger (NLTK's averaged perceptron, whose model is a corpus download);
here the tagger is the lexicon-and-rules tagger TextBlob ships (``textblob.en.tag``, Pattern's, no download;
``pip install textblob``), so a few words get other tags.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["SEPARATOR", "control_sentence", "sample_control_words", "unique_words", "control_from_scores",
           "TAG_THRESHOLDS", "caption_phrases", "phrases_from_tags"]

#: Inference thresholds on the tag decoder's sigmoid scores (the official evaluation configs): 0.7 by default,
#: 0.76 for RefCOCOg, 0.8 for VG region captioning.
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


def phrases_from_tags(tagged: Sequence[Tuple[str, str]]) -> List[str]:
    """Noun/adjective phrases from (word, Penn tag) pairs, as the official ``parse_sentence`` builds them: every word
    tagged NN* or JJ* starts a phrase at the first occurrence of that word, extended over the following words that
    are tagged NN* anywhere in the sentence; one phrase per such word, in order (repeats kept)."""
    tokens = [w for w, _ in tagged]
    nouns = {w for w, t in tagged if "NN" in t}
    out = []
    for word, t in tagged:
        if "NN" not in t and "JJ" not in t:
            continue
        st = tokens.index(word)
        ed = st + 1
        while ed < len(tokens) and tokens[ed] in nouns:
            ed += 1
        out.append(" ".join(tokens[st:ed]))
    return out


def caption_phrases(caption: str) -> List[str]:
    """The noun/adjective phrases of a caption (:func:`phrases_from_tags` over TextBlob's bundled Pattern tagger);
    needs ``textblob``. Phrases holding ',' or '|' (which would break the control sentence) are left out."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    try:
        from textblob.en import tag
    except ImportError as e:
        raise ImportError("caption phrases (control_phrases) need TextBlob: pip install textblob") from e
    if not caption.strip():
        return []
    return [p for p in phrases_from_tags(tag(caption, tokenize=True)) if "," not in p and SEPARATOR not in p]
