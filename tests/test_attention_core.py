"""Fused attention through the NumPy entry points and the raw binding — no PyTorch needed.

These are the C-level tests (they also run under the ASan+UBSan build). The golden is a float64 NumPy reference
written from the formulas of torch.nn.functional.scaled_dot_product_attention (softmax(q k^T * scale + mask) v),
with one documented difference: a row whose keys are all masked gives 0 (and zero gradients), not NaN.
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynrefer import _C, get_num_threads, set_num_threads
from dynrefer.ops import attention
from dynrefer.ops.attention import attention_numpy


# --- float64 reference ---------------------------------------------------------------------------------------

def _scores(q, k, mask, causal, scale):
    s = np.einsum("...id,...jd->...ij", q.astype(np.float64), k.astype(np.float64)) * scale
    lq, lk = s.shape[-2:]
    if causal:
        s = np.where(np.tril(np.ones((lq, lk), bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + mask.astype(np.float64)
    return s


def ref_forward(q, k, v, mask=None, causal=False, scale=None):
    """(out, lse) in float64; fully masked rows give out 0 and lse -inf."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, mask, causal, scale)
    m = s.max(-1, keepdims=True) if s.shape[-1] else np.full(s.shape[:-1] + (1,), -np.inf)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    out = (p / np.where(l > 0, l, 1)) @ v.astype(np.float64)
    with np.errstate(divide="ignore"):
        lse = np.where(l > 0, np.log(np.where(l > 0, l, 1)) + m, -np.inf)[..., 0]
    return out, lse


def ref_backward(q, k, v, g, mask=None, causal=False, scale=None):
    """(dq, dk, dv) in float64 from the explicit softmax Jacobian."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v, g = (x.astype(np.float64) for x in (q, k, v, g))
    s = _scores(q, k, mask, causal, scale)
    m = np.where(np.isfinite(s.max(-1, keepdims=True)), s.max(-1, keepdims=True), 0)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    p = p / np.where(l > 0, l, 1)
    dv = np.swapaxes(p, -1, -2) @ g
    dp = g @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, dv


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (n if n > 0 else 1.0)


def qkv(rng, shape_q, lk, dv=None, dtype=np.float32):
    *lead, lq, d = shape_q
    dv = d if dv is None else dv
    q = rng.standard_normal((*lead, lq, d)).astype(dtype)
    k = rng.standard_normal((*lead, lk, d)).astype(dtype)
    v = rng.standard_normal((*lead, lk, dv)).astype(dtype)
    return q, k, v


def backward(q, k, v, g, mask=None, causal=False, scale=None, impl="fast"):
    """Run forward then the binding's backward on 4-D arrays; returns (dq, dk, dv)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    gqa = q.ndim >= 3 and q.shape[-3] != k.shape[-3]
    out, lse = attention_numpy(q, k, v, mask, causal, scale, impl=impl, return_lse=True, enable_gqa=gqa)
    m4 = None if mask is None else np.broadcast_to(mask, q.shape[:-1] + (k.shape[-2],))
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _C.attention_backward(q, k, v, m4, out, lse, g.astype(q.dtype), dq, dk, dv, scale, causal, impl=impl)
    return dq, dk, dv


def cpu_impls():
    """The fast variants this CPU can run, plus the CUDA kernels' per-row bodies."""
    out = ["fast", "elementwise", "portable"]
    q = np.zeros((1, 1, 1, 8), np.float32)
    for isa in ("avx2", "avx512"):
        try:
            attention_numpy(q, q, q, impl=isa)
            out.append(isa)
        except (TypeError, RuntimeError):  # DR_EUNSUPPORTED: this CPU lacks the instruction set
            pass
    return out


IMPLS = cpu_impls()

# --- forward against the reference ---------------------------------------------------------------------------

