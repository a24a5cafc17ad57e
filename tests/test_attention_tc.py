"""The tensor-core flash attention (csrc/cuda/attention_tc.cu) through its CPU emulation, and on CUDA when present.

The emulation (``_C.attention_tc_forward_emulated`` / ``_backward_emulated``, csrc/core/attn_tc_emulate.c) runs the
kernels' plan, grids, tile loops, shared-memory layouts and per-lane steps (dr_attention_tile.h) with 32 emulated
lanes per warp and an emulated mma.m16n8k16 on the lanes' fragments, so a wrong fragment index, tile bound, chunk
or mask offset shows up here without a GPU. Goldens: float64 math on the same (16-bit) inputs, PyTorch's SDPA in
the same dtype (the emulation must be about as close to float64 as PyTorch is), and dynrefer's CPU attention for the
non-finite cases.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import cuda_devices
from dynrefer import _C
from dynrefer.ops import attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DTYPES = [torch.bfloat16, torch.float16]
# error floors relative to the output's largest magnitude: P and dS are rounded to the 16-bit type for the MMA
FLOOR = {torch.bfloat16: 1.6e-2, torch.float16: 2.5e-3}


@pytest.fixture
def gen(request):
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def emulated(q, k, v, mask=None, causal=False, scale=None, grad=None):
    """(out, lse) and, with grad, (dq, dk, dv) from the emulated kernels (4-D CPU tensors)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    b, h, lq, _ = q.shape
    out = torch.empty(b, h, lq, v.shape[-1], dtype=q.dtype)
    lse = torch.empty(b, h, lq, dtype=torch.float32)
    _C.attention_tc_forward_emulated(q, k, v, mask, out, lse, scale, causal)
    if grad is None:
        return out, lse
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _C.attention_tc_backward_emulated(q, k, v, mask, out, lse, grad, dq, dk, dv, scale, causal)
    return out, lse, (dq, dk, dv)


