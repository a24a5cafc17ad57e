"""Nested views of referred regions: geometry, view selection and the transform the model consumes.

A region ``b_r`` of an image of size ``W x H`` has views ``b(t) = b_r + t·([0, 0, W, H] − b_r)`` for coefficients
``t ∈ [0, 1]``: ``t = 0`` is the tight box, ``t = 1`` the whole image. DynRefer feeds the model ``n`` views per
region — the tight one first, then ``n − 1`` chosen among the candidates ``0.1, 0.2, …, 1.0``:

* ``prior="stochastic"`` (training): ``n − 1`` candidates drawn uniformly without replacement;
* ``prior="image"`` (default inference): the paper's Eq. 1 greedy search on perceptual hashes — repeatedly the
  candidate with the largest ``hamming(pHash(x(0)), pHash(x(t))) / t``;
* ``prior="task"``: a fixed preference per task (``TASK_PRIOR``);
* ``prior="none"``: random views at inference (the ablation baseline);
* ``prior="fixed"``: the same coefficients for every region (``fixed_coeffs``, the first one included — e.g.
  ``(1.0,)`` is the single whole-image view of a RoI-Align baseline, ``(0.0, 1.0)`` a fixed two-view model).

Everything heavy (hashing every candidate, cropping and resizing the chosen views) is one batched C call each
(``dynrefer.ops.views``), on the CPU's threads or on CUDA for CUDA images.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from dynrefer.ops._common import is_torch_tensor
from dynrefer.ops.views import CLIP_MEAN, CLIP_STD, crop_resize, phash, select_views

CANDIDATES = tuple(round(0.1 * i, 1) for i in range(1, 11))

# Preference order of the candidate coefficients per task, read from the paper's Fig. 4: attribute detection wants
# little context (t = 0.1 first), region and dense captioning want moderate context (t = 0.4–0.5), and views beyond
# t = 0.5 hurt, so they come last. The first n − 1 entries are used for n views.
TASK_PRIOR = {
    "attribute": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "caption": (0.4, 0.5, 0.3, 0.2, 0.1, 0.6, 0.7, 0.8, 0.9, 1.0),
    "dense_caption": (0.5, 0.4, 0.3, 0.2, 0.1, 0.6, 0.7, 0.8, 0.9, 1.0),
}

PRIORS = ("stochastic", "image", "task", "none", "fixed")

# a line of text under :func:`plot_views`' thumbnails: a string, or a (key, text) pair printed in two columns
Label = Union[str, Tuple[str, str]]


def view_boxes(boxes: Any, coeffs: Any, width: float, height: float) -> np.ndarray:
    """View boxes ``b(t)`` in image pixels, computed in float32 as the official pipeline does.

    Args:
        boxes: ``[R, 4]`` region boxes (x1, y1, x2, y2).
        coeffs: ``[n]`` coefficients shared by all regions, or ``[R, n]`` per region.
        width, height: image size.

    Returns ``[R, n, 4]`` float32.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    t = np.asarray(coeffs, dtype=np.float32)
    if t.ndim == 1:
        t = np.broadcast_to(t[None, :], (b.shape[0], t.shape[0]))
    if t.ndim != 2 or t.shape[0] != b.shape[0]:
        raise ValueError(f"view_boxes: coeffs must be [n] or [R, n] for R = {b.shape[0]}, got {np.shape(coeffs)}")
    full = np.array([0, 0, width, height], dtype=np.float32)
    return b[:, None, :] + (full - b)[:, None, :] * t[:, :, None]


def as_image(image: Any) -> Any:
    """HWC uint8 image (NumPy, or a torch tensor kept as is); PIL images are converted to RGB arrays."""
    if is_torch_tensor(image):
        return image
    if hasattr(image, "convert") and hasattr(image, "size"):
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"image must be an H x W x 3 uint8 RGB array or a PIL image, got {a.dtype} {a.shape}")
    return a


def _image_size(image: Any) -> Tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


