"""Nested views against their peers: the official data pipeline (PIL crop + torchvision v2 Resize/ToImage/
ConvertImageDtype/Normalize with BoundingBoxes), imagehash.phash, a NumPy + OpenCV rendition of the official pHash,
a NumPy rendition of the official greedy selection, torch.nn.functional.interpolate; the torch and CUDA paths."""
import glob
import os
import random
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tv2 = pytest.importorskip("torchvision.transforms.v2")
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms.functional import InterpolationMode  # noqa: E402

from dynrefer.ops import crop_resize, hamming, phash, phash_hex, select_views  # noqa: E402
from dynrefer.ops.views import CLIP_MEAN, CLIP_STD  # noqa: E402
from dynrefer.views import CANDIDATES, NestedViews, view_boxes  # noqa: E402

from conftest import cuda_devices  # noqa: E402

S = 224


# ---- references -------------------------------------------------------------------------------------------

def official_transform(size=S):
    return tv2.Compose([tv2.Resize((size, size), interpolation=InterpolationMode.BICUBIC), tv2.ToImage(),
                        tv2.ConvertImageDtype(), tv2.Normalize(CLIP_MEAN, CLIP_STD)])


def official_crops(image, view_box_list, tight, size=S):
    """The official cascade_region_process for one region: views [n,3,S,S] and the region box in each frame."""
    h, w = image.shape[:2]
    vb = torch.from_numpy(np.asarray(view_box_list, np.float32)).clone()
    vb[:, 0::2] = vb[:, 0::2].clip(min=0, max=w)
    vb[:, 1::2] = vb[:, 1::2].clip(min=0, max=h)
    vb = vb.to(torch.int64)
    t = torch.from_numpy(np.asarray(tight, np.float32)).clone()
    t[0::2] = t[0::2].clip(min=0, max=w)
    t[1::2] = t[1::2].clip(min=0, max=h)
    t = t.to(torch.int64)
    tf = official_transform(size)
    views, boxes = [], []
    for x1, y1, x2, y2 in vb.tolist():
        crop = Image.fromarray(image[y1:y2, x1:x2])
        wr, hr = crop.size
        rb = t - torch.tensor([x1, y1, x1, y1])
        target = {"boxes": tv_tensors.BoundingBoxes(rb[None], format="XYXY", canvas_size=(hr, wr))}
        v, target = tf(crop, target)
        views.append(v)
        boxes.append(target["boxes"].data.to(torch.float32)[0])
    return torch.stack(views).numpy(), torch.stack(boxes).numpy()


def official_phash_coeffs(gray, box, res=224):
    import cv2

    x1, y1, x2, y2 = np.asarray(box, np.float32).astype(np.int64)
    region = cv2.resize(gray[y1:y2, x1:x2], (res, res))
    return cv2.dct(region)[0:8, 0:8]


def official_phash(gray, box):
    c = official_phash_coeffs(gray, box)
    bits = (c > c.mean()).ravel()
    return int("".join("1" if b else "0" for b in bits), 2), c


def official_greedy(h0_bits, cand_bits, weights, m):
    diff = np.zeros(len(weights))
    diff += (h0_bits[None] ^ cand_bits).sum(-1) / np.array(weights)
    sel = []
    for _ in range(m):
        ind = int(diff.argmax())
        sel.append(ind)
        diff[np.array(sel)] = 0
    return sel


def _bits(h):
    return np.array([(int(h) >> (63 - k)) & 1 for k in range(64)], np.int64)


def _photo_paths(shared_data):
    return sorted(glob.glob(os.path.join(shared_data, "images", "COCO_*.jpg")))


def _photos(shared_data, n=None):
    return [np.asarray(Image.open(f).convert("RGB")) for f in _photo_paths(shared_data)[:n]]


def _random_boxes(rng, n, w, h):
    out = []
    for _ in range(n):
        kind = rng.integers(0, 5)
        if kind == 0:  # touching the edges
            out.append([0, 0, rng.uniform(1, w), h])
        elif kind == 1:  # one pixel
            x, y = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
            out.append([x, y, x + 1.0, y + 1.0])
        elif kind == 2:  # small: upscaled
            x, y = rng.uniform(0, w - 30), rng.uniform(0, h - 30)
            out.append([x, y, x + rng.uniform(2, 30), y + rng.uniform(2, 30)])
        else:
            x = np.sort(rng.uniform(0, w, 2))
            y = np.sort(rng.uniform(0, h, 2))
            out.append([x[0], y[0], x[1] + 1, y[1] + 1])
    return np.clip(np.array(out, np.float32), 0, [w, h, w, h]).astype(np.float32)


def _nonempty(b, w, h):
    x1, x2 = (int(min(max(v, 0), w)) for v in (b[0], b[2]))
    y1, y2 = (int(min(max(v, 0), h)) for v in (b[1], b[3]))
    return x2 > x1 and y2 > y1


