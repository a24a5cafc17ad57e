"""RoI-Align through the NumPy entry points and the raw binding — no PyTorch needed.

These are the C-level tests: they also run under the ASan+UBSan build (.ci/run). The golden is the float64
reference written from the formulas (tests/reference.py) and published golden values (detectron2, mmcv).
"""
import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import dynrefer
from dynrefer import _C
from dynrefer.ops import BoxesShapeError, roi_align
from reference import roi_align_ref


def random_rois(rng, n_img, k, h, w, spread=1.5):
    xy = rng.uniform(-0.25 * w, spread * w, size=(k, 2))
    wh = rng.uniform(0.0, spread * max(h, w), size=(k, 2))
    b = rng.integers(0, n_img, size=(k, 1)).astype(np.float64)
    return np.concatenate([b, xy, xy + wh], axis=1)


# --- published golden values ---------------------------------------------------------------------------------

def test_detectron2_golden():
    # detectron2 tests/layers/test_roi_align.py: input arange(25) 5x5, box [1,1,3,3], output 4x4, sampling 0
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    box = np.array([[0, 1, 1, 3, 3]], np.float32)
    not_aligned = roi_align(x, box, 4, 1.0, 0, aligned=False)[0, 0]
    aligned = roi_align(x, box, 4, 1.0, 0, aligned=True)[0, 0]
    np.testing.assert_allclose(not_aligned, [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]])
    np.testing.assert_allclose(aligned, [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]])


def test_detectron2_empty_box_and_empty_batch():
    x = np.random.default_rng(0).random((1, 1, 5, 5)).astype(np.float32)
    out = roi_align(x, np.array([[0, 3, 4, 5, 4]], np.float32), 7, 1.0, 0, aligned=True)
    assert out.shape == (1, 1, 7, 7) and np.all(out == 0)
    empty = roi_align(np.zeros((0, 3, 5, 5), np.float32), np.zeros((0, 5), np.float32), (2, 3), 1.0, 2)
    assert empty.shape == (0, 3, 2, 3)


MMCV_CASES = [  # mmcv tests/test_ops/test_roi_align.py (aligned=True, sampling_ratio=2, 2x2): input, rois, output
    ([[[[1.0, 2.0], [3.0, 4.0]]]], [[0.0, 0.0, 0.0, 1.0, 1.0]], [[[[1.0, 1.25], [1.5, 1.75]]]]),
    ([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]]], [[0.0, 0.0, 0.0, 1.0, 1.0]],
     [[[[1.0, 1.25], [1.5, 1.75]], [[4.0, 3.75], [3.5, 3.25]]]]),
    ([[[[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [9.0, 10.0, 13.0, 14.0], [11.0, 12.0, 15.0, 16.0]]]],
     [[0.0, 0.0, 0.0, 3.0, 3.0]], [[[[1.9375, 4.75], [7.5625, 10.375]]]]),
]
MMCV_GRADS = [
    [[[[3.0625, 0.4375], [0.4375, 0.0625]]]],
    [[[[3.0625, 0.4375], [0.4375, 0.0625]], [[3.0625, 0.4375], [0.4375, 0.0625]]]],
    [[[[0.47265625, 0.42968750, 0.42968750, 0.04296875], [0.42968750, 0.39062500, 0.39062500, 0.03906250],
       [0.42968750, 0.39062500, 0.39062500, 0.03906250], [0.04296875, 0.03906250, 0.03906250, 0.00390625]]]],
]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mmcv_golden_forward_and_grad(case, dtype):
    x, rois, expected = (np.array(v, dtype) for v in MMCV_CASES[case])
    np.testing.assert_allclose(roi_align(x, rois, 2, 1.0, 2, True), expected, atol=1e-6)
    gi = np.empty(x.shape, dtype)
    _C.roi_align_backward(np.ones((1, x.shape[1], 2, 2), dtype), rois, gi, 1.0, 2, 2, 2, True)
    np.testing.assert_allclose(gi, np.array(MMCV_GRADS[case], dtype), atol=1e-6)


# --- against the float64 reference ---------------------------------------------------------------------------

@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(rng, aligned, sampling, dtype):
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    rois = random_rois(rng, 2, 6, 7, 9).astype(dtype)
    ph, pw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    scale = float(rng.uniform(0.3, 1.5))
    ref = roi_align_ref(x, rois, ph, pw, scale, sampling, aligned)
    out = roi_align(x, rois, (ph, pw), scale, sampling, aligned)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert np.linalg.norm(out - ref) <= tol * max(np.linalg.norm(ref), 1e-30)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "transposed", "sliced"])
