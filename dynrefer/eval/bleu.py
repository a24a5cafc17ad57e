"""BLEU-1..4 as pycocoevalcap computes it.

Reference protocol: pycocoevalcap 1.2 ``bleu/bleu.py`` + ``bleu_scorer.py`` (David Chiang's scorer as modified
for COCO): whitespace tokens, clipped n-gram counts against the per-n-gram maximum over the references, the
"closest" effective reference length (ties go to the shorter reference), smoothing constants ``tiny = 1e-15``
and ``small = 1e-9``, a corpus score from summed statistics and per-item scores from each item's own
statistics. The arithmetic is done in the same order, so the numbers are the reference's to the last bits.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, List, Mapping, Sequence, Tuple

from ._checks import check_caption_sets

__all__ = ["Bleu"]

_TINY = 1e-15
_SMALL = 1e-9


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def _bleu_from_stats(correct: Sequence[float], guess: Sequence[float], testlen: float, reflen: float,
                     n: int) -> List[float]:
    """Cumulative BLEU-1..n from clipped matches and guesses (the reference's formula and operation order)."""
    out = []
    prod = 1.0
    for k in range(n):
        prod *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        out = [b * bp for b in out]
    return out


class Bleu:
    """``Bleu(n).compute_score(gts, res) -> ([BLEU-1..n], [[per-item BLEU-k] for k in 1..n])``.

    ``gts = {id: [ref, ...]}`` and ``res = {id: [hyp]}`` hold already tokenised, space-separated captions
    (run :class:`~dynrefer.eval.tokenizer.PTBTokenizer` first, as pycocoevalcap's ``COCOEvalCap`` does).
    """

    def __init__(self, n: int = 4) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self._n = n

    def method(self) -> str:
        return "Bleu"

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]
                      ) -> Tuple[List[float], List[List[float]]]:
        n = self._n
        ids = check_caption_sets(gts, res)
        per_item: List[List[float]] = [[] for _ in range(n)]
        tot_correct, tot_guess = [0] * n, [0] * n
        tot_test, tot_ref = 0, 0
        for i in ids:
            max_ref: dict = {}
            ref_lens = []
            for ref in gts[i]:
                words = ref.split()
                ref_lens.append(len(words))
                for g, c in _ngrams(words, n).items():
                    if c > max_ref.get(g, 0):
                        max_ref[g] = c
            hyp = res[i][0].split()
            testlen = len(hyp)
            reflen = min((abs(length - testlen), length) for length in ref_lens)[1]
            guess = [max(0, testlen - k) for k in range(n)]
            correct = [0] * n
            for g, c in _ngrams(hyp, n).items():
                correct[len(g) - 1] += min(max_ref.get(g, 0), c)
            for k, b in enumerate(_bleu_from_stats(correct, guess, testlen, reflen, n)):
                per_item[k].append(b)
            tot_test += testlen
            tot_ref += reflen
            for k in range(n):
                tot_correct[k] += correct[k]
                tot_guess[k] += guess[k]
        return _bleu_from_stats(tot_correct, tot_guess, tot_test, tot_ref, n), per_item