def _expand_kv(x, h):
    return x.repeat_interleave(h // x.shape[1], dim=1) if x.shape[1] != h else x


def reference(q, k, v, mask=None, causal=False, scale=None, grad=None, dtype=torch.float64):
    """SDPA's math in `dtype` (float64: the golden) with autograd; GQA by repeating k, v; fully masked rows -> 0."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    qq, kk, vv = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
    ke, ve = _expand_kv(kk, q.shape[1]), _expand_kv(vv, q.shape[1])
    s = (qq @ ke.transpose(-1, -2)) * scale
    lq, lk = s.shape[-2:]
    if causal:
        s = s.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.to(dtype)
    lse = torch.logsumexp(s, -1)
    dead = torch.isneginf(lse)[..., None]
    p = torch.where(dead, 0, torch.exp(s - torch.where(dead, 0, lse[..., None])))
    out = p @ ve
    if grad is None:
        return out.detach(), lse.detach()
    g = torch.autograd.grad(out, (qq, kk, vv), grad.to(dtype))
    return out.detach(), lse.detach(), g


def rel(a, b, floor=1e-30):
    """Largest error relative to the largest golden magnitude (at least `floor`: a golden that is exactly 0, such
    as dQ where every row sees one key, is compared absolutely)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


def make(gen, b, h, lq, lk, d, dv, dtype, hk=None):
    hk = h if hk is None else hk
    q = torch.randn(b, h, lq, d, generator=gen).to(dtype)
    k = torch.randn(b, hk, lk, d, generator=gen).to(dtype)
    v = torch.randn(b, hk, lk, dv, generator=gen).to(dtype)
    g = torch.randn(b, h, lq, dv, generator=gen).to(dtype)
    return q, k, v, g


def check(q, k, v, g, mask=None, causal=False, backward=True, sdpa=True):
    """Emulation vs float64 (within the dtype's floor) and vs PyTorch's own error in the same dtype."""
    dtype = q.dtype
    res = emulated(q, k, v, mask, causal, grad=g if backward else None)
    ref = reference(q, k, v, mask, causal, grad=g if backward else None)
    err_o = rel(res[0], ref[0])
    finite = torch.isfinite(ref[1])
    assert torch.equal(torch.isneginf(res[1]), torch.isneginf(ref[1]))
    assert (res[1][finite].double() - ref[1][finite]).abs().max().item() <= 1e-4 * (1 + ref[1][finite].abs().max())
    torch_err = None
    if sdpa:
        kw = dict(attn_mask=mask, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
        torch_err = rel(F.scaled_dot_product_attention(q, k, v, **kw), ref[0])
    assert err_o <= max(FLOOR[dtype], 3 * (torch_err or 0)), (err_o, torch_err)
    if backward:
        for mine, gold in zip(res[2], ref[2]):
            assert rel(mine, gold, 1e-2) <= 2 * FLOOR[dtype], [rel(m, r, 1e-2) for m, r in zip(res[2], ref[2])]
    return res


# --- the DynRefer shapes (scaled down) and ragged ones ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (2, 3, 32, 257, 64, 64),   # Q-Former cross-attention: short-query tiles (2 warps), key tiles of 64
    (1, 2, 300, 32, 64, 64),   # tag decoder (Lq 4585 scaled down): long-query tiles (4 warps), key tiles of 32
    (1, 2, 97, 97, 88, 88),    # EVA ViT head dim 88 (padded to 96 in shared memory, one chunk of 128 columns)
    (1, 1, 1, 1, 1, 1),        # head dim 1, one query, one key
    (2, 1, 17, 33, 24, 40),    # Lq != Lk, neither a multiple of a tile; D != Dv
    (1, 1, 20, 45, 256, 256),  # head dim 256: two chunks of 128 columns
    (1, 1, 9, 70, 200, 72),    # D and Dv in different chunk counts
])
def test_matches_float64_and_sdpa(gen, dtype, shape):
    b, h, lq, lk, d, dv = shape
    q, k, v, g = make(gen, b, h, lq, lk, d, dv, dtype)
    check(q, k, v, g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_through_broadcast_strides(gen, dtype):
    q, k, v, g = make(gen, 2, 3, 40, 70, 32, 32, dtype)
    bmask = torch.rand(2, 1, 40, 70, generator=gen) > 0.4
    bmask[..., 0] = True
    check(q, k, v, g, mask=bmask.expand(2, 3, 40, 70))  # stride 0 over heads
    add = torch.randn(1, 3, 1, 70, generator=gen).to(dtype)
    check(q, k, v, g, mask=add.expand(2, 3, 40, 70))  # additive, stride 0 over batch and queries
    add32 = torch.randn(40, 70, generator=gen)
    check(q, k, v, g, mask=add32.expand(2, 3, 40, 70))  # float32 additive mask with 16-bit data


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq, lk", [(40, 40), (70, 33), (20, 90)])
def test_causal(gen, dtype, lq, lk):
    q, k, v, g = make(gen, 1, 2, lq, lk, 64, 64, dtype)
    check(q, k, v, g, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_query_heads(gen, dtype):
    q, k, v, g = make(gen, 2, 4, 37, 50, 32, 48, dtype, hk=2)
    check(q, k, v, g)


def test_strided_inputs_and_outputs(gen):
    """Any strides: q as a transposed view, k with a column stride, outputs as views of bigger tensors."""
    dtype = torch.bfloat16
    qt = torch.randn(1, 2, 24, 50, generator=gen).to(dtype)
    q = qt.transpose(-1, -2)  # [1, 2, 50, 24], column stride 50
    kbig = torch.randn(1, 2, 60, 48, generator=gen).to(dtype)
    k = kbig[..., ::2]
    v = torch.randn(1, 2, 60, 16, generator=gen).to(dtype)
    g = torch.randn(1, 2, 50, 16, generator=gen).to(dtype)
    res = emulated(q, k, v, grad=g)
    ref = emulated(q.contiguous(), k.contiguous(), v, grad=g)
    assert torch.equal(res[0], ref[0]) and torch.equal(res[1], ref[1])
    for a, b in zip(res[2], ref[2]):
        assert torch.equal(a, b)
    obig = torch.zeros(1, 2, 50, 40, dtype=dtype)
    lse = torch.empty(1, 2, 50)
    _C.attention_tc_forward_emulated(q, k, v, None, obig[..., 3:19], lse, 1 / math.sqrt(24), False)
    assert torch.equal(obig[..., 3:19], ref[0]) and not obig[..., :3].any() and not obig[..., 19:].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_and_nan(gen, dtype):
    q, k, v, g = make(gen, 1, 2, 33, 40, 16, 16, dtype)
    mask = torch.rand(1, 2, 33, 40, generator=gen) > 0.3
    mask[..., 0] = True
    mask[0, 1, 5] = False  # a row with every key masked: 0, lse -inf, zero gradients
    mask[0, 0, 32] = False
    out, lse, (dq, dk, dv) = check(q, k, v, g, mask=mask, sdpa=False)
    for r in [(0, 1, 5), (0, 0, 32)]:
        assert not out[r].any() and torch.isneginf(lse[r]) and not dq[r].any()
    assert torch.isfinite(out).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    # NaN as PyTorch: a NaN query makes its row NaN; a NaN value reaches every row (masked keys enter with weight 0)
    qn, vn = q.clone(), v.clone()
    qn[0, 0, 3, 2] = math.nan
    vn[0, 1, 7, 0] = math.nan
    mine = emulated(qn, k, vn, mask, grad=g)
    cpu_inputs = [t.clone().requires_grad_(True) for t in (qn, k, vn)]
    cpu = attention(*cpu_inputs, attn_mask=mask)
    assert torch.equal(mine[0].isnan(), cpu.isnan())
    assert mine[0][0, 0, 3].isnan().all() and torch.isnan(mine[1][0, 0, 3])
    sdpa = F.scaled_dot_product_attention(qn.float(), k.float(), vn.float(), attn_mask=mask)
    live = ~(~mask).all(-1)  # PyTorch gives NaN on fully masked rows, dynrefer 0
    assert torch.equal(mine[0].isnan()[live], sdpa.isnan()[live])
    cpu_grads = torch.autograd.grad(cpu, cpu_inputs, g)
    for mine_g, cpu_g in zip(mine[2], cpu_grads):
        assert torch.equal(mine_g.isnan(), cpu_g.isnan())


@pytest.mark.parametrize("draw", range(8))
def test_random_configurations(gen, draw):
    """Fresh shapes, head counts, masks and dtypes per draw: lengths around the tile sizes, head dims 1-256."""
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=gen))]  # noqa: E731
    dtype = pick(DTYPES)
    hk = pick([1, 2])
    h = hk * pick([1, 2])
    lq, lk = pick([1, 15, 16, 17, 31, 32, 33, 65, 100]), pick([1, 31, 32, 33, 63, 64, 65, 130])
    d, dv = pick([1, 8, 40, 64, 88, 130, 256]), pick([3, 16, 64, 96, 200])
    q, k, v, g = make(gen, 1, h, lq, lk, d, dv, dtype, hk=hk)
    kind = pick(["none", "bool", "add", "causal"])
    mask = None
    if kind == "bool":
        mask = torch.rand(1, 1, lq, lk, generator=gen) > 0.3
        mask[..., 0] = True
        mask = mask.expand(1, h, lq, lk)
    elif kind == "add":
        mask = torch.randn(lq, 1, generator=gen).expand(1, h, lq, lk)
    check(q, k, v, g, mask=mask, causal=kind == "causal")