def test_strided_inputs_without_copy(rng, layout):
    base = rng.standard_normal((2, 5, 8, 6))
    if layout == "nchw":
        x = base
    elif layout == "nhwc":
        x = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "transposed":
        x = np.ascontiguousarray(base.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    else:
        x = np.ascontiguousarray(np.pad(base, ((0, 0), (0, 3), (0, 0), (0, 2))))[:, ::2, :, :6][:, :5]
        base = np.ascontiguousarray(x)
    rois = random_rois(rng, 2, 5, 8, 6)
    np.testing.assert_allclose(roi_align(x, rois, 3, 1.0, 2), roi_align_ref(base, rois, 3, 3, 1.0, 2, False), rtol=1e-12, atol=1e-12)


def test_list_of_boxes(rng):
    x = rng.standard_normal((3, 2, 6, 6))
    boxes = [rng.uniform(0, 5, (k, 4)) for k in (2, 0, 3)]
    rois = np.concatenate([np.concatenate([np.full((len(b), 1), i), b], 1) for i, b in enumerate(boxes)])
    np.testing.assert_array_equal(roi_align(x, boxes, 2, 1.0, 2), roi_align(x, rois, 2, 1.0, 2))


def test_float16_close_to_reference(rng):
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float16)
    rois = random_rois(rng, 1, 5, 9, 9).astype(np.float32)
    out = roi_align(x, rois, 3, 1.0, 2)
    ref = roi_align_ref(x.astype(np.float64), rois, 3, 3, 1.0, 2, False)
    assert out.dtype == np.float16
    assert np.abs(out.astype(np.float64) - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())


# --- the CUDA per-element bodies, run on the CPU -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_elementwise_bodies_equal_fast_path(rng, dtype, aligned, channels_last):
    x = rng.standard_normal((3, 5, 9, 7)).astype(dtype)
    if channels_last:  # unit channel stride: the GPU bodies walk channels fastest
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    rois = random_rois(rng, 3, 9, 9, 7)
    rois[0, 1:] = [np.nan, 1, 2, 3]
    rois[1, 1:] = [-1e6, -1e6, 1e6, 1e6]  # huge: exercises the narrowed sample ranges
    for sampling in (-1, 2):
        fast = np.empty((9, 5, 3, 4), dtype)
        elem = np.empty_like(fast)
        _C.roi_align_forward(x, rois, fast, 0.8, 3, 4, sampling, aligned)
        _C.roi_align_forward(x, rois, elem, 0.8, 3, 4, sampling, aligned, impl="elementwise")
        np.testing.assert_allclose(fast.astype(np.float64), elem.astype(np.float64), rtol=1e-5, atol=1e-6)
        go = rng.standard_normal(fast.shape).astype(dtype)
        acc = np.float64 if dtype == np.float64 else np.float32
        g_fast, g_det, g_atomic = (np.empty(x.shape, acc) for _ in range(3))
        if channels_last:
            g_fast, g_det, g_atomic = (np.empty((3, 9, 7, 5), acc).transpose(0, 3, 1, 2) for _ in range(3))
        _C.roi_align_backward(go, rois, g_fast, 0.8, 3, 4, sampling, aligned)
        _C.roi_align_backward(go, rois, g_det, 0.8, 3, 4, sampling, aligned, deterministic=True, impl="elementwise")
        _C.roi_align_backward(go, rois, g_atomic, 0.8, 3, 4, sampling, aligned, impl="elementwise")
        np.testing.assert_array_equal(g_fast, g_det)  # the same adds in the same order
        np.testing.assert_allclose(g_fast, g_atomic, rtol=1e-5, atol=1e-6)


# --- the tiled CUDA forward's block schedule, run on the CPU ----------------------------------------------------

