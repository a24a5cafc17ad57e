"""DCNv4 deformable aggregation through the NumPy entry points and the raw binding — no PyTorch needed.

These are the C-level tests (they also suit the ASan+UBSan build). The golden is the float64 reference written
from DCNv4's formulas (tests/reference_dcn.py); the CUDA kernels' per-element bodies (impl="elementwise") are
checked against the fast CPU loops, and the backward against finite differences of the forward.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dynrefer
from dynrefer import _C
from dynrefer.ops import dcnv4, offset_mask_channels
from reference_dcn import dcnv4_grad_ref, dcnv4_ref, out_size


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def make_inputs(rng, n=2, h=5, w=6, group=2, d=3, kernel=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1),
                remove_center=False, spread=1.5, dtype=np.float64, extra_p=None):
    kh, kw = kernel
    k = kh * kw - int(remove_center)
    ho, wo = out_size(h, kh, stride[0], pad[0], dil[0]), out_size(w, kw, stride[1], pad[1], dil[1])
    p = offset_mask_channels(group, kernel, remove_center) if extra_p is None else 3 * group * k + extra_p
    value = rng.standard_normal((n, h, w, group * d))
    om = rng.standard_normal((n, ho, wo, p))
    for g in range(group):  # offsets spread over a few pixels, weights around 1
        om[..., g * 3 * k:g * 3 * k + 2 * k] *= spread
        om[..., g * 3 * k + 2 * k:g * 3 * k + 3 * k] = rng.uniform(-0.5, 1.5, (n, ho, wo, k))
    return value.astype(dtype), om.astype(dtype)


def params(group, d, kernel=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), scale=1.0, remove_center=False):
    return (kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], dil[0], dil[1], group, d, scale,
            remove_center)


def run_backward(value, om, go, prm, impl="fast", deterministic=False):
    acc = np.float64 if value.dtype == np.float64 else np.float32
    gv = np.full(value.shape, np.nan, acc)
    gom = np.full(om.shape, np.nan, acc)
    _C.dcnv4_backward(value, om, go, gv, gom, *prm, deterministic=deterministic, impl=impl)
    return gv, gom


CASES = [  # (group, d, kernel, stride, pad, dil, scale, remove_center, h, w)
    (2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, 5, 6),
    (1, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1.0, False, 7, 5),
    (3, 2, (3, 3), (1, 1), (2, 2), (2, 2), 1.0, False, 6, 6),
    (2, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, True, 5, 5),
    (2, 3, (3, 5), (1, 2), (0, 2), (2, 1), 0.5, False, 6, 7),
    (4, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, 1, 1),
    (2, 5, (2, 2), (1, 1), (0, 0), (1, 1), 0.25, True, 4, 3),
    (1, 9, (1, 1), (1, 1), (0, 0), (1, 1), 2.0, False, 3, 4),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(rng, case, dtype):
    g, d, kernel, stride, pad, dil, scale, rc, h, w = CASES[case]
    value, om = make_inputs(rng, h=h, w=w, group=g, d=d, kernel=kernel, stride=stride, pad=pad, dil=dil,
                            remove_center=rc, dtype=dtype)
    ref = dcnv4_ref(value, om, kernel, stride, pad, dil, g, scale, rc)
    out = dcnv4(value, om, kernel, stride, pad, dil, g, d, scale, rc)
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) < (1e-6 if dtype == np.float32 else 1e-13)
    el = np.empty_like(out)
    _C.dcnv4_forward(value, om, el, *params(g, d, kernel, stride, pad, dil, scale, rc), impl="elementwise")
    assert rel_err(el, ref) < (1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_matches_reference(rng, case, dtype):
    g, d, kernel, stride, pad, dil, scale, rc, h, w = CASES[case]
    value, om = make_inputs(rng, h=h, w=w, group=g, d=d, kernel=kernel, stride=stride, pad=pad, dil=dil,
                            remove_center=rc, dtype=dtype, extra_p=5)
    prm = params(g, d, kernel, stride, pad, dil, scale, rc)
    go = rng.standard_normal((value.shape[0], om.shape[1], om.shape[2], value.shape[3])).astype(dtype)
    rgv, rgom = dcnv4_grad_ref(value, om, go, kernel, stride, pad, dil, g, scale, rc)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for impl, det in (("fast", False), ("elementwise", True), ("elementwise", False)):
        gv, gom = run_backward(value, om, go, prm, impl, det)
        assert rel_err(gv, rgv) < tol, (impl, det)
        assert rel_err(gom, rgom) < tol, (impl, det)
        assert np.all(gom[..., -5:] == 0)  # padding channels: zero gradient


def test_backward_matches_finite_differences(rng):
    g, d = 2, 2
    value, om = make_inputs(rng, n=1, h=4, w=4, group=g, d=d, spread=0.8)
    prm = params(g, d, scale=0.7)
    go = rng.standard_normal((1, 4, 4, g * d))
    gv, gom = run_backward(value, om, go, prm)
    f = lambda v, o: float(np.sum(dcnv4(v, o, 3, 1, 1, 1, g, d, 0.7) * go))
    eps = 1e-6
    for idx in [tuple(rng.integers(0, s) for s in value.shape) for _ in range(12)]:
        vp, vm = value.copy(), value.copy()
        vp[idx] += eps
        vm[idx] -= eps
        assert abs((f(vp, om) - f(vm, om)) / (2 * eps) - gv[idx]) < 1e-6
    for idx in [tuple(rng.integers(0, s) for s in om.shape) for _ in range(24)]:
        op, omm = om.copy(), om.copy()
        op[idx] += eps
        omm[idx] -= eps
        # a sample crossing an integer grid line has a kink; the random offsets keep that unlikely at eps=1e-6
        assert abs((f(value, op) - f(value, omm)) / (2 * eps) - gom[idx]) < 1e-5


TILED_CASES = CASES + [  # more pairs than one block holds, one pair per block (D > 1024), K > the table
    (4, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, 9, 11),
    (1, 1100, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, 3, 2),
    (2, 40, (7, 7), (1, 1), (3, 3), (1, 1), 0.5, True, 6, 5),
    (1, 2, (33, 33), (1, 1), (16, 16), (1, 1), 1.0, False, 2, 2),
    (3, 1, (3, 3), (1, 1), (1, 1), (1, 1), 1.5, False, 5, 4),  # one channel per group
]


@pytest.mark.parametrize("case", range(len(TILED_CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_tiled_forward_schedule_equals_elementwise_bodies(rng, case, dtype):
    """The CUDA forward's block schedule (taps once per (pixel, group) pair in the block's table, then the
    channels), run on the CPU, gives the per-element bodies' values bit for bit, on contiguous and strided data."""
    g, d, kernel, stride, pad, dil, scale, rc, h, w = TILED_CASES[case]
    value, om = make_inputs(rng, h=h, w=w, group=g, d=d, kernel=kernel, stride=stride, pad=pad, dil=dil,
                            remove_center=rc, spread=3.0, dtype=dtype, extra_p=3)
    prm = params(g, d, kernel, stride, pad, dil, scale, rc)
    outs = []
    for v, o in ((value, om), (value[:, :, ::-1], np.asfortranarray(om))):  # strided value, permuted offsets
        el = np.empty(v.shape[:1] + o.shape[1:3] + v.shape[3:], dtype)
        tiled = np.full_like(el, 7)
        _C.dcnv4_forward(v, o, el, *prm, impl="elementwise")
        _C.dcnv4_forward(v, o, tiled, *prm, impl="tiled")
        np.testing.assert_array_equal(tiled, el)
        outs.append(tiled)
    if dtype != np.float16:
        ref = dcnv4_ref(value, om, kernel, stride, pad, dil, g, scale, rc)
        assert rel_err(outs[0], ref) < (1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("case", range(len(TILED_CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_backward_schedule_equals_elementwise_bodies(rng, case, dtype):
    """The CUDA backward's default mode with the tiled value scatter (taps from the block's table), its blocks run
    in order on the CPU, adds the same products in the same order as the per-element scatter: bit for bit. Its
    offset/weight gradients (one warp per table entry, lanes over channels, the lanes' sums added in the shuffle
    tree's order) sum the per-element body's terms in another order: to rounding of it and of the reference."""
    g, d, kernel, stride, pad, dil, scale, rc, h, w = TILED_CASES[case]
    value, om = make_inputs(rng, h=h, w=w, group=g, d=d, kernel=kernel, stride=stride, pad=pad, dil=dil,
                            remove_center=rc, spread=3.0, dtype=dtype, extra_p=3)
    prm = params(g, d, kernel, stride, pad, dil, scale, rc)
    go = rng.standard_normal((value.shape[0], om.shape[1], om.shape[2], value.shape[3])).astype(dtype)
    gv_el, gom_el = run_backward(value, om, go, prm, "elementwise", False)
    gv_t, gom_t = run_backward(value, om, go, prm, "tiled")
    np.testing.assert_array_equal(gv_t, gv_el)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert rel_err(gom_t, gom_el) < tol
    assert np.all(gom_t[..., -3:] == 0)  # padding channels written (zero), none left at the NaN fill
    gv_ref, gom_ref = dcnv4_grad_ref(value, om, go, kernel, stride, pad, dil, g, scale, rc)
    assert rel_err(gv_t, gv_ref) < tol
    assert rel_err(gom_t, gom_ref) < tol
    if d == 1:  # one channel: the tree adds only zeros to lane 0's sum, so the per-element body's value exactly
        np.testing.assert_array_equal(gom_t, gom_el)


def test_elementwise_backward_bodies_equal_fast_path_bitwise_for_value(rng):
    # the deterministic gather body adds in the fast path's order (rows, columns, taps), product for product
    value, om = make_inputs(rng, n=2, h=6, w=5, group=2, d=11, dtype=np.float32)
    prm = params(2, 11)
    go = rng.standard_normal((2, 6, 5, 22)).astype(np.float32)
    gv_fast, _ = run_backward(value, om, go, prm)
    gv_plane, _ = run_backward(value, om, go, prm, "elementwise", True)
    np.testing.assert_array_equal(gv_fast, gv_plane)


def test_backward_deterministic_across_thread_counts(rng):
    value, om = make_inputs(rng, n=3, h=7, w=7, group=4, d=5, dtype=np.float32)
    prm = params(4, 5)
    go = rng.standard_normal((3, 7, 7, 20)).astype(np.float32)
    before = dynrefer.get_num_threads()
    try:
        results = []
        for nt in (1, 2, 3):
            dynrefer.set_num_threads(nt)
            results.append(run_backward(value, om, go, prm) + (dcnv4(value, om, 3, 1, 1, 1, 4),))
    finally:
        dynrefer.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


def test_offsets_far_outside_and_non_finite(rng):
    value, om = make_inputs(rng, n=1, h=4, w=5, group=2, d=3)
    k = 9
    far = om.copy()
    for g in range(2):
        far[..., g * 3 * k:g * 3 * k + 2 * k] = rng.choice([-1e6, 1e6, 1e30], size=far[..., :2 * k].shape)
    out = dcnv4(value, far, 3, 1, 1, 1, 2)
    assert np.all(out == 0)
    gv, gom = run_backward(value, far, np.ones_like(out), params(2, 3))
    assert np.all(gv == 0) and np.all(gom == 0)
    bad = om.copy()
    bad[..., 0] = np.nan
    bad[..., 1] = np.inf
    ref = dcnv4_ref(value, np.nan_to_num(bad, nan=1e9, posinf=1e9), group=2)  # NaN/Inf samples are skipped
    out = dcnv4(value, bad, 3, 1, 1, 1, 2)
    assert np.all(np.isfinite(out)) and rel_err(out, ref) < 1e-12


def test_float16(rng):
    value, om = make_inputs(rng, n=2, h=5, w=5, group=2, d=4, dtype=np.float16)
    ref = dcnv4_ref(value, om, group=2)
    out = dcnv4(value, om, 3, 1, 1, 1, 2)
    assert out.dtype == np.float16
    # float16 storage, float32 arithmetic: the output's own rounding dominates
    assert rel_err(out, ref) < 2e-3
    go = rng.standard_normal(out.shape).astype(np.float16)
    gv, gom = run_backward(value, om, go, params(2, 4))
    rgv, rgom = dcnv4_grad_ref(value, om, go, group=2)
    assert gv.dtype == np.float32 and rel_err(gv, rgv) < 1e-5 and rel_err(gom, rgom) < 1e-5


def test_strided_inputs_handled(rng):
    value, om = make_inputs(rng, n=2, h=5, w=6, group=2, d=3)
    ref = dcnv4_ref(value, om, group=2)
    # value laid out planar [N, C, H, W] and viewed as [N, H, W, C]; offset_mask a slice of a wider array
    v_planar = np.ascontiguousarray(value.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    wide = np.zeros(om.shape[:3] + (om.shape[3] * 2,))
    wide[..., ::2] = om
    om_strided = wide[..., ::2]
    assert not v_planar.flags.c_contiguous and not om_strided.flags.c_contiguous
    out = dcnv4(v_planar, om_strided, 3, 1, 1, 1, 2)
    assert rel_err(out, ref) < 1e-13
    go = rng.standard_normal(out.shape)
    rgv, rgom = dcnv4_grad_ref(value, om, go, group=2)
    gow = np.zeros(go.shape[:3] + (12,))
    gow[..., 1::2] = go
    assert not gow[..., 1::2].flags.c_contiguous
    gv, gom = run_backward(v_planar, om_strided, gow[..., 1::2], params(2, 3))
    assert rel_err(gv, rgv) < 1e-12 and rel_err(gom, rgom) < 1e-12
    # strided gradient outputs too
    gvw = np.zeros((2, 5, 6, 12))
    gv2 = gvw[..., ::2]
    gom2 = np.zeros(om.shape)
    _C.dcnv4_backward(value, om, go, gv2, gom2, *params(2, 3))
    assert rel_err(gv2, rgv) < 1e-12 and rel_err(gom2, rgom) < 1e-12


def test_empty_batch(rng):
    value = np.zeros((0, 4, 4, 8), np.float32)
    om = np.zeros((0, 4, 4, 56), np.float32)
    out = dcnv4(value, om, 3, 1, 1, 1, 2)
    assert out.shape == (0, 4, 4, 8)
    gv, gom = run_backward(value, om, out, params(2, 4))
    assert gv.shape == value.shape and gom.shape == om.shape


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(1, 6), group=st.integers(1, 3), d=st.integers(1, 5),
    kh=st.sampled_from([1, 2, 3]), kw=st.sampled_from([1, 3]), stride=st.integers(1, 2), dil=st.integers(1, 2),
    pad=st.integers(0, 2), remove_center=st.booleans(), scale=st.sampled_from([1.0, 0.5, 1.7]),
    spread=st.sampled_from([0.5, 3.0, 40.0]), seed=st.integers(0, 2**31),
)
def test_property_against_reference(n, h, w, group, d, kh, kw, stride, dil, pad, remove_center, scale, spread, seed):
    if remove_center and kh * kw == 1:
        remove_center = False
    if h + 2 * pad < dil * (kh - 1) + 1 or w + 2 * pad < dil * (kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    kernel, st_, pd, dl = (kh, kw), (stride, stride), (pad, pad), (dil, dil)
    value, om = make_inputs(rng, n=n, h=h, w=w, group=group, d=d, kernel=kernel, stride=st_, pad=pd, dil=dl,
                            remove_center=remove_center, spread=spread)
    ref = dcnv4_ref(value, om, kernel, st_, pd, dl, group, scale, remove_center)
    out = dcnv4(value, om, kernel, st_, pd, dl, group, None, scale, remove_center)
    assert rel_err(out, ref) < 1e-12 or np.abs(out - ref).max() < 1e-12
    go = rng.standard_normal(out.shape)
    rgv, rgom = dcnv4_grad_ref(value, om, go, kernel, st_, pd, dl, group, scale, remove_center)
    gv, gom = run_backward(value, om, go, params(group, d, kernel, st_, pd, dl, scale, remove_center))
    assert np.abs(gv - rgv).max() <= 1e-11 * max(1.0, np.abs(rgv).max())
    assert np.abs(gom - rgom).max() <= 1e-11 * max(1.0, np.abs(rgom).max())


# --- bad input -----------------------------------------------------------------------------------------------

def test_bad_arguments_numpy(rng):
    value, om = make_inputs(rng, n=1, h=4, w=4, group=2, d=3, dtype=np.float32)
    with pytest.raises(ValueError, match="4-D"):
        dcnv4(value[0], om, 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="P >= 3"):
        dcnv4(value, om[..., :50], 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="not divisible"):
        dcnv4(value, om, 3, 1, 1, 1, 4)
    with pytest.raises(ValueError, match="group_channels"):
        dcnv4(value, om, 3, 1, 1, 1, 2, group_channels=2)
    with pytest.raises(TypeError, match="dtype"):
        dcnv4(value, om.astype(np.float64), 3, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        dcnv4(value.astype(np.int32), om.astype(np.int32), 3, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="NumPy array"):
        dcnv4(value.tolist(), om, 3, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="offset_mask"):
        dcnv4(value, "x", 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="stride"):
        dcnv4(value, om, 3, 0, 1, 1, 2)
    with pytest.raises(ValueError, match="padding"):
        dcnv4(value, om, 3, 1, -1, 1, 2)
    with pytest.raises(TypeError, match="kernel_size"):
        dcnv4(value, om, 2.5, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="offset_scale"):
        dcnv4(value, om, 3, 1, 1, 1, 2, offset_scale=float("nan"))
    with pytest.raises(ValueError, match="does not fit"):
        dcnv4(value, om, 7, 1, 0, 1, 2)
    with pytest.raises(ValueError, match="shape"):
        dcnv4(value, om[:, :3], 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="remove_center"):
        dcnv4(value, om, 1, 1, 0, 1, 2, remove_center=True)


def test_bad_arguments_binding(rng):
    value, om = make_inputs(rng, n=1, h=4, w=4, group=2, d=3, dtype=np.float32)
    out = np.empty((1, 4, 4, 6), np.float32)
    prm = params(2, 3)
    _C.dcnv4_forward(value, om, out, *prm)
    with pytest.raises(TypeError, match="output must have value's dtype"):
        _C.dcnv4_forward(value, om, out.astype(np.float64), *prm)
    with pytest.raises(ValueError, match="output must have shape"):
        _C.dcnv4_forward(value, om, out[:, :3], *prm)
    with pytest.raises(ValueError, match="group \\* group_channels"):
        _C.dcnv4_forward(value, om, out, *params(2, 2))
    with pytest.raises(ValueError, match="kernel_h"):
        _C.dcnv4_forward(value, om, out, *params(2, 3, kernel=(0, 3)))
    with pytest.raises(ValueError, match="impl"):
        _C.dcnv4_forward(value, om, out, *prm, impl="gpu")
    with pytest.raises(ValueError):
        _C.dcnv4_forward(value, om, np.empty((1, 4, 4, 6), np.float32)[..., None], *prm)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises((ValueError, TypeError)):
        _C.dcnv4_forward(value, om, ro, *prm)
    go = np.ones_like(out)
    with pytest.raises(TypeError, match="float32"):
        _C.dcnv4_backward(value, om, go, np.empty(value.shape, np.float16), np.empty(om.shape, np.float32), *prm)
    with pytest.raises(ValueError, match="shapes"):
        _C.dcnv4_backward(value, om, go, np.empty((1, 4, 4, 7), np.float32), np.empty(om.shape, np.float32), *prm)
    with pytest.raises(TypeError):
        _C.dcnv4_forward(value, om, out, 3, 3, 1, 1, 1, 1, 1, 1, 2, 3)  # missing arguments


def test_numpy_use_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np, dynrefer.ops as o; "
            "y = o.dcnv4(np.ones((1, 3, 3, 4)), np.zeros((1, 3, 3, 56)), group=2); "
            "assert y.shape == (1, 3, 3, 4) and 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