def _pillow_order():
    """'adaptive' when the installed Pillow picks the pass order, 'horizontal' for releases that always go first
    horizontally."""
    a = np.random.default_rng(0).integers(0, 256, (100, 20, 3), np.uint8)
    im = Image.fromarray(a)
    one = np.asarray(im.resize((16, 16), Image.BICUBIC))
    hfirst = np.asarray(im.resize((16, 100), Image.BICUBIC).resize((16, 16), Image.BICUBIC))
    return "horizontal" if np.array_equal(one, hfirst) else "adaptive"


# ---- crop_resize vs the official pipeline -------------------------------------------------------------------

def test_crop_resize_pil_equals_official_on_photos(shared_data, rng):
    order = _pillow_order()
    for im in _photos(shared_data, 6):
        h, w = im.shape[:2]
        b = _random_boxes(rng, 6, w, h)
        tight = b[0]
        views, rb = crop_resize(im, b, ref_boxes=np.repeat(tight[None], len(b), 0), pil_order=order)
        want_v, want_b = official_crops(im, b, tight)
        np.testing.assert_array_equal(views, want_v)
        np.testing.assert_array_equal(rb, want_b)


def test_crop_resize_tiled_schedule_equals_official_on_photos(shared_data, rng):
    """The CUDA kernel's block schedule run on the CPU (impl="tiled") against the official PIL pipeline on COCO
    photos at 224: whole-image views (column taps in the table), tight boxes, boxes partly outside."""
    order = _pillow_order()
    for im in _photos(shared_data, 3):
        h, w = im.shape[:2]
        b = _random_boxes(rng, 4, w, h)
        b[0] = [0, 0, w, h]
        tight = b[1]
        views, rb = crop_resize(im, b, ref_boxes=np.repeat(tight[None], len(b), 0), pil_order=order, impl="tiled")
        want_v, want_b = official_crops(im, b, tight)
        np.testing.assert_array_equal(views, want_v)
        np.testing.assert_array_equal(rb, want_b)


@pytest.mark.parametrize("trial", range(3))
def test_crop_resize_pil_equals_official_random(rng, trial):
    order = _pillow_order()
    h, w = (int(v) for v in rng.integers(20, 300, 2))
    im = rng.integers(0, 256, (h, w, 3), np.uint8)
    b = _random_boxes(rng, 8, w, h)
    size = int(rng.choice([16, 64, 224]))
    views, rb = crop_resize(im, b, size, ref_boxes=np.repeat(b[:1], 8, 0), pil_order=order)
    want_v, want_b = official_crops(im, b, b[0], size)
    np.testing.assert_array_equal(views, want_v)
    np.testing.assert_array_equal(rb, want_b)


def test_crop_resize_bilinear_pil(rng):
    im = rng.integers(0, 256, (90, 70, 3), np.uint8)
    b = _random_boxes(rng, 6, 70, 90)
    got = crop_resize(im, b, 48, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1), pil_order=_pillow_order())
    for k, (x1, y1, x2, y2) in enumerate(b.astype(np.int64)):
        want = np.asarray(Image.fromarray(im[y1:y2, x1:x2]).resize((48, 48), Image.BILINEAR))
        np.testing.assert_array_equal(np.rint(got[k].transpose(1, 2, 0) * 255).astype(np.uint8), want)


@pytest.mark.parametrize("interp,aa", [("bicubic", True), ("bilinear", True), ("bicubic", False), ("bilinear", False)])
def test_crop_resize_tensor_mode_equals_interpolate(rng, interp, aa):
    im = rng.integers(0, 256, (120, 90, 3), np.uint8)
    b = _random_boxes(rng, 6, 90, 120)
    got = crop_resize(im, b, 40, mode="tensor", interpolation=interp, antialias=aa, mean=(0, 0, 0), std=(1, 1, 1))
    for k, (x1, y1, x2, y2) in enumerate(b.astype(np.int64)):
        crop = torch.from_numpy(im[y1:y2, x1:x2]).permute(2, 0, 1)[None].float()
        want = torch.nn.functional.interpolate(crop, size=(40, 40), mode=interp, antialias=aa, align_corners=False)
        np.testing.assert_allclose(got[k], (want[0] / 255).numpy(), rtol=0, atol=2e-5)


def test_tensor_mode_boxes_are_exact(rng):
    im = rng.integers(0, 256, (50, 60, 3), np.uint8)
    view = np.array([[10.7, 5.2, 40.9, 45.1]], np.float32)
    region = np.array([[15.3, 9.9, 30.2, 20.8]], np.float32)
    _, rb = crop_resize(im, view, 64, ref_boxes=region, mode="tensor")
    x0, y0, cw, ch = 10, 5, 30, 40
    want = [(15.3 - x0) * 64 / cw, (9.9 - y0) * 64 / ch, (30.2 - x0) * 64 / cw, (20.8 - y0) * 64 / ch]
    np.testing.assert_allclose(rb[0], want, rtol=1e-6)


