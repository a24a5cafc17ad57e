"""dynrefer.ops.attention on PyTorch tensors against F.scaled_dot_product_attention.

Golden: PyTorch's math backend in float64. In every precision our error must be at most 2x (output) and 3x
(gradients) the math backend's own error in that precision (plus the float32 floor 1e-5 of docs/DESIGN.md §11).
Fully masked rows give zeros and zero gradients, as PyTorch's backends do (since 2.5).
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import dynrefer
from dynrefer.ops import attention
from dynrefer.ops._torch_attention import attention_backward_op, attention_op
from conftest import cuda_devices

FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def math_sdpa(q, k, v, mask=None, causal=False, scale=None):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    n = b.norm()
    return float((a - b).norm() / (n if n > 0 else 1.0))


def make(gen, shape_q, lk, dv=None, dtype=torch.float32, device="cpu"):
    *lead, lq, d = shape_q
    dv = d if dv is None else dv
    t = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device)
    return t(*lead, lq, d), t(*lead, lk, d), t(*lead, lk, dv)


@pytest.fixture
def gen(request):
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def compare_with_math(q64, k64, v64, dtype, mask=None, causal=False, scale=None, grads=True, device="cpu"):
    """Our forward/backward in `dtype` vs the math path in `dtype`, both judged against the math path in float64."""
    g64 = torch.randn(q64.shape[:-1] + (v64.shape[-1],), dtype=torch.float64, device=q64.device)
    leaves64 = [x.clone().requires_grad_(True) for x in (q64, k64, v64)]
    m64 = mask if mask is None or mask.dtype == torch.bool else mask.double()
    gold = math_sdpa(*leaves64, m64, causal, scale)
    gold_grads = torch.autograd.grad(gold, leaves64, g64) if grads else None
    mlow = mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
    results = {}
    for who in ("ours", "math"):
        leaves = [x.to(device=device, dtype=dtype).requires_grad_(True) for x in (q64, k64, v64)]
        m = mlow if mlow is None else mlow.to(device)
        out = attention(*leaves, m, 0.0, causal, scale) if who == "ours" else math_sdpa(*leaves, m, causal, scale)
        assert out.dtype == dtype
        gr = torch.autograd.grad(out, leaves, g64.to(device=device, dtype=dtype)) if grads else None
        results[who] = (out, gr)
    err_o = rel(results["ours"][0].cpu(), gold.cpu())
    ref_o = rel(results["math"][0].cpu(), gold.cpu())
    assert err_o <= max(2 * ref_o, FLOOR[dtype]), (err_o, ref_o)
    if grads:
        for i, name in enumerate("qkv"):
            e = rel(results["ours"][1][i].cpu(), gold_grads[i].cpu())
            r = rel(results["math"][1][i].cpu(), gold_grads[i].cpu())
            assert e <= max(3 * r, 3 * FLOOR[dtype]), (name, e, r)
    return results


SHAPES = [  # (B, H, Lq, Lk, D, Dv)
    (1, 1, 1, 1, 8, 8),
    (2, 3, 17, 29, 16, 16),
    (2, 2, 32, 57, 64, 64),
    (1, 2, 21, 21, 88, 88),
    (1, 1, 9, 40, 128, 128),
    (1, 2, 40, 9, 64, 32),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_matches_math_backend(gen, shape, dtype):
    b, h, lq, lk, d, dv = shape
    q, k, v = make(gen, (b, h, lq, d), lk, dv)
    compare_with_math(q, k, v, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dynrefer_lengths(gen, dtype):
    # the ViT length (257 + 10 register-like tokens) and a long sequence, few heads
    q, k, v = make(gen, (1, 2, 267, 64), 267)
    compare_with_math(q, k, v, dtype, causal=True)
    q, k, v = make(gen, (1, 1, 1030, 64), 1030)
    compare_with_math(q, k, v, dtype, grads=dtype == torch.float32)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_broadcasts(gen, kind, dtype):
    b, h, lq, lk = 2, 3, 5, 19
    q, k, v = make(gen, (b, h, lq, 16), lk)
    full = (b, h, lq, lk)
    shapes = [tuple(f if (bits >> i) & 1 else 1 for i, f in enumerate(full)) for bits in range(16)]
    shapes += [(lq, lk), (lk,)]
    for shape in shapes:
        if kind == "bool":
            mask = torch.rand(shape, generator=gen) > 0.3
            mask[..., 0] = True  # keep every row alive so the math path has no NaN to compare
        else:
            mask = torch.randn(shape, generator=gen)
        compare_with_math(q, k, v, dtype, mask=mask, grads=dtype == torch.float32)


def test_mask_is_not_materialised(gen):
    q, k, v = make(gen, (2, 4, 6, 8), 7)
    mask = torch.rand(1, 1, 1, 7, generator=gen) > 0.5
    seen = {}

    def spy(qq, kk, vv, m, causal, scale):
        seen["strides"] = m.stride()
        return attention_op(qq, kk, vv, m, causal, scale)

    import dynrefer.ops._torch_attention as ta

    orig = ta.attention_op
    ta.attention_op = spy
    try:
        attention(q.float(), k.float(), v.float(), mask)
    finally:
        ta.attention_op = orig
    assert seen["strides"][:3] == (0, 0, 0)


@pytest.mark.parametrize("lq,lk", [(6, 6), (4, 11), (11, 4), (1, 9), (40, 50), (70, 45)])
def test_causal_lq_ne_lk(gen, lq, lk):
    q, k, v = make(gen, (2, 2, lq, 16), lk)
    compare_with_math(q, k, v, torch.float32, causal=True)
    compare_with_math(q, k, v, torch.float64, causal=True)


def test_band_mask(gen):
    lq = lk = 40
    i = torch.arange(lq)[:, None]
    j = torch.arange(lk)[None]
    band = torch.where((i - j).abs() <= 2, torch.randn(lq, lk, generator=gen), torch.tensor(-math.inf))
    q, k, v = make(gen, (2, 2, lq, 32), lk)
    compare_with_math(q, k, v, torch.float32, mask=band)


def test_fully_masked_rows_zero_not_nan(gen):
    # every key masked: zeros and zero gradients, never NaN (what PyTorch's own backends give since 2.5; older
    # math backends gave NaN)
    q, k, v = make(gen, (2, 2, 5, 8), 6)
    mask = torch.rand(2, 2, 5, 6, generator=gen) > 0.4
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    fmask = torch.where(mask, torch.randn(2, 2, 5, 6, generator=gen), torch.tensor(-math.inf))
    for m in (mask, fmask):
        res = compare_with_math(q, k, v, torch.float32, mask=m)
        out, grads = res["ours"]
        assert torch.all(out[0, 1, 2] == 0) and torch.all(out[1, :, 4] == 0) and not out.isnan().any()
        assert torch.all(grads[0][0, 1, 2] == 0)
        for g in grads:
            assert not g.isnan().any()


def test_bfloat16_tile_path_cases(gen):
    """bfloat16 runs on the AMX tile unit where the CPU and Linux allow it: fully masked rows, strided and
    non-contiguous inputs, several key lengths around the tile sizes, and results independent of the thread
    count and bitwise repeatable."""
    import dynrefer

    q, k, v = make(gen, (2, 2, 5, 8), 6)
    mask = torch.rand(2, 2, 5, 6, generator=gen) > 0.4
    mask[0, 1, 2] = False
    res = compare_with_math(q, k, v, torch.bfloat16, mask=mask, grads=False)
    out = res["ours"][0]
    assert torch.all(out[0, 1, 2] == 0) and not out.isnan().any()
    _, lse = attention_op(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, False, 0.35)
    assert lse[0, 1, 2] == -math.inf and torch.isfinite(lse[0, 0]).all()
    s64 = 0.35 * q.bfloat16().double() @ k.bfloat16().double().transpose(-1, -2)
    ref = torch.logsumexp(s64.masked_fill(~mask, -math.inf), -1)
    live = torch.isfinite(ref)
    torch.testing.assert_close(lse[live].double(), ref[live], rtol=2e-6, atol=2e-6)
    for lk in (1, 15, 16, 17, 31, 32, 33, 257):
        q, k, v = make(gen, (1, 3, 19, 88), lk, 40)
        compare_with_math(q, k, v, torch.bfloat16, grads=False)
    # rows that are not unit-stride, and an odd head dim: the element-wise packing
    q, k, v = make(gen, (2, 2, 21, 7), 35, 9)
    compare_with_math(q, k, v, torch.bfloat16, grads=False)
    q, k, v = make(gen, (2, 2, 21, 40), 35, 24)
    qt, kt, vt = (t.bfloat16().transpose(-1, -2).contiguous().transpose(-1, -2) for t in (q, k, v))
    torch.testing.assert_close(attention(qt, kt, vt), attention(q.bfloat16(), k.bfloat16(), v.bfloat16()),
                               rtol=0, atol=0)
    # rows whose scores sit far below (or above) the rest of their 32-row block: the block-wide shift of the
    # softmax falls back to the row's own maximum; a constant added to a whole row changes nothing (up to the
    # rounding of the shifted scores)
    q, k, v = make(gen, (1, 2, 40, 64), 45)
    fm = torch.zeros(1, 2, 40, 45, dtype=torch.float64)
    fm[..., 5, :] = -300.0
    fm[..., 7, :] = 90.0
    fm[..., 9, :3] = -math.inf
    compare_with_math(q, k, v, torch.bfloat16, mask=fm, grads=False)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    torch.testing.assert_close(attention(qb, kb, vb, fm.float())[..., [5, 7], :].float(),
                               attention(qb, kb, vb)[..., [5, 7], :].float(), rtol=1e-2, atol=1e-2)
    # whole 32-row query blocks and 16-key blocks read straight from strided inputs (head dim 64): the same bits
    # as from contiguous copies (edge blocks go through zero-padded copies)
    x = torch.randn(2, 70, 3, 4, 64, generator=gen).bfloat16()
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)
    qt, kt, vt = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (q, k, v))  # element stride != 1
    assert torch.equal(attention(q, k, v), attention(qt, kt, vt))
    torch.testing.assert_close(attention(q, k, v).float(), math_sdpa(q.float(), k.float(), v.float()), rtol=2e-2,
                               atol=2e-2)
    x = torch.randn(2, 9, 3, 4, 24, generator=gen).bfloat16()
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)
    runs = []
    n = dynrefer.get_num_threads()
    try:
        for threads in (1, 2, 1):
            dynrefer.set_num_threads(threads)
            runs.append(attention(q, k, v))
    finally:
        dynrefer.set_num_threads(n)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    torch.testing.assert_close(runs[0].float(), math_sdpa(q.float(), k.float(), v.float()), rtol=2e-2, atol=2e-2)


def test_bfloat16_tile_backward_cases(gen):
    """The bfloat16 backward on the tile unit (keys-by-queries blocks of up to 128 queries): masks of every kind,
    causal attention, fully masked rows, key and query lengths around the tile and block sizes, odd and unequal
    head dims, strided inputs, and gradients independent of the thread count and bitwise repeatable."""
    q, k, v = make(gen, (2, 2, 5, 8), 6)
    mask = torch.rand(2, 2, 5, 6, generator=gen) > 0.4
    mask[0, 1, 2] = False
    fmask = torch.where(mask, torch.randn(2, 2, 5, 6, generator=gen), torch.tensor(-math.inf))
    for m in (mask, fmask, mask[:, :1], fmask[0, 0]):
        out, grads = compare_with_math(q, k, v, torch.bfloat16, mask=m)["ours"]
        for g in grads:
            assert not g.isnan().any()
        if m.dim() == 4 and m.shape[1] == 2:
            assert torch.all(grads[0][0, 1, 2] == 0)
    for lq, lk in ((1, 1), (7, 15), (16, 16), (17, 33), (31, 32), (33, 257), (130, 40), (300, 9)):
        q, k, v = make(gen, (1, 2, lq, 88), lk, 40)
        compare_with_math(q, k, v, torch.bfloat16)
    q, k, v = make(gen, (1, 2, 70, 64), 70)
    compare_with_math(q, k, v, torch.bfloat16, causal=True)
    q, k, v = make(gen, (2, 2, 21, 7), 35, 9)
    compare_with_math(q, k, v, torch.bfloat16)
    x = torch.randn(2, 37, 3, 4, 24, generator=gen).bfloat16()
    q, k, v = (t.requires_grad_(True) for t in x.permute(2, 0, 3, 1, 4).unbind(0))  # strided views
    g = torch.randn(2, 4, 37, 24, generator=gen).bfloat16()
    runs = []
    n = dynrefer.get_num_threads()
    try:
        for threads in (1, 2, 1):
            dynrefer.set_num_threads(threads)
            runs.append(torch.autograd.grad(attention(q, k, v), (q, k, v), g))
    finally:
        dynrefer.set_num_threads(n)
    for a, b, c in zip(*runs):
        assert torch.equal(a, b) and torch.equal(a, c)
    ref = torch.autograd.grad(math_sdpa(q.float(), k.float(), v.float()), (q, k, v), g.float())
    for a, r in zip(runs[0], ref):
        torch.testing.assert_close(a.float(), r.float(), rtol=3e-2, atol=3e-2)


def test_gradcheck_float64(gen):
    q, k, v = (x.requires_grad_(True) for x in make(gen, (1, 2, 4, 5), 6, 3))
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, is_causal=True), (q, k, v))
    mask = torch.rand(2, 4, 6, generator=gen) > 0.3
    mask[..., 0] = True
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, mask, scale=0.3), (q, k, v))
    fmask = torch.randn(1, 1, 4, 6, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, fmask), (q, k, v))


def test_leading_dims_and_strides(gen):
    x = torch.randn(2, 9, 3, 4, 24, generator=gen)  # qkv as a ViT computes it
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)
    torch.testing.assert_close(attention(q, k, v), math_sdpa(q, k, v), rtol=1e-5, atol=1e-5)
    q3, k3, v3 = (t[:, 0] for t in (q, k, v))  # 3-D
    torch.testing.assert_close(attention(q3, k3, v3), math_sdpa(q3, k3, v3), rtol=1e-5, atol=1e-5)
    q5, k5, v5 = (t.reshape(2, 2, 2, 9, 24) for t in (q, k, v))  # 5-D
    m5 = torch.rand(2, 1, 9, 9, generator=gen) > 0.3
    m5[..., 0] = True
    torch.testing.assert_close(attention(q5, k5, v5, m5), math_sdpa(q5, k5, v5, m5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lq,lk,d,dv", [(5, 7, 16, 16), (20, 33, 64, 64), (32, 257, 64, 64), (33, 40, 24, 32),
                                          (1, 9, 16, 48), (12, 64, 32, 24)])
def test_float32_keys_and_values_read_in_place(gen, lq, lk, d, dv):
    """float32 keys and values with unit-stride rows are read where they lie (row pitch of a view, any storage
    offset, the last group of keys from a padded copy): the same bits as when they are packed (element-strided
    copies force the packing) and the math path's values, with and without masks and causal attention."""
    q, k, v = (t.float() for t in make(gen, (2, 3, lq, d), lk, dv))
    big_k = torch.randn(2, 3, lk, 3 * d + 1, generator=gen)
    big_v = torch.randn(2, 3, lk, 2 * dv + 3, generator=gen)
    kv_, vv_ = big_k[..., 1:1 + d], big_v[..., 3:3 + dv]  # row pitch != width, storage offsets of 1 and 3 floats
    kv_.copy_(k)
    vv_.copy_(v)
    ks, vs = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (k, v))  # element stride != 1: packed
    mask = torch.rand(2, 1, lq, lk, generator=gen) > 0.3
    mask[..., 0] = True
    for kw in ({}, {"attn_mask": mask}, {"is_causal": True}):
        a = attention(q, kv_, vv_, **kw)
        b = attention(q, ks, vs, **kw)
        c = attention(q, k, v, **kw)
        assert torch.equal(a, b) and torch.equal(a, c)
        ref = math_sdpa(q.double(), k.double(), v.double(), kw.get("attn_mask"), kw.get("is_causal", False))
        assert rel(a, ref) < 1e-5