def _layout(x, channels_last):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if channels_last else x


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiled_schedule_equals_elementwise_bodies(rng, dtype, channels_last):
    """The tiled kernel (geometry and taps once per block, in its table) gives the per-element bodies' values bit
    for bit: table and per-element taps, ragged sizes, more channels than one block holds, empty grids, huge and
    non-finite boxes."""
    for trial in range(12):
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 70))
        h, w = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        k = int(rng.integers(0, 12))
        x = _layout(rng.standard_normal((n, c, h, w)).astype(dtype), channels_last)
        rois = random_rois(rng, n, k, h, w)
        if k >= 3:
            rois[0, 3:] = rois[0, 1:3]  # empty box
            rois[1, 1:] = [-1e6, -1e6, 1e6, 1e6]  # far more taps than a table holds
            rois[2, 1] = np.nan
        ph, pw = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        for sampling in (-1, 0, 2, 5):
            for aligned in (False, True):
                elem = np.empty((k, c, ph, pw), dtype)
                _C.roi_align_forward(x, rois, elem, 0.7, ph, pw, sampling, aligned, impl="elementwise")
                for taps in (-1, 0, 9):  # the GPU's table, per-element taps only, a table too small for most RoIs
                    tiled = np.full((k, c, ph, pw), 7, dtype)
                    _C.roi_align_forward(x, rois, tiled, 0.7, ph, pw, sampling, aligned, impl="tiled", tile_taps=taps)
                    np.testing.assert_array_equal(tiled, elem, err_msg=f"trial {trial} sr {sampling} taps {taps}")
    assert _C.roi_align_take_error("cpu") is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiled_backward_schedule_equals_elementwise_scatter(rng, dtype, channels_last):
    """The CUDA backward's default mode, tiled like the forward (taps from the block's table), run block by block on
    the CPU: the same adds as the per-element scatter, in the same order while the blocks' order matches it (planar
    maps; channels-last maps within one channel slice), else equal up to the order of float additions."""
    acc = np.float64 if dtype == np.float64 else np.float32
    for trial in range(8):
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 70))
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        k = int(rng.integers(0, 10))
        rois = random_rois(rng, n, k, h, w)
        if k >= 2:
            rois[0, 1:] = [-1e6, -1e6, 1e6, 1e6]  # far more taps than a table holds
            rois[1, 3:] = rois[1, 1:3]  # empty box
        ph, pw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        go = rng.standard_normal((k, c, ph, pw)).astype(dtype)
        for sampling in (-1, 2):
            for aligned in (False, True):
                def grad(impl, **kw):
                    g = np.full((n, h, w, c), np.nan, acc).transpose(0, 3, 1, 2) if channels_last else \
                        np.full((n, c, h, w), np.nan, acc)
                    _C.roi_align_backward(go, rois, g, 0.9, ph, pw, sampling, aligned, impl=impl, **kw)
                    return g
                ref = grad("elementwise")
                for taps in (-1, 0, 9):
                    got = grad("tiled", tile_taps=taps)
                    if not channels_last or c <= 32:
                        np.testing.assert_array_equal(got, ref, err_msg=f"trial {trial} taps {taps}")
                    else:
                        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert _C.roi_align_take_error("cpu") is None


def test_tiled_bad_batch_index_recorded_not_raised(rng):
    """Device-side index validation, on the CPU emulation: a bad index pools to zeros, nothing is read out of
    bounds, the first report since the last take is kept (later ones dropped), a take clears it."""
    assert _C.roi_align_take_error("cpu") is None
    x = rng.standard_normal((2, 40, 9, 9)).astype(np.float32)
    rois = random_rois(rng, 2, 6, 9, 9)
    good = np.empty((6, 40, 2, 3), np.float32)
    _C.roi_align_forward(x, rois, good, 1.0, 2, 3, 2, False, impl="tiled")
    bad = rois.copy()
    bad[2, 0], bad[4, 0] = 2.0, -1e9
    out = np.full_like(good, 5)
    _C.roi_align_forward(x, bad, out, 1.0, 2, 3, 2, False, impl="tiled")  # no exception: the GPU would not sync
    assert np.all(out[[2, 4]] == 0)
    keep = [0, 1, 3, 5]
    np.testing.assert_array_equal(out[keep], good[keep])
    later = rois[:2].copy()
    later[:, 0] = [0, 7]
    _C.roi_align_forward(x[:1], later, out[:2], 1.0, 2, 3, 2, False, impl="tiled")  # a second failing call
    roi, value, n, op = _C.roi_align_take_error("cpu")
    assert (roi, value, n, op) in [(2, 2.0, 2, "forward"), (4, -1e9, 2, "forward")]  # the first failing call's
    assert _C.roi_align_take_error("cpu") is None  # taken: cleared
    bad2 = rois.copy()
    bad2[1, 0] = 7.0
    _C.roi_align_forward(x, bad2, out, 1.0, 2, 3, 2, False, impl="tiled")  # reported again after a take
    with pytest.raises(ValueError, match=r"rois\[1, 0\] = 7 is not a batch index in \[0, 2\)"):
        dynrefer.ops.check_errors("cpu")
    dynrefer.ops.check_errors()  # nothing pending any more
    # the backward reports too
    gi = np.full_like(x, np.nan)
    _C.roi_align_backward(np.ones_like(out), bad, gi, 1.0, 2, 3, 2, False, impl="tiled")
    assert _C.roi_align_take_error("cpu")[3] == "backward"
    assert np.isfinite(gi).all()
    # NaN and fractional indices: NaN is bad, (-1, N) truncates to an image as torchvision's cast does
    frac = rois.copy()
    frac[0, 0], frac[1, 0], frac[2, 0] = -0.5, 1.9, np.nan
    _C.roi_align_forward(x, frac, out, 1.0, 2, 3, 2, False, impl="tiled")
    roi, value, n, op = _C.roi_align_take_error("cpu")
    assert roi == 2 and np.isnan(value)
    assert np.all(out[2] == 0)
    ref = np.empty_like(out)
    _C.roi_align_forward(x, frac[[0, 1]], ref[:2], 1.0, 2, 3, 2, False)
    np.testing.assert_array_equal(out[:2], ref[:2])