# ---- hashes -------------------------------------------------------------------------------------------------

def test_phash_imagehash_equals_imagehash_on_photos(shared_data, rng):
    imagehash = pytest.importorskip("imagehash")
    order = _pillow_order()
    for im in _photos(shared_data):
        h, w = im.shape[:2]
        b = np.concatenate([[[0, 0, w, h]], _random_boxes(rng, 5, w, h)]).astype(np.float32)
        got = phash_hex(phash(im, b, method="imagehash", pil_order=order))
        for k, (x1, y1, x2, y2) in enumerate(b.astype(np.int64)):
            assert got[k] == str(imagehash.phash(Image.fromarray(im[y1:y2, x1:x2]))), (k, b[k])


def test_phash_imagehash_random(rng):
    imagehash = pytest.importorskip("imagehash")
    order = _pillow_order()
    for _ in range(4):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        im = rng.integers(0, 256, (h, w, 3), np.uint8)
        b = _random_boxes(rng, 6, w, h) if min(h, w) > 31 else np.array([[0, 0, w, h]], np.float32)
        got = phash_hex(phash(im, b, method="imagehash", pil_order=order))
        for k, (x1, y1, x2, y2) in enumerate(b.astype(np.int64)):
            assert got[k] == str(imagehash.phash(Image.fromarray(im[y1:y2, x1:x2]))), (k, b[k], (h, w))


def _pil_thumbnails(im, b):
    lanczos = Image.Resampling.LANCZOS
    return np.stack([np.asarray(Image.fromarray(im[y1:y2, x1:x2]).convert("L").resize((32, 32), lanczos))
                     for x1, y1, x2, y2 in b.astype(np.int64)])