SHAPES = [  # (B, H, Lq, Lk, D, Dv)
    (1, 1, 1, 1, 8, 8),
    (2, 3, 5, 7, 16, 16),
    (2, 2, 33, 70, 88, 88),
    (1, 2, 70, 33, 64, 24),
    (1, 1, 9, 300, 128, 128),
    (1, 2, 267, 40, 64, 64),
    (2, 1, 17, 17, 8, 100),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(rng, shape, impl, dtype):
    b, h, lq, lk, d, dv = shape
    q, k, v = qkv(rng, (b, h, lq, d), lk, dv, dtype)
    out, lse = attention_numpy(q, k, v, impl=impl, return_lse=True)
    ro, rl = ref_forward(q, k, v)
    assert out.dtype == dtype and out.shape == (b, h, lq, dv)
    assert lse.dtype == (np.float64 if dtype == np.float64 else np.float32)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert rel(out, ro) < tol
    np.testing.assert_allclose(lse, rl, rtol=tol, atol=tol)


def test_float16_forward(rng):
    q, k, v = qkv(rng, (2, 3, 20, 16), 45, 16, np.float16)
    out = attention(q, k, v)
    assert out.dtype == np.float16
    ro, _ = ref_forward(q, k, v)
    # float32 accumulation: only the float16 rounding of the output remains (2^-11 relative)
    assert rel(out, ro) < 1e-3
    assert rel(attention_numpy(q, k, v, impl="elementwise"), ro) < 1e-3


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "elementwise"])
@pytest.mark.parametrize("case", ["plain", "bool", "additive", "causal"])
def test_float16_backward_float32_delta(rng, impl, case):
    """float16 backward on values sharing an offset and peaked softmaxes, where delta = dO . O taken from the
    float16 output would put its rounding (2^-11 of |dO| |O|) into every dS: delta is summed from P and dP in
    float32, so dQ, dK and dV carry only their own float16 rounding (2^-11 relative) against float64 gradients
    of the same float16 inputs. (The CUDA kernels' per-row bodies, impl='elementwise', still take dO . O.)"""
    b, h, lq, lk, d, dv = 2, 2, 45, 77, 40, 24
    q, k = ((2 * rng.standard_normal((b, h, n, d))).astype(np.float16) for n in (lq, lk))
    v = (rng.standard_normal((b, h, lk, dv)) + 3).astype(np.float16)
    g = rng.standard_normal((b, h, lq, dv)).astype(np.float16)
    mask, causal = None, case == "causal"
    if case == "bool":
        mask = rng.random((b, 1, lq, lk)) > 0.4
        mask[:, :, np.arange(lq), np.arange(lq) % lk] = True
    elif case == "additive":
        mask = (2 * rng.standard_normal((b, 1, lq, lk))).astype(np.float16)
    got = backward(q, k, v, g, mask, causal, impl=impl)
    ref = ref_backward(q, k, v, g, mask, causal)
    for name, x, y in zip(("dq", "dk", "dv"), got, ref):
        assert x.dtype == np.float16
        assert rel(x, y) < 2.0**-11, (name, rel(x, y))


def test_long_sequence(rng):
    q, k, v = qkv(rng, (1, 1, 1030, 64), 1030)
    out = attention(q, k, v)
    assert rel(out, ref_forward(q, k, v)[0]) < 1e-5
    out_c = attention(q, k, v, is_causal=True)
    assert rel(out_c, ref_forward(q, k, v, causal=True)[0]) < 1e-5


@pytest.mark.parametrize("scale", [0.05, 1.0, -0.3, 0.0])
def test_scale(rng, scale):
    q, k, v = qkv(rng, (2, 2, 6, 16), 9)
    assert rel(attention(q, k, v, scale=scale), ref_forward(q, k, v, scale=scale)[0]) < 1e-5


def test_leading_dims(rng):
    q, k, v = qkv(rng, (3, 7, 16), 5)  # 3-D [N, L, D]
    assert attention(q, k, v).shape == (3, 7, 16)
    assert rel(attention(q, k, v), ref_forward(q, k, v)[0]) < 1e-5
    q, k, v = qkv(rng, (2, 2, 3, 7, 8), 5)  # 5-D
    mask = rng.random((3, 1, 5)) > 0.3
    assert rel(attention(q, k, v, mask), ref_forward(q, k, v, mask)[0]) < 1e-5