def test_take_error_arguments():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        _C.roi_align_take_error("tpu")
    with pytest.raises(ValueError, match="device"):
        dynrefer.ops.check_errors("gpu")
    with pytest.raises(TypeError, match="device"):
        dynrefer.ops.check_errors(1.5)
    with pytest.raises(ValueError, match="impl must be 'fast', 'elementwise' or 'tiled'"):
        _C.roi_align_forward(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 5), np.float32),
                             np.zeros((1, 1, 1, 1), np.float32), 1.0, 1, 1, 1, False, impl="tiles")


def test_backward_is_adjoint_of_forward(rng):
    # <roi_align(x), g> == <x, roi_align_backward(g)> for the linear map
    x = rng.standard_normal((2, 3, 8, 8))
    rois = random_rois(rng, 2, 7, 8, 8)
    y = roi_align(x, rois, 3, 0.9, -1, True)
    g = rng.standard_normal(y.shape)
    gi = np.empty_like(x)
    _C.roi_align_backward(g, rois, gi, 0.9, 3, 3, -1, True)
    assert abs(np.vdot(y, g) - np.vdot(x, gi)) <= 1e-10 * max(1.0, abs(np.vdot(y, g)))


# --- robustness ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_boxes_give_zeros(rng, bad):
    x = rng.standard_normal((1, 2, 6, 6))
    for col in range(1, 5):
        rois = np.array([[0, 1.0, 1.0, 4.0, 4.0]])
        rois[0, col] = bad
        for sampling in (-1, 2):
            assert np.all(roi_align(x, rois, 3, 1.0, sampling) == 0)
            gi = np.full_like(x, 7.0)
            _C.roi_align_backward(np.ones((1, 2, 3, 3)), rois, gi, 1.0, 3, 3, sampling, False)
            assert np.all(gi == 0)


def test_bad_batch_index_raises():
    x = np.zeros((2, 1, 4, 4), np.float32)
    for b in (-1.0, 2.0, 2.5, np.nan, 1e30):
        with pytest.raises(ValueError, match="batch index"):
            roi_align(x, np.array([[b, 0, 0, 2, 2]], np.float32), 2)
    # fractional indices truncate like torchvision's (int) cast
    roi_align(x, np.array([[1.9, 0, 0, 2, 2], [-0.5, 0, 0, 1, 1]], np.float32), 2)


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda x, r: roi_align([[1.0]], r, 2), TypeError),
        (lambda x, r: roi_align(x.astype(np.int32), r, 2), TypeError),
        (lambda x, r: roi_align(x[0], r, 2), ValueError),
        (lambda x, r: roi_align(x, r[:, :4], 2), BoxesShapeError),
        (lambda x, r: roi_align(x, r[0], 2), BoxesShapeError),
        (lambda x, r: roi_align(x, [r[:, :3]], 2), BoxesShapeError),
        (lambda x, r: roi_align(x, "boxes", 2), BoxesShapeError),
        (lambda x, r: roi_align(x, [], 2), BoxesShapeError),
        (lambda x, r: roi_align(x, r.astype(np.int64), 2), TypeError),
        (lambda x, r: roi_align(x, r, 0), ValueError),
        (lambda x, r: roi_align(x, r, (2, -1)), ValueError),
        (lambda x, r: roi_align(x, r, 2.5), TypeError),
        (lambda x, r: roi_align(x, r, (1, 2, 3)), TypeError),
        (lambda x, r: roi_align(x, r, 2, float("nan")), ValueError),
        (lambda x, r: roi_align(x, r, 2, float("inf")), ValueError),
        (lambda x, r: roi_align(x, r, 2, "1"), TypeError),
        (lambda x, r: roi_align(x, r, 2, 1.0, 1.5), TypeError),
    ],
)
def test_bad_arguments(call, exc):
    x = np.zeros((1, 2, 4, 4), np.float32)
    r = np.array([[0, 0, 0, 2, 2]], np.float32)
    with pytest.raises(exc):
        call(x, r)


