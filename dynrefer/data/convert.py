"""Converters from the public raw releases to the official DynRefer annotation format.

Every converter returns a dict in the format :func:`dynrefer.data.readers.load_annotations` reads (write it with
:func:`dynrefer.data.readers.write_json`, ``.gz`` for compressed). Each annotation gets the region box as COCO
``bbox`` (x, y, w, h) and as the one-ring polygon in ``segmentation`` that the official pipeline takes its box
from, ``area``, ``iscrowd`` = 0, ``caption``, and ``extra_info.parser_result`` with the caption's tags when a
:class:`~dynrefer.data.tags.TagExtractor` is given (else empty tag sets). Boxes are clipped to the image and
regions left with no area are dropped (the count is in ``dataset.dropped``).

Raw layouts read:

* **Visual Genome** — ``region_descriptions.json``: ``[{"id": image_id, "regions": [{"region_id", "image_id",
  "phrase", "x", "y", "width", "height"}, ...]}, ...]``; image sizes from ``image_data.json``
  (``[{"image_id" (or "id"), "width", "height", "url", "coco_id", "flickr_id"}]``) or, failing that, from the
  image files' headers. Images are ``<image_id>.jpg``. An optional split file (``{"train": [ids], "val": [...],
  "test": [...]}``, densecap's layout) selects the images of one split.
* **RefCOCOg** — ``refs(umd).p`` (a pickled list of refs: ``ref_id``, ``ann_id``, ``image_id``, ``split``,
  ``category_id``, ``sentences`` = ``[{"sent_id", "sent", "raw", "tokens"}]``) with the COCO ``instances.json``
  its boxes come from. One annotation per sentence (so every expression is a training sample); the
  expressions of one ref share the box, and :meth:`Annotations.caption_references` groups them back as the
  references of one region. ``extra_info.refcoco_result`` keeps ``ref_id``, ``ann_id``, ``sent_id``, ``split``.
* **COCO instances** (``instances_*.json``) — one annotation per object (crowd objects skipped unless asked),
  ``category_id`` kept, ``extra_info.coco_result.category`` = the class name; COCO has no region captions, so
  the class name is the caption.
* **OVAD** (``ovad2000.json`` layout: COCO instances + ``attributes`` + per-annotation ``att_vec``) — kept, and
  also written where the official code reads them (``attrs`` and ``extra_info.ovad_result.att_vec``).
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

from .readers import box_polygon, read_json
from .tags import TagExtractor

__all__ = ["convert_vg", "convert_refcocog", "convert_coco", "convert_ovad", "make_annotation", "RawFormatError"]

PathOrData = Union[str, os.PathLike, list, dict]


class RawFormatError(ValueError):
    """A raw public annotation file is not in the layout its converter reads; the message names the file,
    the entry and the field."""


def _load(src: PathOrData, what: str) -> Any:
    if isinstance(src, (list, dict)):
        return src, f"<{what}>"
    return read_json(src), os.fspath(src)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clip_xywh(x: float, y: float, w: float, h: float, width: float,
               height: float) -> Optional[Tuple[float, float, float, float]]:
    x1, y1 = min(max(float(x), 0.0), width), min(max(float(y), 0.0), height)
    x2, y2 = min(max(float(x) + float(w), 0.0), width), min(max(float(y) + float(h), 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def make_annotation(ann_id: Hashable, image_id: Hashable, box_xyxy: Sequence[float], caption: str, *,
                    tagger: Optional[TagExtractor] = None, category_id: Optional[int] = None,
                    extra: Optional[Mapping] = None) -> dict:
    """One annotation in the official format (box as ``bbox`` and as a polygon; tags from ``tagger``)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    parser = tagger.parser_result(caption) if tagger is not None else {"tag_set1": [], "tag_set2": []}
    a = {"id": ann_id, "image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
         "segmentation": box_polygon(x1, y1, x2, y2), "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
         "caption": caption}
    if category_id is not None:
        a["category_id"] = int(category_id)
    info = {"parser_result": parser}
    if extra:
        info.update(extra)
    a["extra_info"] = info
    return a


def _dataset(name: str, image_root: Optional[str], dropped: int, **more: Any) -> dict:
    d = {"name": name, "image_root": image_root or "", "dropped": dropped}
    d.update({k: v for k, v in more.items() if v is not None})
    return d


def _clean_caption(text: str) -> str:
    return " ".join(text.strip().split())


# ---------------------------------------------------------------------------------------------------------------