def test_strided_inputs(rng):
    # the ViT layout: qkv [B, L, 3, H, D] permuted, so D is contiguous and heads are strided
    x = rng.standard_normal((2, 11, 3, 4, 24)).astype(np.float32)
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    assert not q.flags.c_contiguous
    assert rel(attention(q, k, v), ref_forward(q, k, v)[0]) < 1e-5
    # a transposed head dim (stride != 1)
    qt = np.ascontiguousarray(np.swapaxes(q, -1, -2)).swapaxes(-1, -2)
    assert rel(attention(qt, k, v), ref_forward(q, k, v)[0]) < 1e-5


# --- masks --------------------------------------------------------------------------------------------------

def mask_shapes(b, h, lq, lk):
    full = (b, h, lq, lk)
    shapes = [tuple(f if keep else 1 for f, keep in zip(full, bits)) for bits in itertools.product([0, 1], repeat=4)]
    return shapes + [(lq, lk), (lk,), (1, lk), (h, 1, lk)]


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_every_mask_broadcast(rng, kind):
    b, h, lq, lk = 2, 3, 6, 37
    q, k, v = qkv(rng, (b, h, lq, 16), lk)
    for shape in mask_shapes(b, h, lq, lk):
        if kind == "bool":
            mask = rng.random(shape) > 0.4
        else:
            mask = rng.standard_normal(shape).astype(np.float32)
        ro, rl = ref_forward(q, k, v, mask)
        for impl in ("fast", "elementwise"):
            out, lse = attention_numpy(q, k, v, mask, impl=impl, return_lse=True)
            assert rel(out, ro) < 1e-5, (shape, impl)
            fin = np.isfinite(rl)
            np.testing.assert_array_equal(np.isfinite(lse), fin)
            np.testing.assert_allclose(lse[fin], rl[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_zero(rng, impl):
    q, k, v = qkv(rng, (2, 2, 9, 16), 40)
    mask = rng.random((2, 2, 9, 40)) > 0.5
    mask[0, 1, 3] = False
    mask[1, :, 0] = False
    out, lse = attention_numpy(q, k, v, mask, impl=impl, return_lse=True)
    assert np.all(out[0, 1, 3] == 0) and np.all(out[1, :, 0] == 0)
    assert lse[0, 1, 3] == -np.inf
    assert not np.isnan(out).any()
    assert rel(out, ref_forward(q, k, v, mask)[0]) < 1e-5
    g = rng.standard_normal(out.shape).astype(np.float32)
    dq, dk, dv = backward(q, k, v, g, mask, impl=impl)
    assert np.all(dq[0, 1, 3] == 0) and np.all(dq[1, :, 0] == 0)
    for got, want in zip((dq, dk, dv), ref_backward(q, k, v, g, mask)):
        assert not np.isnan(got).any()
        assert rel(got, want) < 1e-5
    # a float mask of -inf behaves the same
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    np.testing.assert_allclose(attention_numpy(q, k, v, fmask, impl=impl), out, rtol=1e-6, atol=1e-6)


def test_no_keys(rng):
    q, k, v = qkv(rng, (2, 2, 4, 8), 0, 5)
    out, lse = attention_numpy(q, k, v, return_lse=True)
    assert out.shape == (2, 2, 4, 5) and np.all(out == 0) and np.all(lse == -np.inf)


def test_band_mask(rng):
    # additive -inf outside a band |i - j| <= 3, finite noise inside
    lq = lk = 50
    i, j = np.mgrid[:lq, :lk]
    band = np.where(np.abs(i - j) <= 3, rng.standard_normal((lq, lk)), -np.inf).astype(np.float32)
    q, k, v = qkv(rng, (2, 2, lq, 32), lk)
    for impl in IMPLS:
        assert rel(attention_numpy(q, k, v, band, impl=impl), ref_forward(q, k, v, band)[0]) < 1e-5


@pytest.mark.parametrize("lq,lk", [(7, 7), (5, 12), (12, 5), (1, 30), (300, 37), (37, 300)])
@pytest.mark.parametrize("impl", IMPLS)
def test_causal_top_left(rng, lq, lk, impl):
    q, k, v = qkv(rng, (2, 2, lq, 16), lk)
    out = attention_numpy(q, k, v, is_causal=True, impl=impl)
    assert rel(out, ref_forward(q, k, v, causal=True)[0]) < 1e-5
    # top-left alignment: query 0 sees only key 0
    np.testing.assert_allclose(out[:, :, 0], v[:, :, 0], rtol=1e-6, atol=1e-6)


# --- backward -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    dict(shape=(2, 2, 9, 13, 16, 16)),
    dict(shape=(1, 2, 33, 70, 88, 64), causal=True),
    dict(shape=(2, 1, 40, 7, 8, 24), mask="bool"),
    dict(shape=(1, 3, 5, 60, 64, 64), mask="float"),
    dict(shape=(1, 1, 1, 1, 128, 128)),
])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_matches_reference(rng, case, impl, dtype):
    b, h, lq, lk, d, dv = case["shape"]
    q, k, v = qkv(rng, (b, h, lq, d), lk, dv, dtype)
    g = rng.standard_normal((b, h, lq, dv)).astype(dtype)
    mask = None
    if case.get("mask") == "bool":
        mask = rng.random((b, 1, lq, lk)) > 0.3
    elif case.get("mask") == "float":
        mask = rng.standard_normal((1, h, 1, lk)).astype(dtype)
    causal = case.get("causal", False)
    got = backward(q, k, v, g, mask, causal, impl=impl)
    want = ref_backward(q, k, v, g, mask, causal)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    for name, a, w in zip(("dq", "dk", "dv"), got, want):
        assert a.dtype == dtype
        assert rel(a, w) < tol, name


