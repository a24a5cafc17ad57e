"""Tags from captions, by deterministic rules (no downloaded NLP model).

DynRefer's tag decoder is trained on the tags of each region's caption (the official files carry them in
``extra_info.parser_result.tag_set1`` / ``tag_set2``, indices into the 4585-name tag list). This module produces
the same kind of output for any caption and any vocabulary (passed in; nothing is read from disk):

1. **Normalise**: lower-case; possessive ``'s`` and ``s'`` dropped; every run of characters other than ``a-z``
   and ``0-9`` is a separator (so ``t-shirt`` = ``t shirt``, ``rubik's cube`` = ``rubik cube``).
2. **Tokenise** on the separators. Vocabulary names go through steps 1-2 as well.
3. **Inflection**: each token also has a normal form — irregular plurals (``men`` → ``man``, ``people`` →
   ``person``, ``leaves`` → ``leaf`` ...), then the regular rules ``-ies`` → ``-y``, ``-ches/-shes/-sses/-xes/-zes``
   → drop ``es``, ``-oes`` → ``-o``, ``-s`` → drop (not after ``s``, ``u``, ``i``; words of three letters or
   fewer are kept). A single token that is not a tag in either form is also tried as a verb form: ``-ing`` / ``-ed``
   stripped, with a silent ``e`` restored (``riding`` → ``ride``) or a doubled consonant undone (``running`` →
   ``run``), accepted only when the result is a tag.
4. **Match longest first**: scanning left to right, the longest run of tokens (up to the longest tag) whose exact
   tokens, else whose normal forms, equal a tag's is taken, and the scan continues after it. An exact match
   wins over a normalised one (``glasses`` stays ``glasses`` where both ``glass`` and ``glasses`` are tags).
   A verb form whose stem ends consonant-vowel-consonant tries the silent ``e`` first (``striped`` →
   ``stripe``, ``riding`` → ``ride``), otherwise the bare stem first (``walked`` → ``walk``).
5. **Suffixes** (``suffixes=True``, the default): a multi-word match also yields the tags of its trailing
   sub-phrases (``teddy bears`` → ``teddy bear`` and ``bear``; ``hot dog`` → ``hot dog`` and ``dog``), as the
   official annotations add every suffix of an entity's lemmatised span.
6. **Stop list**: single-word matches in :data:`STOP_TAGS` (position and layout words such as ``side``,
   ``back``, ``top``, ``front``, ``left``, ``right``, ``background``) are not tags, since captions use them to
   place things rather than to name them.
7. **Two sets**, after the official split of the caption's scene graph into subjects and the objects of
   relations: ``tag_set1`` holds the tags of the referred thing — those before the first relation word
   (:data:`RELATION_WORDS`: prepositions, ``is``/``has``/``holding``/``wearing``/..., relative pronouns) that
   follows the first tag; ``tag_set2`` holds the relation itself when it is a tag (``riding``) and every tag
   after it (the context). ``and`` joins subjects (``a man and a woman`` are both in ``tag_set1``). A caption
   without a relation word has everything in ``tag_set1``. Each set keeps order of first appearance, without
   repeats.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TagExtractor", "normalize_text", "tokenize", "singular", "STOP_TAGS", "RELATION_WORDS"]

_IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "persons": "person",
    "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "dice": "die",
    "leaves": "leaf", "knives": "knife", "wives": "wife", "lives": "life", "wolves": "wolf", "shelves": "shelf",
    "halves": "half", "calves": "calf", "loaves": "loaf", "scarves": "scarf", "thieves": "thief",
    "elves": "elf", "hooves": "hoof", "sheep": "sheep", "deer": "deer", "fish": "fish", "series": "series",
    "species": "species", "buses": "bus", "gases": "gas", "cacti": "cactus", "fungi": "fungus",
    "octopi": "octopus", "bacteria": "bacterium", "data": "datum", "criteria": "criterion",
}
# words that keep a final "s" in the singular
_KEEP_S = ("ss", "us", "is", "ous", "ics")

STOP_TAGS = frozenset({
    "side", "back", "front", "top", "bottom", "left", "right", "middle", "center", "centre", "edge", "corner",
    "part", "piece", "area", "view", "image", "picture", "photo", "background", "foreground", "object", "thing",
    "other", "some", "one", "two", "stand", "way", "end", "line",
})

RELATION_WORDS = frozenset({
    "on", "in", "at", "of", "by", "near", "next", "beside", "besides", "behind", "under", "underneath", "below",
    "beneath", "above", "over", "across", "along", "against", "around", "between", "among", "inside", "outside",
    "into", "onto", "with", "without", "from", "to", "toward", "towards", "through", "left", "right", "atop",
    "is", "are", "was", "were", "has", "have", "having", "holding", "wearing", "carrying", "riding", "sitting",
    "standing", "lying", "laying", "hanging", "eating", "looking", "walking", "playing", "using", "that", "which",
    "who", "while", "where", "surrounded", "covered", "filled", "made",
})

_POSSESSIVE = re.compile(r"(?<=[a-z0-9])'s\b|(?<=s)'(?=\s|$)")
_SEP = re.compile(r"[^a-z0-9]+")


def normalize_text(text: str) -> str:
    """Lower-case, drop possessives, and turn every run of non-alphanumerics into one space."""
    t = text.lower().replace("\u2019", "'")
    t = _POSSESSIVE.sub("", t)
    return _SEP.sub(" ", t).strip()


def tokenize(text: str) -> List[str]:
    """The tokens of :func:`normalize_text`."""
    t = normalize_text(text)
    return t.split(" ") if t else []


def singular(word: str) -> str:
    """The singular of a (lower-case) noun by the rules in the module docstring."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    n = len(word)
    if n <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and n > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("oes") and n > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(_KEEP_S):
        return word[:-1]
    return word


