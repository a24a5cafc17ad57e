"""Input validation shared by the metric entry points: clear errors, never silently dropped samples."""

from __future__ import annotations

from typing import Hashable, Iterable, List, Mapping, Sequence

__all__ = ["PredictionError", "check_caption_sets"]


class PredictionError(ValueError):
    """Predictions that do not match the annotations (missing or extra ids, NaN scores, wrong shapes...)."""


def _preview(ids: Iterable[object]) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:5])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")


def check_caption_sets(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]],
                       *, need_single_hypothesis: bool = True) -> List[Hashable]:
    """Check pycocoevalcap-style ``gts = {id: [refs]}``, ``res = {id: [hyp]}``; return the ids in ``gts`` order."""
    if not isinstance(gts, Mapping) or not isinstance(res, Mapping):
        raise TypeError("gts and res must be dicts {id: [caption, ...]}")
    missing = [k for k in gts if k not in res]
    extra = [k for k in res if k not in gts]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no prediction for {len(missing)} id(s): {_preview(missing)}")
        if extra:
            parts.append(f"{len(extra)} prediction id(s) not in the references: {_preview(extra)}")
        raise PredictionError("; ".join(parts))
    if not gts:
        raise PredictionError("nothing to evaluate: no ids")
    for k in gts:
        refs, hyp = gts[k], res[k]
        if isinstance(refs, (str, bytes)) or not isinstance(refs, Sequence):
            raise TypeError(f"references for id {k!r} must be a list of str, got {type(refs).__name__}")
        if isinstance(hyp, (str, bytes)) or not isinstance(hyp, Sequence):
            raise TypeError(f"prediction for id {k!r} must be a one-element list [str], got {type(hyp).__name__}")
        if len(refs) == 0:
            raise PredictionError(f"id {k!r} has no reference captions")
        if need_single_hypothesis and len(hyp) != 1:
            raise PredictionError(f"id {k!r} must have exactly one predicted caption, got {len(hyp)}")
        for s in list(refs) + list(hyp):
            if not isinstance(s, str):
                raise TypeError(f"captions for id {k!r} must be str, got {type(s).__name__}")
    return list(gts)