def convert_vg(region_descriptions: PathOrData, image_data: Optional[PathOrData] = None, *,
               image_root: Optional[str] = None, split: Optional[str] = None,
               split_file: Optional[PathOrData] = None, tagger: Optional[TagExtractor] = None,
               max_words: Optional[int] = None, lowercase: bool = False, name: str = "vg") -> dict:
    """Visual Genome region descriptions → official format (see the module docstring).

    ``split`` + ``split_file`` keep one split's images; ``max_words`` drops regions whose phrase is longer;
    ``lowercase`` lower-cases phrases. Empty phrases are dropped."""
    regions, src = _load(region_descriptions, "region_descriptions")
    if not isinstance(regions, list):
        raise RawFormatError(f"{src}: expected a list of images with 'regions', got {type(regions).__name__}")
    sizes: Dict[int, Tuple[int, int]] = {}
    if image_data is not None:
        imgs, isrc = _load(image_data, "image_data")
        if not isinstance(imgs, list):
            raise RawFormatError(f"{isrc}: expected a list of images, got {type(imgs).__name__}")
        for i, im in enumerate(imgs):
            iid = im.get("image_id", im.get("id")) if isinstance(im, Mapping) else None
            if not isinstance(iid, int):
                raise RawFormatError(f"{isrc}: image #{i}: field 'image_id': expected an integer, got {iid!r}")
            w, h = im.get("width"), im.get("height")
            if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
                raise RawFormatError(f"{isrc}: image #{i} (id {iid}): fields 'width'/'height': expected positive "
                                     f"integers, got {w!r}, {h!r}")
            sizes[iid] = (w, h)
    keep = None
    if split is not None:
        if split_file is None:
            raise ValueError("split needs split_file (a JSON {split: [image ids]})")
        sp, ssrc = _load(split_file, "split_file")
        if not isinstance(sp, Mapping) or split not in sp:
            raise RawFormatError(f"{ssrc}: no split {split!r} (has {sorted(sp) if isinstance(sp, Mapping) else '?'})")
        keep = {int(v) for v in sp[split]}

    images: List[dict] = []
    anns: List[dict] = []
    dropped = 0
    seen_regions = set()
    for i, entry in enumerate(regions):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("regions"), list):
            raise RawFormatError(f"{src}: image #{i}: field 'regions': expected a list")
        iid = entry.get("id", entry.get("image_id"))
        if iid is None and entry["regions"]:
            iid = entry["regions"][0].get("image_id")
        if not isinstance(iid, int):
            raise RawFormatError(f"{src}: image #{i}: field 'id': expected an integer image id, got {iid!r}")
        if keep is not None and iid not in keep:
            continue
        if iid in sizes:
            width, height = sizes[iid]
        elif image_root is not None and os.path.isfile(os.path.join(image_root, f"{iid}.jpg")):
            from PIL import Image

            with Image.open(os.path.join(image_root, f"{iid}.jpg")) as im:
                width, height = im.size
        else:
            raise RawFormatError(f"{src}: image #{i} (id {iid}): no size known (pass image_data= with "
                                 f"image_data.json, or image_root= with the images)")
        n_before = len(anns)
        for j, r in enumerate(entry["regions"]):
            where = f"{src}: image #{i} (id {iid}), region #{j}"
            if not isinstance(r, Mapping):
                raise RawFormatError(f"{where}: expected an object")
            rid = r.get("region_id", r.get("id"))
            if not isinstance(rid, int):
                raise RawFormatError(f"{where}: field 'region_id': expected an integer, got {rid!r}")
            for k in ("x", "y", "width", "height"):
                if not _num(r.get(k)):
                    raise RawFormatError(f"{where} (region_id {rid}): field {k!r}: expected a finite number, "
                                         f"got {r.get(k)!r}")
            phrase = r.get("phrase")
            if not isinstance(phrase, str):
                raise RawFormatError(f"{where} (region_id {rid}): field 'phrase': expected a string")
            if rid in seen_regions:
                raise RawFormatError(f"{where}: field 'region_id': duplicate region id {rid}")
            seen_regions.add(rid)
            cap = _clean_caption(phrase.lower() if lowercase else phrase)
            box = _clip_xywh(r["x"], r["y"], r["width"], r["height"], width, height)
            if box is None or not cap or (max_words is not None and len(cap.split()) > max_words):
                dropped += 1
                continue
            anns.append(make_annotation(rid, iid, box, cap, tagger=tagger))
        if len(anns) > n_before:
            images.append({"id": iid, "file_name": f"{iid}.jpg", "width": width, "height": height})
    return {"dataset": _dataset(name, image_root, dropped, split=split), "images": images, "annotations": anns}