def _cvc(stem: str) -> bool:
    v = "aeiou"
    return (len(stem) >= 3 and stem[-1] not in v + "wxy" and stem[-2] in v and stem[-3] not in v)


def _verb_stems(word: str) -> List[str]:
    out = []
    for suf in ("ing", "ed"):
        if word.endswith(suf) and len(word) > len(suf) + 2:
            stem = word[: -len(suf)]
            if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
                out.append(stem[:-1])                        # running -> run
            out += [stem + "e", stem] if _cvc(stem) else [stem, stem + "e"]   # riding -> ride, walked -> walk
            if suf == "ed" and stem.endswith("i"):
                out.append(stem[:-1] + "y")                  # carried -> carry
    return out


class TagExtractor:
    """Maps captions onto a tag vocabulary (see the module docstring for the rules).

    ``vocab``: the tag names in index order (e.g. the 4585 lines of the tag list). ``stop_tags`` and
    ``relation_words`` replace the defaults; ``suffixes`` adds the tags of a multi-word match's trailing
    sub-phrases. Instances are cheap to call and safe to share across threads.
    """

    def __init__(self, vocab: Sequence[str], *, stop_tags: Optional[Iterable[str]] = None,
                 relation_words: Optional[Iterable[str]] = None, suffixes: bool = True) -> None:
        self.vocab = [str(v) for v in vocab]
        self.suffixes = bool(suffixes)
        self.stop_tags = frozenset(STOP_TAGS if stop_tags is None else stop_tags)
        self.relation_words = frozenset(RELATION_WORDS if relation_words is None else relation_words)
        self._exact: Dict[Tuple[str, ...], int] = {}
        norm: Dict[Tuple[str, ...], List[int]] = {}
        for i, name in enumerate(self.vocab):
            toks = tuple(tokenize(name))
            if not toks:
                continue
            self._exact.setdefault(toks, i)
            norm.setdefault(tuple(singular(t) for t in toks), []).append(i)
        # several tags can share a normal form (glass / glasses): prefer the one already in normal form
        self._norm: Dict[Tuple[str, ...], int] = {}
        for key, idxs in norm.items():
            best = next((i for i in idxs if tuple(tokenize(self.vocab[i])) == key), idxs[0])
            self._norm[key] = best
        self.max_len = max((len(k) for k in self._exact), default=0)

    def __len__(self) -> int:
        return len(self.vocab)

    def _match(self, toks: List[str], norms: List[str], i: int) -> Tuple[Optional[int], int]:
        for n in range(min(self.max_len, len(toks) - i), 0, -1):
            key = tuple(toks[i:i + n])
            idx = self._exact.get(key)
            if idx is None:
                idx = self._norm.get(tuple(norms[i:i + n]))
            if idx is None and n == 1:
                for stem in _verb_stems(toks[i]):
                    idx = self._exact.get((stem,))
                    if idx is not None:
                        break
            if idx is not None:
                if n == 1 and (toks[i] in self.stop_tags or self.vocab[idx].lower() in self.stop_tags):
                    return None, 1
                return idx, n
        return None, 1

    def extract(self, caption: str) -> Tuple[List[int], List[int]]:
        """``(tag_set1, tag_set2)`` as vocabulary indices in order of first appearance."""
        toks = tokenize(caption)
        norms = [singular(t) for t in toks]
        set1: List[int] = []
        set2: List[int] = []
        in_context = False
        i = 0
        while i < len(toks):
            if set1 and not in_context and toks[i] in self.relation_words:
                in_context = True
            idx, n = self._match(toks, norms, i)
            if idx is not None:
                target = set2 if in_context else set1
                found = [idx]
                if self.suffixes and n > 1:
                    for k in range(1, n):
                        sub, m = self._match(toks[i + k:i + n], norms[i + k:i + n], 0)
                        if sub is not None and m == n - k:
                            found.append(sub)
                for t in found:
                    if t not in target:
                        target.append(t)
            i += n
        return set1, set2

    def extract_names(self, caption: str) -> Tuple[List[str], List[str]]:
        """:meth:`extract` with tag names instead of indices."""
        s1, s2 = self.extract(caption)
        return [self.vocab[i] for i in s1], [self.vocab[i] for i in s2]

    def parser_result(self, caption: str) -> Dict[str, List[int]]:
        """The ``extra_info.parser_result`` entry of the official format for ``caption``."""
        s1, s2 = self.extract(caption)
        return {"tag_set1": s1, "tag_set2": s2}

    def multi_hot(self, caption: str) -> np.ndarray:
        """``[T]`` float32 multi-hot of the union of both sets (the tag decoder's target)."""
        import numpy as np

        out = np.zeros(len(self.vocab), np.float32)
        s1, s2 = self.extract(caption)
        out[s1 + s2] = 1
        return out
