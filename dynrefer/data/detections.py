"""Reader for a region detector's output, the boxes that dense captioning is evaluated on.

DynRefer's dense captioning numbers with predicted boxes caption the boxes of GRiT (Wu et al., "GRiT: A Generative
Region-to-text Transformer for Object Understanding"). Two layouts are read:

* **GRiT's file**, ``vg_instances_results.json`` as ``GRiTVGEvaluator`` writes it (JialianW/GRiT,
  ``grit/evaluation/eval.py``: ``instances_to_coco_json`` with ``output_logits=True``): a flat JSON list with one
  record per box, ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "object_descriptions", "logit"}``.
  ``bbox`` is COCO ``x, y, w, h`` (detectron2 ``BoxMode.XYXY_ABS -> XYWH_ABS``); ``image_id`` is the integer stem
  of the image file name (the evaluator asserts it), i.e. the VG image id. ``score`` is GRiT's object score,
  ``sqrt(objectness * exp(description log-prob))`` (``grit/modeling/roi_heads/grit_roi_heads.py``), in [0, 1].
  Images without detections have no record at all. GRiT's VG evaluator also multiplies every box by
  ``720 / max(height, width)`` — the frame of densecap's preprocessed test images, whose longer side is 720 —
  so its raw file needs ``frame="longest720"`` to bring the boxes back to image pixels.
* **One entry per image**: a JSON list (or an object whose ``"results"`` is that list) of
  ``{"image_id" | "file_name" | "img_name", "boxes": [[x1, y1, x2, y2], ...], "scores": [...]}`` with optional
  ``"descriptions"`` (or ``"captions"``): the detector's own captions, kept for reference only.

``box_format`` overrides the box convention of either layout (``"xyxy"`` or ``"xywh"``); by default ``bbox`` is
``x, y, w, h`` and ``boxes`` are ``x1, y1, x2, y2``.

Validation (:class:`DetectionError`, naming the file, the entry, the image and the field): every box has finite
coordinates with ``x2 >= x1`` and ``y2 >= y1`` and lies inside its image (up to ``max(1 px, 1 %)``, which catches
a file in the wrong frame), every score is finite and in ``[0, 1]``, every image is one of the annotation set's
(by id; a numeric string and an integer id match each other; or by file name), and no image has two entries.
Images of the annotation set without a detection are kept with zero boxes: evaluation counts their ground truth
as missed, never drops them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Mapping, NoReturn, Optional, Union

import numpy as np

from .readers import read_json
from .records import AnnotationError, Annotations

__all__ = ["DetectionError", "Detections", "load_detections", "FRAMES"]

#: Box frames of a detection file: ``"image"`` (pixels of the annotated image) or ``"longest720"`` (the image
#: resized so its longer side is 720, as GRiT's VG evaluator writes boxes for densecap's evaluation).
FRAMES = ("image", "longest720")


class DetectionError(AnnotationError):
    """A malformed or mismatched detection file; the message names the file, the entry, the image and the field."""


@dataclass
class Detections:
    """Detected boxes per image of an annotation set (every image present; images without detections are empty).

    ``boxes[image_id]``: ``[D, 4]`` float64 ``x1, y1, x2, y2`` in image pixels; ``scores[image_id]``: ``[D]``
    float64 detector scores; ``descriptions[image_id]``: the detector's own captions (``None`` when the file
    has none). ``images_without_detections`` lists the annotation images the file has no box for.
    """

    boxes: Dict[Hashable, np.ndarray]
    scores: Dict[Hashable, np.ndarray]
    descriptions: Dict[Hashable, Optional[List[str]]] = field(default_factory=dict)
    images_without_detections: List[Hashable] = field(default_factory=list)
    path: Optional[str] = None
    layout: str = ""

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes.values()))


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, entry: Optional[int], image: object, field_name: str, msg: str) -> NoReturn:
        where = [] if entry is None else [f"entry #{entry}"]
        if image is not None:
            where.append(f"image {image!r}")
        where.append(f"field {field_name!r}")
        raise DetectionError(f"{self.path}: {', '.join(where)}: {msg}")


class _ImageIndex:
    """Resolve an entry's image (id, numeric string id, file name or its base name) to an annotation image id."""

    def __init__(self, ann: Annotations) -> None:
        self.ids = set(ann.images)
        self.by_str = {str(i): i for i in ann.images}
        self.by_name: Dict[str, Hashable] = {}
        base: Dict[str, List[Hashable]] = {}
        for i, im in ann.images.items():
            self.by_name[im.file_name] = i
            base.setdefault(os.path.basename(im.file_name), []).append(i)
        self.by_base = {k: v[0] for k, v in base.items() if len(v) == 1}

    def by_id(self, v: object) -> Optional[Hashable]:
        if isinstance(v, bool) or not isinstance(v, (int, str, np.integer)):
            return None
        if v in self.ids:
            return v
        return self.by_str.get(str(int(v)) if isinstance(v, np.integer) else str(v))

    def by_file(self, v: object) -> Optional[Hashable]:
        if not isinstance(v, str):
            return None
        return self.by_name.get(v, self.by_base.get(os.path.basename(v)))