def test_boxes_shape_error_is_also_an_assertion_error():
    with pytest.raises(AssertionError):
        roi_align(np.zeros((1, 1, 4, 4)), np.zeros((1, 4)), 2)


def test_raw_binding_validation():
    x = np.zeros((1, 2, 4, 4), np.float32)
    r = np.array([[0, 0, 0, 2, 2]], np.float32)
    ok = np.empty((1, 2, 2, 2), np.float32)
    cases = [
        ((x, r, np.empty((1, 2, 3, 2), np.float32)), ValueError),  # wrong output shape
        ((x, r, np.empty((1, 2, 2, 2), np.float64)), TypeError),  # wrong output dtype
        ((x, r, np.empty((1, 2, 2, 2), np.float32)[..., ::1].copy().view(np.float32)), None),
        ((x, r.astype(np.uint8), ok), TypeError),
        ((x, r[:, :4], ok), ValueError),
        ((x[0], r, ok), ValueError),
        ((x, r, "out"), TypeError),
        ((object(), r, ok), TypeError),
        (((1, 2, 3), r, ok), TypeError),  # malformed descriptor tuple
        (((0, 99, 0, 0, (1, 2, 4, 4), (32, 16, 4, 1)), r, ok), ValueError),  # unknown dtype code
        (((0, 0, 7, 0, (1, 2, 4, 4), (32, 16, 4, 1)), r, ok), ValueError),  # unknown device
        (((0, 0, 0, 0, (1, 2, 4), (32, 16, 4, 1)), r, ok), ValueError),  # rank mismatch
        (((0, 0, 0, 0, (1, -2, 4, 4), (32, 16, 4, 1)), r, ok), ValueError),  # negative size
    ]
    for args, exc in cases:
        if exc is None:
            _C.roi_align_forward(*args, 1.0, 2, 2, 2, False)
        else:
            with pytest.raises(exc):
                _C.roi_align_forward(*args, 1.0, 2, 2, 2, False)
    ro = ok.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _C.roi_align_forward(x, r, ro, 1.0, 2, 2, 2, False)
    with pytest.raises(ValueError):
        _C.roi_align_forward(x, r, ok, 1.0, 0, 2, 2, False)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="spatial_scale must be finite, got (nan|inf|-inf)"):
            _C.roi_align_forward(x, r, ok, bad, 2, 2, 2, False)
    with pytest.raises(ValueError, match="impl"):
        _C.roi_align_forward(x, r, ok, 1.0, 2, 2, 2, False, impl="magic")
    swapped = np.zeros((1, 2, 4, 4), np.float32).byteswap().view(np.dtype(np.float32).newbyteorder())
    with pytest.raises(ValueError, match="byte order"):
        _C.roi_align_forward(swapped, r, ok, 1.0, 2, 2, 2, False)
    with pytest.raises(TypeError):
        _C.roi_align_forward(x, r, ok)  # missing parameters


# --- DLPack ----------------------------------------------------------------------------------------------------

