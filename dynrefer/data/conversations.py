"""Region-referring conversations in the LLaVA / Osprey style (instruction fine-tuning for referring reasoning).

A file is a JSON list (or JSON lines, or a dict holding the list under ``data`` / ``annotations``), plain or gzip,
of records::

    {"id": "...", "image": "coco/000000123.jpg",              # or "file_name" (Osprey)
     "width": 640, "height": 480,                              # optional (needed only for an RLE without size)
     "boxes": [[x1, y1, x2, y2], ...],                         # regions as pixel boxes, or
     "annotation": [{"bbox": [x, y, w, h]} | {"segmentation": polygons | RLE}, ...],   # (also "annotations")
     "conversations": [{"from": "human", "value": "What is <region1> doing with <region2>?"},
                       {"from": "gpt", "value": "..."}, ...]}

``<regionK>`` in a turn (K = 1, 2, … in the order of ``boxes`` / ``annotation``) binds the text to the K-th region;
the model splices that region's tokens in at the placeholder. Roles are ``human``/``user`` and ``gpt``/``assistant``,
alternating from a human turn, and every gpt turn is a training target. LLaVA's ``<image>`` token is dropped
(the model sees the image through its regions). A mask region is used through its bounding box: a polygon's
min/max (as the official data pipeline derives boxes), an RLE mask's first and last non-empty columns and rows
(exclusive end); a COCO ``bbox`` (x, y, w, h) is used when there is no ``segmentation``.

Malformed records raise :class:`~dynrefer.data.records.AnnotationError` naming the file, the record (index and id)
and what is wrong — e.g. a placeholder for a region the record does not have.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Hashable, List, NoReturn, Optional, Sequence, Tuple, Union

from dynrefer.model.placeholders import PLACEHOLDER, answer_text, split_placeholders

from .readers import decode_rle, read_json, segmentation_to_box
from .records import AnnotationError

__all__ = ["ConversationRecord", "load_conversations", "parse_record", "split_placeholders", "answer_text",
           "PLACEHOLDER", "conversation_texts"]

#: A region placeholder: ``<region1>``, ``<region2>``, …
_ANY_REGION_TAG = re.compile(r"<region[^>]*>")
_HUMAN, _GPT = ("human", "user"), ("gpt", "assistant")


@dataclass
class ConversationRecord:
    """One conversation about regions of one image: ``boxes`` are (x1, y1, x2, y2) pixels; ``turns`` are
    (human, gpt) text pairs whose ``<regionK>`` placeholders name ``boxes[K-1]``."""
    id: Hashable
    image_path: str
    boxes: List[Tuple[float, float, float, float]]
    turns: List[Tuple[str, str]]
    image_size: Optional[Tuple[int, int]] = None   # (width, height) when the record gives it
    index: int = 0                                   # position in its file


def conversation_texts(records: Sequence[ConversationRecord]) -> List[str]:
    """Every turn's text as the model reads it (for building a vocabulary): questions without their placeholders
    (region features go there), answers through :func:`answer_text`."""
    out = []
    for r in records:
        for q, a in r.turns:
            out.append(PLACEHOLDER.sub(" ", q))
            if a is not None:
                out.append(answer_text(a))
    return out


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _region_box(ann: Any, width: Optional[int], height: Optional[int], fail: Callable[[str], NoReturn],
                k: int) -> Tuple[float, float, float, float]:
    if not isinstance(ann, dict):
        fail(f"annotation[{k}] must be an object with 'bbox' or 'segmentation', got {type(ann).__name__}")
    seg = ann.get("segmentation")
    if seg is not None and seg != []:
        try:
            if isinstance(seg, dict):  # an RLE mask: its bounding box (exclusive end)
                if "size" not in seg and width and height:
                    seg = dict(seg, size=[height, width])
                mask = decode_rle(seg)
                cols = [i for i, c in enumerate(mask.any(axis=0)) if c]  # type: ignore[arg-type]
                rows = [i for i, r in enumerate(mask.any(axis=1)) if r]  # type: ignore[arg-type]
                if not cols:
                    raise ValueError("empty RLE mask")
                return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
            return segmentation_to_box(seg, width or 0, height or 0)
        except (ValueError, KeyError, TypeError) as e:
            fail(f"annotation[{k}].segmentation: {e}")
    bbox = ann.get("bbox")
    if bbox is None:
        fail(f"annotation[{k}] has neither 'bbox' nor 'segmentation'")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
        fail(f"annotation[{k}].bbox must be four finite numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    return x, y, x + w, y + h


def parse_record(rec: Any, index: int = 0, *, image_root: Optional[str] = None,
                 source: str = "<conversations>") -> ConversationRecord:
    """One raw record → :class:`ConversationRecord` (see the module docstring); ``AnnotationError`` if malformed."""
    rid = rec.get("id", rec.get("question_id")) if isinstance(rec, dict) else None

    def fail(msg: str) -> NoReturn:
        where = f"record #{index}" + (f" (id {rid!r})" if rid is not None else "")
        raise AnnotationError(f"{source}: {where}: {msg}")

    if not isinstance(rec, dict):
        fail(f"expected an object, got {type(rec).__name__}")
    image = rec.get("image", rec.get("file_name"))
    if not isinstance(image, str) or not image:
        fail("needs 'image' (or 'file_name'): the image file")
    width, height = rec.get("width"), rec.get("height")
    size = None
    if width is not None or height is not None:
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            fail(f"'width' and 'height' must be positive integers, got {width!r} x {height!r}")
        size = (width, height)
    # regions
    boxes: List[Any] = []
    if rec.get("boxes") is not None:
        raw = rec["boxes"]
        if not isinstance(raw, list):
            fail(f"'boxes' must be a list of [x1, y1, x2, y2], got {type(raw).__name__}")
        for k, b in enumerate(raw):
            if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_num(v) for v in b):
                fail(f"boxes[{k}] must be four finite numbers [x1, y1, x2, y2], got {b!r}")
            boxes.append(tuple(float(v) for v in b))
    else:
        anns = rec.get("annotation", rec.get("annotations"))
        if anns is not None:
            if not isinstance(anns, list):
                fail(f"'annotation' must be a list, got {type(anns).__name__}")
            boxes = [_region_box(a, width, height, fail, k) for k, a in enumerate(anns)]
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        if x2 <= x1 or y2 <= y1:
            fail(f"region {k + 1} has an empty box {[x1, y1, x2, y2]} (needs x2 > x1 and y2 > y1)")
    if not boxes:
        fail("has no regions: give 'boxes' or 'annotation'")
    # turns
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        fail("needs a non-empty 'conversations' list")
    if len(conv) % 2:
        fail(f"'conversations' has {len(conv)} turns: human and gpt turns must pair up")
    turns = []
    for t, msg in enumerate(conv):
        if not isinstance(msg, dict) or not isinstance(msg.get("value"), str):
            fail(f"conversations[{t}] must be an object with a string 'value'")
        who = msg.get("from")
        want = _HUMAN if t % 2 == 0 else _GPT
        if who not in want:
            fail(f"conversations[{t}] is from {who!r}; expected {' or '.join(repr(w) for w in want)} "
                 "(turns alternate, human first)")
        text = msg["value"].replace("<image>", "").strip()
        for tag in _ANY_REGION_TAG.findall(text):
            m = PLACEHOLDER.fullmatch(tag)
            if m is None:
                fail(f"conversations[{t}]: bad region placeholder {tag!r} (write <region1>, <region2>, ...)")
            k = int(m.group(1))
            if not 1 <= k <= len(boxes):
                fail(f"conversations[{t}]: {tag} but the record has {len(boxes)} region"
                     f"{'s' if len(boxes) != 1 else ''}")
        if t % 2 == 1 and not text:
            fail(f"conversations[{t}]: empty answer")
        if t % 2 == 0:
            turns.append([text, None])
        else:
            turns[-1][1] = text
    path = image if image_root is None or os.path.isabs(image) else os.path.join(image_root, image)
    return ConversationRecord(id=rid if rid is not None else index, image_path=path, boxes=boxes,
                              turns=[(q, a) for q, a in turns], image_size=size, index=index)


def _read_records(path: str) -> List[Any]:
    with open(path, "rb") as f:
        head = f.read(2)
    if path.endswith((".jsonl", ".jsonl.gz")):
        out = []
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise AnnotationError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
        return out
    data = read_json(path)
    if isinstance(data, dict):
        for key in ("data", "annotations", "conversations"):
            if isinstance(data.get(key), list):
                return data[key]
        raise AnnotationError(f"{path}: expected a list of conversation records (or a dict with 'data')")
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of conversation records, got {type(data).__name__}")
    return data


def load_conversations(path: Union[str, "os.PathLike[str]"], image_root: Optional[str] = None) -> List[ConversationRecord]:
    """Read a conversation file (see the module docstring). ``image_root``: folder the ``image`` paths are relative
    to (default: the file's folder)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"conversation file not found: {path}")
    root = os.fspath(image_root) if image_root is not None else os.path.dirname(os.path.abspath(path))
    return [parse_record(r, i, image_root=root, source=path) for i, r in enumerate(_read_records(path))]