def test_opcheck(gen):
    q, k, v = (t.float() for t in make(gen, (1, 2, 5, 8), 7, 6))
    mask = (torch.rand(1, 1, 5, 7, generator=gen) > 0.2).expand(1, 2, 5, 7)
    torch.library.opcheck(attention_op, (q.requires_grad_(True), k, v, mask, False, 0.35))
    torch.library.opcheck(attention_op, (q, k, v, None, True, 0.35))


def test_backward_op_matches_autograd(gen):
    q, k, v = (t.float().requires_grad_(True) for t in make(gen, (2, 2, 7, 16), 9))
    out, lse = attention_op(q, k, v, None, False, 0.25)
    g = torch.randn_like(out)
    dq, dk, dv = attention_backward_op(g, q, k, v, out, lse, None, False, 0.25)
    ref = torch.autograd.grad(math_sdpa(q, k, v, scale=0.25), (q, k, v), g)
    for a, b in zip((dq, dk, dv), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bitwise_repeatable(gen):
    q, k, v = (t.float().requires_grad_(True) for t in make(gen, (2, 3, 33, 40), 50))
    runs = []
    for _ in range(2):
        out = attention(q, k, v)
        runs.append((out,) + torch.autograd.grad(out.square().sum(), (q, k, v)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_bad_input(gen):
    q, k, v = (t.float() for t in make(gen, (1, 2, 4, 8), 5))
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=0.5)
    with pytest.raises(TypeError, match="share one dtype"):
        attention(q, k.double(), v)
    with pytest.raises(TypeError, match="floating-point"):
        attention(q.int(), k, v)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        attention(q, k.numpy(), v)
    with pytest.raises(ValueError, match="exclusive"):
        attention(q, k, v, torch.ones(4, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        attention(q, k, v, torch.ones(4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        attention(q, k, v, scale=math.inf)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="on one device"):
        attention(q, k.to("meta"), v)


# --- CUDA (skipped without a GPU) ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 17, 29, 16, 16), (2, 4, 32, 257, 64, 64), (1, 2, 257, 257, 88, 88)])
def test_cuda_matches_math_and_cpu(gen, device, dtype, shape):
    b, h, lq, lk, d, dv = shape
    q, k, v = make(gen, (b, h, lq, d), lk, dv)
    res = compare_with_math(q, k, v, dtype, device=device)
    cpu = [t.detach().requires_grad_(True) for t in (q.to(dtype), k.to(dtype), v.to(dtype))]
    out_cpu = attention(*cpu)
    assert rel(res["ours"][0].cpu(), out_cpu) <= max(2 * FLOOR[dtype], 1e-6)


@pytest.mark.parametrize("device", cuda_devices())
def test_cuda_masks_causal_and_empty_rows(gen, device):
    q, k, v = make(gen, (2, 3, 20, 32), 33)
    mask = torch.rand(2, 1, 20, 33, generator=gen) > 0.3
    mask[..., 0] = True
    compare_with_math(q, k, v, torch.float32, mask=mask, device=device)
    compare_with_math(q, k, v, torch.float32, mask=torch.randn(1, 3, 1, 33, generator=gen), device=device)
    compare_with_math(q, k, v, torch.float32, causal=True, device=device)
    mask[0, 0, 3] = False
    out = attention(q.float().to(device), k.float().to(device), v.float().to(device), mask.to(device))
    assert torch.all(out[0, 0, 3] == 0) and not out.isnan().any()


@pytest.mark.parametrize("device", cuda_devices())
def test_cuda_bitwise_repeatable(gen, device):
    q, k, v = (t.float().to(device).requires_grad_(True) for t in make(gen, (2, 4, 40, 64), 70))
    runs = []
    for _ in range(3):
        out = attention(q, k, v)
        runs.append((out,) + torch.autograd.grad(out.square().sum(), (q, k, v)))
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)


def test_bfloat16_vector_kernels_when_amx_is_off(gen, tmp_path):
    """DYNREFER_CPU_ISA=avx512 turns the tile path off: the bf16 vector kernels then run (as on CPUs without AMX),
    forward and backward, and agree with the float64 math path as closely as the default does."""
    import subprocess
    import sys

    q, k, v = make(gen, (2, 3, 40, 64), 70, 48)
    torch.save((q, k, v), tmp_path / "qkv.pt")
    script = ("import sys, torch; from dynrefer.ops import attention\n"
              "q, k, v = (t.bfloat16().requires_grad_(True) for t in torch.load(sys.argv[1]))\n"
              "out = attention(q, k, v)\n"
              "g = torch.linspace(-1, 1, out.numel()).reshape(out.shape).bfloat16()\n"
              "torch.save((out,) + torch.autograd.grad(out, (q, k, v), g), sys.argv[2])\n")
    outs = {}
    for cap in ("avx512", "amx"):
        env = dict(os.environ, DYNREFER_CPU_ISA=cap)
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "qkv.pt"), str(tmp_path / f"{cap}.pt")],
                       check=True, env=env)
        outs[cap] = torch.load(tmp_path / f"{cap}.pt")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    gold = math_sdpa(*leaves)
    g = torch.linspace(-1, 1, gold.numel(), dtype=torch.float64).reshape(gold.shape)
    golds = (gold,) + torch.autograd.grad(gold, leaves, g)
    low = [t.bfloat16().requires_grad_(True) for t in (q, k, v)]
    mo = math_sdpa(*low)
    maths = (mo,) + torch.autograd.grad(mo, low, g.bfloat16())
    for cap, res in outs.items():
        for i, (ours, ref, m) in enumerate(zip(res, golds, maths)):
            assert ours.dtype == torch.bfloat16
            bound = max((2 if i == 0 else 3) * rel(m, ref), FLOOR[torch.bfloat16])
            assert rel(ours, ref) <= bound, (cap, i)


# --- float16/bfloat16 precision against PyTorch's own SDPA --------------------------------------------------------

HALF_CASES = [  # name, (B, H, Lq, Lk, D, Dv), mask, causal, query/key scale, value offset
    ("ViT self", (1, 2, 257, 257, 88, 88), None, False, 1.0, 0.0),
    ("ViT self, causal, offset values", (1, 2, 257, 257, 88, 88), None, True, 1.0, 3.0),
    ("Q-Former cross, bool mask, peaked", (2, 2, 32, 257, 64, 64), "bool", False, 2.0, 0.0),
    ("Q-Former cross, additive mask, offset values", (2, 2, 32, 257, 64, 64), "add", False, 1.0, 3.0),
    ("tag decoder, offset values", (1, 1, 4585, 32, 64, 64), None, False, 1.0, 3.0),
    ("ragged 0", None, None, False, 2.0, 3.0),
    ("ragged 1", None, "bool", False, 1.0, 3.0),
    ("ragged 2", None, "add", False, 2.0, 0.0),
    ("ragged 3", None, None, True, 1.0, 3.0),
]


def half_case(gen, dtype, shape, mask, causal, qk_scale, v_offset):
    """q, k, v, dO and the mask in `dtype` (the additive mask too), drawn from `gen`; a random ragged shape (Lq, Lk
    in 1..300, head dims 8..128, Dv != D allowed) where shape is None. Bool masks keep key i % Lk of row i, so no
    row is fully masked."""
    if shape is None:
        r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))
        shape = (r(1, 2), r(1, 3), r(1, 300), r(1, 300), r(1, 16) * 8, r(1, 16) * 8)
    b, h, lq, lk, d, dv = shape
    t = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    q, k = ((t(b, h, n, d) * qk_scale).to(dtype) for n in (lq, lk))
    v = (t(b, h, lk, dv) + v_offset).to(dtype)
    g = t(b, h, lq, dv).to(dtype)
    m = None
    if mask == "bool":
        m = torch.rand(b, 1, lq, lk, generator=gen) > 0.4
        m[:, :, torch.arange(lq), torch.arange(lq) % lk] = True
    elif mask == "add":
        m = (2 * t(b, 1, lq, lk)).to(dtype)
    return q, k, v, g, m