def _thumbnail_boxes(rng, w, h, n):
    """Random boxes plus tall, wide, thin, 1-pixel, full-image and edge-touching ones (both pass orders)."""
    fixed = [[0, 0, w, h], [0, 0, max(1, w // 9), h], [0, 0, w, max(1, h // 9)], [w - 1, h - 1, w, h],
             [0, h // 3, w, h // 3 + 1], [w // 2, 0, w // 2 + 1, h], [w - 33, h - 40, w, h]]
    fixed = [[max(0, x1), max(0, y1), x2, y2] for x1, y1, x2, y2 in fixed]
    return np.concatenate([np.array(fixed, np.float32), _random_boxes(rng, n, w, h)]).astype(np.float32)


@pytest.mark.parametrize("impl", ["fast", "elementwise"])
def test_phash_imagehash_thumbnails_equal_pillow(shared_data, rng, impl):
    """The 32 x 32 luma views (the whole integer pipeline, not only the hash bits) equal Pillow's, pixel for pixel."""
    order = _pillow_order()
    sizes = [(int(rng.integers(40, 300)), int(rng.integers(40, 300)), 3) for _ in range(3)]
    ims = list(_photos(shared_data, 2)) + [rng.integers(0, 256, hw, np.uint8) for hw in sizes]
    for im in ims:
        h, w = im.shape[:2]
        b = _thumbnail_boxes(rng, w, h, 12 if impl == "fast" else 3)
        hashes, th = phash(im, b, method="imagehash", pil_order=order, thumbnails=True, impl=impl)
        np.testing.assert_array_equal(th, _pil_thumbnails(im, b))
        np.testing.assert_array_equal(hashes, phash(im, b, method="imagehash", pil_order=order, impl=impl))


def test_phash_imagehash_thumbnails_uncached_lengths(rng):
    # crops longer than the tap cache (4096) take per-call taps; a 1-pixel-high strip keeps the test small
    im = rng.integers(0, 256, (3, 5000, 3), np.uint8)
    b = np.array([[0, 0, 5000, 3], [7, 1, 4999, 2], [0, 0, 4100, 1]], np.float32)
    _, th = phash(im, b, method="imagehash", pil_order=_pillow_order(), thumbnails=True)
    np.testing.assert_array_equal(th, _pil_thumbnails(im, b))


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_phash_imagehash_simd_levels(shared_data, isa, tmp_path):
    """The portable, AVX2 and AVX-512 kernels (chosen per CPU; DYNREFER_CPU_ISA caps the choice) give the same
    thumbnails and hashes as the widest one (AMX where the CPU and the kernel allow it), at the default size and
    at sizes whose resize side is not a multiple of the vector widths."""
    import subprocess
    import sys

    script = (
        "import numpy as np, sys; from PIL import Image; from dynrefer.ops import phash\n"
        "im = np.asarray(Image.open(sys.argv[1]).convert('RGB')); h, w = im.shape[:2]\n"
        "g = np.random.default_rng(5); xy = g.uniform(0, 0.7, (40, 2)) * [w, h]\n"
        "b = np.concatenate([xy, xy + g.uniform(0.02, 0.3, (40, 2)) * [w, h]], 1).astype(np.float32)\n"
        "b = np.concatenate([b, [[0, 0, 2, 90], [5, 5, 6, 70], [0, 0, 64, 1], [3, 3, 4, 4]]]).astype(np.float32)\n"
        "t = [phash(im, b, method='imagehash', hash_size=s, highfreq_factor=f, thumbnails=True) for s, f in\n"
        "     ((8, 4), (5, 3), (7, 1), (16, 4))]\n"
        "np.savez(sys.argv[2], *[a for h, th in t for a in (h, th)])\n"
        "from dynrefer import _C; print(_C.views_cpu_isa())\n")
    photo = _photo_paths(shared_data)[0]
    outs = {}
    for cap in (isa, "native"):
        env = dict(os.environ, DYNREFER_CPU_ISA=cap)
        f = tmp_path / f"{cap}.npz"
        used = subprocess.run([sys.executable, "-c", script, photo, str(f)], check=True, env=env,
                              capture_output=True, text=True).stdout.split()[-1]
        levels = ["portable", "avx2", "avx512", "amx"]
        top = len(levels) - 1 if cap == "native" else levels.index(cap.replace("default", "portable"))
        assert used in levels and levels.index(used) <= top, (cap, used)
        with np.load(f) as z:
            outs[cap] = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    assert len(outs[isa]) == 8
    for a, b in zip(outs[isa], outs["native"]):
        np.testing.assert_array_equal(a, b)


def test_phash_thumbnails_errors():
    im = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="imagehash"):
        phash(im, [[0, 0, 10, 10]], method="dynrefer", thumbnails=True)


def test_phash_dynrefer_equals_official_function(shared_data, rng):
    cv2 = pytest.importorskip("cv2")
    total = exact = 0
    for im in _photos(shared_data, 5):
        h, w = im.shape[:2]
        gray = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32)
        regions = _random_boxes(rng, 4, w, h)
        vb = view_boxes(regions, (0.0,) + CANDIDATES, w, h).reshape(-1, 4)
        got = phash(im, vb)
        for k, box in enumerate(vb):
            want, coef = official_phash(gray, box)
            diff = _bits(got[k]) ^ _bits(want)
            # a bit may differ only where the official float32 coefficient ties its mean within float32 rounding
            margin = np.abs(coef - coef.mean()).ravel()
            assert (margin[diff == 1] <= 1e-4 * np.abs(coef).max()).all(), (k, box)
            total += 1
            exact += int(got[k] == want)
    assert exact >= 0.97 * total, (exact, total)


# ---- selection and the whole transform -----------------------------------------------------------------------

def test_select_views_equals_official_greedy(rng):
    for _ in range(50):
        hashes = rng.integers(0, 2**63, (4, 11), dtype=np.int64).astype(np.uint64)
        hashes[:, 1:] ^= rng.integers(0, 2**20, (4, 10), dtype=np.int64).astype(np.uint64)  # near the tight view
        m = int(rng.integers(1, 5))
        got = select_views(hashes, CANDIDATES, m)
        for r in range(4):
            want = official_greedy(_bits(hashes[r, 0]), np.stack([_bits(v) for v in hashes[r, 1:]]), CANDIDATES, m)
            if len(set(want)) == m:  # the official loop can pick a zero-score candidate twice; ours never repeats
                assert got[r].tolist() == want


def test_nested_views_equal_official_processor(shared_data, rng):
    """The whole eval-time processor: pHash of tight + 10 candidates, greedy choice, crops of the 3 views."""
    cv2 = pytest.importorskip("cv2")
    order = _pillow_order()
    nv = NestedViews(prior="image")
    agree = total = 0
    for im in _photos(shared_data, 3):
        h, w = im.shape[:2]
        regions = _random_boxes(rng, 3, w, h)
        gray = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32)
        out = crop_out = nv(im, regions)
        for r, reg in enumerate(regions):
            h0 = _bits(official_phash(gray, view_boxes(reg[None], [0.0], w, h)[0, 0])[0])
            cb = view_boxes(reg[None], CANDIDATES, w, h)[0]
            hc = np.stack([_bits(official_phash(gray, c)[0]) for c in cb])
            sel = official_greedy(h0, hc, CANDIDATES, 2)
            want_t = [0.0] + [CANDIDATES[i] for i in sel]
            total += 1
            if np.allclose(out["coeffs"][r], want_t):
                agree += 1
                vbs = view_boxes(reg[None], np.array(want_t), w, h)[0]
                want_v, want_b = official_crops(im, vbs, vbs[0])
                if order == "adaptive":
                    np.testing.assert_array_equal(crop_out["views"][r], want_v)
                np.testing.assert_array_equal(crop_out["boxes"][r], want_b)
    assert agree >= total - 1, (agree, total)


def test_nested_views_official_keys(rng):
    im = rng.integers(0, 256, (60, 80, 3), np.uint8)
    out = NestedViews(size=32).official(im, [[5, 5, 30, 40]])
    assert set(out) == {"cascade_region_images", "cascade_region_bboxes", "cascade_region_ratios"}
    assert out["cascade_region_images"].shape == (1, 3, 3, 32, 32)
    assert out["cascade_region_ratios"].dtype == torch.float64


def test_stochastic_views_in_forked_workers(rng):
    im = rng.integers(0, 256, (40, 40, 3), np.uint8)
    nv = NestedViews(size=8, prior="stochastic", seed=0)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.from_numpy(nv(im, [[5, 5, 20, 20]] * 4)["coeffs"])

    dl = torch.utils.data.DataLoader(DS(), batch_size=2, num_workers=2, multiprocessing_context="fork")
    got = torch.cat(list(dl))
    assert got.shape == (8, 4, 3) and (got[..., 0] == 0).all()
    assert len({tuple(r.flatten().tolist()) for r in got}) > 1  # workers do not replay one stream


_SEEDED_SCRIPT = """
import sys, numpy as np, torch
from dynrefer.views import NestedViews
im = np.zeros((40, 40, 3), np.uint8)
nv = NestedViews(size=8, prior="stochastic", seed=0)
main = [nv.choose(im, [[5, 5, 20, 20]] * 4).tolist() for _ in range(3)]

class DS(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.from_numpy(nv.choose(im, [[5, 5, 20, 20]] * 4))

dl = torch.utils.data.DataLoader(DS(), batch_size=2, num_workers=2, multiprocessing_context="fork")
print(repr((main, torch.cat(list(dl)).tolist())))
"""


def test_seed_gives_the_same_views_in_every_process():
    import subprocess
    import sys

    runs = [subprocess.run([sys.executable, "-c", _SEEDED_SCRIPT], check=True, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(k))).stdout for k in range(2)]
    assert runs[0] == runs[1]
    main, workers = eval(runs[0])
    assert len({repr(m) for m in main}) > 1  # the stream advances
    assert len({repr(w) for w in workers}) > 1  # the workers do not replay one stream
    here = NestedViews(size=8, prior="stochastic", seed=0)
    assert here.choose(np.zeros((40, 40, 3), np.uint8), [[5, 5, 20, 20]] * 4).tolist() == main[0]


