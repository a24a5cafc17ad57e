"""Dense captioning with a DynRefer model: caption every box, rank the boxes, score with the densecap mAP.

Two settings, as DynRefer's Table 2 and its ablations report them:

* **predicted boxes** — the boxes (and scores) of a region detector, read by
  :func:`dynrefer.data.detections.load_detections` (GRiT's ``vg_instances_results.json`` or one entry per image);
* **ground-truth boxes** — every captioned ground-truth region of the annotation set is captioned.

The ranking score of a box (what the densecap protocol sorts detections by) follows the official evaluation,
``report_metrics_densecap`` in callsys/DynRefer ``dynrefer/tasks/task.py``: a prediction's score is
``extra_info.grit_result.score`` when the annotation carries a GRiT result (the predicted-box annotation files,
``test_grit.json``), else ``extra_info.pred_result.score`` — the model's caption score, ``exp`` of the beam's
sequence score (``dynrefer/models/dynrefer_t5.py``: ``torch.exp(outputs["sequences_scores"])``) — else 1. So with
predicted boxes DynRefer ranks by the detector's score alone (``rank="detector"``, the default), and with
ground-truth boxes by its caption score alone (``rank="caption"``, the only choice there). GRiT's own score already
mixes in GRiT's caption: ``sqrt(objectness * exp(description log-prob))`` (JialianW/GRiT
``grit/modeling/roi_heads/grit_roi_heads.py``). Other combinations are available for study with predicted boxes:
``"caption"`` (DynRefer's caption score alone), ``"product"`` (detector score × caption score) and
``"geometric"`` (their geometric mean, GRiT's way of combining an objectness with a description score).

Unlike the official script, images without predictions are not skipped (their ground truth counts as missed; see
:mod:`dynrefer.eval.densecap`) and a failing image is an error, not a printed "sample error".

The ranking rules themselves (:data:`dynrefer.eval.densecap.RANK_RULES`, :func:`~dynrefer.eval.densecap.rank_scores`)
are part of the metric and live with it. The model is only called through its ``describe(images, boxes, prior=,
tasks=("caption",), seed=, task=)`` method, in chunks of ``chunk_size`` boxes; this module itself imports no
PyTorch (:func:`run_densecap_eval`, the whole ``dynrefer eval --detections/--gt-boxes`` job, loads the bundle).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Tuple

import numpy as np

from dynrefer.eval import PredictionError, evaluate
from dynrefer.eval.densecap import RANK_RULES, rank_scores

__all__ = ["caption_boxes", "densecap_predictions", "evaluate_densecap", "predictions_to_json", "run_densecap_eval"]


def caption_boxes(model: Any, image: Any, boxes: Any, *, prior: str = "image", seed: Optional[int] = 0, chunk_size: int = 32,
                  task: str = "dense_caption") -> Tuple[list, np.ndarray]:
    """Caption every ``x1, y1, x2, y2`` box of one image with ``model.describe``, ``chunk_size`` boxes per call.

    Returns ``(captions, caption_scores)``. Zero-width or zero-height boxes are captioned like any other (the
    view pipeline widens an empty crop to one pixel); the boxes themselves are not changed.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    caps, scores = [], []
    for s in range(0, len(boxes), chunk_size):
        res = model.describe(image, boxes[s:s + chunk_size], prior=prior, tasks=("caption",), seed=seed, task=task)
        if len(res) != len(boxes[s:s + chunk_size]):
            raise RuntimeError(f"model.describe returned {len(res)} results for {len(boxes[s:s + chunk_size])} boxes")
        for r in res:
            caps.append(str(r.get("caption", "")))
            scores.append(float(r.get("caption_score", 1.0)))
    sc = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(sc)):
        raise PredictionError("the model returned a NaN or Inf caption score")
    return caps, sc


