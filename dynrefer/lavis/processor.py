"""The LAVIS-facing processors: ``dynrefer`` (nested views of the referred regions) and a ``blip_caption``
equivalent for registries that lack LAVIS's own."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynrefer.lavis._common import get

__all__ = ["processor_class", "caption_processor_class", "boxes_from_segs"]


def boxes_from_segs(segs: Sequence[Any], width: int, height: int) -> np.ndarray:
    """``[R, 4]`` float32 xyxy boxes from the official ``segmentation`` entries (polygon rings or RLE, as the
    official processor's ``seq2mask`` boxes them) or from plain boxes ``[x1, y1, x2, y2]``."""
    from dynrefer.data.readers import segmentation_to_box

    out: List[Any] = []
    for k, s in enumerate(segs):
        if _plain_box(s):
            out.append(np.asarray(s, dtype=np.float64).reshape(4))
            continue
        try:
            out.append(segmentation_to_box(s, width, height))
        except ValueError as e:
            raise ValueError(f"segs[{k}]: {e}") from None
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def _plain_box(s: Any) -> bool:
    """Four numbers, not nested, are a box [x1, y1, x2, y2] (an official polygon is a list of rings)."""
    if isinstance(s, dict):
        return False
    if isinstance(s, np.ndarray):
        return s.shape == (4,)
    return (isinstance(s, (list, tuple)) and len(s) == 4
            and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in s))


def processor_class(base: Optional[type] = None) -> type:
    """The ``dynrefer`` image processor class (deriving from LAVIS's ``BaseProcessor`` when given)."""
    bases = (base,) if base is not None else (object,)

    class DynReferProcessor(*bases):  # type: ignore[misc]
        """Nested views of referred regions, with the official processor's interface and output.

        ``processor(image, segs)`` → ``{"cascade_region_images": [R, n, 3, S, S], "cascade_region_bboxes":
        [R, n, 4], "cascade_region_ratios": [R, n]}`` (torch tensors), where ``segs`` are the regions'
        ``segmentation`` entries (polygons or RLE) or plain xyxy boxes. As officially, the dataset sets
        ``num_views``, ``split`` and ``with_seg`` on it; ``split == "train"`` draws the context views at random,
        any other split selects them by the image prior (pHash greedy search), unless ``prior`` says otherwise.
        The work is :class:`dynrefer.views.NestedViews` (batched C kernels) instead of per-view PIL and OpenCV.

        ``processor.transform(image, boxes, rng=None)`` is the same in :class:`dynrefer.data.RegionDataset`'s
        transform interface (``views``, ``boxes``, ``coeffs``, ``view_boxes`` as NumPy arrays).
        """

        def __init__(self, image_size: int = 364, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None, min_scale: float = 0.5, max_scale: float = 1.0,
                     num_views: int = 2, prior: Optional[str] = None, mode: str = "pil",
                     seed: Optional[int] = None) -> None:
            from dynrefer.ops.views import CLIP_MEAN, CLIP_STD

            self.image_size = int(image_size)
            self.mean = tuple(CLIP_MEAN if mean is None else mean)
            self.std = tuple(CLIP_STD if std is None else std)
            self.min_scale, self.max_scale = min_scale, max_scale   # accepted as officially; unused there too
            self.num_views = int(num_views)
            self.split = "eval"
            self.with_seg = True
            self.prior = prior
            self.mode = mode
            self.seed = seed
            self._views: Dict[Tuple[int, str, int, str], Any] = {}

        def __repr__(self) -> str:
            return (f"DynReferProcessor(image_size={self.image_size}, num_views={self.num_views}, "
                    f"split={self.split!r}, prior={self.current_prior()!r})")

        def current_prior(self) -> str:
            return self.prior or ("stochastic" if self.split == "train" else "image")

        def nested_views(self) -> Any:
            """The :class:`NestedViews` for the current ``num_views`` / ``split`` (built once per setting)."""
            from dynrefer.views import NestedViews

            key = (self.num_views, self.current_prior(), self.image_size, self.mode)
            nv = self._views.get(key)
            if nv is None:
                nv = self._views[key] = NestedViews(size=self.image_size, num_views=self.num_views,
                                                    prior=self.current_prior(), mean=self.mean, std=self.std,
                                                    mode=self.mode, seed=self.seed)
            return nv

        def __getstate__(self) -> Dict[str, Any]:  # DataLoader workers rebuild their own NestedViews
            state = self.__dict__.copy()
            state["_views"] = {}
            return state

        def transform(self, image: Any, boxes: Any, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
            return self.nested_views()(image, boxes, rng=rng)

        def __call__(self, image: Any, segs: Sequence[Any], cascade_bboxes: Any = None,
                     rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
            """``cascade_bboxes`` is accepted and ignored, as in the official processor."""
            from dynrefer.views import as_image

            arr = as_image(image)
            boxes = boxes_from_segs(segs, int(arr.shape[1]), int(arr.shape[0]))
            return self.nested_views().official(arr, boxes, rng=rng)

        @classmethod
        def from_config(cls, cfg: Any = None) -> Any:
            """Keys: ``image_size`` (364 by default, as officially; the DynRefer configs set 224), ``mean``,
            ``std``, ``min_scale``, ``max_scale``, and dynrefer's ``num_views``, ``prior``, ``mode``, ``seed``."""
            mean, std = get(cfg, "mean"), get(cfg, "std")
            return cls(image_size=get(cfg, "image_size", 364), mean=None if mean is None else list(mean),
                       std=None if std is None else list(std), min_scale=get(cfg, "min_scale", 0.5),
                       max_scale=get(cfg, "max_scale", 1.0), num_views=get(cfg, "num_views", 2),
                       prior=get(cfg, "prior"), mode=get(cfg, "mode", "pil"), seed=get(cfg, "seed"))

        def build(self, **kwargs: Any) -> Any:
            return self.from_config(kwargs)

    DynReferProcessor.__module__, DynReferProcessor.__qualname__ = __name__, "DynReferProcessor"
    return DynReferProcessor


def caption_processor_class(base: Optional[type] = None) -> type:
    """A ``blip_caption`` equivalent: lower case, ``.!"()*#:;~`` to spaces, runs of spaces collapsed, at most
    ``max_words`` words, ``prompt`` prepended (used where the registry has no LAVIS ``blip_caption``)."""
    bases = (base,) if base is not None else (object,)

    class CaptionProcessor(*bases):  # type: ignore[misc]
        def __init__(self, prompt: str = "", max_words: int = 50) -> None:
            self.prompt = prompt
            self.max_words = int(max_words)

        def __call__(self, caption: str) -> str:
            c = re.sub(r"\s{2,}", " ", re.sub(r"([.!\"()*#:;~])", " ", caption.lower()))
            words = c.rstrip("\n").strip(" ").split(" ")
            return self.prompt + " ".join(words[: self.max_words])

        @classmethod
        def from_config(cls, cfg: Any = None) -> Any:
            return cls(prompt=get(cfg, "prompt", ""), max_words=get(cfg, "max_words", 50))

    CaptionProcessor.__module__, CaptionProcessor.__qualname__ = __name__, "CaptionProcessor"
    return CaptionProcessor