class VersionedOnly:
    """Exposes only the DLPack protocol of a NumPy array (NumPy >= 2.1 speaks the versioned protocol)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class LegacyOnly(VersionedOnly):
    """A pre-1.0 producer: rejects max_version, returns a legacy "dltensor" capsule."""

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()


class NotACapsule(VersionedOnly):
    def __dlpack__(self, **kw):
        return 42


@pytest.mark.parametrize("wrap", [VersionedOnly, LegacyOnly])
def test_dlpack_producers(rng, wrap):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    rois = random_rois(rng, 2, 4, 6, 6).astype(np.float32)
    out = np.empty((4, 3, 2, 2), np.float32)
    _C.roi_align_forward(wrap(x), wrap(rois), wrap(out), 1.0, 2, 2, 2, False)
    np.testing.assert_allclose(out, roi_align_ref(x, rois, 2, 2, 1.0, 2, False), rtol=1e-5, atol=1e-6)


def test_dlpack_errors():
    x = np.zeros((1, 1, 4, 4), np.float32)
    r = np.array([[0, 0, 0, 2, 2]], np.float32)
    with pytest.raises(TypeError, match="capsule"):
        _C.roi_align_forward(NotACapsule(x), r, np.empty((1, 1, 2, 2), np.float32), 1.0, 2, 2, 2, False)


# --- threads, fork, leaks ------------------------------------------------------------------------------------

def test_num_threads_roundtrip_and_determinism(rng):
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    rois = random_rois(rng, 2, 40, 12, 12).astype(np.float32)
    old = dynrefer.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 5):
            dynrefer.set_num_threads(n)
            assert dynrefer.get_num_threads() == n
            gi = np.empty_like(x)
            _C.roi_align_backward(np.ones((40, 16, 3, 3), np.float32), rois, gi, 1.0, 3, 3, 2, False)
            results.append((roi_align(x, rois, 3, 1.0, 2), gi))
        for out, gi in results[1:]:
            np.testing.assert_array_equal(out, results[0][0])
            np.testing.assert_array_equal(gi, results[0][1])
    finally:
        dynrefer.set_num_threads(old)
    with pytest.raises(ValueError):
        dynrefer.set_num_threads(0)


def test_concurrent_python_threads(rng):
    x = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
    rois = random_rois(rng, 4, 64, 16, 16).astype(np.float32)
    expected = roi_align(x, rois, 7, 1.0, 2)
    errors = []

    def work():
        try:
            for _ in range(20):
                np.testing.assert_array_equal(roi_align(x, rois, 7, 1.0, 2), expected)
        except Exception as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_after_pool_started(rng):
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    rois = random_rois(rng, 2, 30, 10, 10).astype(np.float32)
    expected = roi_align(x, rois, 3, 1.0, 2)  # starts the pool in the parent
    code = (
        "import os, sys, numpy as np\n"
        "from dynrefer.ops import roi_align\n"
        "x = np.load(sys.argv[1]); r = np.load(sys.argv[2]); e = np.load(sys.argv[3])\n"
        "roi_align(x, r, 3, 1.0, 2)\n"
        "pids = []\n"
        "for _ in range(2):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        ok = np.array_equal(roi_align(x, r, 3, 1.0, 2), e)\n"
        "        os._exit(0 if ok else 3)\n"
        "    pids.append(pid)\n"
        "sys.exit(max(os.waitpid(p, 0)[1] for p in pids))\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"{n}.npy") for n in "xre"]
        for p, a in zip(paths, (x, rois, expected)):
            np.save(p, a)
        res = subprocess.run([sys.executable, "-c", code, *paths], timeout=120)
    assert res.returncode == 0


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.skipif(os.environ.get("DYNREFER_SANITIZER_RUN") == "1", reason="RSS is not meaningful under ASan")
def test_no_leak_over_100k_calls():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    r = np.array([[0, 0.5, 0.5, 4, 4]], np.float32)
    out = np.empty((1, 2, 2, 2), np.float32)
    gi = np.empty_like(x)
    bad = np.array([[5, 0, 0, 1, 1]], np.float32)
    f, b = _C.roi_align_forward, _C.roi_align_backward
    for _ in range(2000):
        f(x, r, out, 1.0, 2, 2, 2, False)
    gc.collect()
    before = _rss_kb()
    for i in range(100_000):
        f(x, r, out, 1.0, 2, 2, 2, False)
        if i % 10 == 0:
            b(out, r, gi, 1.0, 2, 2, 2, False)
            try:
                f(x, bad, out, 1.0, 2, 2, 2, False)
            except ValueError:
                pass
            f(VersionedOnly(x), r, out, 1.0, 2, 2, 2, False)
    gc.collect()
    assert _rss_kb() - before < 4096