def _coco_index(instances: Any, src: str) -> Any:
    if not isinstance(instances, Mapping):
        raise RawFormatError(f"{src}: expected a COCO instances object")
    for key in ("images", "annotations"):
        if not isinstance(instances.get(key), list):
            raise RawFormatError(f"{src}: field {key!r} must be a list")
    images = {}
    for i, im in enumerate(instances["images"]):
        if not isinstance(im, Mapping) or not isinstance(im.get("id"), int):
            raise RawFormatError(f"{src}: image #{i}: field 'id': expected an integer")
        for k in ("width", "height"):
            if not (isinstance(im.get(k), int) and im[k] > 0):
                raise RawFormatError(f"{src}: image #{i} (id {im['id']}): field {k!r}: expected a positive integer")
        if not isinstance(im.get("file_name"), str):
            raise RawFormatError(f"{src}: image #{i} (id {im['id']}): field 'file_name': expected a string")
        images[im["id"]] = im
    anns = {}
    for i, a in enumerate(instances["annotations"]):
        if not isinstance(a, Mapping) or not isinstance(a.get("id"), int):
            raise RawFormatError(f"{src}: annotation #{i}: field 'id': expected an integer")
        if a.get("image_id") not in images:
            raise RawFormatError(f"{src}: annotation #{i} (id {a['id']}): field 'image_id': "
                                 f"{a.get('image_id')!r} is not an image id")
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(_num(v) for v in bb)):
            raise RawFormatError(f"{src}: annotation #{i} (id {a['id']}): field 'bbox': expected 4 finite numbers")
        anns[a["id"]] = a
    cats = instances.get("categories") or []
    for i, c in enumerate(cats):
        if not (isinstance(c, Mapping) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            raise RawFormatError(f"{src}: category #{i}: fields 'id'/'name' expected")
    return images, anns, cats


def _image_entry(im: Mapping[str, Any]) -> dict:
    return {"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"]}


