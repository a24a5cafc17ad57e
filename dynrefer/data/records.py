"""Typed records for region annotations: one :class:`RegionRecord` per referred box, gathered in
:class:`Annotations` with the images, categories, attributes and tag vocabulary of the file they came from.

Every reader (:mod:`dynrefer.data.readers`) returns this one form whatever the dataset (VG, RefCOCOg, COCO,
OVAD, the synthetic benchmark), and the ground-truth helpers below turn it into what :func:`dynrefer.eval.evaluate`
takes, so a dataset never needs its own evaluation glue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["ImageInfo", "RegionRecord", "Annotations", "AnnotationError", "ImageReadError"]


class AnnotationError(ValueError):
    """A malformed annotation file: the message names the file, the record (index and id) and the field."""


class ImageReadError(AnnotationError, RuntimeError):
    """An image an annotation names cannot be read (missing, not an image, too large, or of another size than the
    annotation says); the message names the file and the regions."""


@dataclass(frozen=True)
class ImageInfo:
    """One image of an annotation file."""

    id: Hashable
    file_name: str
    width: int
    height: int
    path: str                      # file_name joined to the image root (what the loader opens)


@dataclass
class RegionRecord:
    """One referred region and everything annotated about it.

    ``box`` is ``(x1, y1, x2, y2)`` in image pixels (float). ``tag_set1`` / ``tag_set2`` are indices into the tag
    vocabulary (tags of the referred object / of its context, as the official ``parser_result`` holds them).
    ``category_index`` is the position of the category in the file's ``categories`` list (the order the
    official evaluation enumerates them in), ``att_vec`` the OVAD labels (1 positive, 0 negative, -1 unlabelled).
    ``extra`` keeps the rest of the annotation's ``extra_info`` (e.g. RefCOCOg ref and sentence ids).
    """

    id: Hashable
    image_id: Hashable
    image_path: str
    image_size: Tuple[int, int]                    # (width, height)
    box: Tuple[float, float, float, float]
    caption: Optional[str] = None
    tag_set1: Tuple[int, ...] = ()
    tag_set2: Tuple[int, ...] = ()
    category_id: Optional[int] = None
    category: Optional[str] = None
    category_index: Optional[int] = None
    att_vec: Optional[np.ndarray] = None           # int8 [A]
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def box_xywh(self) -> Tuple[float, float, float, float]:
        x1, y1, x2, y2 = self.box
        return (x1, y1, x2 - x1, y2 - y1)

    @property
    def tags(self) -> Tuple[int, ...]:
        """Union of both tag sets, sorted (the tag decoder's multi-hot target)."""
        return tuple(sorted(set(self.tag_set1) | set(self.tag_set2)))


@dataclass
class Annotations:
    """The records of one annotation file plus its vocabularies."""

    records: List[RegionRecord]
    images: Dict[Hashable, ImageInfo]
    categories: List[dict] = field(default_factory=list)
    attributes: List[dict] = field(default_factory=list)
    tag_vocab: Optional[List[str]] = None
    info: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None
    #: regions of the file left out, by reason ("box outside the image", "zero-area box", "empty caption")
    dropped: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[RegionRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> RegionRecord:
        return self.records[i]

    @property
    def category_names(self) -> List[str]:
        return [c["name"] for c in self.categories]

    def by_image(self) -> Dict[Hashable, List[RegionRecord]]:
        """Records grouped by image id, images in file order, regions in file order."""
        out: Dict[Hashable, List[RegionRecord]] = {i: [] for i in self.images}
        for r in self.records:
            out[r.image_id].append(r)
        return out

    def tag_names(self, record: RegionRecord) -> Tuple[List[str], List[str]]:
        """The names of a record's two tag sets (needs the tag vocabulary)."""
        if self.tag_vocab is None:
            raise ValueError("these annotations carry no tag vocabulary; pass tags= to the reader")
        return [self.tag_vocab[i] for i in record.tag_set1], [self.tag_vocab[i] for i in record.tag_set2]

    # ---- ground truth in the forms dynrefer.eval.evaluate takes --------------------------------------------

    def caption_references(self, group: str = "box") -> Tuple[Dict[Hashable, List[str]], Dict[Hashable, Hashable]]:
        """Reference captions for region captioning: ``(gts, key_of)``.

        ``group="box"`` merges the regions of one image with the same box (RefCOCOg's several expressions of
        one object, VG's duplicate regions) into one key, the id of the first such record; ``key_of`` maps every
        record id to its key so predictions made per record can be folded. ``group="record"``: one key each.
        """
        gts: Dict[Hashable, List[str]] = {}
        key_of: Dict[Hashable, Hashable] = {}
        first: Dict[tuple, Hashable] = {}
        for r in self.records:
            if r.caption is None:
                continue
            if group == "box":
                k = first.setdefault((r.image_id, tuple(float(v) for v in r.box)), r.id)
            elif group == "record":
                k = r.id
            else:
                raise ValueError(f"group must be 'box' or 'record', got {group!r}")
            key_of[r.id] = k
            gts.setdefault(k, []).append(r.caption)
        return gts, key_of

    def densecap_ground_truth(self) -> Dict[Hashable, Dict[str, Any]]:
        """``{image_id: {"boxes": [G, 4] xyxy, "captions": [G]}}`` for ``evaluate("densecap", ...)``."""
        out = {}
        for img, recs in self.by_image().items():
            recs = [r for r in recs if r.caption is not None]
            out[img] = {"boxes": np.array([r.box for r in recs], dtype=np.float64).reshape(-1, 4),
                        "captions": [r.caption for r in recs]}
        return out

    def coco_ground_truth(self) -> Dict[str, Any]:
        """``{"ids", "labels", "boxes" (xywh), "image_ids", "iscrowd"}`` for ``evaluate("coco", ...)``, over the
        regions that have a category."""
        recs = [r for r in self.records if r.category_index is not None]
        return {"ids": [r.id for r in recs],
                "labels": np.array([r.category_index for r in recs], dtype=np.int64),
                "boxes": np.array([r.box_xywh for r in recs], dtype=np.float64).reshape(-1, 4),
                "image_ids": [r.image_id for r in recs],
                "iscrowd": np.array([int(r.extra.get("iscrowd", 0)) for r in recs], dtype=np.int64)}

    def attribute_labels(self) -> Tuple[np.ndarray, List[Hashable]]:
        """``([N, A] int8 att_vec, ids)`` over the records that carry one."""
        recs = [r for r in self.records if r.att_vec is not None]
        a = len(self.attributes)
        labels = np.stack([r.att_vec for r in recs]) if recs else np.zeros((0, a), np.int8)  # type: ignore[misc]
        return labels.astype(np.int8), [r.id for r in recs]