def _default_loader(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise FileNotFoundError(f"cannot read image {path}: {e}") from None


def densecap_predictions(model: Any, annotations: Any, detections: Any = None, *, rank: Optional[str] = None, prior: str = "image",
                         seed: Optional[int] = 0, chunk_size: int = 32,
                         image_loader: Callable[[str], np.ndarray] = _default_loader,
                         log: Optional[Callable[[str], None]] = None) -> Dict[Hashable, Dict[str, Any]]:
    """Caption the boxes of every image of ``annotations`` and rank them.

    ``detections``: a :class:`~dynrefer.data.detections.Detections` (predicted boxes; ``rank`` defaults to
    ``"detector"``), or ``None`` for the ground-truth boxes (every region with a caption; ``rank`` must be
    ``"caption"``). Returns ``{image_id: {"boxes" [D, 4], "scores" [D] (ranking), "captions" [D],
    "caption_scores" [D], "det_scores" [D] or None}}`` with every image of ``annotations``, in its order, as
    :func:`dynrefer.eval.evaluate` (``"densecap"``) takes it. Images without boxes are not loaded.
    """
    gt_boxes = detections is None
    rank = rank or ("caption" if gt_boxes else "detector")
    if rank not in RANK_RULES:
        raise ValueError(f"unknown rank rule {rank!r}; choose from {', '.join(RANK_RULES)}")
    if gt_boxes and rank != "caption":
        raise ValueError(f"ground-truth boxes have no detector score: rank must be 'caption', got {rank!r}")
    if not gt_boxes:
        missing = [i for i in annotations.images if i not in detections.boxes]
        extra = [i for i in detections.boxes if i not in annotations.images]
        if missing or extra:
            raise PredictionError(
                f"the detections do not match the annotations' images ({len(missing)} missing, first "
                f"{missing[:1]}; {len(extra)} unknown, first {extra[:1]}); read them with "
                f"load_detections(path, annotations)")
    by_image = annotations.by_image()
    out: Dict[Hashable, Dict[str, Any]] = {}
    n_img = len(annotations.images)
    for k, (iid, info) in enumerate(annotations.images.items()):
        if gt_boxes:
            recs = [r for r in by_image[iid] if r.caption is not None]
            boxes = np.array([r.box for r in recs], dtype=np.float64).reshape(-1, 4)
            det = None
        else:
            boxes = np.asarray(detections.boxes[iid], dtype=np.float64).reshape(-1, 4)
            det = np.asarray(detections.scores[iid], dtype=np.float64).reshape(-1)
        if len(boxes):
            caps, cs = caption_boxes(model, image_loader(info.path), boxes, prior=prior, seed=seed,
                                     chunk_size=chunk_size)
        else:
            caps, cs = [], np.zeros(0)
        out[iid] = {"boxes": boxes, "scores": rank_scores(det, cs, rank), "captions": caps, "caption_scores": cs,
                    "det_scores": det}
        if log is not None and (k + 1 == n_img or (k + 1) % 50 == 0):
            log(f"   captioned {k + 1}/{n_img} images")
    return out


def evaluate_densecap(model: Any, annotations: Any, detections: Any = None, *, rank: Optional[str] = None,
                      meteor: Any = None,
                      captions: bool = True, prior: str = "image", seed: Optional[int] = 0, chunk_size: int = 32,
                      image_loader: Callable[[str], np.ndarray] = _default_loader,
                      log: Optional[Callable[[str], None]] = None) -> Tuple[Dict[str, Any], Dict]:
    """Dense captioning mAP (×100) of ``model`` on ``annotations`` with predicted (``detections``) or ground-truth
    boxes (``detections=None``); see :func:`densecap_predictions` for the boxes and the ranking.

    ``meteor``: the caption scorer handed to :func:`dynrefer.eval.evaluate` (a running
    :class:`~dynrefer.eval.meteor.Meteor`, any ``(candidates, references) -> scores`` callable, or ``None`` to
    start METEOR, which needs Java). ``captions=False`` computes the detection mAP only (no METEOR).
    Returns ``(metrics, predictions)``; metrics hold ``map`` (with captions), ``detmap``, their breakdowns and
    ``images``, ``boxes``, ``images_without_boxes``, ``gt_regions``, ``rank``.
    """
    preds = densecap_predictions(model, annotations, detections, rank=rank, prior=prior, seed=seed,
                                 chunk_size=chunk_size, image_loader=image_loader, log=log)
    gt = annotations.densecap_ground_truth()
    metrics = evaluate("densecap", {i: {k: p[k] for k in ("boxes", "scores", "captions")} for i, p in preds.items()},
                       gt, meteor=meteor, captions=captions)
    metrics.update({
        "rank": rank or ("caption" if detections is None else "detector"),
        "images": len(preds),
        "boxes": int(sum(len(p["boxes"]) for p in preds.values())),
        "images_without_boxes": int(sum(len(p["boxes"]) == 0 for p in preds.values())),
        "gt_regions": int(sum(len(g["captions"]) for g in gt.values())),
    })
    return metrics, preds


def _num(v: float) -> float:
    v = float(v)
    return round(v, 6) if math.isfinite(v) else v


def predictions_to_json(predictions: Mapping[Hashable, Mapping[str, Any]],
                        metrics: Optional[Mapping[str, Any]] = None,
                        settings: Optional[Mapping[str, Any]] = None) -> dict:
    """A JSON-ready form of :func:`densecap_predictions`' output: one entry per image with ``x1, y1, x2, y2``
    boxes, ranking ``scores``, ``captions``, ``caption_scores`` and ``det_scores`` (``null`` for ground-truth
    boxes)."""
    images = []
    for iid, p in predictions.items():
        det = p.get("det_scores")
        images.append({
            "image_id": iid,
            "boxes": [[_num(v) for v in b] for b in np.asarray(p["boxes"]).reshape(-1, 4)],
            "scores": [_num(v) for v in np.asarray(p["scores"]).reshape(-1)],
            "captions": list(p["captions"]),
            "caption_scores": [_num(v) for v in np.asarray(p["caption_scores"]).reshape(-1)],
            "det_scores": None if det is None else [_num(v) for v in np.asarray(det).reshape(-1)],
        })
    out: Dict[str, Any] = {"results": images}
    if metrics is not None:
        out["metrics"] = {k: v for k, v in metrics.items()}
    if settings is not None:
        out["settings"] = dict(settings)
    return out


def run_densecap_eval(checkpoint: str, annotations: str, detections: Optional[str] = None, *, gt_boxes: bool = False,
                      rank: Optional[str] = None, det_frame: Optional[str] = None,
                      det_box_format: Optional[str] = None, meteor: bool = True, prior: str = "image",
                      out: Optional[str] = None, log: Callable[[str], None] = print) -> Dict[str, dict]:
    """``dynrefer eval ... --detections FILE / --gt-boxes``: dense captioning mAP of the bundle ``checkpoint`` on
    the official-format ``annotations`` with a detector's boxes (``detections``: GRiT's ``vg_instances_results.json``
    or one entry per image, read by :func:`dynrefer.data.load_detections`) and/or the ground-truth boxes. ``meteor``
    False reports the detection mAP only (no Java). Returns ``{"predicted" / "ground_truth": predictions_to_json(...)}``
    and writes it to ``out`` when given. Problems the user can fix raise :class:`~dynrefer.app.errors.UserError`."""
    import json
    import os

    from dynrefer.app.bundle import load_bundle_model
    from dynrefer.app.errors import UserError
    from dynrefer.data import AnnotationError, load_annotations, load_detections, write_json
    from dynrefer.eval import JavaUnavailableError

    if not (detections or gt_boxes):
        raise UserError("dense captioning needs --detections FILE and/or --gt-boxes")
    if gt_boxes and not detections and rank not in (None, "caption"):
        raise UserError(f"--rank {rank} needs detector scores; ground-truth boxes are ranked by caption score")
    if not detections and (det_frame or det_box_format):
        raise UserError("--det-frame and --det-box-format describe a --detections file; none was given")
    if not os.path.isfile(annotations):
        raise UserError(f"annotation file not found: {annotations}")
    try:
        ann = load_annotations(annotations)
        dets = (load_detections(detections, ann, box_format=det_box_format, frame=det_frame or "image")
                if detections else None)
    except (AnnotationError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    _, model = load_bundle_model(checkpoint)
    scorer = None
    if meteor:  # started before the captioning, so a missing Java stops the job at once
        from dynrefer.eval.meteor import Meteor

        try:
            scorer = Meteor()
        except JavaUnavailableError as e:
            raise UserError(f"dense captioning mAP scores captions with METEOR 1.5, which needs Java: {e}. "
                            f"Pass --no-meteor to report the detection mAP only") from None
    settings = ([("predicted boxes", "predicted", dets, rank)] if dets is not None else []) + \
               ([("ground-truth boxes", "ground_truth", None, "caption")] if gt_boxes else [])
    report = {}
    try:
        for label, key, d, rk in settings:
            if d is not None:
                log(f"{label}: {d.num_boxes} boxes from {detections} over {len(d)} images "
                    f"({len(d.images_without_detections)} without a detection: their regions count as missed)")
            try:
                m, preds = evaluate_densecap(model, ann, d, rank=rk, meteor=scorer, captions=scorer is not None,
                                             prior=prior, seed=0, log=log)
            except (PredictionError, FileNotFoundError) as e:
                raise UserError(str(e)) from None
            cap = f"mAP {m['map']:.2f} | " if "map" in m else "mAP - (--no-meteor) | "
            log(f"dense captioning, {label} ({m['images']} images, {m['boxes']} boxes, {m['gt_regions']} GT "
                f"regions, rank by {m['rank']}, prior {prior}): {cap}detection mAP {m['detmap']:.2f}")
            report[key] = predictions_to_json(preds, m, {"annotations": annotations, "detections": detections
                                                         if d is not None else None, "rank": m["rank"],
                                                         "prior": prior, "checkpoint": checkpoint})
    finally:
        if scorer is not None:
            scorer.close()
    if out:
        write_json(out, json.loads(json.dumps(report, default=str)))
        log(f"predictions and metrics → {out}")
    return report