def test_backward_finite_differences(rng):
    # dq from central differences of sum(out * g) in float64
    q, k, v = qkv(rng, (1, 1, 3, 4), 5, 3, np.float64)
    g = rng.standard_normal((1, 1, 3, 3))
    dq, dk, dv = backward(q, k, v, g)
    eps = 1e-6
    for x, dx in ((q, dq), (k, dk), (v, dv)):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            fp = (attention(q, k, v) * g).sum()
            x[idx] = old - eps
            fm = (attention(q, k, v) * g).sum()
            x[idx] = old
            num[idx] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


# --- the CUDA bodies against the fast path; determinism -----------------------------------------------------

def test_elementwise_matches_fast(rng):
    q, k, v = qkv(rng, (2, 3, 21, 88), 50)
    mask = rng.standard_normal((2, 1, 21, 50)).astype(np.float32)
    g = rng.standard_normal((2, 3, 21, 88)).astype(np.float32)
    for causal, m in ((False, mask), (True, None)):
        a = attention_numpy(q, k, v, m, causal, impl="elementwise")
        f = attention_numpy(q, k, v, m, causal, impl="fast")
        assert rel(a, f) < 2e-6
        for x, y in zip(backward(q, k, v, g, m, causal, impl="elementwise"), backward(q, k, v, g, m, causal)):
            assert rel(x, y) < 5e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_bitwise_repeatable_across_thread_counts(rng, impl):
    q, k, v = qkv(rng, (2, 3, 45, 40), 61)
    g = rng.standard_normal(q.shape).astype(np.float32)
    mask = rng.random((1, 3, 45, 61)) > 0.2
    before = get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            set_num_threads(n)
            results.append((attention_numpy(q, k, v, mask, impl=impl),) + backward(q, k, v, g, mask, impl=impl))
            results.append((attention_numpy(q, k, v, mask, impl=impl),) + backward(q, k, v, g, mask, impl=impl))
    finally:
        set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    b=st.integers(0, 2), h=st.integers(1, 3), lq=st.integers(0, 40), lk=st.integers(0, 40),
    d=st.integers(1, 40), dv=st.integers(1, 40), causal=st.booleans(), masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_shapes(b, h, lq, lk, d, dv, causal, masked, seed):
    rng = np.random.default_rng(seed)
    q, k, v = qkv(rng, (b, h, lq, d), lk, dv)
    mask = rng.random((1, h, lq, lk)) > 0.3 if masked and not causal else None
    ro, _ = ref_forward(q, k, v, mask, causal)
    for impl in ("fast", "elementwise"):
        out = attention_numpy(q, k, v, mask, causal, impl=impl)
        assert out.shape == (b, h, lq, dv)
        assert not np.isnan(out).any()
        assert rel(out, ro) < 1e-5
    if b * h * lq * lk:
        g = rng.standard_normal(out.shape).astype(np.float32)
        for got, want in zip(backward(q, k, v, g, mask, causal), ref_backward(q, k, v, g, mask, causal)):
            assert rel(got, want) < 2e-5


