"""CIDEr-D as pycocoevalcap computes it (reported by DynRefer ×100).

Reference protocol: pycocoevalcap 1.2 ``cider/cider.py`` + ``cider_scorer.py`` (Vedantam et al.'s CIDEr-D):
n-grams n = 1..4 over whitespace tokens; document frequency of an n-gram = number of evaluated items whose
references contain it (so IDF is over *the evaluated set*, ``log(#items)``); tf-idf vectors per n; clipped
numerator ``sum min(hyp, ref) * ref``; cosine normalisation; Gaussian length penalty with sigma = 6, where the
"length" is — as in the reference code — the number of *bigrams* of a sentence; mean over n, mean over
references, ×10; corpus score = mean of the item scores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, Hashable, List, Mapping, Sequence, Tuple

import numpy as np

from ._checks import check_caption_sets

__all__ = ["Cider"]


def _counts(sentence: str, n: int) -> Dict[tuple, int]:
    words = sentence.split()
    counts: Dict[tuple, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


class Cider:
    """``Cider().compute_score(gts, res) -> (corpus CIDEr-D, np.ndarray of per-item CIDEr-D)``.

    Inputs as for :class:`~dynrefer.eval.bleu.Bleu` (tokenised captions). Note that the score depends on the whole
    evaluated set through the document frequencies, exactly like the reference.
    """

    def __init__(self, n: int = 4, sigma: float = 6.0) -> None:
        self._n = n
        self._sigma = sigma

    def method(self) -> str:
        return "CIDEr"

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]
                      ) -> Tuple[float, np.ndarray]:
        n, sigma = self._n, self._sigma
        ids = check_caption_sets(gts, res)
        hyps = [_counts(res[i][0], n) for i in ids]
        refs = [[_counts(r, n) for r in gts[i]] for i in ids]

        df: Dict[tuple, float] = defaultdict(float)
        for item_refs in refs:
            for g in {g for r in item_refs for g in r}:
                df[g] += 1
        log_n_items = np.log(float(len(ids)))

        def vectorise(counts: Mapping[Tuple[str, ...], int]
                      ) -> Tuple[List[Dict[Tuple[str, ...], float]], List[Any], int]:
            vec: List[Dict[Tuple[str, ...], float]] = [dict() for _ in range(n)]
            norm = [0.0] * n
            length = 0
            for g, tf in counts.items():
                k = len(g) - 1
                w = float(tf) * (log_n_items - np.log(max(1.0, df.get(g, 0.0))))
                vec[k][g] = w
                norm[k] += pow(w, 2)
                if k == 1:  # the reference counts bigrams as the sentence length
                    length += tf
            return vec, [np.sqrt(x) for x in norm], length

        penalty_den = 2 * sigma ** 2
        scores = []
        for hyp, item_refs in zip(hyps, refs):
            vh, nh, lh = vectorise(hyp)
            acc = np.zeros(n)
            for r in item_refs:
                vr, nr, lr = vectorise(r)
                delta = float(lh - lr)
                val = np.zeros(n)
                for k in range(n):
                    for g, wh in vh[k].items():
                        wr = vr[k].get(g, 0.0)
                        val[k] += min(wh, wr) * wr
                    if nh[k] != 0 and nr[k] != 0:
                        val[k] /= nh[k] * nr[k]
                    val[k] *= np.e ** (-(delta ** 2) / penalty_den)
                acc += val
            score = np.mean(acc) / len(item_refs) * 10.0
            if math.isnan(score):
                raise FloatingPointError("CIDEr-D produced NaN")
            scores.append(score)
        scores_arr = np.array(scores)
        return float(np.mean(scores_arr)), scores_arr