def half_errors(results, gold):
    """(relative Frobenius error, max abs error) of each of out, dq, dk, dv against the float64 results."""
    return [(rel(x, y), float((x.detach().double() - y.detach().double()).abs().max())) for x, y in zip(results, gold)]


@pytest.mark.parametrize("case", HALF_CASES, ids=[c[0] for c in HALF_CASES])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_error_within_twice_pytorch(gen, dtype, case):
    """float16/bfloat16 forward and backward against float64 results from the same half-precision inputs: our
    relative error in out, dQ, dK and dV is at most twice that of PyTorch's own CPU SDPA (its flash kernel where
    the head dims agree, its math path in float32 otherwise) on DynRefer's shapes (fewer batches and heads) and
    ragged ones, with masks, causal attention, peaked softmaxes and values sharing an offset (where a delta taken
    from the half-precision output would lose the gradients' low bits)."""
    _, shape, mask, causal, qk_scale, v_offset = case
    q, k, v, g, m = half_case(gen, dtype, shape, mask, causal, qk_scale, v_offset)
    runs = {}
    for who, dt in (("gold", torch.float64), ("torch", dtype), ("ours", dtype)):
        leaves = [x.to(dt).requires_grad_(True) for x in (q, k, v)]
        mm = m if m is None or m.dtype == torch.bool else m.to(dt)
        if who == "gold":
            out = math_sdpa(*leaves, mm, causal)
        elif who == "torch":
            out = F.scaled_dot_product_attention(*leaves, attn_mask=mm, is_causal=causal)
        else:
            out = attention(*leaves, attn_mask=mm, is_causal=causal)
        assert out.dtype == dt
        runs[who] = (out,) + torch.autograd.grad(out, leaves, g.to(dt))
    ours, theirs = half_errors(runs["ours"], runs["gold"]), half_errors(runs["torch"], runs["gold"])
    for name, (e, e_max), (r, r_max) in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert e <= 2 * r, f"{name}: ours {e:.3g} (max abs {e_max:.3g}), PyTorch {r:.3g} (max abs {r_max:.3g})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_backward_every_instruction_set(gen, dtype):
    """Every vector variant's backward (portable, AVX2, AVX-512 where the CPU has them) keeps dQ, dK and dV within
    twice PyTorch's error against float64, on values sharing an offset under an additive mask."""
    from dynrefer import _C
    from dynrefer.ops._torch_roi_align import _desc

    q, k, v, g, m = half_case(gen, dtype, (2, 2, 45, 130, 64, 40), "add", False, 2.0, 3.0)
    leaves = [x.double().requires_grad_(True) for x in (q, k, v)]
    gold = torch.autograd.grad(math_sdpa(*leaves, m.double()), leaves, g.double())
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    theirs = torch.autograd.grad(F.scaled_dot_product_attention(*leaves, attn_mask=m), leaves, g)
    m = m.expand(2, 2, 45, 130)  # the kernel's [B, H, Lq, Lk] (stride 0 over the heads)
    out, lse = attention_op(q, k, v, m, False, 1 / 8)
    ran = []
    for impl in ("portable", "avx2", "avx512"):
        dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
        try:
            _C.attention_backward(_desc(q), _desc(k), _desc(v), _desc(m), _desc(out), _desc(lse), _desc(g),
                                  _desc(dq), _desc(dk), _desc(dv), 1 / 8, False, impl=impl)
        except RuntimeError as e:  # this CPU lacks the instruction set
            assert "does not support" in str(e) or "no x86" in str(e)
            continue
        ran.append(impl)
        for name, x, r, y in zip(("dq", "dk", "dv"), (dq, dk, dv), theirs, gold):
            assert rel(x, y) <= 2 * rel(r, y), (impl, name, rel(x, y), rel(r, y))
    assert "portable" in ran


