"""Nested-view kernels: batched crop + resize + normalise, perceptual hashes, view selection.

All three take many boxes of one or more images in one call and run in C (CPU threads) or CUDA, without
materialising crops. Images are ``H x W x 3`` uint8 RGB, channels last (NumPy arrays or torch tensors; any strides;
a fourth channel, alpha, or more are ignored); 2-D (grayscale) and channel-first ``3 x H x W`` arrays are refused
with their shape. NumPy in → NumPy out; torch in → torch out on the images' device. Images on PyTorch's ``meta``
device give ``meta`` outputs of the right shapes after the shape, dtype and parameter checks (the pixel-dependent
ones — finite boxes, image indices in range — need data and are skipped).

Geometry shared by all: a view box ``(x1, y1, x2, y2)`` in pixels is clipped to the image and truncated to integers;
the crop is the pixel slice ``[y1:y2, x1:x2]``. A crop that is empty after that (zero width or height, or a box
outside the image) is widened to one pixel at the clamped position, so every view is defined. Non-finite
coordinates raise ValueError naming the row.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from dynrefer.ops._common import is_torch_tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_KIND = {"pil": 0, "aa": 1, "plain": 2}
_FILTER = {"bilinear": 0, "bicubic": 1}
_METHOD = {"dynrefer": 0, "imagehash": 1}


# ---- argument handling -------------------------------------------------------------------------------------

def _image_list(images: Any, op: str) -> Tuple[List[Any], bool]:
    if isinstance(images, (list, tuple)):
        imgs = list(images)
    else:
        imgs = [images]
    if not imgs:
        raise ValueError(f"{op}: images is empty")
    torch_in = is_torch_tensor(imgs[0])
    out = []
    for i, im in enumerate(imgs):
        if is_torch_tensor(im) != torch_in:
            raise TypeError(f"{op}: images mixes NumPy arrays and torch tensors (images[{i}])")
        if not torch_in:
            if hasattr(im, "convert") and hasattr(im, "size"):  # a PIL image
                im = np.asarray(im.convert("RGB"))
            elif not isinstance(im, np.ndarray):
                raise TypeError(f"{op}: images[{i}] must be a NumPy array, a PIL image or a torch.Tensor, "
                                f"got {type(im).__name__}")
        out.append(im)
    return out, torch_in


def _is_meta(t: Any) -> bool:
    return is_torch_tensor(t) and t.device.type == "meta"


def _check_finite_rows(b: Any, name: str, op: str) -> None:
    if _is_meta(b):
        return
    if is_torch_tensor(b):
        import torch

        ok = torch.isfinite(b).all(dim=1)
        if not bool(ok.all()):
            k = int((~ok).nonzero()[0, 0])
            raise ValueError(f"{op}: {name}[{k}] = {b[k].tolist()} has non-finite coordinates")
    else:
        ok = np.isfinite(b).all(axis=1)
        if not ok.all():
            k = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"{op}: {name}[{k}] = {b[k].tolist()} has non-finite coordinates")


def _boxes(boxes: Any, like_torch: bool, device: Any, op: str, name: str = "boxes") -> Any:
    """[V,4] float32/float64 boxes on the images' side (NumPy or torch on `device`)."""
    if like_torch:
        import torch

        b = boxes if is_torch_tensor(boxes) else torch.as_tensor(np.asarray(boxes))
        if b.dtype not in (torch.float32, torch.float64):
            b = b.to(torch.float64) if not b.is_floating_point() or b.dtype == torch.float64 else b.float()
        b = b.to(device)
    else:
        if is_torch_tensor(boxes):
            raise TypeError(f"{op}: {name} is a torch.Tensor but the images are NumPy arrays")
        b = np.asarray(boxes)
        if b.dtype not in (np.float32, np.float64):
            b = b.astype(np.float64)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{op}: {name} must have shape [V, 4] (x1, y1, x2, y2), got {tuple(b.shape)}")
    _check_finite_rows(b, name, op)
    return b


