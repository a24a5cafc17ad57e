"""COCO region recognition with ground-truth boxes: top-1 accuracy and COCO box mAP.

Reference protocol (DynRefer's ``report_metrics_coco``): every ground-truth box is classified among the 80
classes; accuracy = fraction of boxes whose argmax class is the GT class. mAP = pycocotools ``COCOeval``
(``iouType="bbox"``) AP@[0.5:0.95] with one detection per GT box — the GT box itself, labelled with the argmax
class and scored with the max class score. We reimplement the part of ``COCOeval`` this needs, step for step:
per image and class, detections by decreasing score (stable; at most ``max_dets`` per image), greedy matching
to the unmatched GT of highest IoU >= t (crowd GT may match many detections and are ignored), IoU for crowd GT =
intersection / detection area; per class, precision made monotone and sampled at the 101 recall thresholds
0:0.01:1 (``searchsorted``, left); AP = mean over IoU thresholds 0.5:0.05:0.95, recall thresholds and classes
that have non-crowd GT. Only the "all" area range is computed, so GT ``area`` is not needed.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from numpy.typing import ArrayLike

from ._checks import PredictionError

__all__ = ["coco_recognition", "coco_box_map", "IOU_THRESHOLDS", "RECALL_THRESHOLDS"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def _iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' ``maskUtils.iou`` for xywh boxes: [D, G]; crowd GT use the detection area as union."""
    out = np.zeros((len(dt), len(gt)))
    for g in range(len(gt)):
        gx, gy, gw, gh = gt[g]
        ga = gw * gh
        for d in range(len(dt)):
            dx, dy, dw, dh = dt[d]
            da = dw * dh
            w = min(dx + dw, gx + gw) - max(dx, gx)
            if w <= 0:
                continue
            h = min(dy + dh, gy + gh) - max(dy, gy)
            if h <= 0:
                continue
            i = w * h
            u = da if crowd[g] else da + ga - i
            out[d, g] = i / u
    return out


