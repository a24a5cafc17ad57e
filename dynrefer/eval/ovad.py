"""OVAD box-oracle attribute mAP, its annotation loader, and the prompt set DynRefer scores attributes with.

Reference protocol: the OVAD benchmark's ``AttEvaluator`` (Bravo et al., CVPR 2023; the copy DynRefer runs in
``dynrefer/common/evaluation/ovad/``): for each attribute, ``sklearn.metrics.average_precision_score`` over the
boxes labelled 1/0 (label -1 = unlabelled, ignored); attributes without a positive box are skipped (NaN);
``all`` / ``head`` / ``medium`` / ``tail`` = NaN-mean of the attribute APs in the group, reported ×100. Like the
reference, scores outside [0, 1] are clipped to [0, 1] first (with a warning) — pass probabilities.

Prompts (DynRefer's ``build_att_embeds``): for every synonym of an attribute ("type:syn1/syn2/..."), the "the"
templates of OVAD's ``object_attribute_templates`` for its ``is``/``has`` kind with an empty noun; an
attribute's score is the maximum over its prompts (:func:`max_over_prompts`).

Sanity anchor: constant scores give AP = positive rate per attribute; on ``ovad2000`` that is all 8.68,
head 36.0, medium 7.3, tail 0.6 (the paper's "Chance" row prints all as 8.6).
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from ._checks import PredictionError

__all__ = ["OvadAnnotations", "load_ovad", "ovad_ap", "ovad_prompts", "max_over_prompts", "FREQ_SETS",
           "default_ovad_path", "ovad_ground_truth"]

FREQ_SETS = ("head", "medium", "tail")

# OVAD's object_attribute_templates, "the" prompt family (the one DynRefer uses), keyed by is/has.
_THE_TEMPLATES = {
    "has": ("the {attr} {dobj} {noun}", "the {noun} has {attr} {dobj}"),
    "is": ("the {attr} {noun}", "the {noun} is {attr}"),
}
# DynRefer widens the two maturity attributes with extra synonyms.
_EXTRA_SYNONYMS = {"young/baby": "/kid/kids/child/toddler/boy/girl", "adult/old/aged": "/teen/elder"}


@dataclass
class OvadAnnotations:
    """The OVAD benchmark annotations: one row per box, one column per attribute."""

    labels: np.ndarray            # [N, A] int8: 1 positive, 0 negative, -1 unlabelled
    attributes: List[dict]        # A dicts: id, name, type, parent_type, is_has_att, freq_set
    annotation_ids: np.ndarray    # [N]
    image_ids: np.ndarray         # [N]
    category_ids: np.ndarray      # [N]
    boxes: np.ndarray             # [N, 4] COCO xywh
    images: List[dict] = field(default_factory=list)
    categories: List[dict] = field(default_factory=list)


def ovad_ground_truth(annotations: Any) -> OvadAnnotations:
    """The records of an annotation set (:class:`dynrefer.data.Annotations` or anything with its ``records``,
    ``attribute_labels()``, ``attributes``, ``images`` and ``categories``) that carry an ``att_vec``, as
    :class:`OvadAnnotations` for ``evaluate("ovad", ...)``."""
    recs = [r for r in annotations.records if r.att_vec is not None]
    labels, ids = annotations.attribute_labels()
    attrs = [dict(a, id=a.get("id", k)) for k, a in enumerate(annotations.attributes)]   # ids are 0..A-1 in order
    return OvadAnnotations(
        labels=labels, attributes=attrs, annotation_ids=np.array(ids),
        image_ids=np.array([r.image_id for r in recs]),
        category_ids=np.array([-1 if r.category_id is None else r.category_id for r in recs]),
        boxes=np.array([r.box_xywh for r in recs], dtype=np.float64).reshape(-1, 4),
        images=[{"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height}
                for i in annotations.images.values()],
        categories=list(annotations.categories))


def default_ovad_path() -> str:
    """``../shared/data/ovad/ovad2000.json.gz`` relative to the repository root (``$DYNREFER_DATA`` overrides)."""
    root = os.environ.get("DYNREFER_DATA")
    if root is None:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data")
    return os.path.normpath(os.path.join(root, "ovad", "ovad2000.json.gz"))


def load_ovad(path: Optional[str] = None) -> OvadAnnotations:
    """Load an OVAD annotation file (``.json`` or ``.json.gz``); attributes are ordered by id."""
    path = path or default_ovad_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OVAD annotations not found at {path}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    attributes = sorted(data["attributes"], key=lambda a: a["id"])
    if [a["id"] for a in attributes] != list(range(len(attributes))):
        raise ValueError("OVAD attribute ids must be 0..A-1")
    anns = data["annotations"]
    labels = np.array([a["att_vec"] for a in anns], dtype=np.int8).reshape(len(anns), len(attributes))
    return OvadAnnotations(
        labels=labels, attributes=attributes,
        annotation_ids=np.array([a["id"] for a in anns]),
        image_ids=np.array([a["image_id"] for a in anns]),
        category_ids=np.array([a["category_id"] for a in anns]),
        boxes=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), 4),
        images=data.get("images", []), categories=data.get("categories", []))


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Non-interpolated AP = sum over score thresholds of (R_k - R_{k-1}) P_k, ties grouped (sklearn's)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ovad_ap(scores: ArrayLike, labels: ArrayLike, attributes: Sequence, *,
            clip: bool = True) -> Dict[str, Any]:
    """OVAD box-oracle mAP ×100.

    ``scores[N, A]`` attribute probabilities for the N annotated boxes, ``labels[N, A]`` in {1, 0, -1},
    ``attributes``: A attribute dicts (``name``, ``freq_set``) or A freq-set strings. Returns ``{"all", "head",
    "medium", "tail", "per_attribute": {name: AP×100 or NaN}}``.
    """
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 2:
        raise PredictionError(f"scores must be [N boxes, A attributes], got shape {s.shape}")
    if y.shape != s.shape:
        raise PredictionError(f"scores shape {s.shape} does not match labels shape {y.shape}")
    if len(attributes) != s.shape[1]:
        raise PredictionError(f"{len(attributes)} attributes but scores have {s.shape[1]} columns")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise PredictionError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))
        raise PredictionError(f"{len(bad)} scores are NaN or Inf (first at box {bad[0][0]}, attribute {bad[0][1]})")
    if not np.all(np.isin(y, (-1, 0, 1))):
        raise PredictionError("labels must be 1 (positive), 0 (negative) or -1 (unlabelled)")
    if clip and (s.min() < 0 or s.max() > 1):
        warnings.warn(f"OVAD scores outside [0, 1] (range [{s.min():.3g}, {s.max():.3g}]) are clipped to [0, 1] "
                      "as the reference evaluator does; pass probabilities, not logits", stacklevel=2)
        s = np.clip(s, 0.0, 1.0)

    names: List[str] = []
    groups: List[str] = []
    for a in attributes:
        if isinstance(a, str):
            names.append(f"attribute_{len(names)}")
            groups.append(a)
        else:
            names.append(a["name"])
            groups.append(a["freq_set"])
    aps = np.full(s.shape[1], np.nan)
    for j in range(s.shape[1]):
        keep = y[:, j] >= 0
        yj = y[keep, j]
        if yj.sum() > 0:
            aps[j] = _average_precision(yj, s[keep, j])

    def nanmean(mask: np.ndarray) -> float:
        vals = aps[mask]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean() * 100) if len(vals) else float("nan")

    groups_arr = np.array(groups)
    out: Dict[str, Any] = {"all": nanmean(np.ones(len(aps), bool))}
    for g in FREQ_SETS:
        out[g] = nanmean(groups_arr == g)
    out["per_attribute"] = {n: float(v * 100) for n, v in zip(names, aps)}
    return out


def ovad_prompts(attributes: Sequence[dict], noun: str = "") -> Tuple[List[str], List[int]]:
    """DynRefer's attribute prompts: ``(texts, sizes)`` with ``sizes[a]`` consecutive texts per attribute.

    ``attributes`` are OVAD attribute dicts (``name`` = "type:syn1/syn2", ``is_has_att``). The strings are
    built exactly as DynRefer does (including its double space where the noun is empty).
    """
    texts: List[str] = []
    sizes: List[int] = []
    for a in attributes:
        att_type, syns = a["name"].split(":")
        syns += _EXTRA_SYNONYMS.get(syns, "")
        kind = a["is_has_att"]
        if kind not in _THE_TEMPLATES:
            raise ValueError(f"attribute {a['name']!r}: is_has_att must be 'is' or 'has', got {kind!r}")
        dobj = att_type.replace(" tone", "")
        n0 = len(texts)
        for syn in syns.split("/"):
            for tpl in _THE_TEMPLATES[kind]:
                texts.append(tpl.format(attr=syn, dobj=dobj, noun=noun).strip())
        sizes.append(len(texts) - n0)
    return texts, sizes


def max_over_prompts(prompt_scores: ArrayLike, sizes: Sequence[int]) -> np.ndarray:
    """Attribute scores ``[N, A]`` = max over each attribute's consecutive prompt columns of ``[N, P]``."""
    p = np.asarray(prompt_scores, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != int(np.sum(sizes)):
        raise PredictionError(f"prompt scores must be [N, {int(np.sum(sizes))}], got {p.shape}")
    if any(int(k) <= 0 for k in sizes):
        raise ValueError("every attribute needs at least one prompt")
    starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.intp)
    if p.shape[0] == 0:
        return np.zeros((0, len(sizes)))
    return np.maximum.reduceat(p, starts, axis=1)