# ---- torch and CUDA paths -----------------------------------------------------------------------------------

def test_torch_cpu_equals_numpy(rng):
    im = rng.integers(0, 256, (70, 50, 3), np.uint8)
    b = _random_boxes(rng, 5, 50, 70)
    want = crop_resize(im, b, 32)
    got = crop_resize(torch.from_numpy(im), torch.from_numpy(b), 32)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), want)
    bf = crop_resize(torch.from_numpy(im), torch.from_numpy(b), 32, dtype="bfloat16")
    assert bf.dtype == torch.bfloat16
    np.testing.assert_array_equal(bf.float().numpy(), torch.from_numpy(want).bfloat16().float().numpy())
    h = phash(torch.from_numpy(im), torch.from_numpy(b), method="imagehash")
    assert h.dtype == torch.uint64
    np.testing.assert_array_equal(h.numpy(), phash(im, b, method="imagehash"))
    sel = select_views(torch.from_numpy(np.zeros((2, 11), np.uint64)), CANDIDATES, 2)
    assert sel.tolist() == [[0, 1], [0, 1]]
    out = NestedViews(size=16)(torch.from_numpy(im), b)
    np.testing.assert_array_equal(out["views"].numpy(), NestedViews(size=16)(im, b)["views"])


def test_meta_tensors_give_meta_outputs():
    im = torch.empty((60, 80, 3), dtype=torch.uint8, device="meta")
    b = torch.tensor([[0, 0, 10, 10], [5, 5, 50, 40]], dtype=torch.float32)
    v, rb = crop_resize(im, b, 16, ref_boxes=b)
    assert v.device.type == "meta" and v.shape == (2, 3, 16, 16) and rb.shape == (2, 4)
    assert crop_resize(im, b, 16, dtype="bfloat16").dtype == torch.bfloat16
    h = phash([im, im], b, image_index=[0, 1], method="imagehash")
    assert h.device.type == "meta" and h.shape == (2,) and h.dtype == torch.uint64
    _, th = phash(im, b, method="imagehash", thumbnails=True)
    assert th.device.type == "meta" and th.shape == (2, 32, 32)
    # the argument checks still run
    with pytest.raises(ValueError, match=r"images\[0\] has shape \[3, 60, 80\].*channel-first"):
        crop_resize(torch.empty((3, 60, 80), dtype=torch.uint8, device="meta"), b)
    with pytest.raises(TypeError, match="uint8"):
        phash(torch.empty((60, 80, 3), device="meta"), b)
    with pytest.raises(ValueError, match=r"\[V, 4\]"):
        crop_resize(im, b[:, :3])


