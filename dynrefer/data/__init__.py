"""dynrefer.data: annotation readers and converters, caption tag extraction, control words, the synthetic
benchmark, and (with PyTorch) the region Dataset and its collate.

Everything here is pure Python + NumPy (+ Pillow for images); PyTorch is imported only by
:mod:`dynrefer.data.dataset`, loaded on first use of :class:`RegionDataset` / :func:`collate_regions`.

* :func:`load_annotations` — the official annotation format (VG, RefCOCOg, COCO, OVAD, synthetic) into typed
  :class:`RegionRecord` s; ground truth for :func:`dynrefer.eval.evaluate` from :class:`Annotations`;
* :mod:`~dynrefer.data.convert` — raw public releases to the official format;
* :func:`load_detections` — a region detector's boxes and scores (GRiT's output) for dense captioning;
* :class:`TagExtractor` — caption → ``tag_set1`` / ``tag_set2`` over a given vocabulary, by rules;
* :func:`sample_control_words` / :func:`control_sentence` — the caption decoder's control sentence;
* :mod:`~dynrefer.data.synthetic` — the procedurally drawn benchmark (:func:`generate_synthetic`);
* :class:`RegionDataset`, :func:`collate_regions` — the PyTorch side;
* :func:`load_conversations` (LLaVA / Osprey region conversations), :class:`ConversationDataset`,
  :func:`collate_conversations` — referring-reasoning instruction data.
"""
from __future__ import annotations

from typing import Any

from .control import control_from_scores, control_sentence, sample_control_words
from .convert import RawFormatError, convert_coco, convert_ovad, convert_refcocog, convert_vg
from .detections import DetectionError, Detections, load_detections
from .readers import (box_polygon, decode_rle, load_annotations, load_tag_vocab, read_json, segmentation_to_box,
                      write_json)
from .records import AnnotationError, Annotations, ImageInfo, ImageReadError, RegionRecord
from .tags import TagExtractor

__all__ = [
    "AnnotationError", "ImageReadError", "Annotations", "ImageInfo", "RegionRecord",
    "load_annotations", "load_tag_vocab", "read_json", "write_json", "segmentation_to_box", "decode_rle",
    "box_polygon", "RawFormatError", "convert_vg", "convert_refcocog", "convert_coco", "convert_ovad",
    "TagExtractor", "control_sentence", "sample_control_words", "control_from_scores", "generate_synthetic",
    "RegionDataset", "collate_regions", "load_image", "nested_views",
    "load_conversations", "ConversationDataset", "collate_conversations",
]
__all__ += ["DetectionError", "Detections", "load_detections"]

_LAZY = {"RegionDataset": "dataset", "collate_regions": "dataset", "load_image": "dataset",
         "nested_views": "dataset", "load_conversations": "conversations",
         "ConversationDataset": "conversation_dataset", "collate_conversations": "conversation_dataset"}


def __getattr__(name: str) -> Any:
    # the torch-facing module loads only when asked for; the synthetic generator only when used
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"dynrefer.data.{_LAZY[name]}"), name)
    if name == "generate_synthetic":
        from .synthetic import generate

        return generate
    raise AttributeError(f"module 'dynrefer.data' has no attribute {name!r}")