# --- NaN and infinities propagate as in PyTorch ----------------------------------------------------------------

def _nan_pattern(fn, q, k, v, mask, causal, g):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = fn(*leaves, mask, causal)
    return (out,) + torch.autograd.grad(out, leaves, g)


def _poison(t, idx, value):
    t = t.clone()
    t[idx] = value
    return t


def nan_cases(gen, lq, lk, d):
    """(name, q, k, v, mask, causal): one non-finite value in each input, alone and under masks that hide it."""
    q, k, v = (t.float() for t in make(gen, (2, 2, lq, d), lk))
    nan, inf = math.nan, math.inf
    bm = torch.rand(2, 2, lq, lk, generator=gen) > 0.3
    bm[..., 0] = True
    bm[0, 1, 1] = False  # a fully masked row
    bm[1, 0, :, 2] = False  # key 2 hidden from every query of (1, 0)
    fm = torch.where(bm, torch.randn(2, 2, lq, lk, generator=gen), torch.tensor(-inf))
    j = lk - 1  # the last key: causal attention hides it from every query before it
    return [
        ("q nan", _poison(q, (0, 1, 2, 3), nan), k, v, None, False),
        ("k nan", q, _poison(k, (1, 0, 2, 1), nan), v, None, False),
        ("v nan", q, k, _poison(v, (0, 0, 1, 2), nan), None, False),
        ("k +inf", q, _poison(k, (0, 1, 3, 0), inf), v, None, False),
        ("q -inf", _poison(q, (1, 1, 0, 2), -inf), k, v, None, False),
        ("mask nan", q, k, v, _poison(fm, (0, 0, 2, 1), nan), False),
        ("bool, nan at a hidden key", q, _poison(k, (1, 0, 2, 0), nan), v, bm, False),
        ("float, nan at a hidden key", q, _poison(k, (1, 0, 2, 0), nan), v, fm, False),
        ("bool, nan value at a hidden key", q, k, _poison(v, (1, 0, 2, 3), nan), bm, False),
        ("fully masked row, nan query", _poison(q, (0, 1, 1, 0), nan), k, v, bm, False),
        ("fully masked row, nan value", q, k, _poison(v, (0, 1, 4, 1), nan), bm, False),
        ("causal, nan key seen by the last query only", q, _poison(k, (0, 0, j, 2), nan), v, None, True),
        ("causal, nan value seen by the last query only", q, k, _poison(v, (1, 1, j, 0), nan), None, True),
        ("causal, nan query", _poison(q, (1, 0, 0, 1), nan), k, v, None, True),
    ]


