"""The tensor-core attention kernels' CPU emulation on float16 NumPy arrays — no PyTorch, small shapes, so it also
runs under the ASan+UBSan build (an index past a tile, a fragment or a shared-memory buffer is caught there; the
emulation's shared memory is one buffer of exactly the size the kernels ask for). The PyTorch comparisons (bfloat16,
SDPA, the DynRefer shapes) are in tests/test_attention_tc.py."""
import math

import numpy as np
import pytest

from dynrefer import _C
from test_attention_core import ref_backward, ref_forward, rel


def emulated(q, k, v, g, mask=None, causal=False):
    scale = 1 / math.sqrt(q.shape[-1])
    b, h, lq, _ = q.shape
    out = np.empty((b, h, lq, v.shape[-1]), np.float16)
    lse = np.empty((b, h, lq), np.float32)
    m4 = None if mask is None else np.broadcast_to(mask, (b, h, lq, k.shape[-2]))
    _C.attention_tc_forward_emulated(q, k, v, m4, out, lse, scale, causal)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _C.attention_tc_backward_emulated(q, k, v, m4, out, lse, g, dq, dk, dv, scale, causal)
    return out, lse, dq, dk, dv


def draw(rng, b, h, lq, lk, d, dv, hk=None):
    hk = h if hk is None else hk
    q = rng.standard_normal((b, h, lq, d)).astype(np.float16)
    k = rng.standard_normal((b, hk, lk, d)).astype(np.float16)
    v = rng.standard_normal((b, hk, lk, dv)).astype(np.float16)
    g = rng.standard_normal((b, h, lq, dv)).astype(np.float16)
    return q, k, v, g


def expand(x, h):
    return np.repeat(x, h // x.shape[1], axis=1)


@pytest.mark.parametrize("shape, causal", [
    ((1, 1, 1, 1, 1, 1), False),
    ((1, 2, 33, 70, 88, 40), False),   # ragged: no length a multiple of a tile, head dims padded to 96 and 48
    ((1, 1, 9, 40, 256, 256), False),  # two column chunks
    ((1, 1, 40, 20, 16, 16), True),    # causal, Lq > Lk, two query tiles of the dK/dV loop
    ((1, 1, 20, 40, 16, 16), True),    # causal, Lq < Lk
])
def test_matches_float64(rng, shape, causal):
    b, h, lq, lk, d, dv = shape
    q, k, v, g = draw(rng, b, h, lq, lk, d, dv)
    out, lse, dq, dk, dv_ = emulated(q, k, v, g, causal=causal)
    ro, rl = ref_forward(q, k, v, causal=causal)
    assert rel(out, ro) < 3e-3
    np.testing.assert_allclose(lse, rl, rtol=1e-5, atol=1e-5)
    for mine, gold in zip((dq, dk, dv_), ref_backward(q, k, v, g, causal=causal)):
        assert rel(mine, gold) < 5e-3


def test_mask_gqa_and_empty_rows(rng):
    q, k, v, g = draw(rng, 2, 4, 21, 35, 32, 24, hk=2)
    mask = rng.random((2, 1, 21, 35)) > 0.4
    mask[..., 0] = True
    mask[1, 0, 4] = False  # every key masked for row 4 of batch 1, all heads
    out, lse, dq, dk, dv = emulated(q, k, v, g, mask=mask)
    ke, ve = expand(k, 4), expand(v, 4)
    ro, rl = ref_forward(q, ke, ve, mask=mask)
    assert rel(out, ro) < 3e-3
    assert np.all(out[1, :, 4] == 0) and np.all(np.isneginf(lse[1, :, 4])) and np.all(dq[1, :, 4] == 0)
    rq, rk, rv = ref_backward(q, ke, ve, g, mask=mask)
    fold = lambda x: x.reshape(2, 2, 2, *x.shape[2:]).sum(2)  # noqa: E731  (query heads of a key/value head)
    assert rel(dq, rq) < 5e-3 and rel(dk, fold(rk)) < 5e-3 and rel(dv, fold(rv)) < 5e-3


def test_additive_mask_and_zero_lengths(rng):
    q, k, v, g = draw(rng, 1, 2, 18, 50, 16, 16)
    add = rng.standard_normal((1, 1, 1, 50)).astype(np.float32)
    out, lse, *_ = emulated(q, k, v, g, mask=add)
    assert rel(out, ref_forward(q, k, v, mask=add)[0]) < 3e-3
    # no keys: zeros and lse -inf; no queries: zero dK and dV
    q0, k0, v0, g0 = draw(rng, 1, 1, 5, 0, 8, 8)
    out, lse, dq, _, _ = emulated(q0, k0, v0, g0)
    assert np.all(out == 0) and np.all(np.isneginf(lse)) and np.all(dq == 0)
    q1, k1, v1, g1 = draw(rng, 1, 1, 0, 6, 8, 8)
    _, _, _, dk, dv = emulated(q1, k1, v1, g1)
    assert np.all(dk == 0) and np.all(dv == 0)


def test_bad_arguments(rng):
    q, k, v, g = draw(rng, 1, 1, 4, 4, 8, 8)
    out, lse = np.empty((1, 1, 4, 8), np.float16), np.empty((1, 1, 4), np.float32)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        _C.attention_tc_forward_emulated(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), None,
                                         out.astype(np.float32), lse, 1.0, False)
    with pytest.raises(ValueError, match="same head dim"):
        _C.attention_tc_forward_emulated(q, k[..., :3], v, None, out, lse, 1.0, False)
    with pytest.raises(ValueError, match="out has shape"):
        _C.attention_tc_forward_emulated(q, k, v, None, out[..., :5], lse, 1.0, False)
    with pytest.raises(ValueError, match="exclusive"):
        _C.attention_tc_forward_emulated(q, k, v, np.ones((1, 1, 4, 4), bool), out, lse, 1.0, True)