@pytest.mark.parametrize("device", cuda_devices())
def test_cuda_equals_cpu(device, rng):
    im = rng.integers(0, 256, (150, 130, 3), np.uint8)
    b = _random_boxes(rng, 12, 130, 150)
    ims = [torch.from_numpy(im).to(device), torch.from_numpy(im[::2, ::3].copy()).to(device)]
    idx = torch.tensor([0, 1] * 6, device=device)
    for mode in ("pil", "tensor"):
        got, rb = crop_resize(ims, torch.from_numpy(b).to(device), 48, image_index=idx, mode=mode,
                              ref_boxes=torch.from_numpy(b).to(device))
        want, wb = crop_resize([im, im[::2, ::3].copy()], b, 48, image_index=idx.cpu().numpy(), mode=mode, ref_boxes=b)
        if mode == "pil":
            np.testing.assert_array_equal(got.cpu().numpy(), want)
        else:
            np.testing.assert_allclose(got.cpu().numpy(), want, atol=2e-5, rtol=0)
        np.testing.assert_array_equal(rb.cpu().numpy(), wb)
    for method in ("dynrefer", "imagehash"):
        g = phash(ims, torch.from_numpy(b).to(device), image_index=idx, method=method).cpu().numpy()
        w = phash([im, im[::2, ::3].copy()], b, image_index=idx.cpu().numpy(), method=method)
        assert (hamming(g, w) <= (1 if method == "dynrefer" else 0)).all()
    hs = torch.from_numpy(np.random.default_rng(1).integers(0, 2**62, (7, 11), dtype=np.int64).astype(np.uint64))
    np.testing.assert_array_equal(select_views(hs.to(device), CANDIDATES, 2).cpu().numpy(),
                                  select_views(hs.numpy(), CANDIDATES, 2))


@pytest.mark.parametrize("device", cuda_devices())
def test_cuda_crop_resize_equals_official_on_photos(device, shared_data, rng):
    """The tiled CUDA kernel against the official PIL pipeline on COCO photos at 224, with views whose taps fit the
    block's tables and views that fall back to the per-element bodies (a 4x-upsampled photo, whole)."""
    order = _pillow_order()
    photos = _photos(shared_data, 3)
    photos.append(np.asarray(Image.fromarray(photos[0]).resize((photos[0].shape[1] * 4, photos[0].shape[0] * 4))))
    for im in photos:
        h, w = im.shape[:2]
        b = _random_boxes(rng, 5, w, h)
        b[0] = [0, 0, w, h]
        tight = b[1]
        ref = np.repeat(tight[None], len(b), 0)
        got, rb = crop_resize(torch.from_numpy(im.copy()).to(device), torch.from_numpy(b).to(device),
                              ref_boxes=torch.from_numpy(ref).to(device), pil_order=order)
        want_v, want_b = official_crops(im, b, tight)
        np.testing.assert_array_equal(got.cpu().numpy(), want_v)
        np.testing.assert_array_equal(rb.cpu().numpy(), want_b)


def test_random_module_untouched(rng):
    # the transform must not consume Python's global random stream (the training loop seeds and uses it)
    state = random.getstate()
    NestedViews(size=8, prior="stochastic")(rng.integers(0, 256, (20, 20, 3), np.uint8), [[2, 2, 10, 10]])
    assert random.getstate() == state


def test_phash_thumbnails_binding_rejects_bad_buffers():
    """The binding checks the thumbnails buffer itself (shape, dtype, layout, method, device) before any kernel."""
    from dynrefer import _C

    im = np.zeros((40, 50, 3), np.uint8)
    b = np.array([[0, 0, 10, 10], [5, 5, 40, 30]], np.float32)
    h = np.empty(2, np.uint64)
    bad = [np.empty((2, 32, 32), np.float32), np.empty((3, 32, 32), np.uint8), np.empty((2, 32, 31), np.uint8),
           np.empty((2, 32, 64), np.uint8)[:, :, ::2], np.empty((2, 1024), np.uint8), "not an array"]
    for th in bad:
        with pytest.raises((ValueError, TypeError)):
            _C.phash([im], b, h, 1, thumbnails=th)
    with pytest.raises(ValueError, match="imagehash"):
        _C.phash([im], b, h, 0, thumbnails=np.empty((2, 32, 32), np.uint8))
    th = np.empty((2, 32, 32), np.uint8)
    _C.phash([im], b, h, 1, thumbnails=th)
    np.testing.assert_array_equal(th, _pil_thumbnails(im, b))