def test_long_query_dynrefer_tag_decoder_scale(gen):
    """The tag decoder's 4585 queries against 32 keys, one head: many query blocks of the long-query tiles."""
    q, k, v, g = make(gen, 1, 1, 4585, 32, 64, 64, torch.bfloat16)
    check(q, k, v, g, backward=False)


def test_bad_arguments():
    q = torch.randn(1, 1, 4, 8)
    out, lse = torch.empty(1, 1, 4, 8), torch.empty(1, 1, 4)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        _C.attention_tc_forward_emulated(q, q, q, None, out, lse, 1.0, False)
    qb = q.bfloat16()
    with pytest.raises(ValueError, match="head dim"):
        _C.attention_tc_forward_emulated(qb, qb[..., :3], qb, None, out.bfloat16(), lse, 1.0, False)


# --- CUDA (skipped without a GPU) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (8, 12, 32, 257, 64, 64), (2, 4, 4585, 32, 64, 64), (2, 4, 257, 257, 88, 88), (1, 2, 45, 70, 256, 256),
    (2, 1, 17, 33, 24, 40), (1, 1, 1, 1, 1, 1),
])
def test_cuda_tensor_cores_match_sdpa_and_emulation(gen, device, dtype, shape):
    b, h, lq, lk, d, dv = shape
    q, k, v, g = make(gen, b, h, lq, lk, d, dv, dtype)
    ref = reference(q, k, v, grad=g)
    qc, kc, vc = (t.to(device).requires_grad_(True) for t in (q, k, v))
    out = attention(qc, kc, vc)
    grads = torch.autograd.grad(out, (qc, kc, vc), g.to(device))
    torch_out = F.scaled_dot_product_attention(qc, kc, vc)
    torch_grads = torch.autograd.grad(torch_out, (qc, kc, vc), g.to(device))
    assert rel(out.cpu(), ref[0]) <= max(FLOOR[dtype], 3 * rel(torch_out.cpu(), ref[0]))
    for mine, theirs, gold in zip(grads, torch_grads, ref[2]):
        assert rel(mine.cpu(), gold) <= max(2 * FLOOR[dtype], 3 * rel(theirs.cpu(), gold))
    if lq * lk <= 70 * 70:  # the emulation runs the same schedule: equal up to the MMA's internal rounding
        emu = emulated(q, k, v, grad=g)
        assert rel(out.cpu(), emu[0]) <= FLOOR[dtype] / 2
    again = attention(qc, kc, vc)
    again_grads = torch.autograd.grad(again, (qc, kc, vc), g.to(device))
    assert torch.equal(out, again) and all(torch.equal(a, b) for a, b in zip(grads, again_grads))


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tensor_cores_masks_causal_empty_rows(gen, device, dtype):
    q, k, v, g = make(gen, 2, 3, 40, 70, 64, 64, dtype)
    mask = torch.rand(2, 1, 40, 70, generator=gen) > 0.4
    mask[..., 0] = True
    mask[1, 0, 7] = False
    for kw in (dict(mask=mask), dict(mask=torch.randn(1, 3, 1, 70, generator=gen).to(dtype)), dict(causal=True)):
        m = kw.get("mask")
        ref = reference(q, k, v, m, kw.get("causal", False), grad=g)
        qc, kc, vc = (t.to(device).requires_grad_(True) for t in (q, k, v))
        out = attention(qc, kc, vc, attn_mask=None if m is None else m.to(device), is_causal=kw.get("causal", False))
        grads = torch.autograd.grad(out, (qc, kc, vc), g.to(device))
        assert rel(out.cpu(), ref[0]) <= FLOOR[dtype]
        for mine, gold in zip(grads, ref[2]):
            assert rel(mine.cpu(), gold) <= 2 * FLOOR[dtype]
        if m is not None and m.dtype == torch.bool:
            assert not out[1, :, 7].any() and not grads[0][1, :, 7].any()


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tensor_cores_nan_and_emulation_agree(gen, device, dtype):
    """Non-finite inputs reach the same outputs on the GPU as in the emulation and dynrefer's CPU kernels."""
    q, k, v, g = make(gen, 1, 2, 33, 40, 64, 64, dtype)
    q[0, 0, 3, 2] = math.nan
    v[0, 1, 7, 0] = math.inf
    mask = torch.rand(1, 2, 33, 40, generator=gen) > 0.3
    mask[..., 0] = True
    qc, kc, vc = (t.to(device).requires_grad_(True) for t in (q, k, v))
    out = attention(qc, kc, vc, attn_mask=mask.to(device))
    grads = torch.autograd.grad(out, (qc, kc, vc), g.to(device))
    emu = emulated(q, k, v, mask, grad=g)
    assert torch.equal(out.isnan().cpu(), emu[0].isnan())
    for mine, theirs in zip(grads, emu[2]):
        assert torch.equal(mine.isnan().cpu(), theirs.isnan())
