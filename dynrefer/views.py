"""Nested views of referred regions: geometry, view selection and the transform the model consumes (docs/DESIGN.md §7.2–7.4).

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
import os
import sys

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


def view_boxes(boxes, coeffs, width, height):
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


def as_image(image):
    """HWC uint8 image (NumPy, or a torch tensor kept as is); PIL images are converted to RGB arrays."""
    if is_torch_tensor(image):
        return image
    if hasattr(image, "convert") and hasattr(image, "size"):
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"image must be an H x W x 3 uint8 RGB array or a PIL image, got {a.dtype} {a.shape}")
    return a


def _image_size(image):
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

    def __init__(self, size=224, num_views=3, candidates=CANDIDATES, prior="image", task="caption", mean=CLIP_MEAN,
                 std=CLIP_STD, mode="pil", dtype="float32", seed=None, fixed_coeffs=None):
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
        self._rng = None
        self._rng_pid = None

    def __repr__(self):
        return (f"NestedViews(size={self.size}, num_views={self.num_views}, prior={self.prior!r}, task={self.task!r}, "
                f"mode={self.mode!r})")

    def __getstate__(self):  # the generator is per process: never ship it to workers
        state = self.__dict__.copy()
        state["_rng"] = None
        state["_rng_pid"] = None
        return state

    def _generator(self):
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

    def choose(self, image, boxes, rng=None, prior=None):
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

    def __call__(self, image, boxes, rng=None, prior=None):
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

    def official(self, image, boxes, rng=None):
        """The official processor's output keys (torch tensors): ``cascade_region_images`` ``[R, n, 3, S, S]``,
        ``cascade_region_bboxes`` ``[R, n, 4]``, ``cascade_region_ratios`` ``[R, n]`` (float64, as it returns)."""
        import torch

        out = self(image, boxes, rng=rng)
        as_t = (lambda x: x) if is_torch_tensor(out["views"]) else torch.from_numpy
        return {"cascade_region_images": as_t(out["views"]), "cascade_region_bboxes": as_t(out["boxes"]),
                "cascade_region_ratios": as_t(np.asarray(_numpy(out["coeffs"]), dtype=np.float64))}


def _worker_id():
    """The PyTorch DataLoader worker id of this process, or None (torch is not imported here if it is not loaded)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return None if info is None else int(info.id)


def _numpy(x):
    return x.cpu().numpy() if is_torch_tensor(x) else np.asarray(x)


def _to_like(a, image):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(image.device)


def plot_views(image, box, path, candidates=CANDIDATES, chosen=None, labels=None, size=160):
    """Write a PNG like the paper's Fig. 5: the image with the referred region (red), every candidate view (thin
    grey, labelled with t) and the chosen views (coloured, thick), and beside it the chosen views as the model sees
    them (before normalisation).

    Args:
        image: HWC uint8 RGB (NumPy or PIL).
        box: the region (x1, y1, x2, y2).
        path: output PNG path.
        candidates: the candidate coefficients drawn in grey.
        chosen: the chosen coefficients (tight view first), e.g. ``NestedViews.choose(...)[0]``; default ``[0]``.
        labels: optional lines of text printed under the figure (e.g. the model's answers).
        size: side of each view thumbnail.
    """
    from PIL import Image, ImageDraw

    img = as_image(image)
    img = _numpy(img).astype(np.uint8)
    h, w = img.shape[:2]
    chosen = [0.0] if chosen is None else [float(c) for c in np.asarray(chosen).reshape(-1)]
    b = np.asarray(box, dtype=np.float32).reshape(1, 4)
    cand_boxes = view_boxes(b, np.asarray(candidates, dtype=np.float32), w, h)[0]
    chosen_boxes = view_boxes(b, np.asarray(chosen, dtype=np.float32), w, h)[0]
    colours = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    scale = min(1.0, 640.0 / max(w, h))
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    base = Image.fromarray(img[:, :, :3]).resize((sw, sh), Image.BICUBIC)
    thumbs = crop_resize(img, chosen_boxes, size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    thumbs = (np.clip(thumbs, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    lines = list(labels or [])
    text_h = 14 * (len(lines) + 1) + 8
    canvas_w = sw + 10 + size * max(1, len(chosen))
    canvas = Image.new("RGB", (canvas_w, max(sh, size + 20) + text_h), (255, 255, 255))
    canvas.paste(base, (0, 0))
    d = ImageDraw.Draw(canvas)
    for t, cb in zip(candidates, cand_boxes):
        x1, y1, x2, y2 = (cb * scale).tolist()
        d.rectangle([x1, y1, x2, y2], outline=(170, 170, 170), width=1)
        d.text((x1 + 2, y1 + 1), f"{t:.1f}", fill=(120, 120, 120))
    for k, (t, cb) in enumerate(zip(chosen, chosen_boxes)):
        x1, y1, x2, y2 = (cb * scale).tolist()
        col = colours[k % len(colours)]
        d.rectangle([x1, y1, x2, y2], outline=col, width=3)
        canvas.paste(Image.fromarray(thumbs[k]), (sw + 10 + k * size, 0))
        d.rectangle([sw + 10 + k * size, 0, sw + 10 + (k + 1) * size - 1, size - 1], outline=col, width=3)
        d.text((sw + 14 + k * size, size + 3), f"t = {t:.1f}", fill=col)
    x1, y1, x2, y2 = (b[0] * scale).tolist()
    d.rectangle([x1, y1, x2, y2], outline=(255, 0, 0), width=2)
    y = max(sh, size + 20) + 4
    d.text((4, y), f"region ({', '.join(f'{v:.0f}' for v in b[0])}); views t = {', '.join(f'{t:.1f}' for t in chosen)}",
           fill=(0, 0, 0))
    for line in lines:
        y += 14
        d.text((4, y), str(line), fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, format="PNG")
    return path
