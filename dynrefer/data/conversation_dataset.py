"""The conversation Dataset and its collate (PyTorch): referring-reasoning instruction fine-tuning through
``dynrefer.train``.

:class:`ConversationDataset` serves one conversation (:mod:`dynrefer.data.conversations`) per item: the image is
loaded, the nested views of every region are cut by the ``transform`` (the :class:`dynrefer.views.NestedViews`
interface, as for :class:`~dynrefer.data.dataset.RegionDataset`) and the turns are passed through.
:func:`collate_conversations` concatenates the regions of a batch and records which rows belong to which
conversation, the batch :meth:`dynrefer.model.DynRefer.forward` trains on (the LLM loss on every gpt turn).

Randomness (view choice) comes from one NumPy Generator per item: from ``SeedSequence([seed, epoch, index])`` with a
``seed``, otherwise from NumPy's global generator, which the training engine seeds per sample.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .conversations import ConversationRecord, load_conversations
from .dataset import load_image
from .records import ImageReadError

__all__ = ["ConversationDataset", "collate_conversations"]


class ConversationDataset(torch.utils.data.Dataset):
    """Map-style dataset of region conversations.

    ``conversations``: a list of :class:`ConversationRecord` or a file for :func:`load_conversations` (with
    ``image_root``). ``transform``: the views callable (e.g. ``NestedViews(prior="stochastic", ...)``).
    ``max_regions``: refuse records with more regions than this (their views would not fit a batch).
    """

    def __init__(self, conversations: Union[str, os.PathLike, Sequence[ConversationRecord]], transform: Callable,
                 *, image_root: Optional[str] = None, seed: Optional[int] = None,
                 max_regions: Optional[int] = None, image_loader: Callable = load_image) -> None:
        if isinstance(conversations, (str, os.PathLike)):
            conversations = load_conversations(conversations, image_root=image_root)
        self.records: List[ConversationRecord] = list(conversations)
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        if max_regions is not None:
            for r in self.records:
                if len(r.boxes) > max_regions:
                    raise ValueError(f"conversation {r.id!r} has {len(r.boxes)} regions; max_regions is {max_regions}")
        self.transform = transform
        self.seed = seed
        self.image_loader = image_loader
        self.epoch = 0
        self.collate_fn = collate_conversations

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def texts(self) -> List[str]:
        from .conversations import conversation_texts

        return conversation_texts(self.records)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} conversations")
        index %= len(self)
        rec = self.records[index]
        if self.seed is None:
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        else:
            rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), self.epoch, index]))
        try:
            image = np.asarray(self.image_loader(rec.image_path))
        except (OSError, ValueError) as e:
            raise ImageReadError(f"cannot load image {rec.image_path} (conversation {rec.id!r}): {e}") from e
        h, w = image.shape[:2]
        boxes = np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4)
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                raise ValueError(f"conversation {rec.id!r}: region {k + 1} {[x1, y1, x2, y2]} lies outside the "
                                 f"{w}x{h} image {rec.image_path}")
        out = self.transform(image, boxes, rng=rng)
        return {"views": np.ascontiguousarray(out["views"], dtype=np.float32),
                "boxes": np.ascontiguousarray(out["boxes"], dtype=np.float32),
                "coeffs": np.ascontiguousarray(out["coeffs"], dtype=np.float32),
                "region_boxes": boxes, "turns": [list(t) for t in rec.turns], "id": rec.id}


def collate_conversations(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Items → one batch: ``views`` [R, n, 3, S, S], ``boxes`` [R, n, 4], ``coeffs`` [R, n], ``region_boxes``
    [R, 4] (every region of every conversation, in order), ``region_index`` (per conversation the rows of its
    regions), ``turns`` (per conversation its [human, gpt] pairs) and ``ids``."""
    if len(samples) == 0:
        raise ValueError("collate_conversations needs at least one sample")
    shapes = {tuple(np.shape(s["views"])[1:]) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"samples have views of different shapes {sorted(shapes)}; use one transform")
    index, start = [], 0
    for s in samples:
        n = len(s["region_boxes"])
        index.append(list(range(start, start + n)))
        start += n
    cat = lambda key: torch.from_numpy(np.concatenate([np.asarray(s[key]) for s in samples]))  # noqa: E731
    return {"views": cat("views"), "boxes": cat("boxes"), "coeffs": cat("coeffs"),
            "region_boxes": cat("region_boxes"), "region_index": index,
            "turns": [s["turns"] for s in samples], "ids": [s["id"] for s in samples]}