class _PlainUnpickler(pickle.Unpickler):
    """Reads pickles of plain data only — lists, dicts, tuples, strings, bytes, numbers, booleans, None — as the
    refs files are: any reference to a class or function (how a crafted pickle runs code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a refs file holds only lists, dicts, "
                                     "strings and numbers (a pickle naming a class or function could run code)")


def convert_refcocog(refs: Union[str, os.PathLike, list], instances: PathOrData, *, split: Optional[str] = None,
                     image_root: Optional[str] = None, tagger: Optional[TagExtractor] = None,
                     name: str = "refcocog") -> dict:
    """RefCOCOg ``refs(umd).p`` + COCO ``instances.json`` → official format, one annotation per sentence,
    optionally one split (``"train"``, ``"val"``, ``"test"``)."""
    if isinstance(refs, list):
        ref_list, rsrc = refs, "<refs>"
    else:
        rsrc = os.fspath(refs)
        # refs(umd).p was pickled by Python 2: its str objects are bytes, read as UTF-8 (Latin-1 if that fails)
        ref_list = None
        for enc in ("utf-8", "latin1"):
            try:
                with open(rsrc, "rb") as f:
                    ref_list = _PlainUnpickler(f, encoding=enc).load()
                break
            except UnicodeDecodeError:
                continue
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
                    IndexError, KeyError) as e:
                raise RawFormatError(f"{rsrc}: not a refs pickle ({type(e).__name__}: {e})") from None
    if not isinstance(ref_list, list):
        raise RawFormatError(f"{rsrc}: expected a list of refs, got {type(ref_list).__name__}")
    inst, isrc = _load(instances, "instances")
    images, coco_anns, cats = _coco_index(inst, isrc)
    cat_ids = {c["id"] for c in cats}

    out_images: Dict[int, dict] = {}
    anns: List[dict] = []
    dropped = 0
    for i, ref in enumerate(ref_list):
        if not isinstance(ref, Mapping):
            raise RawFormatError(f"{rsrc}: ref #{i}: expected a dict")
        rid = ref.get("ref_id")
        where = f"{rsrc}: ref #{i} (ref_id {rid!r})"
        for k in ("ref_id", "ann_id", "image_id"):
            if not isinstance(ref.get(k), int):
                raise RawFormatError(f"{where}: field {k!r}: expected an integer, got {ref.get(k)!r}")
        if split is not None and ref.get("split") != split:
            continue
        if ref["ann_id"] not in coco_anns:
            raise RawFormatError(f"{where}: field 'ann_id': {ref['ann_id']} is not in {isrc}")
        a = coco_anns[ref["ann_id"]]
        if a["image_id"] != ref["image_id"]:
            raise RawFormatError(f"{where}: field 'image_id': {ref['image_id']} but annotation {a['id']} is on "
                                 f"image {a['image_id']}")
        sents = ref.get("sentences")
        if not isinstance(sents, list):
            raise RawFormatError(f"{where}: field 'sentences': expected a list")
        im = images[a["image_id"]]
        box = _clip_xywh(*a["bbox"], im["width"], im["height"])  # type: ignore[call-arg]
        cat = ref.get("category_id", a.get("category_id"))
        if box is None:
            dropped += len(sents)
            continue
        for j, s in enumerate(sents):
            if not isinstance(s, Mapping) or not isinstance(s.get("sent", s.get("raw")), str):
                raise RawFormatError(f"{where}: sentence #{j}: field 'sent': expected a string")
            cap = _clean_caption(s.get("sent", s.get("raw")))
            sid = s.get("sent_id")
            if sid is None and j < len(ref.get("sent_ids") or []):
                sid = ref["sent_ids"][j]
            if not cap:
                dropped += 1
                continue
            ann_id = sid if isinstance(sid, int) else len(anns)
            extra = {"refcoco_result": {"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "sent_id": sid,
                                        "split": ref.get("split")}}
            anns.append(make_annotation(ann_id, a["image_id"], box, cap, tagger=tagger,
                                        category_id=cat if cat in cat_ids else None, extra=extra))
            out_images.setdefault(im["id"], _image_entry(im))
    ids = [a["id"] for a in anns]
    if len(set(ids)) != len(ids):        # sentence ids missing or repeated: number the annotations instead
        for j, a in enumerate(anns):
            a["id"] = j
    return {"dataset": _dataset(name, image_root, dropped, split=split), "images": list(out_images.values()),
            "annotations": anns, "categories": [dict(c) for c in cats]}


def convert_coco(instances: PathOrData, *, image_root: Optional[str] = None, include_crowd: bool = False,
                 tagger: Optional[TagExtractor] = None, name: str = "coco") -> dict:
    """COCO ``instances_*.json`` → official format (class name as caption and ``coco_result.category``)."""
    inst, src = _load(instances, "instances")
    images, coco_anns, cats = _coco_index(inst, src)
    cat_name = {c["id"]: c["name"] for c in cats}
    out_images: Dict[int, dict] = {}
    anns, dropped = [], 0
    for a in coco_anns.values():
        if a.get("iscrowd", 0) and not include_crowd:
            dropped += 1
            continue
        if a.get("category_id") not in cat_name:
            raise RawFormatError(f"{src}: annotation id {a['id']}: field 'category_id': {a.get('category_id')!r} "
                                 f"is not a category id")
        im = images[a["image_id"]]
        box = _clip_xywh(*a["bbox"], im["width"], im["height"])  # type: ignore[call-arg]
        if box is None:
            dropped += 1
            continue
        nm = cat_name[a["category_id"]]
        ann = make_annotation(a["id"], a["image_id"], box, nm, tagger=tagger, category_id=a["category_id"],
                              extra={"coco_result": {"category": nm}})
        ann["iscrowd"] = int(bool(a.get("iscrowd", 0)))
        anns.append(ann)
        out_images.setdefault(im["id"], _image_entry(im))
    order = {iid: k for k, iid in enumerate(images)}
    imgs = sorted(out_images.values(), key=lambda im: order[im["id"]])
    return {"dataset": _dataset(name, image_root, dropped), "images": imgs, "annotations": anns,
            "categories": [dict(c) for c in cats]}


def convert_ovad(ovad: PathOrData, *, image_root: Optional[str] = None, tagger: Optional[TagExtractor] = None,
                 name: str = "ovad") -> dict:
    """OVAD (COCO instances + ``attributes`` + ``att_vec``) → official format, every box kept (OVAD's boxes are
    the benchmark's: none is clipped away or dropped)."""
    data, src = _load(ovad, "ovad")
    images, coco_anns, cats = _coco_index(data, src)
    attrs = data.get("attributes")
    if not isinstance(attrs, list) or not attrs:
        raise RawFormatError(f"{src}: field 'attributes': expected a non-empty list")
    n = len(attrs)
    cat_name = {c["id"]: c["name"] for c in cats}
    anns = []
    for i, a in enumerate(coco_anns.values()):
        av = a.get("att_vec")
        if not (isinstance(av, list) and len(av) == n and all(v in (-1, 0, 1) for v in av)):
            raise RawFormatError(f"{src}: annotation #{i} (id {a['id']}): field 'att_vec': expected {n} values "
                                 f"in {{1, 0, -1}}")
        x, y, w, h = (float(v) for v in a["bbox"])
        nm = cat_name.get(a.get("category_id"), "")
        extra = {"ovad_result": {"att_vec": list(av)}}
        if nm:
            extra["coco_result"] = {"category": nm}
        ann = make_annotation(a["id"], a["image_id"], (x, y, x + w, y + h), nm, tagger=tagger,
                              category_id=a.get("category_id"), extra=extra)
        ann["bbox"] = [x, y, w, h]              # exactly as given
        ann["att_vec"] = list(av)
        anns.append(ann)
    return {"dataset": _dataset(name, image_root, 0), "images": [_image_entry(im) for im in images.values()],
            "annotations": anns, "categories": [dict(c) for c in cats], "attributes": [dict(a) for a in attrs],
            "attrs": [dict(a) for a in attrs]}