def _index(image_index: Any, n_images: int, like_torch: bool, device: Any, op: str) -> Any:
    """image_index as int64 on the images' side, or None. Its length and its need with several images are the
    argument builder's checks (dr_<op>_make_args), its values the CPU kernel's; only indices on a GPU, which the C
    layer does not read, are range-checked here."""
    if image_index is None:
        return None
    if like_torch:
        import torch

        idx = image_index if is_torch_tensor(image_index) else torch.as_tensor(np.asarray(image_index))
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise TypeError(f"{op}: image_index must be integers, got {idx.dtype}")
        idx = idx.to(device=device, dtype=torch.int64).reshape(-1)
        if idx.device.type not in ("cpu", "meta") and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_images):
            raise ValueError(f"{op}: image_index must lie in [0, {n_images}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return idx
    idx = np.asarray(image_index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{op}: image_index must be integers, got {idx.dtype}")
    return idx.astype(np.int64).reshape(-1)


def _call(fn: Callable[..., Any], images: List[Any], torch_in: bool, *arrays: Any, **kw: Any) -> Any:
    """Call a binding with images + arrays, converting torch tensors to descriptors on the right device/stream."""
    if not torch_in:
        return fn(images, *arrays, **kw)
    from dynrefer.ops._torch_util import _desc, _device_of, _stream

    desc: Callable[[Any], Any] = _desc
    if _is_meta(images[0]):  # no data: the binding runs the argument checks only
        from dynrefer.ops._torch_util import _DTYPE_CODES

        def meta_desc(t: Any) -> Tuple[int, int, int, int, Tuple[int, ...], Tuple[int, ...]]:
            """A CPU descriptor without data, of the meta tensor's shape."""
            if t.device.type != "meta":
                raise ValueError(f"{fn.__name__}: images are on the meta device but an argument is on {t.device}")
            if t.dtype not in _DTYPE_CODES:
                raise TypeError(f"{fn.__name__}: unsupported dtype {t.dtype}")
            return (0, _DTYPE_CODES[t.dtype], 0, 0, tuple(t.shape), tuple(t.stride()))

        desc = meta_desc
        kw["check_only"] = True

    conv = [desc(a) if is_torch_tensor(a) else a for a in arrays]
    kw = {k: (desc(v) if is_torch_tensor(v) else v) for k, v in kw.items()}
    with _device_of(images[0]):
        return fn([desc(im) for im in images], *conv, stream=_stream(images[0]), **kw)


def _pil_order(order: str, op: str) -> int:
    if order not in ("adaptive", "horizontal"):
        raise ValueError(f"{op}: pil_order must be 'adaptive' or 'horizontal', got {order!r}")
    return 0 if order == "adaptive" else 1


def _size(size: int, op: str) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"{op}: size must be an int, got {type(size).__name__}")
    if not 1 <= int(size) <= 16384:
        raise ValueError(f"{op}: size must be in [1, 16384], got {size}")
    return int(size)


# ---- ops ---------------------------------------------------------------------------------------------------

def crop_resize(images: Any, boxes: Any, size: int = 224, *, image_index: Any = None, ref_boxes: Any = None,
                mode: str = "pil", interpolation: str = "bicubic", antialias: bool = True,
                mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, dtype: Any = "float32",
                pil_order: str = "adaptive", impl: str = "fast") -> Any:
    """Crop many view boxes out of one or more images and resize each to ``size x size``, normalised.

    Args:
        images: one ``H x W x 3`` uint8 image or a list of them (NumPy/PIL or torch, CPU or CUDA).
        boxes: ``[V, 4]`` view boxes ``(x1, y1, x2, y2)`` in pixels.
        size: output side S.
        image_index: ``[V]`` image of each box (required with several images).
        ref_boxes: optional ``[V, 4]`` referred boxes, returned in each view's ``S x S`` frame.
        mode: ``"pil"`` — the official pipeline bit for bit: Pillow's resize (antialiased filter, fixed point, uint8
            rounding after each pass), torchvision's ``ToImage``/``ConvertImageDtype``/``Normalize``; referred boxes
            truncated to integers as torchvision's resize of integer boxes does. ``"tensor"`` —
            ``torch.nn.functional.interpolate`` semantics on the float crop (no rounding), ``antialias`` as given,
            referred boxes exact.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        antialias: only for ``mode="tensor"`` (Pillow always antialiases).
        mean, std: per-channel normalisation, applied to values in [0, 1].
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (torch only) output.
        pil_order: pass order of Pillow's two-pass resize: ``"adaptive"`` (current Pillow: vertical pass first when
            the height shrinks by more than twice as many pixels as the width) or ``"horizontal"`` (always
            horizontal first, as older Pillow releases); the uint8 rounding between passes makes them differ.
        impl: ``"fast"``, ``"elementwise"`` (the CUDA per-element body on the CPU) or ``"tiled"`` (the CUDA
            kernel's block schedule on the CPU); the last two are for tests.

    Returns ``[V, 3, S, S]`` views, and ``[V, 4]`` float32 referred boxes when ``ref_boxes`` is given.
    """
    op = "crop_resize"
    imgs, torch_in = _image_list(images, op)
    S = _size(size, op)
    if mode not in ("pil", "tensor"):
        raise ValueError(f"{op}: mode must be 'pil' or 'tensor', got {mode!r}")
    if interpolation not in _FILTER:
        raise ValueError(f"{op}: interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    if mode == "pil" and not antialias:
        raise ValueError(f"{op}: mode='pil' always antialiases (Pillow's resize); use mode='tensor' for antialias=False")
    kind = _KIND["pil"] if mode == "pil" else (_KIND["aa"] if antialias else _KIND["plain"])
    device = imgs[0].device if torch_in else None
    b = _boxes(boxes, torch_in, device, op)
    nv = b.shape[0]
    idx = _index(image_index, len(imgs), torch_in, device, op)
    rb = None if ref_boxes is None else _boxes(ref_boxes, torch_in, device, op, "ref_boxes")
    out: Any   # a tensor or an array, as the images
    ref_out: Any
    if torch_in:
        import torch

        tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(dtype).replace("torch.", ""))
        if tdt is None:
            raise ValueError(f"{op}: dtype must be float32, float16 or bfloat16, got {dtype!r}")
        out = torch.empty((nv, 3, S, S), dtype=tdt, device=device)
        ref_out = None if rb is None else torch.empty((nv, 4), dtype=torch.float32, device=device)
    else:
        ndt = {"float32": np.float32, "float16": np.float16}.get(np.dtype(dtype).name if dtype != "bfloat16" else "bfloat16")
        if ndt is None:
            raise ValueError(f"{op}: dtype must be float32 or float16 for NumPy output, got {dtype!r}")
        out = np.empty((nv, 3, S, S), dtype=ndt)
        ref_out = None if rb is None else np.empty((nv, 4), dtype=np.float32)
    from dynrefer import _C

    _call(_C.crop_resize, imgs, torch_in, b, out, S, kind, _FILTER[interpolation], tuple(float(m) for m in mean),
          tuple(float(s) for s in std), image_index=idx, ref_boxes=rb, ref_out=ref_out,
          pil_order=_pil_order(pil_order, op), impl=impl)
    return out if rb is None else (out, ref_out)


def _hash_int(v: int, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"phash: {name} must be an int, got {type(v).__name__} (imagehash: 'float' object cannot be "
                        "interpreted as an integer)")
    return int(v)


def hash_words(hash_size: int = 8) -> int:
    """uint64 words per hash of ``hash_size``: 0 for a plain ``[V]`` array (up to 64 bits), else ``W`` of ``[V, W]``."""
    bits = int(hash_size) ** 2
    return 0 if bits <= 64 else (bits + 63) // 64


def phash(images: Any, boxes: Any, *, method: str = "dynrefer", image_index: Any = None, pil_order: str = "adaptive",
          impl: str = "fast", thumbnails: bool = False, hash_size: int = 8, highfreq_factor: int = 4) -> Any:
    """Perceptual hashes of many boxes of one or more images (first coefficient = most significant bit).

    ``method="dynrefer"``: the official view-selection hash (OpenCV gray, INTER_LINEAR resize to 224, orthonormal
    DCT, low 8 x 8 block against its mean), 64 bits. ``method="imagehash"``: bit-exact with ``imagehash.phash(crop,
    hash_size, highfreq_factor)`` for every ``hash_size >= 2`` and ``highfreq_factor >= 1`` with
    ``hash_size * highfreq_factor <= 4096`` (its Pillow LANCZOS resize to that side with ``pil_order`` as in
    ``crop_resize``; scipy's DCT in scipy's own arithmetic, so crops whose coefficients vanish in exact arithmetic —
    flat, mirror-symmetric, two pixels wide — hash as imagehash does); imagehash's errors for other values
    (``ValueError`` for ``hash_size < 2`` and ``highfreq_factor < 1``, ``TypeError`` for non-integers).
    ``phash_hex(hashes, hash_size)`` gives its string. Boxes follow the module's crop rule (clip, truncate).

    Returns ``uint64`` hashes: ``[V]`` when ``hash_size**2 <= 64`` (the bits as one integer, right-aligned: a
    ``hash_size`` of 5 gives 25-bit values), else ``[V, W]`` with ``W = ceil(hash_size**2 / 64)`` words of that
    integer, the most significant word first (``hash_words(hash_size)`` tells which). ``hamming(a, b)`` compares
    words; sum over the last axis for wide hashes. CUDA images and ``impl="elementwise"`` (the CUDA kernel's steps
    on the CPU) hash every size with ``hash_size * highfreq_factor <= 64``, bit for bit as the CPU.

    ``thumbnails=True`` (``method="imagehash"``, CPU) returns ``(hashes, thumbnails)``: the ``[V, R, R]`` uint8
    luma views the hashes are taken from (``R = hash_size * highfreq_factor``), equal to
    ``crop.convert("L").resize((R, R), Image.LANCZOS)``.
    """
    op = "phash"
    if method not in _METHOD:
        raise ValueError(f"{op}: method must be 'dynrefer' or 'imagehash', got {method!r}")
    if thumbnails and method != "imagehash":
        raise ValueError(f"{op}: thumbnails=True needs method='imagehash'")
    hs, hf = _hash_int(hash_size, "hash_size"), _hash_int(highfreq_factor, "highfreq_factor")
    if hs < 2:  # the argument builder checks these too; here so that no output is sized from them
        raise ValueError(f"{op}: hash_size must be >= 2 (imagehash: Hash size must be greater than or equal to 2), "
                         f"got {hs}")
    if not 1 <= hf <= 4096 or hs * hf > 4096:
        raise ValueError(f"{op}: highfreq_factor must be >= 1 and hash_size * highfreq_factor (the resize side) at "
                         f"most 4096 (Pillow: height and width must be > 0), got {hs} * {hf}")
    imgs, torch_in = _image_list(images, op)
    device = imgs[0].device if torch_in else None
    b = _boxes(boxes, torch_in, device, op)
    idx = _index(image_index, len(imgs), torch_in, device, op)
    nw, res = hash_words(hs), hs * hf
    shape = (b.shape[0],) if nw == 0 else (b.shape[0], nw)
    out: Any   # a tensor or an array, as the images
    if torch_in:
        import torch

        out = torch.empty(shape, dtype=torch.uint64, device=device)
    else:
        out = np.empty(shape, dtype=np.uint64)
    from dynrefer import _C

    kw: Dict[str, Any] = {}
    if thumbnails:
        if torch_in:
            import torch

            kw["thumbnails"] = torch.empty((b.shape[0], res, res), dtype=torch.uint8, device=device)
        else:
            kw["thumbnails"] = np.empty((b.shape[0], res, res), dtype=np.uint8)
    _call(_C.phash, imgs, torch_in, b, out, _METHOD[method], image_index=idx, pil_order=_pil_order(pil_order, op),
          impl=impl, hash_size=hs, highfreq_factor=hf, **kw)
    return (out, kw["thumbnails"]) if thumbnails else out


def phash_hex(hashes: Any, hash_size: int = 8) -> List[str]:
    """Hex strings of hashes: ``str(imagehash.phash(crop, hash_size, ...))`` for ``method="imagehash"`` (the
    ``hash_size**2`` bits as hex digits, ``ceil(hash_size**2 / 4)`` of them). ``hashes`` is ``[V]`` or, for hashes
    wider than 64 bits, ``[V, W]`` words as ``phash`` returns them."""
    bits = int(hash_size) ** 2
    nw = hash_words(hash_size)
    h = np.asarray(hashes.cpu() if is_torch_tensor(hashes) else hashes).astype(np.uint64)
    width = -(-bits // 4)
    if nw == 0:
        return [f"{int(v):0{width}x}" for v in h.reshape(-1)]
    if h.ndim < 1 or h.shape[-1] != nw:
        raise ValueError(f"phash_hex: hashes of hash_size {hash_size} are [V, {nw}] uint64 words, got shape {h.shape}")
    out = []
    for row in h.reshape(-1, nw):
        v = 0
        for w in row:
            v = (v << 64) | int(w)
        out.append(f"{v:0{width}x}")
    return out


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: Any, b: Any) -> np.ndarray:
    """Hamming distance of 64-bit hashes (broadcasting), as int64."""
    a = np.asarray(a.cpu() if is_torch_tensor(a) else a, dtype=np.uint64)
    b = np.asarray(b.cpu() if is_torch_tensor(b) else b, dtype=np.uint64)
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    by = np.ascontiguousarray(x).view(np.uint8).reshape(x.shape + (8,))
    return _POP8[by].sum(axis=-1).astype(np.int64)


def select_views(hashes: Any, coeffs: Any, num: int) -> Any:
    """Paper Eq. 1 greedy image-prior selection.

    Args:
        hashes: ``[R, 1 + C]`` uint64 — per region the tight view's hash, then one per candidate.
        coeffs: ``[C]`` candidate coefficients t (> 0, increasing for the official tie rule).
        num: how many candidates to pick per region (n − 1 for n views).

    Returns ``[R, num]`` int64 candidate indices: repeatedly the candidate with the largest
    ``hamming(h_0, h_i) / t_i`` among those not yet picked, ties to the smaller index.
    """
    op = "select_views"
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 0:
        raise ValueError(f"{op}: num must be a non-negative int, got {num!r}")
    n_cand = int(np.size(coeffs.cpu() if is_torch_tensor(coeffs) else coeffs))
    if num > n_cand:
        raise ValueError(f"{op}: num = {num} exceeds the {n_cand} candidates (out must have shape [R, n] with "
                         f"n <= {n_cand})")
    torch_in = is_torch_tensor(hashes)
    if torch_in:
        import torch

        h = hashes
        if h.dtype not in (torch.uint64, torch.int64):
            raise TypeError(f"{op}: hashes must be uint64, got {h.dtype}")
        h = h.view(torch.uint64) if h.dtype == torch.int64 else h
        c = torch.as_tensor(np.asarray(coeffs.cpu() if is_torch_tensor(coeffs) else coeffs, dtype=np.float64))
        c = c.to(h.device).contiguous()
        out = torch.empty((h.shape[0] if h.dim() == 2 else 0, int(num)), dtype=torch.int64, device=h.device)
    else:
        h = np.asarray(hashes)
        if h.dtype not in (np.uint64, np.int64):
            raise TypeError(f"{op}: hashes must be uint64, got {h.dtype}")
        h = h.view(np.uint64)
        c = np.ascontiguousarray(coeffs, dtype=np.float64).reshape(-1)
        out = np.empty((h.shape[0] if h.ndim == 2 else 0, int(num)), dtype=np.int64)
    if torch_in and h.device.type != "cpu":  # the CPU kernel checks them; a GPU's are checked here, on the host copy
        host = c.cpu().numpy()
        if not (np.isfinite(host).all() and (host > 0).all()):
            raise ValueError(f"{op}: coeffs must be finite and > 0")
    from dynrefer import _C

    if torch_in:
        from dynrefer.ops._torch_util import _desc, _device_of, _stream

        with _device_of(h):
            _C.select_views(_desc(h), _desc(c), _desc(out), stream=_stream(h))
    else:
        _C.select_views(h, c, out)
    return out