# ---- imagehash at every size, degenerate crops, memory ---------------------------------------------------------

def _ih(im, hs=8, hf=4):
    imagehash = pytest.importorskip("imagehash")
    return str(imagehash.phash(Image.fromarray(im), hs, hf))


def test_phash_imagehash_thin_and_tiny_crops(rng):
    """Every width and height 1..64 on thin crops (random, flat, mirror-symmetric): where coefficients vanish in
    exact arithmetic the bits follow scipy's DCT rounding, which the kernel reproduces."""
    got, want = [], []
    for a in range(1, 65):
        for b in (1, 2, 3, int(rng.integers(4, 65))):
            for h, w in ((a, b), (b, a)):
                r = rng.integers(0, 256, (h, w, 3), np.uint8)
                mirror = np.concatenate([r[:, : (w + 1) // 2], r[:, : w // 2][:, ::-1]], 1)
                for im in (r, np.full((h, w, 3), int(rng.integers(0, 256)), np.uint8), mirror):
                    got.append(phash_hex(phash(im, [[0, 0, w, h]], method="imagehash"))[0])
                    want.append(_ih(im))
    assert got == want


@pytest.mark.parametrize("hs,hf", [(2, 1), (3, 1), (5, 3), (7, 4), (8, 1), (8, 7), (9, 4), (11, 2), (16, 4),
                                   (13, 5)])
def test_phash_imagehash_every_size(shared_data, rng, hs, hf):
    ims = [rng.integers(0, 256, (90, 2, 3), np.uint8), rng.integers(0, 256, (37, 53, 3), np.uint8),
           _photos(shared_data, 1)[0][:200, :260]]
    for im in ims:
        h, w = im.shape[:2]
        b = np.array([[0, 0, w, h], [w // 3, h // 4, w, h], [0, 0, 2, h]], np.float32)
        hashes, th = phash(im, b, method="imagehash", hash_size=hs, highfreq_factor=hf, thumbnails=True)
        assert hashes.dtype == np.uint64 and hashes.shape == ((3,) if hs * hs <= 64 else (3, -(-hs * hs // 64)))
        assert th.shape == (3, hs * hf, hs * hf)
        got = phash_hex(hashes, hs)
        for k, (x1, y1, x2, y2) in enumerate(b.astype(np.int64)):
            assert got[k] == _ih(im[y1:y2, x1:x2], hs, hf), (hs, hf, k)
    t = phash(torch.from_numpy(ims[1]), torch.tensor([[0, 0, 53, 37]]), method="imagehash", hash_size=hs,
              highfreq_factor=hf)
    assert phash_hex(t, hs) == [_ih(ims[1], hs, hf)]


@pytest.mark.parametrize("hs,hf", [(8, 4), (2, 1), (5, 3), (7, 1), (8, 8), (16, 4)])
def test_phash_imagehash_block_schedule(rng, hs, hf):
    """impl="elementwise" runs the CUDA kernel's schedule (both axes' taps once per view, Pillow's first pass once
    per source line and output in chunks, each added into the second pass's sums; the per-pixel body for crops
    whose tables do not fit): its thumbnails and hashes equal the fast path's for both pass orders, and imagehash's,
    on random, flat, thin, tiny, tall, wide and large crops (one chunk or several, both pass orders)."""
    order = _pillow_order()
    r = rng.integers(0, 256, (420, 380, 3), np.uint8)
    flat = np.full((420, 380, 3), int(rng.integers(0, 256)), np.uint8)
    b = np.array([[0, 0, 380, 420], [10, 20, 110, 120], [5, 5, 6, 6], [3, 4, 5, 9], [0, 0, 1, 300], [0, 7, 2, 9],
                  [0, 0, 300, 2], [30, 0, 50, 250], [0, 30, 250, 50], [40, 40, 340, 320], [17, 3, 80, 11],
                  [1, 1, 64, 64], [0, 0, 200, 380], [0, 0, 380, 160]], np.float32)
    b = np.concatenate([b, _random_boxes(rng, 4, 380, 420)]).astype(np.float32)
    kw = dict(method="imagehash", hash_size=hs, highfreq_factor=hf, thumbnails=True)
    for im in (r, flat):
        for po in ("adaptive", "horizontal"):
            fast, th = phash(im, b, pil_order=po, **kw)
            elem, th_e = phash(im, b, pil_order=po, impl="elementwise", **kw)
            np.testing.assert_array_equal(th_e, th)
            np.testing.assert_array_equal(elem, fast)
            if po == order:
                got = phash_hex(elem, hs)
                for k, (x1, y1, x2, y2) in enumerate(b.astype(np.int64)):
                    assert got[k] == _ih(im[y1:y2, x1:x2], hs, hf), (hs, hf, k, b[k])


def test_phash_dynrefer_block_schedule(rng):
    """impl="elementwise" runs the CUDA kernel's schedule for the official hash (both axes' taps once per view, each
    source row's horizontal value once per column): its hashes equal the fast path's on random, flat, thin, tiny,
    tall, wide and large crops (enlarged, reduced by less than 2 and by more, 1-pixel lines)."""
    r = rng.integers(0, 256, (700, 600, 3), np.uint8)
    flat = np.full((700, 600, 3), int(rng.integers(0, 256)), np.uint8)
    b = np.array([[0, 0, 600, 700], [10, 20, 110, 120], [5, 5, 6, 6], [3, 4, 5, 9], [0, 0, 1, 300], [0, 7, 2, 9],
                  [0, 0, 300, 2], [30, 0, 50, 650], [0, 30, 590, 50], [40, 40, 340, 320], [17, 3, 80, 11],
                  [1, 1, 225, 223], [0, 0, 200, 680], [0, 0, 600, 160], [7, 9, 457, 459], [100, 200, 101, 201]],
                 np.float32)
    b = np.concatenate([b, _random_boxes(rng, 6, 600, 700)]).astype(np.float32)
    for im in (r, flat):
        fast = phash(im, b, method="dynrefer")
        elem = phash(im, b, method="dynrefer", impl="elementwise")
        np.testing.assert_array_equal(elem, fast)


def test_phash_imagehash_size_errors():
    im = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="Hash size must be greater than or equal to 2"):
        phash(im, [[0, 0, 5, 5]], method="imagehash", hash_size=1)
    with pytest.raises(ValueError, match="height and width must be > 0"):
        phash(im, [[0, 0, 5, 5]], method="imagehash", highfreq_factor=0)
    with pytest.raises(TypeError, match="hash_size must be an int"):
        phash(im, [[0, 0, 5, 5]], method="imagehash", hash_size=8.0)
    with pytest.raises(ValueError, match="dynrefer"):
        phash(im, [[0, 0, 5, 5]], hash_size=16)
    from dynrefer import _C

    with pytest.raises(ValueError, match="Hash size must be greater than or equal to 2"):
        _C.phash([im], np.zeros((1, 4), np.float32), np.empty(1, np.uint64), 1, hash_size=1)


_PEAK_SCRIPT = """
import sys, numpy as np
from dynrefer.ops import phash
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024
im = np.zeros((20000, 20000, 3), np.uint8)  # 1.2 GB, never touched: its pages stay unallocated
base = hwm()
for m in ('imagehash', 'dynrefer'):
    phash(im, [[100, 100, 110, 110], [5000, 7000, 5030, 7040]], method=m)
print(hwm() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_phash_memory_follows_the_boxes():
    """Hashing small boxes of a 20000 x 20000 image reads only their pixels: no luma plane of the whole image."""
    import subprocess
    import sys

    grown = int(subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], check=True, capture_output=True,
                               text=True).stdout.split()[-1])
    assert grown < 64 << 20, grown  # the image is 1.2 GB, its luma plane 400 MB


_CROP_PEAK_SCRIPT = """
import json, sys
import numpy as np
from dynrefer.ops import crop_resize
def hwm():  # this process's peak RSS (ru_maxrss would carry the parent's peak across exec)
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024
h, w, c, size = json.loads(sys.argv[1])
img = np.empty((h, w, c), np.uint8)
img[:] = 3
img[::5, :, 0] = 250
crop_resize(img[:40, :40], [[0, 0, 40, 40]], size=size)  # thread pool and first-call state, before the baseline
base = hwm()
crop_resize(img, [[0, 0, w, h]], size=size)
print(hwm() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("h,w,c", [(6000, 6000, 3), (6000, 1500, 3), (6000, 1500, 4)])
def test_crop_resize_pil_memory_follows_the_work(h, w, c):
    """A large crop resized to 8 x 8 on the PIL path needs buffers of the rows it reads times the output width, or of
    a block of rows times the crop width — not the crop (108 MB here) or transposed copies of it."""
    import json
    import subprocess

    size = 8
    grown = int(subprocess.run([sys.executable, "-c", _CROP_PEAK_SCRIPT, json.dumps([h, w, c, size])], check=True,
                               capture_output=True, text=True).stdout.split()[-1])
    work = h * size * 3 + 64 * w * 3 + size * w * 3 * 4  # first-pass result, a row block, int32 sums
    assert grown < (16 << 20) + 8 * work, (grown, work)
