"""Nested-view kernels at the NumPy level (also run against the ASan+UBSan build in CI): the CUDA bodies on the CPU
against the fast paths, degenerate geometry, strided inputs, threads, bad input, the imagehash golden value."""
import os
import threading

import numpy as np
import pytest

import dynrefer
from dynrefer.ops import crop_resize, hamming, phash, phash_hex, select_views
from dynrefer.views import CANDIDATES, NestedViews, view_boxes


def _image(rng, h, w, c=3):
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _boxes(rng, n, w, h, margin=10):
    x = np.sort(rng.uniform(-margin, w + margin, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(-margin, h + margin, size=(n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)


@pytest.mark.parametrize("mode,interp,aa", [("pil", "bicubic", True), ("pil", "bilinear", True),
                                            ("tensor", "bicubic", True), ("tensor", "bilinear", True),
                                            ("tensor", "bicubic", False), ("tensor", "bilinear", False)])
def test_crop_resize_elementwise_equals_fast(rng, mode, interp, aa):
    im = _image(rng, 37, 53)
    b = _boxes(rng, 6, 53, 37)
    b[0] = [0, 0, 53, 37]        # whole image (downscale in x, upscale... with size 24)
    b[1] = [3.2, 4.7, 4.9, 5.1]  # one pixel
    kw = dict(size=24, mode=mode, interpolation=interp, antialias=aa, ref_boxes=b)
    fast, rf = crop_resize(im, b, **kw)
    elem, re_ = crop_resize(im, b, impl="elementwise", **kw)
    if mode == "pil":
        np.testing.assert_array_equal(fast, elem)
    else:  # the fast path sums rows first, the element body per tap: float rounding only
        np.testing.assert_allclose(fast, elem, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(rf, re_)


@pytest.mark.parametrize("order", ["adaptive", "horizontal"])
def test_crop_resize_pass_orders_elementwise(rng, order):
    im = _image(rng, 90, 20)  # tall: the adaptive rule resamples vertically first
    b = np.array([[0, 0, 20, 90], [2, 5, 19, 80]], np.float32)
    fast = crop_resize(im, b, size=16, pil_order=order)
    elem = crop_resize(im, b, size=16, pil_order=order, impl="elementwise")
    np.testing.assert_array_equal(fast, elem)


@pytest.mark.parametrize("mode,interp,aa", [("pil", "bicubic", True), ("pil", "bilinear", True),
                                            ("tensor", "bicubic", True), ("tensor", "bilinear", False),
                                            ("tensor", "bicubic", False)])
def test_crop_resize_tiled_schedule_equals_elementwise(rng, mode, interp, aa):
    """The CUDA kernel's block schedule (bands of rows, column taps and Pillow's first pass in shared tables; the
    per-element bodies for views too large for them), run on the CPU, equals the per-element bodies bit for bit:
    both pass orders, sizes not a multiple of the band, more images than one launch's table (chunks), downscales
    beyond the tables, one-pixel and outside boxes."""
    ims = [_image(rng, int(rng.integers(5, 60)), int(rng.integers(5, 60))) for _ in range(35)]
    ims[3] = _image(rng, 700, 40)   # tall: vertical pass first, many taps along y
    ims[4] = _image(rng, 30, 1300)  # wide: column taps beyond the table at this size
    idx = rng.integers(0, len(ims), 40).astype(np.int64)
    idx[:4] = [3, 4, 34, 0]
    b = np.concatenate([_boxes(rng, 1, ims[i].shape[1], ims[i].shape[0]) for i in idx])
    b[0] = [0, 0, 40, 700]
    b[1] = [0, 0, 1300, 30]
    b[2] = [3.2, 4.7, 4.9, 5.1]     # one pixel
    b[3] = [-50, -50, -10, -10]     # outside: widened to one pixel
    for size in (13, 40):
        kw = dict(size=size, mode=mode, interpolation=interp, antialias=aa, image_index=idx, ref_boxes=b)
        elem, re_ = crop_resize(ims, b, impl="elementwise", **kw)
        tiled, rt = crop_resize(ims, b, impl="tiled", **kw)
        np.testing.assert_array_equal(tiled, elem)
        np.testing.assert_array_equal(rt, re_)
    order = crop_resize(ims[3], b[:1], size=16, pil_order="horizontal", impl="tiled")
    np.testing.assert_array_equal(order, crop_resize(ims[3], b[:1], size=16, pil_order="horizontal"))


@pytest.mark.parametrize("method", ["dynrefer", "imagehash"])
def test_phash_elementwise_equals_fast(rng, method):
    im = _image(rng, 61, 47)
    b = _boxes(rng, 5, 47, 61)
    b[0] = [0, 0, 47, 61]
    b[1] = [5, 5, 6, 6]
    fast = phash(im, b, method=method)
    elem = phash(im, b, method=method, impl="elementwise")
    if method == "imagehash":
        np.testing.assert_array_equal(fast, elem)
    else:  # double sums in a different order: a bit may flip only where a coefficient ties the mean
        assert (hamming(fast, elem) <= 1).all()


@pytest.mark.parametrize("hs,hf", [(8, 4), (2, 1), (5, 3), (7, 1), (16, 4), (8, 8)])
def test_phash_imagehash_elementwise_every_size(rng, hs, hf):
    """The CUDA kernel's steps (scipy's DCT per line, median by rank) equal the fast path bit for bit, also on crops
    whose coefficients vanish in exact arithmetic (flat, mirror-symmetric, two pixels wide), where the bits follow
    the DCT's rounding."""
    r = _image(rng, 37, 29)
    mirror = np.concatenate([r[:, :15], r[:, :14][:, ::-1]], 1)
    flat = np.full((37, 29, 3), 77, np.uint8)
    for im in (r, mirror, flat):
        b = np.array([[0, 0, 29, 37], [0, 0, 2, 37], [3, 4, 5, 6], [0, 0, 29, 1]], np.float32)
        fast, th = phash(im, b, method="imagehash", hash_size=hs, highfreq_factor=hf, thumbnails=True)
        elem, th_e = phash(im, b, method="imagehash", hash_size=hs, highfreq_factor=hf, thumbnails=True,
                           impl="elementwise")
        np.testing.assert_array_equal(th, th_e)
        np.testing.assert_array_equal(fast, elem)


def test_phash_imagehash_elementwise_size_limit():
    with pytest.raises(TypeError, match="hash_size \\* highfreq_factor <= 64"):
        phash(np.zeros((9, 9, 3), np.uint8), [[0, 0, 9, 9]], method="imagehash", hash_size=9, highfreq_factor=8,
              impl="elementwise")


def test_imagehash_golden(shared_data):
    # imagehash's own test image hashes to ba8c84536bd3c366 (its test suite); alpha is ignored
    from PIL import Image

    img = np.asarray(Image.open(os.path.join(shared_data, "images", "imagehash_golden.png")).convert("RGB"))
    h = phash(img, [[0, 0, img.shape[1], img.shape[0]]], method="imagehash")
    assert phash_hex(h) == ["ba8c84536bd3c366"]


def test_flat_views_hash_exactly():
    # a constant crop: every coefficient but the DC term is exactly zero, so only the first bit is set
    im = np.full((40, 30, 3), 77, np.uint8)
    h = phash(im, [[0, 0, 30, 40], [3, 3, 4, 4]], method="imagehash")
    assert phash_hex(h) == ["8000000000000000"] * 2


def test_degenerate_boxes_defined(rng):
    im = _image(rng, 20, 30)
    b = np.array([[5, 5, 5, 5],        # zero area
                  [-50, -50, -10, -10],  # outside, top-left
                  [40, 30, 90, 80],    # outside, bottom-right
                  [10, 2, 3, 9],       # inverted
                  [0, 0, 1e9, 1e9]], np.float32)
    views, rb = crop_resize(im, b, size=8, ref_boxes=b)
    assert np.isfinite(views).all() and np.isfinite(rb).all()
    # an empty crop becomes the one pixel at the clamped start: a constant view of that pixel
    one = crop_resize(im, [[5, 5, 6, 6]], size=8)
    np.testing.assert_array_equal(views[0], one[0])
    corner = crop_resize(im, [[29, 19, 30, 20]], size=8)
    np.testing.assert_array_equal(views[2], corner[0])
    np.testing.assert_array_equal(views[4], crop_resize(im, [[0, 0, 30, 20]], size=8)[0])
    h = phash(im, b)
    assert h.dtype == np.uint64 and h.shape == (5,)


def test_non_finite_boxes_refused(rng):
    im = _image(rng, 20, 30)
    for bad in (np.nan, np.inf, -np.inf):
        b = np.array([[0, 0, 5, 5], [1, bad, 4, 4]], np.float32)
        with pytest.raises(ValueError, match=r"boxes\[1\]"):
            crop_resize(im, b)
        with pytest.raises(ValueError, match=r"boxes\[1\]"):
            phash(im, b)
        with pytest.raises(ValueError, match=r"boxes\[1\]"):
            NestedViews()(im, b)



@pytest.mark.parametrize("order", ["adaptive", "horizontal"])
def test_crop_resize_pil_reads_every_layout_in_place(rng, order):
    """The PIL path reads the crop straight from the image in every layout — packed RGB (rows combined in place),
    RGBA, channel-planar and flipped (gathered) — and in blocks of 64 rows: equal to the per-element body on tall
    crops (vertical pass first under the adaptive rule), wide ones and crops taller than a block, down to 1 x 1 and
    up from 1-pixel strips."""
    h, w = 203, 150
    base = _image(rng, h, w, 4)
    packed = np.ascontiguousarray(base[:, :, :3])
    layouts = [packed, base, np.ascontiguousarray(packed.transpose(2, 0, 1)).transpose(1, 2, 0),
               np.ascontiguousarray(packed[::-1, ::-1])[::-1, ::-1]]
    b = np.array([[0, 0, w, h], [3, 1, 12, 200], [1, 130, 149, 141], [7, 9, 8, 150], [20, 30, 140, 31],
                  [40.5, 60.2, 41, 61]], np.float32)
    for size in (1, 5, 17, 70):
        want = crop_resize(packed, b, size=size, pil_order=order, impl="elementwise")
        for im in layouts:
            np.testing.assert_array_equal(crop_resize(im, b, size=size, pil_order=order), want)

def test_strided_and_rgba_images(rng):
    base = _image(rng, 50, 60, 4)
    b = _boxes(rng, 4, 30, 25)
    strided = base[::2, ::2]           # non-contiguous rows and columns, 4 channels (alpha ignored)
    dense = np.ascontiguousarray(strided[:, :, :3])
    np.testing.assert_array_equal(crop_resize(strided, b, size=16), crop_resize(dense, b, size=16))
    np.testing.assert_array_equal(phash(strided, b, method="imagehash"), phash(dense, b, method="imagehash"))
    chw = np.ascontiguousarray(dense.transpose(2, 0, 1)).transpose(1, 2, 0)  # channel-planar memory
    np.testing.assert_array_equal(crop_resize(chw, b, size=16), crop_resize(dense, b, size=16))


def test_several_images(rng):
    ims = [_image(rng, 30 + 7 * i, 40 - 3 * i) for i in range(3)]
    idx = np.array([2, 0, 1, 2, 0])
    b = np.array([[1, 2, 20, 25], [0, 0, 40, 30], [3, 3, 9, 30], [5, 5, 30, 40], [10, 1, 12, 3]], np.float32)
    got = crop_resize(ims, b, size=12, image_index=idx)
    for k in range(5):
        np.testing.assert_array_equal(got[k], crop_resize(ims[idx[k]], b[k:k + 1], size=12)[0])
    h = phash(ims, b, image_index=idx, method="imagehash")
    for k in range(5):
        assert h[k] == phash(ims[idx[k]], b[k:k + 1], method="imagehash")[0]


def test_dtypes(rng):
    im = _image(rng, 20, 20)
    b = _boxes(rng, 3, 20, 20)
    f32 = crop_resize(im, b, size=10)
    f16 = crop_resize(im, b, size=10, dtype="float16")
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, f32.astype(np.float16))
    np.testing.assert_array_equal(crop_resize(im, b.astype(np.float64), size=10), f32)


def test_bad_input(rng):
    im = _image(rng, 20, 20)
    b = _boxes(rng, 2, 20, 20)
    with pytest.raises(TypeError, match="uint8"):
        crop_resize(im.astype(np.float32), b)
    with pytest.raises(ValueError, match="RGB"):
        crop_resize(im[:, :, :2], b)
    with pytest.raises(ValueError, match="RGB"):
        crop_resize(im[:, :, 0], b)
    with pytest.raises(ValueError, match=r"\[V, 4\]"):
        crop_resize(im, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="image_index"):
        crop_resize([im, im], b)
    with pytest.raises(ValueError, match="image_index"):
        crop_resize([im, im], b, image_index=[0, 2])
    with pytest.raises(ValueError, match="image_index"):
        crop_resize([im, im], b, image_index=[0])
    with pytest.raises(ValueError, match="mode"):
        crop_resize(im, b, mode="cv2")
    with pytest.raises(ValueError, match="antialias"):
        crop_resize(im, b, antialias=False)
    with pytest.raises(ValueError, match="size"):
        crop_resize(im, b, size=0)
    with pytest.raises(ValueError, match="std"):
        crop_resize(im, b, std=(1, 0, 1))
    with pytest.raises(ValueError, match="impl"):
        crop_resize(im, b, impl="gpu")
    with pytest.raises(ValueError, match="method"):
        phash(im, b, method="dhash")
    with pytest.raises(ValueError, match="empty"):
        crop_resize([], b)
    with pytest.raises(ValueError, match="empty"):
        crop_resize(np.zeros((0, 5, 3), np.uint8), b)
    with pytest.raises(TypeError):
        crop_resize("image", b)
    from dynrefer import _C

    out = np.empty((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="shape"):
        _C.crop_resize([im], b, np.empty((2, 3, 8, 9), np.float32), 8, 0, 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(TypeError, match="float32"):
        _C.crop_resize([im], b, out.astype(np.float64), 8, 0, 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="kind"):
        _C.crop_resize([im], b, out, 8, 7, 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="read-only|writ"):
        ro = np.empty((2, 3, 8, 8), np.float32)
        ro.flags.writeable = False
        _C.crop_resize([im], b, ro, 8, 0, 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="image_index"):
        _C.crop_resize([im, im], b, out, 8, 0, 1, (0, 0, 0), (1, 1, 1), image_index=np.array([0, 5]))


def test_select_views_greedy():
    cand = np.array(CANDIDATES)
    h0 = np.uint64(0)
    # hamming distances 0..10 → scores d / t; pick the largest, never twice, ties to the smaller t
    dist = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    hashes = np.array([[h0] + [np.uint64((1 << int(d)) - 1) for d in dist]], dtype=np.uint64)
    got = select_views(hashes, cand, 3)
    np.testing.assert_array_equal(got, [[0, 1, 2]])  # d/t = 10 everywhere: ties → smallest t
    hashes[0, 6] = np.uint64((1 << 40) - 1)         # candidate 5 (t = 0.6; column 6) now scores 40 / 0.6
    np.testing.assert_array_equal(select_views(hashes, cand, 2), [[5, 0]])
    zero = np.zeros((2, 11), np.uint64)              # all scores 0: the first candidates, no repeats
    np.testing.assert_array_equal(select_views(zero, cand, 3), [[0, 1, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match="1 \\+ 10"):
        select_views(np.zeros((2, 5), np.uint64), cand, 2)
    with pytest.raises(ValueError, match="coeffs"):
        select_views(zero, np.where(cand > 0.5, 0.0, cand), 2)
    with pytest.raises(ValueError, match="n <= 10"):
        select_views(zero, cand, 11)


def test_hamming():
    a = np.array([0, 0xFFFFFFFFFFFFFFFF, 0x0F], np.uint64)
    b = np.array([0, 0, 0xF0], np.uint64)
    np.testing.assert_array_equal(hamming(a, b), [0, 64, 8])


def test_view_boxes_official_arithmetic():
    b = np.array([[10.3, 20.7, 50.1, 60.9]], np.float32)
    got = view_boxes(b, [0.0, 0.3, 1.0], 100, 80)
    full = np.array([0, 0, 100, 80], np.float32)
    for k, t in enumerate([0.0, 0.3, 1.0]):
        np.testing.assert_array_equal(got[0, k], b[0] + (full - b[0]) * t)  # float32 arithmetic, weak scalar
    np.testing.assert_array_equal(got[0, 2], full)


def test_nested_views_priors(rng):
    im = _image(rng, 64, 80)
    b = np.array([[10, 10, 30, 40], [50, 5, 70, 20]], np.float32)
    out = NestedViews(size=32, prior="image")(im, b)
    assert out["views"].shape == (2, 3, 3, 32, 32) and out["boxes"].shape == (2, 3, 4)
    assert (out["coeffs"][:, 0] == 0).all()
    # image prior = greedy selection on the hashes of the tight view and every candidate
    allv = view_boxes(b, (0.0,) + CANDIDATES, 80, 64).reshape(-1, 4)
    h = phash(im, allv).reshape(2, 11)
    np.testing.assert_array_equal(out["coeffs"][:, 1:], np.array(CANDIDATES, np.float32)[select_views(h, CANDIDATES, 2)])
    t = NestedViews(size=32, prior="task", task="attribute")(im, b)
    np.testing.assert_array_equal(t["coeffs"], np.array([[0, 0.1, 0.2]] * 2, np.float32))
    s1 = NestedViews(size=32, prior="stochastic", seed=3)(im, b, rng=np.random.default_rng(5))
    s2 = NestedViews(size=32, prior="stochastic", seed=3)(im, b, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(s1["coeffs"], s2["coeffs"])
    np.testing.assert_array_equal(s1["views"], s2["views"])
    one = NestedViews(size=32, num_views=1)(im, b)
    assert one["views"].shape == (2, 1, 3, 32, 32)
    whole = NestedViews(size=32, prior="fixed", fixed_coeffs=(1.0,))(im, b)
    np.testing.assert_array_equal(whole["coeffs"], np.ones((2, 1), np.float32))
    np.testing.assert_array_equal(whole["views"][0], whole["views"][1])  # both are the whole image
    np.testing.assert_array_equal(whole["views"][0, 0], crop_resize(im, [[0, 0, 80, 64]], 32)[0])
    two = NestedViews(size=32, prior="fixed", fixed_coeffs=(0.0, 1.0))(im, b)
    assert two["views"].shape == (2, 2, 3, 32, 32)
    with pytest.raises(ValueError, match="fixed_coeffs"):
        NestedViews(prior="fixed")
    with pytest.raises(ValueError, match="prior"):
        NestedViews(prior="random")
    with pytest.raises(ValueError, match="task"):
        NestedViews(prior="task", task="vqa")
    with pytest.raises(ValueError, match="num_views"):
        NestedViews(num_views=12)


def test_stochastic_selection_uniform_without_replacement():
    nv = NestedViews(size=8, prior="stochastic", num_views=3)
    im = np.zeros((10, 10, 3), np.uint8)
    g = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(400):
        c = nv.choose(im, [[2, 2, 5, 5]], rng=g)[0, 1:]
        assert c[0] != c[1]
        counts[np.rint(c * 10).astype(int) - 1] += 1
    # 800 draws over 10 candidates: each ~80; a 5-sigma band
    assert counts.min() > 80 - 5 * np.sqrt(80) and counts.max() < 80 + 5 * np.sqrt(80)


def test_threads_agree(rng):
    im = _image(rng, 120, 150)
    b = _boxes(rng, 40, 150, 120)
    want_v = crop_resize(im, b, size=32)
    want_h = phash(im, b, method="imagehash")
    errors = []

    def work():
        try:
            for _ in range(3):
                np.testing.assert_array_equal(crop_resize(im, b, size=32), want_v)
                np.testing.assert_array_equal(phash(im, b, method="imagehash"), want_h)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]
    prev = dynrefer.get_num_threads()
    try:
        dynrefer.set_num_threads(1)
        np.testing.assert_array_equal(crop_resize(im, b, size=32), want_v)
    finally:
        dynrefer.set_num_threads(prev)


@pytest.mark.skipif(os.environ.get("DYNREFER_SANITIZER_RUN") == "1", reason="fuzzing is slow under ASan")
def test_fuzz_geometry(rng):
    # many random images, boxes and sizes through both kernels: no crash, finite, deterministic
    for _ in range(30):
        h, w = rng.integers(1, 40, size=2)
        im = _image(rng, int(h), int(w))
        b = (rng.standard_normal((5, 4)) * 30).astype(np.float32)
        s = int(rng.integers(1, 20))
        v = crop_resize(im, b, size=s, mode=str(rng.choice(["pil", "tensor"])))
        assert np.isfinite(v).all()
        phash(im, b, method=str(rng.choice(["dynrefer", "imagehash"])))


@pytest.mark.parametrize("method", ["imagehash", "dynrefer"])
def test_phash_edge_crops_all_kernels(rng, method):
    """Crops at the right and bottom edges of images of awkward sizes: the row kernels read ahead of a crop's last
    pixel into padding (zero weights); fast = elementwise, and the sanitizer run checks every read."""
    for h, w in [(17, 65), (100, 31), (33, 130), (250, 97)]:
        im = _image(rng, h, w)
        b = np.array([[0, 0, w, h], [w // 3, h // 4, w, h], [w - 1, h - 1, w, h], [0, h - 5, w, h],
                      [w - 40 if w > 40 else 0, 0, w, h]], np.float32)
        fast = phash(im, b, method=method)
        elem = phash(im, b, method=method, impl="elementwise")
        if method == "imagehash":
            np.testing.assert_array_equal(fast, elem)
        else:
            assert (hamming(fast, elem) <= 1).all()


def test_errors_name_the_argument_and_show_the_shape(rng):
    im = _image(rng, 60, 80)
    b = _boxes(rng, 2, 80, 60)
    with pytest.raises(ValueError, match=r"images\[0\] has shape \[60, 80\] \(2-D, grayscale\).*H x W x C"):
        crop_resize(im[:, :, 0], b)
    with pytest.raises(ValueError, match=r"images\[0\] has shape \[3, 60, 80\].*channel-first"):
        crop_resize(np.ascontiguousarray(im.transpose(2, 0, 1)), b)
    with pytest.raises(ValueError, match=r"phash: images\[1\] has shape \[4, 60, 80\].*channel-first"):
        phash([im, np.zeros((4, 60, 80), np.uint8)], b, image_index=[0, 1])
    with pytest.raises(ValueError, match=r"images\[0\] has shape \[1, 60, 80, 3\]"):
        crop_resize(im[None], b)
    # a 3-pixel-tall image with 3 or 4 channels is still an image
    assert crop_resize(im[:3], b, size=4).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"crop_resize: size must be in \[1, 16384\], got 1180591620717411303424"):
        crop_resize(im, b, size=2**70)
    with pytest.raises(TypeError, match="crop_resize: size must be an int"):
        crop_resize(im, b, size=8.0)
    with pytest.raises(ValueError, match=r"select_views: num = \d+ exceeds the 10 candidates"):
        select_views(np.zeros((1, 11), np.uint64), CANDIDATES, 2**70)
    from dynrefer import _C

    out = np.empty((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="crop_resize: size = .* does not fit in 64 bits"):
        _C.crop_resize([im], b, out, 2**70, 0, 1, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="crop_resize: unknown pil_order"):
        _C.crop_resize([im], b, out, 8, 0, 1, (0, 0, 0), (1, 1, 1), pil_order=2**40)
    with pytest.raises(ValueError, match="phash: method = .* does not fit"):
        _C.phash([im], b, np.empty(2, np.uint64), 2**80)
    with pytest.raises(TypeError, match="crop_resize: filter must be an int"):
        _C.crop_resize([im], b, out, 8, 0, "bicubic", (0, 0, 0), (1, 1, 1))


def test_argument_builders_name_the_argument(rng):
    """The kernels' argument builders (dr_<op>_make_args) are where the views ops are validated: called straight
    through the binding, every bad argument gets a message naming it and showing the value."""
    from dynrefer import _C

    im = _image(rng, 30, 40)
    b = _boxes(rng, 2, 40, 30)
    out = np.empty((2, 3, 8, 8), np.float32)
    cr = lambda **kw: _C.crop_resize(kw.pop("images", [im]), kw.pop("boxes", b), kw.pop("out", out), kw.pop("size", 8),
                                     kw.pop("kind", 0), kw.pop("filter", 1), kw.pop("mean", (0, 0, 0)),
                                     kw.pop("std", (1, 1, 1)), **kw)
    cr()  # the baseline call is valid
    with pytest.raises(ValueError, match=r"crop_resize: mean\[2\] must be finite, got nan"):
        cr(mean=(0, 0, float("nan")))
    with pytest.raises(ValueError, match=r"crop_resize: std\[0\] must be finite and > 0, got -1"):
        cr(std=(-1, 1, 1))
    with pytest.raises(ValueError, match=r"crop_resize: std\[1\] must be finite and > 0, got inf"):
        cr(std=(1, 1e300, 1))  # finite as a double, not as the float32 the kernels use
    with pytest.raises(ValueError, match="crop_resize: unknown resampling kind 4294967296"):
        cr(kind=2**32)  # not narrowed to a valid kind on its way to the builder
    with pytest.raises(ValueError, match="crop_resize: unknown filter -1"):
        cr(filter=-1)
    with pytest.raises(ValueError, match=r"crop_resize: size must be in \[1, 16384\], got 0"):
        cr(size=0)
    with pytest.raises(ValueError, match="crop_resize: images is empty"):
        cr(images=[])
    with pytest.raises(ValueError, match=r"crop_resize: images\[1\] has shape \[30, 40\] \(2-D, grayscale\)"):
        cr(images=[im, im[:, :, 0]], image_index=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="crop_resize: image_index is required with 2 images"):
        cr(images=[im, im])
    with pytest.raises(ValueError, match="crop_resize: image_index has 3 entries for 2 boxes"):
        cr(images=[im, im], image_index=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="crop_resize: image_index must be int64, got int32"):
        cr(images=[im, im], image_index=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=r"crop_resize: image_index\[1\] = 2 is not an image index in \[0, 2\)"):
        cr(images=[im, im], image_index=np.array([0, 2]))
    with pytest.raises(TypeError, match="crop_resize: boxes must be float32 or float64, got int64"):
        cr(boxes=b.astype(np.int64))
    with pytest.raises(ValueError, match=r"crop_resize: boxes must have shape \[V, 4\], got \[2, 5\]"):
        cr(boxes=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"crop_resize: out has shape \[2, 3, 8, 7\], expected \[2, 3, 8, 8\]"):
        cr(out=np.empty((2, 3, 8, 7), np.float32))
    rb, ro = b.copy(), np.empty((2, 4), np.float32)
    cr(ref_boxes=rb, ref_out=ro)
    with pytest.raises(ValueError, match="crop_resize: ref_boxes and ref_out go together"):
        cr(ref_boxes=rb)
    with pytest.raises(ValueError, match="crop_resize: ref_boxes has 1 rows for 2 boxes"):
        cr(ref_boxes=rb[:1], ref_out=ro)
    with pytest.raises(ValueError, match=r"crop_resize: ref_out has shape \[2, 3\], expected \[2, 4\]"):
        cr(ref_boxes=rb, ref_out=np.empty((2, 3), np.float32))
    with pytest.raises(TypeError, match="crop_resize: ref_out must be float32, got float64"):
        cr(ref_boxes=rb, ref_out=np.empty((2, 4)))

    h = np.empty(2, np.uint64)
    with pytest.raises(ValueError, match="phash: unknown method 2"):
        _C.phash([im], b, h, 2)
    with pytest.raises(ValueError, match="phash: unknown pil_order 3"):
        _C.phash([im], b, h, 1, pil_order=3)
    with pytest.raises(ValueError, match="phash: the official .* hash is 8 x 8"):
        _C.phash([im], b, h, 0, hash_size=9)
    with pytest.raises(ValueError, match="Hash size must be greater than or equal to 2"):
        _C.phash([im], b, h, 1, hash_size=1)
    with pytest.raises(ValueError, match="phash: hash_size \\* highfreq_factor .* at most 4096, got 64 \\* 65"):
        _C.phash([im], b, h, 1, hash_size=64, highfreq_factor=65)
    with pytest.raises(TypeError, match="phash: hashes must be uint64, got int64"):
        _C.phash([im], b, np.empty(2, np.int64), 1)
    with pytest.raises(ValueError, match=r"phash: hashes must have shape \[2\]"):
        _C.phash([im], b, np.empty(3, np.uint64), 1)
    with pytest.raises(ValueError, match=r"phash: hashes must be 2-D, got 1-D"):
        _C.phash([im], b, h, 1, hash_size=9)
    with pytest.raises(ValueError, match="phash: thumbnails are only available for method imagehash"):
        _C.phash([im], b, h, 0, thumbnails=np.empty((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"phash: thumbnails must be a contiguous \[2, 32, 32\] array"):
        _C.phash([im], b, h, 1, thumbnails=np.empty((2, 32, 33), np.uint8))

    hs, c, o = np.zeros((3, 4), np.uint64), np.array([0.25, 0.5, 1.0]), np.empty((3, 2), np.int64)
    _C.select_views(hs, c, o)
    with pytest.raises(ValueError, match=r"select_views: hashes must have shape \[R, 1 \+ 3\]"):
        _C.select_views(hs[:, :3], c, o)
    with pytest.raises(TypeError, match="select_views: coeffs must be float64, got float32"):
        _C.select_views(hs, c.astype(np.float32), o)
    with pytest.raises(ValueError, match=r"select_views: out must have shape \[3, n\] with n <= 3"):
        _C.select_views(hs, c, np.empty((3, 4), np.int64))
    with pytest.raises(ValueError, match=r"select_views: coeffs\[1\] = nan must be finite and > 0"):
        _C.select_views(hs, np.array([0.25, np.nan, 1.0]), o)