class NestedViews:
    """Turn (image, region boxes) into the model's input: ``n`` nested views per region.

    Args:
        size: side of each view (224 for the official model).
        num_views: views per region, the tight one included (3 by default).
        candidates: candidate coefficients (increasing; the official ones by default).
        prior: ``"stochastic"``, ``"image"``, ``"task"``, ``"none"`` or ``"fixed"`` (see the module docstring).
        task: the task for ``prior="task"`` (a key of ``TASK_PRIOR``).
        mean, std: normalisation (CLIP's by default).
        mode: ``"pil"`` reproduces the official pipeline bit for bit; ``"tensor"`` resizes in floating point (see
            ``dynrefer.ops.crop_resize``).
        dtype: output dtype of the views (``"float32"``; ``"float16"``/``"bfloat16"`` for torch images).
        fixed_coeffs: the coefficients of ``prior="fixed"`` (then ``num_views`` is their count).
        seed: seed of the random choices (``stochastic``/``none``). The stream is a function of the seed alone —
            ``SeedSequence([seed])`` in a main process, ``SeedSequence([seed, 1 + worker id])`` in a PyTorch
            DataLoader worker — so a seed gives the same views in every run and every process, and each worker its
            own stream, the same in every run (a process that forks outside a DataLoader starts the seed's stream
            afresh in the child). ``None`` seeds from the OS. A call's ``rng`` argument overrides it (RegionDataset
            passes one per item).

    Calling it returns a dict of NumPy arrays (torch tensors for torch images):
        ``views`` ``[R, n, 3, size, size]``, ``boxes`` ``[R, n, 4]`` (the region in each view's frame), ``coeffs``
        ``[R, n]`` float32 (``coeffs[:, 0] == 0`` except for a fixed prior that says otherwise), ``view_boxes`` ``[R, n, 4]`` (each view in image pixels).
    """

    def __init__(self, size: int = 224, num_views: int = 3, candidates: Sequence[float] = CANDIDATES,
                 prior: str = "image", task: str = "caption", mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, mode: str = "pil", dtype: str = "float32",
                 seed: Optional[int] = None, fixed_coeffs: Optional[Sequence[float]] = None) -> None:
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if prior == "fixed":
            if fixed_coeffs is None or len(fixed_coeffs) < 1 or any(not 0.0 <= float(t) <= 1.0 for t in fixed_coeffs):
                raise ValueError(f"prior='fixed' needs fixed_coeffs, one or more coefficients in [0, 1], got {fixed_coeffs!r}")
            num_views = len(fixed_coeffs)
        self.fixed_coeffs = None if fixed_coeffs is None else tuple(float(t) for t in fixed_coeffs)
        cand = tuple(float(c) for c in candidates)
        if not cand or any(not (0.0 < c <= 1.0) for c in cand) or list(cand) != sorted(set(cand)):
            raise ValueError(f"candidates must be increasing, distinct and in (0, 1], got {candidates!r}")
        if int(num_views) < 1 or int(num_views) - 1 > len(cand):
            raise ValueError(f"num_views must be in [1, {len(cand) + 1}], got {num_views!r}")
        if prior == "task":
            if task not in TASK_PRIOR:
                raise ValueError(f"task must be one of {sorted(TASK_PRIOR)} for prior='task', got {task!r}")
            missing = [t for t in TASK_PRIOR[task][: int(num_views) - 1] if not np.isclose(cand, t).any()]
            if missing:
                raise ValueError(f"the task prior's coefficients {missing} are not among the candidates {cand}")
        if mode not in ("pil", "tensor"):
            raise ValueError(f"mode must be 'pil' or 'tensor', got {mode!r}")
        self.size = int(size)
        self.num_views = int(num_views)
        self.candidates = cand
        self.prior = prior
        self.task = task
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.mode = mode
        self.dtype = dtype
        self.seed = seed
        self._rng: Optional[np.random.Generator] = None
        self._rng_pid: Optional[int] = None

    def __repr__(self) -> str:
        return (f"NestedViews(size={self.size}, num_views={self.num_views}, prior={self.prior!r}, task={self.task!r}, "
                f"mode={self.mode!r})")

    def __getstate__(self) -> Dict[str, Any]:  # the generator is per process: never ship it to workers
        state = self.__dict__.copy()
        state["_rng"] = None
        state["_rng_pid"] = None
        return state

    def _generator(self) -> np.random.Generator:
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:  # a new process (fork) starts its own stream
            if self.seed is None:
                self._rng = np.random.default_rng()
            else:
                worker = _worker_id()
                key = [int(self.seed)] if worker is None else [int(self.seed), 1 + worker]
                self._rng = np.random.default_rng(np.random.SeedSequence(key))
            self._rng_pid = pid
        return self._rng

    # ---- selection --------------------------------------------------------------------------------------

    def choose(self, image: Any, boxes: Any, rng: Optional[np.random.Generator] = None,
               prior: Optional[str] = None) -> np.ndarray:
        """Coefficients ``[R, n]`` (float32; tight view first) of the views for each region."""
        prior = prior or self.prior
        image = as_image(image)
        b = np.asarray(_numpy(boxes), dtype=np.float32).reshape(-1, 4)
        if not np.isfinite(b).all():
            k = int(np.flatnonzero(~np.isfinite(b).all(axis=1))[0])
            raise ValueError(f"boxes[{k}] = {b[k].tolist()} has non-finite coordinates")
        r, m = b.shape[0], self.num_views - 1
        cand = np.asarray(self.candidates, dtype=np.float64)
        out = np.zeros((r, self.num_views), dtype=np.float32)
        if prior == "fixed":
            out[:] = np.asarray(self.fixed_coeffs, dtype=np.float32)[None, :]
            return out
        if m == 0 or r == 0:
            return out
        if prior in ("stochastic", "none"):
            g = rng if rng is not None else self._generator()
            for i in range(r):
                out[i, 1:] = cand[g.choice(len(cand), size=m, replace=False)]
        elif prior == "task":
            out[:, 1:] = np.asarray(TASK_PRIOR[self.task][:m], dtype=np.float32)[None, :]
        else:  # image prior: hash the tight view and every candidate in one call
            w, h = _image_size(image)
            allv = view_boxes(b, np.concatenate([[0.0], cand]), w, h)  # [R, 1 + C, 4]
            flat = allv.reshape(-1, 4)
            hashes = phash(image, _to_like(flat, image) if is_torch_tensor(image) else flat, method="dynrefer")
            hashes = _numpy(hashes).reshape(r, 1 + len(cand))
            idx = select_views(hashes, cand, m)
            out[:, 1:] = cand[idx]
        return out

    # ---- the transform ----------------------------------------------------------------------------------

    def __call__(self, image: Any, boxes: Any, rng: Optional[np.random.Generator] = None,
                 prior: Optional[str] = None) -> Dict[str, Any]:
        image = as_image(image)
        b = np.asarray(_numpy(boxes), dtype=np.float32).reshape(-1, 4)
        coeffs = self.choose(image, b, rng=rng, prior=prior)
        w, h = _image_size(image)
        vb = view_boxes(b, coeffs, w, h)  # [R, n, 4]
        r, n = coeffs.shape
        ref = np.repeat(b[:, None, :], n, axis=1).reshape(-1, 4)
        flat = vb.reshape(-1, 4)
        if is_torch_tensor(image):
            flat, ref = _to_like(flat, image), _to_like(ref, image)
        views, rb = crop_resize(image, flat, self.size, ref_boxes=ref, mode=self.mode, mean=self.mean, std=self.std,
                                dtype=self.dtype)
        views = views.reshape(r, n, 3, self.size, self.size)
        rb = rb.reshape(r, n, 4)
        if is_torch_tensor(image):
            import torch

            return {"views": views, "boxes": rb, "coeffs": torch.from_numpy(coeffs).to(image.device),
                    "view_boxes": torch.from_numpy(vb).to(image.device)}
        return {"views": views, "boxes": rb, "coeffs": coeffs, "view_boxes": vb}

    def official(self, image: Any, boxes: Any, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """The official processor's output keys (torch tensors): ``cascade_region_images`` ``[R, n, 3, S, S]``,
        ``cascade_region_bboxes`` ``[R, n, 4]``, ``cascade_region_ratios`` ``[R, n]`` (float64, as it returns)."""
        import torch

        out = self(image, boxes, rng=rng)
        as_t = (lambda x: x) if is_torch_tensor(out["views"]) else torch.from_numpy
        return {"cascade_region_images": as_t(out["views"]), "cascade_region_bboxes": as_t(out["boxes"]),
                "cascade_region_ratios": as_t(np.asarray(_numpy(out["coeffs"]), dtype=np.float64))}


def _worker_id() -> Optional[int]:
    """The PyTorch DataLoader worker id of this process, or None (torch is not imported here if it is not loaded)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return None if info is None else int(info.id)


def _numpy(x: Any) -> np.ndarray:
    return x.cpu().numpy() if is_torch_tensor(x) else np.asarray(x)


def _to_like(a: np.ndarray, image: Any) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(image.device)


# ---- the figure -----------------------------------------------------------------------------------------

# the colours of the chosen views, in the order given (the tight view's first); the region itself is drawn red
_VIEW_COLOURS = ((255, 140, 0), (0, 160, 80), (0, 110, 220), (160, 40, 200), (0, 170, 170), (190, 150, 0))
REGION_COLOUR = (255, 0, 0)
_GAP = 6      # between the image, the thumbnails and the text
_PAD = 8      # around the text


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(draw: Any, text: str, font: Any, width: float) -> List[str]:
    """``text`` in lines no wider than ``width`` pixels, broken at spaces (a single overlong word stays whole)."""
    out: List[str] = []
    line = ""
    for word in text.split(" "):
        trial = word if not line else line + " " + word
        if line and draw.textlength(trial, font=font) > width:
            out.append(line)
            line = word
        else:
            line = trial
    out.append(line)
    return out


def _label_rows(draw: Any, labels: Sequence[Label], font: Any, width: float
                ) -> Tuple[List[Tuple[str, str, bool]], float]:
    """The printed rows ``(key, text, in the value column)`` and the key column's width: ``(key, text)`` pairs in
    two columns (the text wrapped beside its key), plain strings across the whole width."""
    keys = [str(lab[0]) for lab in labels if isinstance(lab, tuple)]
    key_w = max([draw.textlength(k, font=font) for k in keys] or [0.0])
    key_w = key_w + 10 if key_w else 0.0
    rows: List[Tuple[str, str, bool]] = []
    for lab in labels:
        if isinstance(lab, tuple):
            wrapped = _wrap(draw, str(lab[1]), font, max(40.0, width - key_w))
            rows += [(str(lab[0]) if k == 0 else "", t, True) for k, t in enumerate(wrapped)]
        else:
            rows += [("", t, False) for t in _wrap(draw, str(lab), font, width)]
    return rows, key_w


def _clip_rect(box: Sequence[float], width: int, height: int) -> Optional[List[int]]:
    """``box`` rounded to pixel edges inside ``width x height`` (Pillow draws an outline inward from these); None
    when nothing of it is inside."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(width - 1, x2), min(height - 1, y2)
    if x2 < x1 or y2 < y1:
        return None
    return [x1, y1, x2, y2]


_Layout = Tuple[int, int, int, Tuple[int, int], Tuple[int, int, int], Tuple[int, int]]


def _text_height(draw: Any, lines: Sequence[Label], font: Any, line_h: int) -> Callable[[int], int]:
    """The height of ``lines`` printed in a column ``width`` pixels wide, as a function of the width."""
    def height(width: int) -> int:
        rows, _ = _label_rows(draw, lines, font, width - 2 * _PAD)
        return len(rows) * line_h + 2 * _PAD

    return height


def _side_layout(w: int, h: int, n: int, scale0: float, size: Optional[int], text_h: Callable[[int], int],
                 lab_h: int) -> Optional[_Layout]:
    """The image on the left; on its right the thumbnails in a row and the text under them, the image scaled to
    the column's height. None when that would leave a band under the image (wide images)."""
    def col_w(th: int) -> int:
        return n * th + (n - 1) * _GAP

    def col_h(th: int) -> int:
        return th + lab_h + _GAP + text_h(col_w(th))

    sh0 = h * scale0
    if size is not None:
        th = int(size)
    else:
        th_min = max(64, -(-(320 - (n - 1) * _GAP) // n))
        th_max = max(th_min, min(360, (720 - (n - 1) * _GAP) // n))   # the column 720 pixels wide at most
        th = next((t for t in range(th_max, th_min - 1, -2) if col_h(t) <= sh0), th_min)
    ch = col_h(th)
    scale = min(max(ch / h, 0.5 * scale0), max(scale0, 1280.0 / max(w, h)))
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if sh < ch - 2 * lab_h and size is None:
        return None
    x0 = sw + _GAP
    return sw, sh, th, (x0, 0), (x0, th + lab_h + _GAP, col_w(th)), (x0 + col_w(th), max(sh, ch))


def _stacked_layout(w: int, h: int, n: int, scale0: float, size: Optional[int], text_h: Callable[[int], int],
                    lab_h: int) -> _Layout:
    """The image on top, 640 to 1280 pixels wide; under it the thumbnails in a row and the text on their right,
    the thumbnails as tall as the text needs (64 to 224 pixels)."""
    sw = int(round(w * min(1280.0 / w, max(scale0, 640.0 / w))))
    for _ in range(2):   # the image widened (to 1280 pixels at most) to the thumbnails and the text under it
        if size is not None:
            th = int(size)
        else:
            th = next((t for t in range(64, 225, 2)
                       if t + lab_h >= text_h(max(320, sw - n * (t + _GAP)))), 224)
        sw = max(sw, min(1280, n * (th + _GAP) + 320))
    sw = max(1, sw)
    sh = max(1, int(round(h * sw / w)))
    text_w = max(320, sw - n * (th + _GAP))
    y0 = sh + _GAP
    xt = n * (th + _GAP)
    return sw, sh, th, (0, y0), (xt, y0, text_w), (max(sw, xt + text_w), y0 + max(th + lab_h, text_h(text_w)))


def plot_views(image: Any, box: Sequence[float], path: Optional[str] = None,
               candidates: Sequence[float] = CANDIDATES, chosen: Optional[Any] = None,
               labels: Optional[Sequence[Label]] = None, size: Optional[int] = None) -> Any:
    """A figure like the paper's Fig. 5, as a ``PIL.Image.Image`` (shown inline by Jupyter; ``path`` also saves it).

    On the left the image with every candidate view (thin grey, labelled with its t where the labels do not
    collide), the chosen views (coloured) and on top of them the referred region (red, clipped to the image); on
    the right the chosen views as the model sees them (before normalisation; the region in red, the frame in the
    view's colour, t underneath), and below them the region's coordinates and ``labels``. The thumbnails are
    sized for an image whose longer side is 640 pixels at most (384 at least for small images), then the image is
    scaled to the height of the column beside it, so that neither leaves a blank band.

    Args:
        image: HWC uint8 RGB (NumPy, PIL or a CPU tensor).
        box: the region (x1, y1, x2, y2) in pixels.
        path: also write the figure there (PNG unless the extension names another format Pillow writes); folders
            are created.
        candidates: the candidate coefficients drawn in grey.
        chosen: the chosen coefficients (tight view first), e.g. ``NestedViews.choose(...)[0]``; default ``[0]``.
        labels: lines of text under the thumbnails: strings, or ``(key, text)`` pairs printed in two columns (e.g.
            ``("caption", "a red circle (0.42)")``); long lines wrap.
        size: side of each thumbnail in pixels (default: fitted to the image's height, 64 to 360 and the
            thumbnails 720 pixels wide together at most).

    Needs Pillow (``pip install 'dynrefer[data]'``).
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise ImportError("plot_views needs Pillow: pip install 'dynrefer[data]'") from e

    img = np.ascontiguousarray(_numpy(as_image(image)).astype(np.uint8)[:, :, :3])
    h, w = img.shape[:2]
    ch = [0.0] if chosen is None else [float(c) for c in np.asarray(_numpy(chosen), dtype=np.float64).reshape(-1)]
    if not ch or any(not 0.0 <= t <= 1.0 for t in ch):
        raise ValueError(f"plot_views: chosen must hold coefficients in [0, 1], got {chosen!r}")
    cand = [float(t) for t in candidates]
    if size is not None and int(size) < 8:
        raise ValueError(f"plot_views: size must be at least 8 pixels, got {size!r}")
    flat = np.asarray(_numpy(box), dtype=np.float32).reshape(-1)
    if flat.shape != (4,) or not np.isfinite(flat).all() or flat[2] <= flat[0] or flat[3] <= flat[1]:
        raise ValueError(f"plot_views: box must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box!r}")
    b = flat.reshape(1, 4)
    n = len(ch)
    cand_boxes = view_boxes(b, np.asarray(cand, dtype=np.float32).reshape(-1), w, h)[0]
    chosen_boxes = view_boxes(b, np.asarray(ch, dtype=np.float32), w, h)[0]

    font, small = _font(13), _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Hgy", font=font)[3]) + 4
    lab_h = int(probe.textbbox((0, 0), "t = 0.0", font=small)[3]) + 4
    lines: List[Label] = [("region", ", ".join(f"{v:.0f}" for v in b[0])), *(labels or [])]

    text_h = _text_height(probe, lines, font, line_h)
    longest = max(w, h)
    scale0 = min(640.0 / longest, max(1.0, 384.0 / longest))
    lay = _side_layout(w, h, n, scale0, size, text_h, lab_h)
    if lay is None:   # a wide image: the thumbnails and the text under it
        lay = _stacked_layout(w, h, n, scale0, size, text_h, lab_h)
    sw, sh, th, (tx, ty), (xt, yt, wt), (canvas_w, canvas_h) = lay
    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    base = Image.fromarray(img)
    if (sw, sh) != (w, h):
        base = base.resize((sw, sh), Image.Resampling.BICUBIC)
    canvas.paste(base, (0, 0))
    d = ImageDraw.Draw(canvas)
    sx, sy = sw / w, sh / h

    def on_image(bx: Sequence[float]) -> Optional[List[int]]:
        return _clip_rect([bx[0] * sx, bx[1] * sy, bx[2] * sx, bx[3] * sy], sw, sh)

    # candidates, thin grey, labelled where a label does not land on another one
    placed: List[Tuple[float, float]] = []
    for t, cb in zip(cand, cand_boxes):
        r = on_image(cb.tolist())
        if r is None:
            continue
        d.rectangle(r, outline=(200, 200, 200), width=1)
        x, y = r[0] + 2, r[1] + 1
        if all(abs(x - px) > 24 or abs(y - py) > 12 for px, py in placed) and y + 12 < sh:
            d.text((x, y), f"{t:.1f}", fill=(225, 225, 225), font=small, stroke_width=1, stroke_fill=(60, 60, 60))
            placed.append((x, y))
    # chosen views, the widest first so that no frame hides a narrower one; the tight view's frame is drawn wide
    # enough to show inside the region's outline drawn over it
    for k in sorted(range(n), key=lambda k: -ch[k]):
        r = on_image(chosen_boxes[k].tolist())
        if r is not None:
            d.rectangle(r, outline=_VIEW_COLOURS[k % len(_VIEW_COLOURS)], width=5 if ch[k] == 0.0 else 3)
    # the region on top of everything, clipped to the image
    r = on_image(b[0].tolist())
    if r is not None:
        d.rectangle(r, outline=REGION_COLOUR, width=2)

    # the chosen views as the model sees them, the region in each view's frame
    ref = np.repeat(b, n, axis=0)
    thumbs, ref_in_view = crop_resize(img, chosen_boxes, th, ref_boxes=ref, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    thumbs = (np.clip(np.asarray(thumbs), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    for k in range(n):
        col = _VIEW_COLOURS[k % len(_VIEW_COLOURS)]
        x = tx + k * (th + _GAP)
        canvas.paste(Image.fromarray(np.ascontiguousarray(thumbs[k])), (x, ty))
        rr = _clip_rect(np.asarray(ref_in_view)[k].tolist(), th, th)
        if rr is not None:
            d.rectangle([x + rr[0], ty + rr[1], x + rr[2], ty + rr[3]], outline=REGION_COLOUR, width=1)
        d.rectangle([x, ty, x + th - 1, ty + th - 1], outline=col, width=3)
        d.text((x + 2, ty + th + 2), f"t = {ch[k]:.1f}", fill=col, font=small)

    # the text
    rows, key_w = _label_rows(d, lines, font, wt - 2 * _PAD)
    y = yt + _PAD
    for key, text, in_column in rows:
        if key:
            d.text((xt + _PAD, y), key, fill=(110, 110, 110), font=font)
        d.text((xt + _PAD + (key_w if in_column else 0.0), y), text, fill=(0, 0, 0), font=font)
        y += line_h
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        ext = os.path.splitext(path)[1].lower()
        canvas.save(path, format=None if ext in Image.registered_extensions() else "PNG")
    return canvas
