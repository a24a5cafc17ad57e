"""dynrefer.data: annotation readers and converters, caption tag extraction, control words, the synthetic
benchmark, and (with PyTorch) the region Dataset and its collate.

Everything here is pure Python + NumPy (+ Pillow for images); PyTorch is imported only by
:mod:`dynrefer.data.dataset`, loaded on first use of :class:`RegionDataset` / :func:`collate_regions`.
"""
from .records import AnnotationError, Annotations, ImageInfo, RegionRecord
from .readers import (box_polygon, decode_rle, load_annotations, load_tag_vocab, read_json, segmentation_to_box,
                      write_json)

__all__ = [
    "AnnotationError", "Annotations", "ImageInfo", "RegionRecord",
    "load_annotations", "load_tag_vocab", "read_json", "write_json", "segmentation_to_box", "decode_rle",
    "box_polygon",
]