# --- bad input ------------------------------------------------------------------------------------------------

def test_bad_input(rng):
    q, k, v = qkv(rng, (1, 2, 4, 8), 5)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=0.1)
    with pytest.raises(TypeError, match="q must be"):
        attention([[1.0]], k, v)
    with pytest.raises(TypeError, match="q must be float16"):
        attention(q.astype(np.int32), k, v)
    with pytest.raises(TypeError, match="share one dtype"):
        attention(q, k.astype(np.float64), v)
    with pytest.raises(ValueError, match="rank"):
        attention(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0])  # rank 1 (rank 2, [L, D], is accepted as SDPA does)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same length"):
        attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="leading"):
        attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match=r"\[1, 256\]"):
        big = np.zeros((1, 1, 2, 257), np.float32)
        attention(big, big, big)
    with pytest.raises(ValueError, match="enable_gqa"):
        attention(np.zeros((1, 6, 4, 8), np.float32), k[:, :1].repeat(4, 1), v[:, :1].repeat(4, 1), enable_gqa=True)
    with pytest.raises(TypeError, match="enable_gqa"):
        attention(q, k, v, enable_gqa=1)
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, attn_mask=np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        attention(q, k, v, attn_mask=np.ones((4, 5), np.int64))
    with pytest.raises(ValueError, match="exclusive"):
        attention(q, k, v, attn_mask=np.ones((4, 5), bool), is_causal=True)
    with pytest.raises(ValueError, match="finite"):
        attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="is_causal"):
        attention(q, k, v, is_causal="yes")
    with pytest.raises(ValueError, match="impl"):
        attention_numpy(q, k, v, impl="cuda")


