"""Readers for the official DynRefer annotation files (VG, RefCOCOg, COCO, OVAD and the synthetic benchmark).

The format is COCO-style JSON, plain or gzip-compressed (detected from the file's first bytes):

* ``images``: ``id``, ``file_name``, ``width``, ``height``;
* ``annotations``: ``id``, ``image_id``, the box as a polygon in ``segmentation`` (a list of ``[x, y, ...]``
  rings, or an RLE dict) and/or ``bbox`` (COCO ``x, y, w, h``), ``caption``, and ``extra_info`` with
  ``parser_result.tag_set1`` / ``tag_set2`` (tag indices, or tag names when a vocabulary is given),
  ``coco_result.category`` (category name) and ``ovad_result.att_vec``;
* optional ``dataset`` (``image_root``, ``tag_list``), ``categories`` (with ``category_id`` on annotations),
  ``attributes`` (or ``attrs``) with per-annotation ``att_vec`` (1 / 0 / -1) as the OVAD release has them.

Box semantics follow the official data pipeline (its ``seq2mask`` with ``with_seg=False``): when an annotation
has a ``segmentation``, the box is the min/max of the polygon points, widened to one pixel where it is thinner
than that (``x1 = x2 - 1`` if ``x2 > 0``, else ``x2 = x1 + 1``; same for y); for an RLE mask it is the first and
last non-empty column/row (the last one *inclusive*, as the official code has it). Without a segmentation the
``bbox`` is used (``box_source="bbox"`` forces it). Boxes are ``x1, y1, x2, y2`` float pixels.

Malformed files raise :class:`~dynrefer.data.records.AnnotationError` naming the file, the record (its index and
id) and the field.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
from typing import Any, Dict, Hashable, List, Mapping, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np

from .records import AnnotationError, Annotations, ImageInfo, RegionRecord

log = logging.getLogger("dynrefer.data")

__all__ = ["load_annotations", "read_json", "write_json", "load_tag_vocab", "segmentation_to_box", "decode_rle",
           "box_polygon"]

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------------------------
# files

def read_json(path: PathLike) -> Any:
    """Parse a JSON file, gzip-compressed or not (decided by its magic bytes, not its name)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read annotation file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise AnnotationError(f"{path}: corrupt gzip data ({e})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def write_json(path: PathLike, obj: Any, *, indent: Optional[int] = None) -> str:
    """Write ``obj`` as JSON; gzip-compressed when the name ends in ``.gz`` (deterministic: no timestamp)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(obj, indent=indent, ensure_ascii=False, separators=None if indent else (",", ":"))
    data = text.encode("utf-8")
    if path.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as g:
            g.write(data)
        data = buf.getvalue()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def load_tag_vocab(path: PathLike) -> List[str]:
    """A tag vocabulary file: one name per line (surrounding blanks stripped; empty lines skipped)."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        names = [line.strip() for line in f]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        seen, dup = set(), None
        for n in names:
            if n in seen:
                dup = n
                break
            seen.add(n)
        raise ValueError(f"{path}: tag {dup!r} appears twice")
    return names


# ---------------------------------------------------------------------------------------------------------------
# geometry

def box_polygon(x1: float, y1: float, x2: float, y2: float) -> List[List[float]]:
    """The box as the one-ring polygon the official files store in ``segmentation``."""
    return [[x1, y1, x1, y2, x2, y2, x2, y1]]


def _rle_counts_from_string(s: str) -> np.ndarray:
    # COCO's compressed RLE: 6-bit chunks offset by 48, 5 data bits + a continuation bit (0x20); the top data
    # bit (0x10) of a value's last chunk is its sign; counts after the second are stored as differences to the
    # count two places back. Vectorised: chunk -> value by a grouped shift-sum, then two strided cumsums.
    c = np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size and (c.min() < 0 or c.max() > 63):
        bad = s[int(np.flatnonzero((c < 0) | (c > 63))[0])]
        raise ValueError(f"invalid character {bad!r} in compressed RLE string")
    if c.size == 0:
        return np.zeros(0, np.int64)
    last = (c & 0x20) == 0                               # the last chunk of each value
    if not last[-1]:
        raise ValueError("truncated compressed RLE string")
    ends = np.flatnonzero(last)
    starts = np.r_[0, ends[:-1] + 1]
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    k = np.arange(c.size) - starts[group]                # chunk position within its value
    if k.max(initial=0) > 9:                             # 50 bits: exact in the float64 bincount
        raise ValueError("compressed RLE value too long")
    x = np.bincount(group, weights=(c & 0x1F) << (5 * k), minlength=len(ends)).astype(np.int64)
    neg = (c[ends] & 0x10) != 0
    x[neg] -= np.int64(1) << (5 * (k[ends][neg] + 1))
    if len(x) > 3:
        x[3::2] = np.cumsum(x[1::2])[1:]                 # counts[m] = x[m] + counts[m-2] for m > 2
        x[4::2] = np.cumsum(x[2::2])[1:]
    return x


def decode_rle(rle: Mapping) -> np.ndarray:
    """Decode a COCO RLE dict (``size`` = [h, w]; ``counts`` a list, or a compressed string/bytes) to an
    ``[h, w]`` uint8 mask. Runs alternate 0, 1, 0, ... in column-major order, as pycocotools stores them."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _rle_counts_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if np.any(counts < 0):
        raise ValueError("negative RLE run length")
    if counts.sum() != h * w:
        raise ValueError(f"RLE runs cover {int(counts.sum())} pixels but size is {h}x{w}")
    values = np.arange(len(counts)) % 2
    flat = np.repeat(values.astype(np.uint8), counts)
    return flat.reshape(w, h).T.copy()


def segmentation_to_box(seg: Any, width: int, height: int) -> Tuple[float, float, float, float]:
    """The official box of a ``segmentation`` (polygon rings or RLE), see the module docstring."""
    if isinstance(seg, dict):
        mask = decode_rle(seg)
        cols = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        if len(cols) == 0:
            raise ValueError("empty RLE mask")
        return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])
    if not isinstance(seg, (list, tuple)) or len(seg) == 0:
        raise ValueError("expected a list of polygon rings or an RLE dict")
    if len(seg) == 1 and type(seg[0]) is list:
        pts = seg[0]
    else:
        pts = []
        for ring in seg:
            if not isinstance(ring, (list, tuple)):
                raise ValueError("polygon rings must be lists of numbers")
            pts.extend(ring)
    if len(pts) < 2 or len(pts) % 2:
        raise ValueError(f"polygon needs an even, non-zero number of coordinates, got {len(pts)}")
    try:
        total = sum(pts)                      # TypeError on anything but numbers; inf/nan on non-finite ones
        xs, ys = pts[0::2], pts[1::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
    except TypeError:
        raise ValueError("polygon coordinates must be numbers") from None
    if type(x1) is bool or type(x2) is bool or type(y1) is bool or type(y2) is bool or not math.isfinite(total):
        if not math.isfinite(total) and all(isinstance(v, (int, float)) for v in pts):
            raise ValueError("polygon coordinates must be finite")
        raise ValueError("polygon coordinates must be numbers")
    x1, x2, y1, y2 = float(x1), float(x2), float(y1), float(y2)
    if x1 >= x2 - 1 and x2 > 0:
        x1 = x2 - 1
    elif x1 >= x2 - 1 and width - x1 > 0:
        x2 = x1 + 1
    if y1 >= y2 - 1 and y2 > 0:
        y1 = y2 - 1
    elif y1 >= y2 - 1 and height - y1 > 0:
        y2 = y1 + 1
    return float(x1), float(y1), float(x2), float(y2)


# ---------------------------------------------------------------------------------------------------------------
# the reader

class _Ctx:
    """Formats error messages that name the file and the record."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, what: str, index: Optional[int], rid: object, field: str, msg: str) -> NoReturn:
        where = f"{what} #{index}" if index is not None else what
        if rid is not None:
            where += f" (id {rid!r})"
        raise AnnotationError(f"{self.path}: {where}: field {field!r}: {msg}")


def _is_int(v: object) -> bool:
    return type(v) is int or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))