@pytest.mark.parametrize("size", [(6, 7, 8), (40, 70, 64), (70, 33, 24), (32, 257, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_non_finite_values_propagate_as_sdpa(gen, size, dtype):
    """A NaN or an infinity in q, k, v or an additive mask gives NaN exactly where PyTorch's SDPA gives it (math
    backend, which adds bool and causal masks as -inf), in the output and in the three gradients; rows with every
    key masked and finite inputs stay 0 with zero gradients."""
    lq, lk, d = size
    for name, q, k, v, mask, causal in nan_cases(gen, lq, lk, d):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        m = mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
        g = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=gen).to(dtype)
        ours = _nan_pattern(lambda a, b, c, mm, cz: attention(a, b, c, mm, 0.0, cz), q, k, v, m, causal, g)
        ref = _nan_pattern(lambda a, b, c, mm, cz: math_sdpa(a, b, c, mm, cz), q, k, v, m, causal, g)
        for what, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
            assert torch.equal(a.isnan(), r.isnan()), (name, what, a.isnan().sum().item(), r.isnan().sum().item())
            fin = torch.isfinite(r)
            assert torch.equal(torch.isfinite(a), fin), (name, what)
        if name.startswith("fully masked row, nan value"):  # NaN only in the poisoned value column
            assert torch.all(ours[0][0, 1, 1, [0, 2, 3]] == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_one_key_gives_exact_zero_dq_dk(gen, dtype):
    """Lk = 1: the softmax over one key is constant, so dQ and dK are exactly 0 (PyTorch's math path: ~1e-8)."""
    for lq, d, kw in ((1, 8, {}), (33, 64, {"is_causal": True}), (257, 88, {}), (9, 40, {"mask": True})):
        q, k, v = make(gen, (2, 3, lq, d), 1)
        mask = torch.randn(2, 1, lq, 1, generator=gen).to(dtype) if kw.pop("mask", False) else None
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        out = attention(*leaves, mask, **kw)
        g = torch.randn(out.shape, generator=gen).to(dtype)
        dq, dk, dv = torch.autograd.grad(out, leaves, g)
        assert torch.all(dq == 0) and torch.all(dk == 0)
        assert torch.equal(out, leaves[2].detach().expand_as(out))
        torch.testing.assert_close(dv.double(), g.double().sum(2, keepdim=True), rtol=1e-2, atol=1e-2)


# --- rank 2, head dims up to 256, grouped-query attention --------------------------------------------------------

def test_rank_two_and_three(gen):
    for shape_q, lk in (((7, 16), 11), ((3, 7, 16), 5)):
        q, k, v = make(gen, shape_q, lk, 12)
        mask = torch.rand(shape_q[-2], lk, generator=gen) > 0.3
        mask[:, 0] = True
        for m, causal in ((None, False), (mask, False), (None, True)):
            compare_with_math(q, k, v, torch.float32, mask=m, causal=causal)
            compare_with_math(q, k, v, torch.float64, mask=m, causal=causal)
    q, k, v = (t.float() for t in make(gen, (7, 16), 11))
    assert attention(q, k, v).shape == F.scaled_dot_product_attention(q, k, v).shape == (7, 16)


@pytest.mark.parametrize("d,dv", [(256, 256), (160, 96), (64, 256), (129, 200)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_head_dims_up_to_256(gen, d, dv, dtype):
    """Head dims above 128 on every CPU path (bfloat16 runs on the vector kernels there, also where AMX exists)."""
    q, k, v = make(gen, (2, 2, 33, d), 40, dv)
    compare_with_math(q, k, v, dtype)
    compare_with_math(q, k, v, dtype, causal=True)


def gqa_sdpa(q, k, v, mask=None, causal=False):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_grouped_query_matches_sdpa(gen, dtype):
    """enable_gqa as SDPA's: k and v with fewer heads; the same output and gradients (dK, dV summed over each
    group), within the same error bounds as the math path against float64."""
    for hq, hk, lq, lk, kw in ((8, 2, 33, 40, {}), (6, 1, 9, 257, {"causal": True}), (4, 2, 70, 20, {"mask": True}),
                               (12, 4, 32, 32, {})):
        q = torch.randn(2, hq, lq, 64, generator=gen, dtype=torch.float64)
        k = torch.randn(2, hk, lk, 64, generator=gen, dtype=torch.float64)
        v = torch.randn(2, hk, lk, 48, generator=gen, dtype=torch.float64)
        mask = None
        if kw.get("mask"):
            mask = torch.rand(2, hq, lq, lk, generator=gen) > 0.3
            mask[..., 0] = True
        causal = kw.get("causal", False)
        g = torch.randn(2, hq, lq, 48, generator=gen, dtype=torch.float64)
        l64 = [t.clone().requires_grad_(True) for t in (q, k, v)]
        gold = gqa_sdpa(*l64, mask, causal)
        golds = (gold,) + torch.autograd.grad(gold, l64, g)
        errs = {}
        for who, fn in (("ours", lambda *a: attention(*a, enable_gqa=True)), ("math", gqa_sdpa)):
            leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
            out = fn(*leaves, mask, 0.0, causal) if who == "ours" else fn(*leaves, mask, causal)
            res = (out,) + torch.autograd.grad(out, leaves, g.to(dtype))
            assert res[2].shape == k.shape and res[3].shape == v.shape
            errs[who] = [rel(a, b) for a, b in zip(res, golds)]
        for i, (e, r) in enumerate(zip(errs["ours"], errs["math"])):
            assert e <= max((2 if i == 0 else 3) * r, FLOOR[dtype] * (1 if i == 0 else 3)), (hq, hk, i, e, r)


def test_grouped_query_reads_keys_in_place_and_is_repeatable(gen):
    q = torch.randn(2, 8, 21, 32, generator=gen).requires_grad_(True)
    k = torch.randn(2, 2, 30, 32, generator=gen).requires_grad_(True)
    v = torch.randn(2, 2, 30, 16, generator=gen).requires_grad_(True)
    seen = {}

    def spy(qq, kk, vv, m, causal, scale):
        seen["k"], seen["v"] = kk.shape, vv.shape
        return attention_op(qq, kk, vv, m, causal, scale)

    import dynrefer.ops._torch_attention as ta

    orig = ta.attention_op
    ta.attention_op = spy
    try:
        attention(q, k, v, enable_gqa=True)
    finally:
        ta.attention_op = orig
    assert seen["k"] == (2, 2, 30, 32) and seen["v"] == (2, 2, 30, 16)  # no per-head copies
    g = torch.randn(2, 8, 21, 16, generator=gen)
    runs = []
    n = dynrefer.get_num_threads()
    try:
        for threads in (1, 2, 3):
            dynrefer.set_num_threads(threads)
            out = attention(q, k, v, enable_gqa=True)
            runs.append((out,) + torch.autograd.grad(out, (q, k, v), g))
    finally:
        dynrefer.set_num_threads(n)
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="leading"):
        attention(q, k, v)  # fewer key heads without enable_gqa


THREAD_SHAPES = [  # (B, H, Lq, Lk, D, Dv, causal): short queries, Lq >> Lk (the tag decoder's), odd sizes
    (2, 3, 32, 257, 64, 64, False),
    (1, 1, 200, 257, 64, 64, False),
    (1, 2, 1100, 32, 64, 64, False),
    (1, 2, 37, 53, 24, 40, True),
    (1, 1, 300, 37, 16, 16, False),
    (2, 1, 45, 61, 40, 8, True),
]


@pytest.mark.parametrize("shape", THREAD_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_bitwise_equal_across_thread_counts(gen, shape, dtype):
    """Forward and backward give the same bits at 1, 2 and 3 threads: the query chunks, the kernel each chunk runs
    (transposed short-query tiling or not) and every sum order depend on the shapes only."""
    b, h, lq, lk, d, dv, causal = shape
    q, k, v = (t.to(dtype).requires_grad_(True) for t in make(gen, (b, h, lq, d), lk, dv))
    g = torch.randn(b, h, lq, dv, generator=gen).to(dtype)
    runs = []
    n = dynrefer.get_num_threads()
    try:
        for threads in (1, 2, 3):
            dynrefer.set_num_threads(threads)
            out = attention(q, k, v, is_causal=causal)
            runs.append((out,) + torch.autograd.grad(out, (q, k, v), g))
    finally:
        dynrefer.set_num_threads(n)
    for r in runs[1:]:
        for name, a, c in zip(("out", "dq", "dk", "dv"), runs[0], r):
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            assert torch.equal(a.detach().view(bits), c.detach().view(bits)), name
