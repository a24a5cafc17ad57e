"""The region Dataset and its collate (PyTorch).

:class:`RegionDataset` is a map-style dataset over :class:`~dynrefer.data.records.Annotations`. Two groupings:

* ``group="region"`` (default, as the official training sets with ``obj_lvl=True``): one region per item, so a
  batch of B items is B regions from up to B images — batches have a fixed region count and shuffling mixes
  images;
* ``group="image"``: all regions of one image per item (the image is decoded and its views are cut once for
  all of them; the official evaluation reads images this way). ``max_regions`` keeps a random subset of at most
  that many regions per image (the official ``max_objs``).

Each item loads the image (Pillow → RGB ``uint8`` NumPy ``[H, W, 3]``), calls the ``transform`` with the
:class:`dynrefer.views.NestedViews` interface — ``transform(image, boxes[R, 4] xyxy float32, rng=Generator)`` →
``{"views": [R, n, 3, S, S], "boxes": [R, n, 4], "coeffs": [R, n]}`` — and adds the region's targets: the tag
multi-hot (union of ``tag_set1`` and ``tag_set2``), the control sentence (:mod:`dynrefer.data.control`:
sampled in training, none — ``"|"`` — otherwise, or all the region's tags with ``control="all"``), the category
index (-1 when absent), the OVAD ``att_vec`` and the ids. :func:`collate_regions` concatenates items into the
model's batch dict (see its docstring).

Randomness (view choice, control words, region subsets) comes from one NumPy Generator per item, drawn from
``SeedSequence([seed, epoch, index])`` when a ``seed`` is given (the transform gets the first of its two
spawned children, the control words the second) — reproducible whatever worker serves the index;
call :meth:`RegionDataset.set_epoch` each epoch — and from fresh OS entropy otherwise. The dataset keeps no open
files or generators between items, so it is safe in forked DataLoader workers.

Unlike the official dataset, which silently replaces a failing sample by the next one, a missing or unreadable
image raises an error naming the file and the region ids.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .control import SEPARATOR, caption_phrases, control_sentence, sample_control_words
from .readers import load_annotations
from .records import Annotations, ImageReadError, RegionRecord

if TYPE_CHECKING:
    from dynrefer.views import NestedViews

__all__ = ["RegionDataset", "collate_regions", "load_image", "nested_views"]


def nested_views(training: bool, task: str = "caption", *, size: int = 224, num_views: int = 3,
                 **kwargs: Any) -> NestedViews:
    """The standard transform: :class:`dynrefer.views.NestedViews` with the view prior DynRefer uses —
    ``"stochastic"`` in training, the image prior (pHash greedy search) otherwise; ``kwargs`` go to it
    (e.g. ``prior="task"``, ``mode="fast"``, ``seed``)."""
    from dynrefer.views import NestedViews

    kwargs.setdefault("prior", "stochastic" if training else "image")
    return NestedViews(size=size, num_views=num_views, task=task, **kwargs)


def load_image(path: str) -> np.ndarray:
    """An image file as an RGB ``uint8`` array ``[H, W, 3]`` (any Pillow mode converted as ``convert("RGB")``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:   # a header claiming billions of pixels: refused before decoding
        raise ValueError(str(e)) from None


class RegionDataset(torch.utils.data.Dataset):
    """Map-style dataset of regions (see the module docstring).

    ``annotations``: :class:`Annotations` or a path for :func:`load_annotations` (``reader_kwargs`` go to it).
    ``transform``: the views callable (e.g. ``NestedViews(...)``); ``None`` returns the decoded image and the
    boxes instead of views (``collate_regions`` then refuses the batch). ``training``: sample control words.
    ``control``: ``"sample"``, ``"all"`` or ``"none"`` (default: ``"sample"`` when training, else ``"none"``).
    ``num_tags``: length of the tag multi-hot when the annotations carry no vocabulary (default: its size).
    ``control_phrases``: the control candidates also hold the caption's noun/adjective phrases
    (:func:`~dynrefer.data.control.caption_phrases`, as the official training; needs ``textblob``).
    ``image_cache``: how many decoded images each process keeps (read-only) for the next items — with
    ``group="region"`` consecutive items are mostly regions of the same image.
    """

    def __init__(self, annotations: Union[Annotations, str, os.PathLike], transform: Optional[Callable] = None,
                 *, group: str = "region", training: bool = False, control: Optional[str] = None,
                 seed: Optional[int] = None, max_regions: Optional[int] = None, num_tags: Optional[int] = None,
                 p_drop_all: float = 0.5, p_drop_word: float = 0.5, image_loader: Callable = load_image,
                 image_cache: int = 2, control_phrases: bool = False, **reader_kwargs: Any) -> None:
        if not isinstance(annotations, Annotations):
            annotations = load_annotations(annotations, **reader_kwargs)
        elif reader_kwargs:
            raise TypeError(f"unexpected arguments {sorted(reader_kwargs)} (the annotations are already loaded)")
        if group not in ("region", "image"):
            raise ValueError(f"group must be 'region' or 'image', got {group!r}")
        control = control or ("sample" if training else "none")
        if control not in ("sample", "all", "none"):
            raise ValueError(f"control must be 'sample', 'all' or 'none', got {control!r}")
        if max_regions is not None and (not isinstance(max_regions, int) or max_regions < 1):
            raise ValueError(f"max_regions must be a positive integer or None, got {max_regions!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.ann = annotations
        self.transform = transform
        self.group = group
        self.training = bool(training)
        self.control = control
        self.seed = seed
        self.max_regions = max_regions
        self.p_drop_all, self.p_drop_word = p_drop_all, p_drop_word
        self.control_phrases = bool(control_phrases)
        if self.control_phrases:
            caption_phrases("")  # fails now, naming the missing package, rather than in a worker
        self.image_loader = image_loader
        if not isinstance(image_cache, int) or image_cache < 0:
            raise ValueError(f"image_cache must be a non-negative integer, got {image_cache!r}")
        self.image_cache = image_cache
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        vocab = annotations.tag_vocab
        if num_tags is None:
            num_tags = len(vocab) if vocab is not None else 0
        self.num_tags = int(num_tags)
        self.num_attributes = len(annotations.attributes)
        for r in annotations.records:
            if r.tags and max(r.tags) >= self.num_tags:
                raise ValueError(f"region {r.id!r} has tag index {max(r.tags)} but num_tags is {self.num_tags}")
        if group == "region":
            self._items: List[List[RegionRecord]] = [[r] for r in annotations.records]
        else:
            self._items = [recs for recs in annotations.by_image().values() if recs]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._items)

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch (only matters with a ``seed``)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), self.epoch, int(index)]))

    def _control(self, rec: RegionRecord, rng: np.random.Generator) -> str:
        if self.control == "none" or self.ann.tag_vocab is None:
            return SEPARATOR
        names = [self.ann.tag_vocab[i] for i in rec.tag_set1] + [self.ann.tag_vocab[i] for i in rec.tag_set2]
        if self.control_phrases and rec.caption:
            names += caption_phrases(rec.caption)
        if self.control == "all":
            return control_sentence(names)
        return sample_control_words(names, rng, training=True, p_drop_all=self.p_drop_all,
                                    p_drop_word=self.p_drop_word)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index = index % len(self)
        rng = self._rng(index)
        view_rng, word_rng = rng.spawn(2)        # independent streams: views do not depend on the control words
        recs = self._items[index]
        if self.max_regions is not None and len(recs) > self.max_regions:
            keep = np.sort(rng.choice(len(recs), self.max_regions, replace=False))
            recs = [recs[k] for k in keep]
        path = recs[0].image_path
        image = self._cache.get(path)
        if image is None:
            try:
                image = self.image_loader(path)
            except (OSError, ValueError) as e:
                raise ImageReadError(f"cannot load image {path} (regions {[r.id for r in recs][:5]}): {e}") from e
            if self.image_cache:
                image = np.asarray(image)
                image.flags.writeable = False            # shared by the items of one image: read only
                self._cache[path] = image
                while len(self._cache) > self.image_cache:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(path)
        w, h = recs[0].image_size
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise RuntimeError(f"image loader must return uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if image.shape[:2] != (h, w):
            raise ImageReadError(f"image {path} is {image.shape[1]}x{image.shape[0]} but the annotations say {w}x{h}")
        boxes = np.array([r.box for r in recs], dtype=np.float32).reshape(-1, 4)
        R = len(recs)
        tags = np.zeros((R, self.num_tags), dtype=np.float32)
        for k, r in enumerate(recs):
            tags[k, list(r.tags)] = 1.0
        att = None
        if self.num_attributes:
            att = np.full((R, self.num_attributes), -1, dtype=np.int8)
            for k, r in enumerate(recs):
                if r.att_vec is not None:
                    att[k] = r.att_vec
        item: Dict[str, Any] = {
            "region_boxes": boxes,
            "captions": [r.caption if r.caption is not None else "" for r in recs],
            "control": [self._control(r, word_rng) for r in recs],
            "tags": tags,
            "category": np.array([-1 if r.category_index is None else r.category_index for r in recs],
                                 dtype=np.int64),
            "att_vec": att,
            "image_id": recs[0].image_id,
            "region_ids": [r.id for r in recs],
            "image_size": (w, h),
        }
        if self.transform is None:
            item["image"] = image
            return item
        out = self.transform(image, boxes, rng=view_rng)
        if not isinstance(out, dict) or not all(k in out for k in ("views", "boxes", "coeffs")):
            raise TypeError(f"transform must return a dict with 'views', 'boxes' and 'coeffs', got "
                            f"{sorted(out) if isinstance(out, dict) else type(out).__name__}")
        views, vboxes, coeffs = (np.asarray(out[k]) for k in ("views", "boxes", "coeffs"))
        if views.ndim != 5 or views.shape[0] != R or views.shape[2] != 3:
            raise ValueError(f"transform returned views of shape {views.shape}; expected [R={R}, n, 3, S, S]")
        n = views.shape[1]
        if vboxes.shape != (R, n, 4):
            raise ValueError(f"transform returned boxes of shape {vboxes.shape}; expected {(R, n, 4)}")
        if coeffs.shape != (R, n):
            raise ValueError(f"transform returned coeffs of shape {coeffs.shape}; expected {(R, n)}")
        item["views"] = np.ascontiguousarray(views, dtype=np.float32)
        item["boxes"] = np.ascontiguousarray(vboxes, dtype=np.float32)
        item["coeffs"] = np.ascontiguousarray(coeffs, dtype=np.float32)
        if "view_boxes" in out:
            item["view_boxes"] = np.ascontiguousarray(np.asarray(out["view_boxes"]), dtype=np.float32)
        return item


def collate_regions(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Concatenate dataset items (any number of regions each) into one batch of R regions:

    ``views`` float32 ``[R, n, 3, S, S]``, ``boxes`` ``[R, n, 4]`` (the referred box in each view's frame),
    ``coeffs`` ``[R, n]``, ``region_boxes`` ``[R, 4]`` (image pixels), ``view_boxes`` ``[R, n, 4]`` (each view in
    image pixels, when the transform gives them), ``text_output`` (R captions),
    ``control`` (R control sentences), ``tags`` float32 ``[R, T]``, ``category`` int64 ``[R]`` (-1: none),
    ``att_vec`` int8 ``[R, A]`` (-1: unlabelled; absent when the annotations have no attributes),
    ``batch_idx`` int64 ``[R]`` (the item each region came from), ``image_ids`` and ``region_ids`` (R each).
    """
    if len(samples) == 0:
        raise ValueError("collate_regions needs at least one sample")
    if any("views" not in s for s in samples):
        raise ValueError("these samples have no views: give the dataset a transform (e.g. NestedViews)")
    shapes = {tuple(s["views"].shape[1:]) for s in samples if len(s["captions"])}
    if len(shapes) > 1:
        raise ValueError(f"samples have views of different shapes {sorted(shapes)}; use one transform")

    in_worker = torch.utils.data.get_worker_info() is not None

    def cat(key: str) -> Any:
        arrs = [np.asarray(s[key]) for s in samples]
        shape = (sum(a.shape[0] for a in arrs),) + arrs[0].shape[1:]
        dtype = np.result_type(*arrs)
        if in_worker and int(np.prod(shape)) * dtype.itemsize >= 1 << 16:
            # a DataLoader worker: write straight into shared memory (what default_collate does), so the batch
            # is not copied again to reach the main process
            out = torch.from_numpy(np.empty(0, dtype)).new_empty(shape).share_memory_()
            np.concatenate(arrs, axis=0, out=out.numpy())
            return out
        return torch.from_numpy(np.concatenate(arrs, axis=0))

    batch: Dict[str, Any] = {
        "views": cat("views"), "boxes": cat("boxes"), "coeffs": cat("coeffs"), "region_boxes": cat("region_boxes"),
        "tags": cat("tags"), "category": cat("category"),
        "text_output": [c for s in samples for c in s["captions"]],
        "control": [c for s in samples for c in s["control"]],
        "image_ids": [s["image_id"] for s in samples for _ in s["captions"]],
        "region_ids": [r for s in samples for r in s["region_ids"]],
        "batch_idx": torch.from_numpy(np.concatenate(
            [np.full(len(s["captions"]), k, dtype=np.int64) for k, s in enumerate(samples)])),
    }
    if all(s.get("att_vec") is not None for s in samples):
        batch["att_vec"] = cat("att_vec")
    if all("view_boxes" in s for s in samples):
        batch["view_boxes"] = cat("view_boxes")
    return batch