def _entry_image(ctx: _Ctx, index: _ImageIndex, k: int, e: Mapping) -> Hashable:
    if "image_id" in e:
        iid = index.by_id(e["image_id"])
        if iid is None:
            ctx.fail(k, e["image_id"], "image_id", "not an image of the annotation set")
        return iid
    for key in ("file_name", "img_name"):
        if key in e:
            iid = index.by_file(e[key])
            if iid is None:
                ctx.fail(k, e[key], key, "not an image (file name) of the annotation set")
            return iid
    ctx.fail(k, None, "image_id", "missing (an entry names its image by 'image_id', 'file_name' or 'img_name')")


def load_detections(source: Union[str, os.PathLike, list, dict], annotations: Annotations, *,
                    box_format: Optional[str] = None, frame: str = "image") -> Detections:
    """Read a detection file (or its parsed JSON) against ``annotations``; see the module docstring.

    ``box_format``: ``None`` (``bbox`` is ``x, y, w, h``, ``boxes`` are ``x1, y1, x2, y2``), ``"xyxy"`` or
    ``"xywh"``. ``frame``: ``"image"`` or ``"longest720"`` (boxes are divided by ``720 / max(width, height)`` of
    their image, undoing GRiT's VG evaluator).
    """
    if box_format not in (None, "xyxy", "xywh"):
        raise ValueError(f"box_format must be None, 'xyxy' or 'xywh', got {box_format!r}")
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"detection file not found: {path}")
        try:
            data = read_json(path)
        except AnnotationError as err:
            raise DetectionError(str(err)) from None
    else:
        path, data = "<detections>", source
    ctx = _Ctx(path)
    if isinstance(data, Mapping):
        if not isinstance(data.get("results"), list):
            raise DetectionError(f"{path}: expected a JSON list (GRiT's per-box records or one entry per image) "
                                 f"or an object with a 'results' list")
        data = data["results"]
    if not isinstance(data, list):
        raise DetectionError(f"{path}: expected a JSON list, got {type(data).__name__}")
    for k, e in enumerate(data):
        if not isinstance(e, Mapping):
            ctx.fail(k, None, "-", f"expected an object, got {type(e).__name__}")
    per_box = [("bbox" in e) for e in data]
    if any(per_box) and not all(per_box):
        k = per_box.index(not per_box[0])
        ctx.fail(k, None, "boxes" if per_box[0] else "bbox",
                 "mixes GRiT's per-box records ('bbox', 'score') with per-image entries ('boxes', 'scores')")
    layout = "per-box" if data and per_box[0] else "per-image"
    index = _ImageIndex(annotations)

    raw: Dict[Hashable, dict] = {}          # image id -> {"boxes": [...], "scores": [...], "desc": [...] | None}
    origin: Dict[Hashable, int] = {}
    if layout == "per-box":
        fmt = box_format or "xywh"
        for k, e in enumerate(data):
            iid = _entry_image(ctx, index, k, e)
            bb, sc = e.get("bbox"), e.get("score")
            if not isinstance(bb, (list, tuple)) or len(bb) != 4 or not all(_is_num(v) for v in bb):
                ctx.fail(k, iid, "bbox", f"expected 4 numbers [x, y, w, h], got {bb!r}")
            if not _is_num(sc):
                ctx.fail(k, iid, "score", f"expected a number, got {sc!r}")
            desc = e.get("object_descriptions", e.get("description"))
            if desc is not None and not isinstance(desc, str):
                ctx.fail(k, iid, "object_descriptions", f"expected a string, got {type(desc).__name__}")
            slot = raw.setdefault(iid, {"boxes": [], "scores": [], "desc": [], "entries": []})
            slot["boxes"].append([float(v) for v in bb])
            slot["scores"].append(float(sc))
            slot["desc"].append(desc)
            slot["entries"].append(k)
    else:
        fmt = box_format or "xyxy"
        for k, e in enumerate(data):
            iid = _entry_image(ctx, index, k, e)
            if iid in origin:
                ctx.fail(k, iid, "image_id", f"image already listed in entry #{origin[iid]}")
            origin[iid] = k
            bx, sc = e.get("boxes"), e.get("scores")
            if not isinstance(bx, (list, tuple)):
                ctx.fail(k, iid, "boxes", f"expected a list of [x1, y1, x2, y2] boxes, got {type(bx).__name__}")
            if not isinstance(sc, (list, tuple)):
                ctx.fail(k, iid, "scores", f"expected a list of numbers, got {type(sc).__name__}")
            if len(sc) != len(bx):
                ctx.fail(k, iid, "scores", f"{len(sc)} scores for {len(bx)} boxes")
            for j, b in enumerate(bx):
                if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_num(v) for v in b):
                    ctx.fail(k, iid, f"boxes[{j}]", f"expected 4 numbers, got {b!r}")
            for j, s in enumerate(sc):
                if not _is_num(s):
                    ctx.fail(k, iid, f"scores[{j}]", f"expected a number, got {s!r}")
            dkey = "descriptions" if "descriptions" in e else "captions" if "captions" in e else None
            desc = e.get(dkey) if dkey else None
            if desc is not None:
                if not isinstance(desc, (list, tuple)) or len(desc) != len(bx) or \
                        not all(isinstance(d, str) for d in desc):
                    ctx.fail(k, iid, dkey, f"expected {len(bx)} strings, one per box")  # type: ignore[arg-type]
            raw[iid] = {"boxes": [[float(v) for v in b] for b in bx], "scores": [float(s) for s in sc],
                        "desc": list(desc) if desc is not None else [None] * len(bx), "entries": [k] * len(bx)}

    boxes: Dict[Hashable, np.ndarray] = {}
    scores: Dict[Hashable, np.ndarray] = {}
    descs: Dict[Hashable, Optional[list]] = {}
    empty = []
    bfield = "bbox" if layout == "per-box" else "boxes"
    for iid, im in annotations.images.items():
        slot = raw.get(iid)  # type: ignore[assignment]
        if not slot or not slot["boxes"]:
            boxes[iid], scores[iid], descs[iid] = np.zeros((0, 4)), np.zeros(0), None
            empty.append(iid)
            continue
        b = np.asarray(slot["boxes"], dtype=np.float64)
        s = np.asarray(slot["scores"], dtype=np.float64)
        where = slot["entries"]
        for j in range(len(b)):
            fj = bfield if layout == "per-box" else f"boxes[{j}]"
            if not all(math.isfinite(v) for v in b[j]):
                ctx.fail(where[j], iid, fj, f"coordinates must be finite, got {b[j].tolist()}")
            if fmt == "xywh" and (b[j, 2] < 0 or b[j, 3] < 0):
                ctx.fail(where[j], iid, fj, f"negative width or height in [x, y, w, h] {b[j].tolist()}")
            if fmt == "xyxy" and (b[j, 2] < b[j, 0] or b[j, 3] < b[j, 1]):
                ctx.fail(where[j], iid, fj, f"x2 < x1 or y2 < y1 in [x1, y1, x2, y2] {b[j].tolist()}")
            sj = "score" if layout == "per-box" else f"scores[{j}]"
            if not (math.isfinite(s[j]) and 0.0 <= s[j] <= 1.0):
                ctx.fail(where[j], iid, sj, f"detector scores must be finite and in [0, 1], got {s[j]!r}")
        if fmt == "xywh":
            b[:, 2:] += b[:, :2]
        if frame == "longest720":
            b /= 720.0 / max(im.width, im.height)
        tol = max(1.0, 0.01 * max(im.width, im.height))
        out = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > im.width + tol) | (b[:, 3] > im.height + tol)
        if out.any():
            j = int(np.flatnonzero(out)[0])
            hint = (" (GRiT's VG evaluator writes boxes in a frame whose longer side is 720: read such a file with "
                    "frame='longest720', `--det-frame longest720`)") if frame == "image" else ""
            ctx.fail(where[j], iid, bfield if layout == "per-box" else f"boxes[{j}]",
                     f"box {np.round(b[j], 2).tolist()} (x1, y1, x2, y2 in image pixels) lies outside the "
                     f"{im.width}x{im.height} image{hint}")
        boxes[iid], scores[iid] = b, s
        descs[iid] = None if all(d is None for d in slot["desc"]) else [d or "" for d in slot["desc"]]
    return Detections(boxes=boxes, scores=scores, descriptions=descs, images_without_detections=empty,
                      path=path if path != "<detections>" else None, layout=layout)
