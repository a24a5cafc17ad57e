"""Describe boxes of an image file with a model bundle and plot the views it chose (``dynrefer describe``)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from dynrefer.app.errors import UserError

__all__ = ["read_image", "check_boxes", "image_and_boxes", "answer_labels", "describe_image"]


def read_image(path: str) -> np.ndarray:
    """The RGB image at ``path`` as an ``H x W x 3`` uint8 array."""
    from PIL import Image

    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:   # refused from the header, before any pixel is decoded
        raise UserError(f"cannot read image {path}: {e}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def check_boxes(boxes: ArrayLike, width: int, height: int) -> np.ndarray:
    """``boxes`` as ``[N, 4]`` float32 ``x1, y1, x2, y2``, each overlapping the ``width x height`` image and
    clipped to it (the part outside has no pixels; a box reaching far beyond the image would only cost time)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise UserError(f"boxes must be finite, got {b[~np.isfinite(b).all(1)][0].tolist()}")
    for box in b:
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            raise UserError(f"box {box.tolist()} lies outside the {width}x{height} image")
    return np.stack([b[:, 0].clip(0, width), b[:, 1].clip(0, height), b[:, 2].clip(0, width),
                     b[:, 3].clip(0, height)], 1).astype(np.float32)


def image_and_boxes(path: str, boxes: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`read_image` and :func:`check_boxes` together."""
    img = read_image(path)
    return img, check_boxes(boxes, img.shape[1], img.shape[0])


def answer_labels(result: dict, attribute_threshold: float = 0.5, top_tags: int = 5
                  ) -> List[Tuple[str, str]]:
    """The ``(key, text)`` lines of a region's answers for :func:`dynrefer.views.plot_views`: the category with its
    score, the attributes scoring at least ``attribute_threshold`` (else the best one, marked as below it), the
    ``top_tags`` best tags (and how many more passed the model's tag threshold) and the caption with its score."""
    out: List[Tuple[str, str]] = []
    if "category" in result:
        out.append(("category", f"{result['category']} {result.get('category_score', float('nan')):.2f}"))
    if result.get("attributes"):
        ranked = sorted(result["attributes"], key=lambda t: -t[1])
        above = [f"{n} {s:.2f}" for n, s in ranked if s >= attribute_threshold]
        out.append(("attributes", ", ".join(above) if above else
                    f"none from {attribute_threshold:.2f} up (best: {ranked[0][0]} {ranked[0][1]:.2f})"))
    if "tags" in result:
        tags = result["tags"]
        more = f" (+{len(tags) - top_tags} more)" if len(tags) > top_tags else ""
        out.append(("tags", (", ".join(f"{n} {s:.2f}" for n, s in tags[:top_tags]) or "-") + more))
    if "caption" in result:
        score = f" ({result['caption_score']:.2f})" if "caption_score" in result else ""
        out.append(("caption", (result["caption"] or "-") + score))
    return out


def describe_image(image_path: str, boxes: Sequence[Sequence[float]], checkpoint: str, *, prior: str = "image",
                   seed: int = 0, out_stem: Optional[str] = None, threads: Optional[int] = None,
                   attribute_threshold: float = 0.5) -> Tuple[List[dict], List[str]]:
    """Category, attributes, tags and caption of every box of the image at ``image_path`` with the model of the
    bundle ``checkpoint``, and a PNG per box (``<out_stem>_<k>.png``, by default in the working directory as
    ``<image name>_described_<k>.png``): :func:`dynrefer.views.plot_views` of the chosen views with the answers and
    their scores (:func:`answer_labels`; attributes from ``attribute_threshold`` up). ``threads``: torch CPU threads
    (None: torch's default). Returns ``(results, png paths)``."""
    from dynrefer.app.bundle import load_bundle_model
    from dynrefer.views import plot_views

    img = read_image(image_path)
    b = check_boxes(boxes, img.shape[1], img.shape[0])
    clipped = [k for k, (old, new) in enumerate(zip(np.asarray(boxes, np.float64).reshape(-1, 4), b))
               if not np.allclose(old, new)]
    import torch

    if threads:
        torch.set_num_threads(threads)
    _, model = load_bundle_model(checkpoint)
    res = model.describe(img, b, prior=prior, seed=seed)
    for k in clipped:
        res[k]["clipped"] = True
    stem = out_stem or os.path.splitext(os.path.basename(image_path))[0] + "_described"
    paths = []
    for k, r in enumerate(res):
        path = f"{stem}_{k}.png"
        plot_views(img, b[k], path, chosen=r.get("view_coeffs", [0.0]),
                   labels=answer_labels(r, attribute_threshold=attribute_threshold))
        paths.append(path)
    return res, paths