def coco_box_map(gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_images: ArrayLike, dt_boxes: ArrayLike,
                 dt_labels: ArrayLike, dt_scores: ArrayLike, dt_images: ArrayLike, *,
                 gt_crowd: Optional[ArrayLike] = None, num_classes: Optional[int] = None, max_dets: int = 100) -> Dict[str, float]:
    """COCO bbox AP, AP50, AP75 (fractions) for xywh boxes, ``area = all``; see the module docstring."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    dt_boxes = np.asarray(dt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels, dt_labels = np.asarray(gt_labels).reshape(-1), np.asarray(dt_labels).reshape(-1)
    gt_images, dt_images = np.asarray(gt_images).reshape(-1), np.asarray(dt_images).reshape(-1)
    dt_scores = np.asarray(dt_scores, dtype=np.float64).reshape(-1)
    crowd = np.zeros(len(gt_boxes), bool) if gt_crowd is None else np.asarray(gt_crowd).astype(bool).reshape(-1)
    if num_classes is None:
        num_classes = int(max(gt_labels.max(initial=-1), dt_labels.max(initial=-1))) + 1
    T, R = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((T, R, num_classes))
    images = np.unique(gt_images)  # COCOeval evaluates the GT images, sorted by id
    gt_groups: Dict[tuple, list] = {}
    dt_groups: Dict[tuple, list] = {}
    for i, key in enumerate(zip(gt_labels.tolist(), gt_images.tolist())):
        gt_groups.setdefault(key, []).append(i)
    for i, key in enumerate(zip(dt_labels.tolist(), dt_images.tolist())):
        dt_groups.setdefault(key, []).append(i)
    empty = np.zeros(0, dtype=np.intp)

    for k in range(num_classes):
        scores_k, matched_k, ignored_k = [], [], []
        n_gt = 0
        for img in images.tolist():
            g_idx = np.asarray(gt_groups.get((k, img), empty), dtype=np.intp)
            d_idx = np.asarray(dt_groups.get((k, img), empty), dtype=np.intp)
            if len(g_idx) == 0 and len(d_idx) == 0:
                continue
            g_idx = g_idx[np.argsort(crowd[g_idx], kind="mergesort")]   # non-crowd first
            d_idx = d_idx[np.argsort(-dt_scores[d_idx], kind="mergesort")][:max_dets]
            g_ign = crowd[g_idx]
            ious = _iou_xywh(dt_boxes[d_idx], gt_boxes[g_idx], g_ign)
            dtm = np.zeros((T, len(d_idx)), bool)
            dt_ign = np.zeros((T, len(d_idx)), bool)
            for ti, t in enumerate(IOU_THRESHOLDS):
                gtm = np.zeros(len(g_idx), bool)
                for di in range(len(d_idx)):
                    best = min(t, 1 - 1e-10)
                    m = -1
                    for gi in range(len(g_idx)):
                        if gtm[gi] and not g_ign[gi]:
                            continue
                        if m > -1 and not g_ign[m] and g_ign[gi]:
                            break
                        if ious[di, gi] < best:
                            continue
                        best, m = ious[di, gi], gi
                    if m == -1:
                        continue
                    dt_ign[ti, di] = g_ign[m]
                    dtm[ti, di] = True
                    gtm[m] = True
            scores_k.append(dt_scores[d_idx])
            matched_k.append(dtm)
            ignored_k.append(dt_ign)
            n_gt += int(np.count_nonzero(~g_ign))
        if n_gt == 0:
            continue
        s = np.concatenate(scores_k) if scores_k else np.zeros(0)
        order = np.argsort(-s, kind="mergesort")
        dtm = np.concatenate(matched_k, axis=1)[:, order] if matched_k else np.zeros((T, 0), bool)
        dti = np.concatenate(ignored_k, axis=1)[:, order] if ignored_k else np.zeros((T, 0), bool)
        tps = np.cumsum(dtm & ~dti, axis=1).astype(float)
        fps = np.cumsum(~dtm & ~dti, axis=1).astype(float)
        for ti in range(T):
            tp, fp = tps[ti], fps[ti]
            rc = tp / n_gt
            pr = (tp / (fp + tp + np.spacing(1))).tolist()
            for i in range(len(pr) - 1, 0, -1):
                if pr[i] > pr[i - 1]:
                    pr[i - 1] = pr[i]
            q = np.zeros(R)
            idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
            for ri, pi in enumerate(idx):
                if pi < len(pr):
                    q[ri] = pr[pi]
            precision[ti, :, k] = q

    def mean_valid(p: np.ndarray) -> float:
        v = p[p > -1]
        return float(np.mean(v)) if v.size else -1.0

    return {"AP": mean_valid(precision), "AP50": mean_valid(precision[0]), "AP75": mean_valid(precision[5])}


def coco_recognition(scores: ArrayLike, labels: ArrayLike, boxes: Optional[ArrayLike] = None,
                     image_ids: Optional[ArrayLike] = None, *, iscrowd: Optional[ArrayLike] = None
                     ) -> Dict[str, float]:
    """Region recognition on GT boxes: ``{"acc": top-1 %, "map": COCO AP %, "ap50", "ap75"}``.

    ``scores[N, C]`` class scores per GT box, ``labels[N]`` GT class index in ``[0, C)``; ``boxes[N, 4]`` (COCO
    xywh) and ``image_ids[N]`` are needed for mAP (omit both for accuracy only). ``iscrowd[N]`` marks crowd
    boxes (ignored regions for mAP, still counted for accuracy as in the reference script).
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] < 1:
        raise PredictionError(f"scores must be [N boxes, C classes], got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number):
        raise PredictionError(f"scores must be numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise PredictionError(f"{int(np.sum(~np.isfinite(s)))} class scores are NaN or Inf")
    y = np.asarray(labels)
    if y.shape != (s.shape[0],):
        raise PredictionError(f"labels must have shape ({s.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= s.shape[1])):
        raise PredictionError(f"labels must be integer class indices in [0, {s.shape[1]})")
    if s.shape[0] == 0:
        raise PredictionError("no boxes to evaluate")
    pred = np.argmax(s, axis=1)
    out = {"acc": float(np.mean(pred == y) * 100)}
    if (boxes is None) != (image_ids is None):
        raise PredictionError("pass both boxes and image_ids (for mAP) or neither")
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        if b.shape != (s.shape[0], 4) or not np.all(np.isfinite(b)):
            raise PredictionError(f"boxes must be finite with shape ({s.shape[0]}, 4), got {b.shape}")
        im = np.asarray(image_ids)
        if im.shape != (s.shape[0],):
            raise PredictionError(f"image_ids must have shape ({s.shape[0]},), got {im.shape}")
        crowd = None if iscrowd is None else np.asarray(iscrowd).astype(bool)
        if crowd is not None and crowd.shape != (s.shape[0],):
            raise PredictionError(f"iscrowd must have shape ({s.shape[0]},), got {crowd.shape}")
        det_scores = s[np.arange(len(s)), pred]
        m = coco_box_map(b, y, im, b, pred, det_scores, im, gt_crowd=crowd, num_classes=s.shape[1])
        out.update({"map": m["AP"] * 100, "ap50": m["AP50"] * 100, "ap75": m["AP75"] * 100})
    return out
