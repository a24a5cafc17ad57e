"""One entry point for every DynRefer benchmark, and the paper-style report.

``evaluate(task, predictions, annotations)`` validates the predictions against the annotations (missing or extra
ids, NaN / Inf scores, wrong shapes raise :class:`PredictionError`; nothing is silently dropped) and returns the
task's metrics, already ×100 as the paper reports them:

=============  ==================================================  =========================================
task           predictions                                         annotations
=============  ==================================================  =========================================
``caption``    ``{id: caption}`` (or ``{id: [caption]}``)          ``{id: [reference, ...]}``
``densecap``   ``{image_id: {"boxes", "scores", "captions"}}``     ``{image_id: {"boxes", "captions"}}``
``ovad``       ``{annotation_id: [A scores]}`` or ``[N, A]`` array  :class:`OvadAnnotations` or a path
``coco``       ``{annotation_id: [C scores]}`` or ``[N, C]`` array  ``{"ids", "labels", "boxes", "image_ids"[, "iscrowd"]}``
=============  ==================================================  =========================================

Boxes: dense captioning uses ``x1, y1, x2, y2``; COCO uses COCO ``x, y, w, h``. :func:`format_report` prints the
rows and columns of the paper's Tables 1-4 (region captioning, dense captioning, OVAD, COCO recognition).
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ._checks import PredictionError, _preview, check_caption_sets
from .densecap import DenseCapEvaluator
from .ovad import OvadAnnotations, load_ovad, ovad_ap
from .recognition import coco_recognition

__all__ = ["evaluate", "format_report", "caption_metrics", "TASKS", "TABLES"]

TASKS = ("caption", "densecap", "ovad", "coco")


def caption_metrics(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]], *,
                    metrics: Sequence[str] = ("BLEU", "METEOR", "CIDEr"), meteor: Any = None, tokenize: bool = True
                    ) -> Dict[str, float]:
    """pycocoevalcap's ``COCOEvalCap.evaluate`` on raw captions: PTB-tokenise, then score. Fractions, not ×100.

    ``meteor``: a running :class:`~dynrefer.eval.meteor.Meteor` to reuse (one is started and stopped otherwise).
    """
    from .bleu import Bleu
    from .cider import Cider

    check_caption_sets(gts, res)
    if tokenize:
        from .tokenizer import PTBTokenizer
        tok = PTBTokenizer()
        keys = list(gts)
        flat = tok.tokenize_list([c for k in keys for c in gts[k]] + [res[k][0] for k in keys])
        pos, gts_t, res_t = 0, {}, {}
        for k in keys:
            gts_t[k] = flat[pos:pos + len(gts[k])]
            pos += len(gts[k])
        for k in keys:
            res_t[k] = [flat[pos]]
            pos += 1
        gts, res = gts_t, res_t
    out: Dict[str, float] = {}
    for name in metrics:
        if name == "BLEU":
            for k, v in enumerate(Bleu(4).compute_score(gts, res)[0]):
                out[f"BLEU-{k + 1}"] = float(v)
        elif name == "CIDEr":
            out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        elif name == "METEOR":
            from .meteor import Meteor
            own = meteor is None
            m = Meteor() if own else meteor
            try:
                out["METEOR"] = float(m.compute_score(gts, res)[0])
            finally:
                if own:
                    m.close()
        else:
            raise ValueError(f"unknown caption metric {name!r}; choose from BLEU, METEOR, CIDEr")
    return out


def _check_ids(pred_ids: Iterable[Hashable], ann_ids: Iterable[Hashable], what: str) -> None:
    pred_ids, ann_ids = list(pred_ids), list(ann_ids)
    p, a = set(pred_ids), set(ann_ids)
    if len(p) != len(pred_ids):
        raise PredictionError(f"duplicate {what} ids in the predictions")
    missing, extra = [i for i in ann_ids if i not in p], [i for i in pred_ids if i not in a]
    msgs = []
    if missing:
        msgs.append(f"no prediction for {len(missing)} {what}(s): {_preview(missing)}")
    if extra:
        msgs.append(f"{len(extra)} predicted {what} id(s) not in the annotations: {_preview(extra)}")
    if msgs:
        raise PredictionError("; ".join(msgs))


def _score_matrix(predictions: Any, ids: Sequence, width: int, what: str) -> np.ndarray:
    """Predictions as ``{id: vector}`` (any order) or an ``[N, width]`` array in annotation order."""
    if isinstance(predictions, Mapping):
        _check_ids(predictions.keys(), ids, what)
        rows = []
        for i in ids:
            r = np.asarray(predictions[i])
            if r.shape != (width,):
                raise PredictionError(f"{what} {i!r}: expected {width} scores, got shape {r.shape}")
            rows.append(r)
        arr = np.stack(rows) if rows else np.zeros((0, width))
    else:
        arr = np.asarray(predictions)
        if arr.shape != (len(ids), width):
            raise PredictionError(f"predictions must have shape ({len(ids)}, {width}), got {arr.shape}")
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise PredictionError(f"{what} scores must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise PredictionError(f"{int(np.sum(~np.isfinite(arr)))} scores are NaN or Inf "
                              f"(first: {what} {ids[bad[0]]!r}, column {bad[1]})")
    return arr


def evaluate(task: str, predictions: Any, annotations: Any, *, meteor: Any = None,
             **options: Any) -> Dict[str, Any]:
    """Evaluate ``predictions`` for ``task`` (one of :data:`TASKS`); metrics ×100. See the module docstring.

    ``meteor`` (caption, densecap): a running :class:`~dynrefer.eval.meteor.Meteor`, or for densecap any callable
    ``(candidates, references) -> scores``. Other ``options`` go to the task's metric function.
    """
    if task == "caption":
        if not isinstance(predictions, Mapping):
            raise PredictionError("caption predictions must be a dict {id: caption}")
        res = {k: ([v] if isinstance(v, str) else list(v)) for k, v in predictions.items()}
        m = caption_metrics(annotations, res, meteor=meteor, **options)
        return {k: v * 100 for k, v in m.items()}

    if task == "densecap":
        if not isinstance(predictions, Mapping) or not isinstance(annotations, Mapping):
            raise PredictionError("densecap predictions and annotations must be dicts keyed by image id")
        _check_ids(predictions.keys(), annotations.keys(), "image")
        ev = DenseCapEvaluator(merge_iou=options.pop("merge_iou", 0.7))
        for img, gt in annotations.items():
            p = predictions[img]
            for key in ("boxes", "scores", "captions"):
                if key not in p:
                    raise PredictionError(f"image {img!r}: prediction lacks {key!r}")
            ev.add_image(p["scores"], p["boxes"], p["captions"], gt["boxes"], gt["captions"], image_id=img)
        r = ev.evaluate(meteor, **options)
        out = {"detmap": r["detmap"] * 100, "det_breakdown": r["det_breakdown"]}
        if "map" in r:
            out.update({"map": r["map"] * 100, "ap_breakdown": r["ap_breakdown"]})
        return out

    if task == "ovad":
        ann = annotations if isinstance(annotations, OvadAnnotations) else load_ovad(annotations)
        ids = ann.annotation_ids.tolist()
        scores = _score_matrix(predictions, ids, len(ann.attributes), "box")
        return ovad_ap(scores, ann.labels, ann.attributes, **options)

    if task == "coco":
        for key in ("ids", "labels"):
            if key not in annotations:
                raise PredictionError(f"coco annotations need {key!r}")
        ids = list(annotations["ids"])
        n_cls = options.pop("num_classes", 80)
        scores = _score_matrix(predictions, ids, n_cls, "box")
        return coco_recognition(scores, np.asarray(annotations["labels"]), annotations.get("boxes"),
                                annotations.get("image_ids"), iscrowd=annotations.get("iscrowd"), **options)

    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


#: The paper's Tables 1-4: title, then columns as (header, dataset key, metric key).
TABLES = (
    ("Table 1: region-level captioning", (
        ("RefCOCOg METEOR", "refcocog", "METEOR"), ("RefCOCOg CIDEr", "refcocog", "CIDEr"),
        ("VG METEOR", "vg", "METEOR"), ("VG CIDEr", "vg", "CIDEr"))),
    ("Table 2: dense captioning (mAP)", (
        ("VG V1.0", "vg1.0", "map"), ("VG V1.2", "vg1.2", "map"), ("VG-COCO", "vgcoco", "map"))),
    ("Table 3: OVAD box-oracle attribute detection (mAP)", (
        ("all", "ovad", "all"), ("head", "ovad", "head"), ("medium", "ovad", "medium"), ("tail", "ovad", "tail"))),
    ("Table 4: COCO region recognition", (
        ("mAP", "coco", "map"), ("Acc", "coco", "acc"))),
)


def format_report(results: Mapping[str, Mapping[str, Any]], method: str = "DynRefer",
                  rows: Optional[Mapping[str, Mapping[str, Mapping[str, Any]]]] = None) -> str:
    """Paper-style tables. ``results = {dataset: metrics from evaluate}`` for ``method``; dataset keys are
    ``refcocog``, ``vg``, ``vg1.0``, ``vg1.2``, ``vgcoco``, ``ovad``, ``coco``. ``rows`` adds other methods
    (``{method: results}``) above it, each only in the tables where it has a value. Tables with no value at all
    are left out; missing cells print ``-``."""
    all_rows = dict(rows or {})
    all_rows[method] = results
    lines = []
    for title, cols in TABLES:
        if not any(ds in r and key in r[ds] for r in all_rows.values() for _, ds, key in cols):
            continue
        headers = ["Method"] + [h for h, _, _ in cols]
        body = []
        for name, r in all_rows.items():
            cells = [name]
            for _, ds, key in cols:
                v = r.get(ds, {}).get(key)
                cells.append("-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.1f}")
            if any(c != "-" for c in cells[1:]) or name == method:
                body.append(cells)
        widths = [max(len(row[i]) for row in [headers] + body) for i in range(len(headers))]
        fmt = lambda row: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                            for i, (c, w) in enumerate(zip(row, widths))) + " |"
        lines += [title, fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [fmt(row) for row in body] + [""]
    return "\n".join(lines).rstrip() + "\n" if lines else ""