def _is_num(v: object) -> bool:
    return type(v) in (int, float) or (isinstance(v, (int, float, np.integer, np.floating))
                                       and not isinstance(v, bool))


def _hashable_id(v: object) -> bool:
    return isinstance(v, (str, int)) and not isinstance(v, bool)


def load_annotations(path: PathLike, *, image_root: Optional[PathLike] = None,
                     tags: Optional[Union[Sequence[str], PathLike]] = None, box_source: str = "auto",
                     categories: Optional[Sequence] = None) -> Annotations:
    """Read an official-format annotation file into :class:`~dynrefer.data.records.Annotations`.

    ``image_root``: where ``file_name`` is found (default: the file's ``dataset.image_root``, else the file's
    folder; a relative root is taken relative to the annotation file's folder, or to the working directory
    when only there it names an existing folder, as in the official files). ``tags``: the tag vocabulary
    (a list of names or a path; default: the file's ``dataset.tag_list``, relative to the file's folder) —
    tag indices are checked against it and tag names mapped through it. ``box_source``: ``"auto"`` (segmentation,
    else bbox), ``"bbox"`` or ``"segmentation"``. ``categories``: class names (or category dicts) to use when the
    file has no ``categories`` but names categories in ``extra_info.coco_result``.
    """
    path = os.fspath(path)
    data = read_json(path)
    ctx = _Ctx(path)
    if not isinstance(data, Mapping):
        raise AnnotationError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    if box_source not in ("auto", "bbox", "segmentation"):
        raise ValueError(f"box_source must be 'auto', 'bbox' or 'segmentation', got {box_source!r}")
    base = os.path.dirname(os.path.abspath(path))
    info = data.get("dataset") or {}
    if not isinstance(info, Mapping):
        raise AnnotationError(f"{path}: field 'dataset' must be an object")

    # tag vocabulary
    vocab: Optional[List[str]] = None
    if tags is None and isinstance(info.get("tag_list"), str):
        tp = info["tag_list"]
        tags = tp if os.path.isabs(tp) else os.path.join(base, tp)
    if isinstance(tags, (str, os.PathLike)):
        vocab = load_tag_vocab(tags)
    elif tags is not None:
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"tags must be a list of tag names or a vocabulary file path, got {type(tags).__name__}")
        vocab = list(tags)
    tag_index = {t: i for i, t in enumerate(vocab)} if vocab is not None else None

    # image root
    if image_root is None:
        image_root = info.get("image_root", "")
    image_root = os.fspath(image_root)
    if not os.path.isabs(image_root):
        # relative to the annotation file; the official files name roots relative to the working directory
        # ("data/vg/images/"), so that is tried when the first does not exist
        near = os.path.join(base, image_root)
        image_root = near if os.path.isdir(near) or not os.path.isdir(image_root) else os.path.abspath(image_root)

    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path}: field {key!r} must be a list, got "
                                  f"{'nothing' if key not in data else type(data[key]).__name__}")

    # images: their files must lie under the image root (no absolute names, no "..")
    root_norm = os.path.normpath(os.path.abspath(image_root))
    images: Dict[Hashable, ImageInfo] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, Mapping):
            ctx.fail("image", i, None, "-", f"expected an object, got {type(im).__name__}")
        iid = im.get("id")
        if not _hashable_id(iid):
            ctx.fail("image", i, None, "id", f"expected an int or str, got {iid!r}")
        if iid in images:
            ctx.fail("image", i, iid, "id", "duplicate image id")
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn:
            ctx.fail("image", i, iid, "file_name", f"expected a non-empty string, got {fn!r}")
        full = os.path.normpath(os.path.join(root_norm, fn))
        if os.path.isabs(fn) or os.path.commonpath([root_norm, full]) != root_norm or "\x00" in fn:
            ctx.fail("image", i, iid, "file_name", f"{fn!r} lies outside the image root {image_root} (file names "
                     "are relative to it)")
        wh = []
        for k in ("width", "height"):
            v: Any = im.get(k)
            if not _is_num(v) or v != int(v) or v <= 0:
                ctx.fail("image", i, iid, k, f"expected a positive integer, got {v!r}")
            wh.append(int(v))
        images[iid] = ImageInfo(iid, fn, wh[0], wh[1], os.path.join(image_root, fn))

    # categories
    cats = data.get("categories")
    if cats is None and categories is not None:
        cats = [c if isinstance(c, Mapping) else {"id": k + 1, "name": str(c)} for k, c in enumerate(categories)]
    cats = list(cats or [])
    cat_by_id: Dict[int, Tuple[int, str]] = {}
    cat_by_name: Dict[str, Tuple[int, int]] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, Mapping) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            ctx.fail("category", i, c.get("id") if isinstance(c, Mapping) else None, "id/name",
                     "expected an object with an integer 'id' and a string 'name'")
        if c["id"] in cat_by_id:
            ctx.fail("category", i, c["id"], "id", "duplicate category id")
        cat_by_id[int(c["id"])] = (i, c["name"])
        cat_by_name.setdefault(c["name"], (i, int(c["id"])))

    # attributes
    attrs = data.get("attributes", data.get("attrs"))
    attrs = list(attrs or [])
    for i, a in enumerate(attrs):
        if not isinstance(a, Mapping) or not isinstance(a.get("name"), str):
            ctx.fail("attribute", i, None, "name", "expected an object with a string 'name'")
        if a.get("id", i) != i:
            ctx.fail("attribute", i, a.get("id"), "id", f"attribute ids must be 0..A-1 in order; expected {i}")
    n_attr = len(attrs)

    records: List[RegionRecord] = []
    att_rows: list = []                 # (record position, index, id, field, values): validated together below
    seen_ids = set()
    dropped: Dict[str, int] = {}
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            ctx.fail("annotation", i, None, "-", f"expected an object, got {type(a).__name__}")
        rid = a.get("id")
        if type(rid) is not int and not _hashable_id(rid):
            ctx.fail("annotation", i, None, "id", f"expected an int or str, got {rid!r}")
        if rid in seen_ids:
            ctx.fail("annotation", i, rid, "id", "duplicate annotation id")
        seen_ids.add(rid)
        iid = a.get("image_id")
        if (type(iid) is not int and not _hashable_id(iid)) or iid not in images:
            ctx.fail("annotation", i, rid, "image_id", f"{iid!r} is not the id of an image in 'images'")
        img = images[iid]

        # box
        seg = a.get("segmentation")
        use_seg = box_source == "segmentation" or (box_source == "auto" and bool(seg))
        if use_seg:
            if not seg:
                ctx.fail("annotation", i, rid, "segmentation", "missing (box_source='segmentation')")
            try:
                box = segmentation_to_box(seg, img.width, img.height)
            except (ValueError, KeyError, TypeError) as e:
                ctx.fail("annotation", i, rid, "segmentation", str(e) or type(e).__name__)
        else:
            bb = a.get("bbox")
            if not isinstance(bb, (list, tuple)) or len(bb) != 4 or not all(_is_num(v) for v in bb):
                ctx.fail("annotation", i, rid, "bbox", f"expected 4 numbers [x, y, w, h], got {bb!r}")
            x, y, w, h = (float(v) for v in bb)
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                ctx.fail("annotation", i, rid, "bbox", f"coordinates must be finite, got {list(bb)}")
            if w < 0 or h < 0:
                ctx.fail("annotation", i, rid, "bbox", f"negative width or height in {list(bb)}")
            box = (x, y, x + w, y + h)

        cap = a.get("caption")
        if cap is not None and not isinstance(cap, str):
            ctx.fail("annotation", i, rid, "caption", f"expected a string, got {type(cap).__name__}")
        # regions nothing can be learned from are left out and counted (reported below), never kept silently
        reason = None
        if box[2] <= box[0] or box[3] <= box[1]:
            reason = "zero-area box"
        elif min(box[2], img.width) <= max(box[0], 0.0) or min(box[3], img.height) <= max(box[1], 0.0):
            reason = "box outside the image"
        elif cap is not None and not cap.strip():
            reason = "empty caption"
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue

        extra = a.get("extra_info") or {}
        if not isinstance(extra, dict):
            ctx.fail("annotation", i, rid, "extra_info", f"expected an object, got {type(extra).__name__}")
        pr = extra.get("parser_result") or {}
        if not isinstance(pr, dict):
            ctx.fail("annotation", i, rid, "extra_info.parser_result", "expected an object")
        tag_sets: List[Tuple[int, ...]] = [(), ()]
        for ki, key in enumerate(("tag_set1", "tag_set2") if pr else ()):
            ts = pr.get(key, [])
            if not ts:
                continue
            if not isinstance(ts, (list, tuple)):
                ctx.fail("annotation", i, rid, f"extra_info.parser_result.{key}", "expected a list")
            out = []
            for t in ts:
                if _is_int(t):
                    if t < 0 or (vocab is not None and t >= len(vocab)):
                        ctx.fail("annotation", i, rid, f"extra_info.parser_result.{key}",
                                 f"tag index {t} outside the vocabulary of {len(vocab) if vocab else '?'} tags")
                    out.append(int(t))
                elif isinstance(t, str):
                    if tag_index is None:
                        ctx.fail("annotation", i, rid, f"extra_info.parser_result.{key}",
                                 f"tag name {t!r} needs a tag vocabulary (pass tags=)")
                    if t not in tag_index:
                        ctx.fail("annotation", i, rid, f"extra_info.parser_result.{key}",
                                 f"tag {t!r} is not in the tag vocabulary")
                    out.append(tag_index[t])
                else:
                    ctx.fail("annotation", i, rid, f"extra_info.parser_result.{key}",
                             f"tags must be indices or names, got {t!r}")
            tag_sets[ki] = tuple(sorted(set(out)))

        # category: category_id (through categories) or coco_result.category (a name)
        cat_id = cat_name = cat_idx = None
        if a.get("category_id") is not None:
            cid = a["category_id"]
            if not _is_int(cid):
                ctx.fail("annotation", i, rid, "category_id", f"expected an integer, got {cid!r}")
            if cat_by_id:
                if cid not in cat_by_id:
                    ctx.fail("annotation", i, rid, "category_id", f"{cid} is not in 'categories'")
                cat_idx, cat_name = cat_by_id[cid]
            cat_id = int(cid)
        cr = extra.get("coco_result")
        if cat_name is None and isinstance(cr, dict) and cr.get("category") is not None:
            nm = cr["category"]
            if not isinstance(nm, str):
                ctx.fail("annotation", i, rid, "extra_info.coco_result.category", "expected a category name")
            if cat_by_name:
                if nm not in cat_by_name:
                    ctx.fail("annotation", i, rid, "extra_info.coco_result.category",
                             f"{nm!r} is not a category name in 'categories'")
                cat_idx, cat_id = cat_by_name[nm]
            cat_name = nm

        # attributes
        av = a.get("att_vec")
        orr = extra.get("ovad_result")
        field_name = "att_vec"
        if av is None and isinstance(orr, dict):
            av, field_name = orr.get("att_vec"), "extra_info.ovad_result.att_vec"
        att = None
        if av is not None:
            if not isinstance(av, (list, tuple)) or len(av) != n_attr:
                ctx.fail("annotation", i, rid, field_name,
                         f"expected {n_attr} values (one per attribute), got "
                         f"{len(av) if isinstance(av, (list, tuple)) else type(av).__name__}")
            att_rows.append((len(records), i, rid, field_name, av))

        rest = {k: v for k, v in extra.items() if k not in ("parser_result", "ovad_result")} if extra else {}
        if "iscrowd" in a:
            rest["iscrowd"] = a["iscrowd"]
        if "graph" in pr:
            rest["graph"] = pr["graph"]
        records.append(RegionRecord(
            id=rid, image_id=iid, image_path=img.path, image_size=(img.width, img.height), box=box,
            caption=cap, tag_set1=tag_sets[0], tag_set2=tag_sets[1], category_id=cat_id, category=cat_name,
            category_index=cat_idx, att_vec=att, extra=rest))

    if att_rows:
        mat = np.array([row[4] for row in att_rows], dtype=object if n_attr == 0 else None)
        ok = mat.ndim == 2 and mat.dtype.kind in "iu"
        if ok:
            bad_rows = np.flatnonzero((mat < -1).any(axis=1) | (mat > 1).any(axis=1))
        if not ok or len(bad_rows):
            for pos, i, rid, field_name, av in att_rows:
                bad = [v for v in av if not (_is_int(v) and -1 <= v <= 1)]
                if bad:
                    ctx.fail("annotation", i, rid, field_name, f"values must be 1, 0 or -1, got {bad[0]!r}")
        mat = mat.astype(np.int8)
        for j, row in enumerate(att_rows):
            records[row[0]].att_vec = mat[j]
    if dropped:
        n = sum(dropped.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
        if not records:
            raise AnnotationError(f"{path}: no usable region: all {n} annotations were dropped ({detail})")
        log.warning("%s: dropped %d of %d regions (%s)", path, n, n + len(records), detail)
    return Annotations(records=records, images=images, categories=cats, attributes=attrs, tag_vocab=vocab,
                       info=dict(info), path=path, dropped=dropped)