def test_bad_binding_arguments(rng):
    q, k, v = qkv(rng, (1, 2, 4, 8), 5)
    out, lse = np.empty((1, 2, 4, 8), np.float32), np.empty((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="out has shape"):
        _C.attention_forward(q, k, v, None, out[:, :, :3], lse, 0.5, False)
    with pytest.raises(TypeError, match="lse must be float32"):
        _C.attention_forward(q, k, v, None, out, lse.astype(np.float64), 0.5, False)
    with pytest.raises(ValueError, match="read-only"):
        ro = out.copy()
        ro.flags.writeable = False
        _C.attention_forward(q, k, v, None, ro, lse, 0.5, False)
    with pytest.raises(ValueError, match="attn_mask has shape"):
        _C.attention_forward(q, k, v, np.ones((1, 2, 4, 4), bool), out, lse, 0.5, False)
    with pytest.raises(ValueError, match="4-D"):
        _C.attention_forward(q[0], k, v, None, out, lse, 0.5, False)
    with pytest.raises(TypeError, match="grad_q must have q's dtype"):
        _C.attention_backward(q, k, v, None, out, lse, out, q.astype(np.float64), k.copy(), v.copy(), 0.5, False)
    with pytest.raises(ValueError, match="grad_k has shape"):
        _C.attention_backward(q, k, v, None, out, lse, out, q.copy(), k[:, :, :2].copy(), v.copy(), 0.5, False)
    with pytest.raises(TypeError):
        _C.attention_forward(q, k, v, None, out, lse, "x", False)


def test_non_finite_inputs_do_not_crash(rng):
    q, k, v = qkv(rng, (1, 2, 6, 16), 9)
    q[0, 0, 2, 3] = np.nan
    k[0, 1, 4, 0] = np.inf
    out = attention(q, k, v)
    assert np.isnan(out[0, 0, 2]).all()  # NaN propagates to its row, as in PyTorch
    assert np.isfinite(out[0, 0, [0, 1, 3, 4, 5]]).all()
    mask = np.full((6, 9), np.nan, np.float32)
    assert np.isnan(attention(q, k, v, mask)).all()


def test_concurrent_callers(rng):
    # the GIL is released around the kernel: callers on several threads share the pool (or run inline)
    import threading

    cases = [qkv(rng, (2, 3, 20 + i, 24), 30 + i) for i in range(4)]
    want = [attention(*c) for c in cases]
    got = [None] * len(cases)

    def run(i):
        for _ in range(3):
            got[i] = attention(*cases[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# --- NaN and infinities ---------------------------------------------------------------------------------------

def ref_ieee(q, k, v, g, mask=None, causal=False, scale=None):
    """(out, dq, dk, dv) in float64 with PyTorch's arithmetic for non-finite values: masks added to the scores
    (bool and causal as 0 / -inf), a NaN-propagating row maximum, rows whose scores are all -inf give P = 0, and
    every product of P or dS with a value, masked keys included."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v, g = (x.astype(np.float64) for x in (q, k, v, g))
    with np.errstate(all="ignore"):
        s = np.einsum("...id,...jd->...ij", q, k) * scale
        lq, lk = s.shape[-2:]
        if causal:
            s = s + np.where(np.tril(np.ones((lq, lk), bool)), 0.0, -np.inf)
        if mask is not None:
            s = s + (np.where(mask, 0.0, -np.inf) if mask.dtype == np.bool_ else mask.astype(np.float64))
        m = s.max(-1, keepdims=True)
        dead = m == -np.inf
        p = np.exp(s - np.where(dead, 0, m))
        p = np.where(dead, 0, p / p.sum(-1, keepdims=True))
        out = np.einsum("...ij,...jc->...ic", p, v)
        dv = np.einsum("...ij,...ic->...jc", p, g)
        dp = np.einsum("...ic,...jc->...ij", g, v)
        ds = p * (dp - (g * out).sum(-1, keepdims=True))
        dq = np.einsum("...ij,...jd->...id", ds, k) * scale
        dk = np.einsum("...ij,...id->...jd", ds, q) * scale
    return out, dq, dk, dv


@pytest.mark.parametrize("lq,lk,d", [(6, 7, 8), (40, 70, 64), (70, 33, 24)])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_propagate(rng, lq, lk, d, impl, dtype):
    """NaN where PyTorch gives NaN: a NaN or an infinity in q, k, v or an additive mask, also at keys a bool, -inf
    or causal mask hides (PyTorch adds those masks as -inf); a row with every key masked and finite inputs still
    gives 0 and zero gradients."""
    q, k, v = qkv(rng, (2, 2, lq, d), lk, None, dtype)
    g = rng.standard_normal((2, 2, lq, d)).astype(dtype)
    bm = rng.random((2, 2, lq, lk)) > 0.3
    bm[..., 0] = True
    bm[0, 1, 1] = False
    bm[1, 0, :, 2] = False
    fm = np.where(bm, rng.standard_normal((2, 2, lq, lk)), -np.inf).astype(dtype)

    def put(x, idx, val):
        x = x.copy()
        x[idx] = val
        return x

    j = lk - 1
    cases = [
        (put(q, (0, 1, 2, 3), np.nan), k, v, None, False),
        (q, put(k, (1, 0, 2, 1), np.nan), v, None, False),
        (q, k, put(v, (0, 0, 1, 2), np.nan), None, False),
        (q, put(k, (0, 1, 3, 0), np.inf), v, None, False),
        (q, k, v, put(fm, (0, 0, 2, 1), np.nan), False),
        (q, put(k, (1, 0, 2, 0), np.nan), v, bm, False),
        (q, put(k, (1, 0, 2, 0), np.nan), v, fm, False),
        (q, k, put(v, (1, 0, 2, 3), np.nan), bm, False),
        (put(q, (0, 1, 1, 0), np.nan), k, v, bm, False),
        (q, k, put(v, (0, 1, 4, 1), np.nan), bm, False),
        (q, put(k, (0, 0, j, 2), np.nan), v, None, True),
        (q, k, put(v, (1, 1, j, 0), np.nan), None, True),
        (put(q, (1, 0, 0, 1), np.nan), k, v, None, True),
        (q, k, v, None, True),
        (q, k, v, bm, False),
    ]
    for n, (qq, kk, vv, mm, causal) in enumerate(cases):
        out = attention_numpy(qq, kk, vv, mm, causal, impl=impl)
        got = (out,) + backward(qq, kk, vv, g, mm, causal, impl=impl)
        want = ref_ieee(qq, kk, vv, g, mm, causal)
        for what, a, w in zip(("out", "dq", "dk", "dv"), got, want):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(w), err_msg=f"case {n} {what}")
            fin = np.isfinite(w)
            np.testing.assert_array_equal(np.isfinite(a), fin, err_msg=f"case {n} {what}")
            assert rel(a[fin], w[fin]) < (1e-10 if dtype == np.float64 else 3e-5), (n, what)
    out = attention_numpy(q, k, v, bm, impl=impl)
    dq = backward(q, k, v, g, bm, impl=impl)[0]
    assert np.all(out[0, 1, 1] == 0) and np.all(dq[0, 1, 1] == 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_key_gives_exact_zero_dq_dk(rng, impl, dtype):
    """With one key the softmax is the constant 1: dQ and dK are exactly 0 (delta = dO . O is summed as dP is, so
    dP - delta cancels), dV = sum_i dO_i and O = v."""
    for lq, d, dv, causal, masked in ((1, 8, 8, False, False), (37, 64, 64, True, False), (300, 88, 40, False, True),
                                      (5, 7, 9, False, False), (70, 128, 24, True, False)):
        q, k, v = qkv(rng, (2, 3, lq, d), 1, dv, dtype)
        g = rng.standard_normal((2, 3, lq, dv)).astype(dtype)
        mask = rng.standard_normal((1, 3, lq, 1)).astype(dtype) if masked else None
        out = attention_numpy(q, k, v, mask, causal, impl=impl)
        np.testing.assert_array_equal(out, np.broadcast_to(v, out.shape))
        dq, dk, dvv = backward(q, k, v, g, mask, causal, impl=impl)
        assert np.all(dq == 0) and np.all(dk == 0), (lq, d, np.abs(dq).max(), np.abs(dk).max())
        assert rel(dvv, g.astype(np.float64).sum(2, keepdims=True)) < (1e-12 if dtype == np.float64 else 1e-6)


# --- rank 2, head dims up to 256, grouped-query attention --------------------------------------------------------

def gqa_ref(q, k, v, g, mask=None, causal=False):
    """(out, dq, dk, dv) with k and v repeated over each group of query heads, their gradients summed back."""
    rep = q.shape[-3] // k.shape[-3]
    kr, vr = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    out = ref_forward(q, kr, vr, mask, causal)[0]
    dq, dk, dv = ref_backward(q, kr, vr, g, mask, causal)
    fold = lambda x: x.reshape(x.shape[:-3] + (k.shape[-3], rep) + x.shape[-2:]).sum(-3)
    return out, dq, fold(dk), fold(dv)


def test_rank_two(rng):
    q, k, v = qkv(rng, (7, 16), 11, 5)
    mask = rng.random((7, 11)) > 0.3
    mask[:, 0] = True
    for m, causal in ((None, False), (mask, False), (None, True)):
        out = attention_numpy(q, k, v, m, causal)
        assert out.shape == (7, 5)
        assert rel(out, ref_forward(q, k, v, m, causal)[0]) < 1e-5
    q4, k4, v4 = (x[None, None] for x in (q, k, v))
    np.testing.assert_array_equal(attention(q, k, v), attention(q4, k4, v4)[0, 0])


@pytest.mark.parametrize("d,dv", [(160, 160), (256, 256), (256, 40), (24, 256), (200, 129)])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_dims_up_to_256(rng, d, dv, impl, dtype):
    for lq, lk, causal in ((9, 40, False), (45, 17, True)):
        q, k, v = qkv(rng, (2, 2, lq, d), lk, dv, dtype)
        g = rng.standard_normal((2, 2, lq, dv)).astype(dtype)
        out, lse = attention_numpy(q, k, v, None, causal, impl=impl, return_lse=True)
        ro, rl = ref_forward(q, k, v, None, causal)
        tol = 1e-11 if dtype == np.float64 else 2e-5
        assert rel(out, ro) < tol
        for a, w in zip(backward(q, k, v, g, None, causal, impl=impl), ref_backward(q, k, v, g, None, causal)):
            assert rel(a, w) < tol


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grouped_query(rng, impl, dtype):
    """enable_gqa: k and v with fewer heads (a divisor of q's), read in place; dK and dV sum over each group."""
    tol = 1e-11 if dtype == np.float64 else 2e-5
    for hq, hk, lq, lk, causal, masked in ((6, 2, 9, 40, False, False), (8, 1, 33, 20, True, False),
                                          (4, 4, 5, 7, False, True), (6, 3, 70, 33, False, True)):
        q, k, v = qkv(rng, (2, hq, lq, 24), lk, 16, dtype)
        k, v = k[:, :hk], v[:, :hk]
        g = rng.standard_normal((2, hq, lq, 16)).astype(dtype)
        mask = rng.random((2, hq, lq, lk)) > 0.3 if masked else None
        if masked:
            mask[..., 0] = True
        want = gqa_ref(q, k, v, g, mask, causal)
        out = attention_numpy(q, k, v, mask, causal, impl=impl, enable_gqa=True)
        assert rel(out, want[0]) < tol
        got = backward(q, k, v, g, mask, causal, impl=impl)
        assert got[1].shape == k.shape and got[2].shape == v.shape
        for a, w in zip(got, want[1:]):
            assert rel(a, w) < tol
    q, k, v = qkv(rng, (2, 3, 4, 5, 8), 6, 8, dtype)  # 5-D: heads in dim -3
    out = attention(q, k[:, :, :1], v[:, :, :1], enable_gqa=True)
    np.testing.assert_allclose(out, attention(q, np.repeat(k[:, :, :1], 4, 2), np.repeat(v[:, :, :1], 4, 2)),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_bitwise_equal_across_thread_counts_every_path(rng, impl):
    """Every variant, float32 and float64: the same bits at 1, 2 and 3 threads on shapes that take the transposed
    short-query tiling, the row tiling, Lq >> Lk and odd sizes."""
    shapes = [(2, 3, 32, 257, 64, 64, False), (1, 1, 200, 257, 64, 64, False), (1, 2, 700, 32, 64, 64, False),
              (1, 2, 37, 53, 24, 40, True), (1, 1, 300, 37, 16, 16, False), (3, 1, 9, 70, 88, 8, False)]
    before = get_num_threads()
    for dtype in (np.float32, np.float64):
        for b, h, lq, lk, d, dv, causal in shapes:
            q, k, v = qkv(rng, (b, h, lq, d), lk, dv, dtype)
            g = rng.standard_normal((b, h, lq, dv)).astype(dtype)
            runs = []
            try:
                for n in (1, 2, 3):
                    set_num_threads(n)
                    runs.append((attention_numpy(q, k, v, None, causal, impl=impl),)
                                + backward(q, k, v, g, None, causal, impl=impl))
            finally:
                set_num_threads(before)
            for r in runs[1:]:
                for a, c in zip(runs[0], r):
                    assert a.tobytes() == c.tobytes(), (dtype, lq, lk)
