"""Dense captioning mAP (the densecap protocol, as DynRefer's evaluator computes it).

Reference protocol: Johnson et al.'s densecap ``eval/eval_utils.lua`` in the PyTorch form DynRefer (and
ControlCap, densecap-pytorch) run, ``dynrefer/common/evaluation/eval_densecap.py``:

1. Per image, ground-truth boxes are merged greedily: repeatedly take the box with the most boxes at IoU >= 0.7
   (itself included; first index on ties), merge that group into one GT whose box is the group mean and whose
   references are all the group's captions, and remove the group.
2. Detections are visited by decreasing score; each goes to the merged GT of highest IoU (first on ties). It
   may count as a true positive only if that IoU is > 0 and the GT is not already taken (it is then taken).
3. Each detection's caption is scored with METEOR against its GT's references (pluggable here).
4. Over all images, detections sorted by score (float32, as the reference's tensors) form tp/fp lists for every
   IoU threshold t in {0.3, 0.4, 0.5, 0.6, 0.7} and METEOR threshold m in {0, 0.05, ..., 0.25}:
   tp iff matched, IoU >= t and METEOR > m. Recall = tp / #merged GT, precision = tp / (tp + fp), both float32.
5. AP = mean over the 100 recall thresholds float32(0, 0.01, ..., 0.99) of the maximum precision at recall >=
   threshold (0 if none). mAP = mean over the 5x6 grid; detection AP uses m = -1 (no caption condition),
   detection mAP = mean over the 5 IoU thresholds.

Boxes are ``x1, y1, x2, y2`` with torchvision's continuous IoU (no "+1"). Deliberate differences from the
reference script, which only matter on malformed input: images with no detections still count their GT
(the reference script skips such images, silently inflating recall), and an image without GT is allowed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ._checks import PredictionError

__all__ = ["DenseCapEvaluator", "densecap_map", "box_iou", "merge_boxes", "MIN_OVERLAPS", "MIN_METEORS", "RANK_RULES",
           "rank_scores"]

MIN_OVERLAPS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_METEORS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)

MeteorFn = Callable[[List[str], List[List[str]]], Sequence[float]]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``x1y1x2y2`` boxes, in float64, as ``torchvision.ops.box_iou`` (degenerate pairs give NaN)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def merge_boxes(boxes: np.ndarray, thr: float = 0.7) -> List[np.ndarray]:
    """Greedy densecap GT merging; returns the groups of box indices, in the order they are formed."""
    if not thr > 0:
        raise ValueError("merge threshold must be > 0")
    iou = box_iou(boxes, boxes)
    groups = []
    while iou.size:
        with np.errstate(invalid="ignore"):
            good = iou >= thr
        counts = good.sum(axis=0)
        top = int(np.argmax(counts))
        if counts[top] == 0:
            break
        members = np.flatnonzero(good[top])
        groups.append(members)
        iou[members, :] = 0
        iou[:, members] = 0
    return groups


def _as_boxes(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise PredictionError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PredictionError(f"{name} contains NaN or Inf")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise PredictionError(f"{name} has boxes with x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    return arr


class DenseCapEvaluator:
    """Accumulate per-image results with :meth:`add_image`, then :meth:`evaluate`.

    ``meteor`` scores captions: a callable ``(candidates, references) -> per-item scores`` or an object with a
    ``segment_scores`` method (e.g. :class:`~dynrefer.eval.meteor.Meteor`). If it is ``None``, a
    :class:`~dynrefer.eval.meteor.Meteor` is started when captions need scoring. Captions are whitespace-
    normalised before scoring, as in the reference; METEOR's ``-norm`` does the rest.
    """

    def __init__(self, merge_iou: float = 0.7) -> None:
        self.merge_iou = merge_iou
        self._scores: List[np.ndarray] = []   # per image, sorted descending (float32)
        self.records: List[dict] = []
        self.npos = 0

    def add_image(self, scores: ArrayLike, boxes: ArrayLike, captions: Sequence[str], gt_boxes: ArrayLike,
                  gt_captions: Sequence[str], image_id: Optional[Hashable] = None) -> None:
        """Add one image: detections (``scores[D]``, ``boxes[D,4]``, ``captions[D]``) and its GT regions."""
        tag = f"image {image_id!r}: " if image_id is not None else ""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1) if np.size(scores) else np.zeros(0)
        boxes = _as_boxes(boxes, tag + "boxes")
        gt_boxes = _as_boxes(gt_boxes, tag + "gt_boxes")
        if not np.all(np.isfinite(scores)):
            raise PredictionError(tag + "scores contain NaN or Inf")
        if not (len(scores) == len(boxes) == len(captions)):
            raise PredictionError(f"{tag}{len(scores)} scores, {len(boxes)} boxes and {len(captions)} captions")
        if len(gt_boxes) != len(gt_captions):
            raise PredictionError(f"{tag}{len(gt_boxes)} GT boxes but {len(gt_captions)} GT captions")
        for c in list(captions) + list(gt_captions):
            if not isinstance(c, str):
                raise PredictionError(f"{tag}captions must be str, got {type(c).__name__}")

        groups = merge_boxes(gt_boxes, self.merge_iou) if len(gt_boxes) else []
        merged = np.stack([gt_boxes[g].mean(axis=0) for g in groups]) if groups else np.zeros((0, 4))
        merged_text = [[gt_captions[j] for j in g] for g in groups]

        s32 = scores.astype(np.float32)  # the reference holds scores in a float32 tensor
        order = np.argsort(-s32, kind="stable")
        used = np.zeros(len(groups), dtype=bool)
        iou = box_iou(boxes, merged) if len(groups) else np.zeros((len(boxes), 0))
        for d in order:
            if iou.shape[1]:
                row = np.nan_to_num(iou[d], nan=0.0)
                j = int(np.argmax(row))
                best = float(row[j])
            else:
                j, best = -1, 0.0
            ok = best > 0 and not used[j]
            if ok:
                used[j] = True
            self.records.append({"ok": ok, "iou": best, "candidate": captions[d],
                                 "references": merged_text[j] if best > 0 else [], "image_id": image_id})
        self.npos += len(groups)
        self._scores.append(s32[order])

    def _meteor_scores(self, meteor: Any) -> np.ndarray:
        idx = [i for i, r in enumerate(self.records) if r["references"]]
        out = np.zeros(len(self.records))
        if not idx:
            return out
        cands = [" ".join(self.records[i]["candidate"].split()) for i in idx]
        refs = [[" ".join(t.split()) for t in self.records[i]["references"]] for i in idx]
        close = False
        if meteor is None:
            from .meteor import Meteor
            meteor, close = Meteor(), True
        try:
            fn = meteor.segment_scores if hasattr(meteor, "segment_scores") else meteor
            vals = np.asarray(fn(cands, refs), dtype=np.float64).reshape(-1)
        finally:
            if close:
                meteor.close()
        if len(vals) != len(idx):
            raise ValueError(f"METEOR scorer returned {len(vals)} scores for {len(idx)} captions")
        if not np.all(np.isfinite(vals)):
            raise ValueError("METEOR scorer returned NaN or Inf")
        out[idx] = vals
        return out

    def evaluate(self, meteor: Any = None, *, captions: bool = True, min_overlaps: Sequence[float] = MIN_OVERLAPS,
                 min_meteors: Sequence[float] = MIN_METEORS) -> Dict[str, Any]:
        """Return ``{"map", "detmap", "ap_breakdown", "det_breakdown"}`` (fractions in [0, 1]).

        With ``captions=False`` only the detection APs are computed (no METEOR needed; ``"map"`` is absent).
        """
        if self.npos == 0:
            raise PredictionError("dense captioning mAP is undefined without ground-truth regions")
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0, np.float32)
        order = np.argsort(-scores, kind="stable")
        ok = np.array([r["ok"] for r in self.records], dtype=bool)[order]
        iou = np.array([r["iou"] for r in self.records], dtype=np.float64)[order]
        has_ref = np.array([bool(r["references"]) for r in self.records], dtype=bool)[order]
        met: Any = self._meteor_scores(meteor)[order] if captions else None
        thresholds = (np.arange(100) * 0.01).astype(np.float32)
        npos = np.float32(self.npos)

        def ap(tp_mask: np.ndarray) -> float:
            if tp_mask.size == 0:
                return 0.0
            tp = np.cumsum(tp_mask.astype(np.float32), dtype=np.float32)
            fp = np.cumsum((~tp_mask).astype(np.float32), dtype=np.float32)
            rec = tp / npos
            prec = tp / (fp + tp)
            total = 0.0
            for t in thresholds:
                total += float(np.max(prec * (rec >= t)))
            return total / len(thresholds)

        det, cap = {}, {}
        for t_iou in min_overlaps:
            base = has_ref & ok & (iou >= t_iou)
            det[f"iou_{t_iou}"] = ap(base)
            if captions:
                for t_m in min_meteors:
                    cap[f"iou_{t_iou}_meteor_{t_m}"] = ap(base & (met > t_m))
        out: Dict[str, Any] = {"detmap": sum(det.values()) / len(det), "det_breakdown": det}
        if captions:
            out["map"] = sum(cap.values()) / len(cap)
            out["ap_breakdown"] = cap
        return out


def densecap_map(images: Sequence[dict], meteor: Any = None, *, captions: bool = True,
                 merge_iou: float = 0.7) -> Dict[str, Any]:
    """Dense captioning mAP over ``images``: dicts with ``scores``, ``boxes``, ``captions``, ``gt_boxes``,
    ``gt_captions`` (and optionally ``image_id``). See :class:`DenseCapEvaluator`."""
    ev = DenseCapEvaluator(merge_iou=merge_iou)
    for k, im in enumerate(images):
        missing = [f for f in ("scores", "boxes", "captions", "gt_boxes", "gt_captions") if f not in im]
        if missing:
            raise PredictionError(f"image entry {k} lacks {missing}")
        ev.add_image(im["scores"], im["boxes"], im["captions"], im["gt_boxes"], im["gt_captions"],
                     image_id=im.get("image_id", k))
    return ev.evaluate(meteor, captions=captions)


#: How a box's ranking score is formed from the detector's score ``d`` and the caption score ``c`` (both in [0, 1]).
RANK_RULES = {
    "detector": "d (the official DynRefer evaluation with predicted boxes)",
    "caption": "c (the official DynRefer evaluation with ground-truth boxes)",
    "product": "d * c",
    "geometric": "sqrt(d * c)",
}


def rank_scores(det_scores: Optional[ArrayLike], caption_scores: ArrayLike, rule: str = "detector") -> np.ndarray:
    """Ranking scores of boxes under ``rule`` (a key of :data:`RANK_RULES`); ``det_scores`` may be ``None`` only
    for ``rule="caption"``."""
    if rule not in RANK_RULES:
        raise ValueError(f"unknown rank rule {rule!r}; choose from {', '.join(RANK_RULES)}")
    c = np.asarray(caption_scores, dtype=np.float64).reshape(-1)
    if rule == "caption":
        return c.copy()
    if det_scores is None:
        raise ValueError(f"rank rule {rule!r} needs detector scores (ground-truth boxes have none: use 'caption')")
    d = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if d.shape != c.shape:
        raise ValueError(f"{d.size} detector scores but {c.size} caption scores")
    if rule == "detector":
        return d.copy()
    if rule == "product":
        return d * c
    return np.sqrt(d * c)
