"""dynrefer.nn: backend switch, the pure-PyTorch DCNv4 reference, attention layouts, the align module."""
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from dynrefer.nn import DeformableAlign, backend
from dynrefer.nn.attention import FusedQKVAttention, InProjAttention, SeparateQKVAttention


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------------ backend
def test_backend_switch_and_context():
    assert backend.get_backend() == "dynrefer"
    with backend.use_backend("peer"):
        assert backend.get_backend() == "peer"
        assert set(backend.resolved_ops().values()) == {"peer"}
        with backend.use_backend("dynrefer"):
            assert backend.get_backend() == "dynrefer"
        assert backend.get_backend() == "peer"
    assert backend.get_backend() == "dynrefer"
    backend.set_backend("peer")
    try:
        assert backend.get_backend() == "peer"
        seen = []
        t = threading.Thread(target=lambda: seen.append(backend.get_backend()))
        t.start()
        t.join()
        assert seen == ["peer"]  # set_backend is process-wide
    finally:
        backend.set_backend("dynrefer")
    with pytest.raises(ValueError, match="backend"):
        backend.set_backend("cudnn")
    with pytest.raises(ValueError, match="backend"):
        with backend.use_backend("x"):
            pass


def test_backend_resolves_to_dynrefer_ops_when_present():
    import dynrefer.ops as ops

    res = backend.resolved_ops()
    for name in ("attention", "roi_align", "dcnv4"):
        assert res[name] == ("dynrefer" if hasattr(ops, name) else "peer")


def test_cuda_dispatch_follows_the_measured_table(monkeypatch):
    """On CUDA the "dynrefer" backend uses a dynrefer kernel only where the table measured every pass at least as
    fast as the peer on that compute capability; elsewhere (and where nothing was measured) the peer runs. The
    device is never touched: the compute capability is what cuda_kind reports."""
    import dynrefer.ops as ops

    table = {"devices": {"sm_90": {"ops": {"roi_align": {"forward": 1.3, "forward_backward": 2.0},
                                           "attention": {"forward": 1.2, "forward_backward": 0.9}}}}}
    monkeypatch.setattr(backend, "cuda_dispatch_table", lambda path=None: table)
    monkeypatch.delenv("DYNREFER_CUDA_DISPATCH", raising=False)
    kind = ["sm_90"]
    monkeypatch.setattr(backend, "cuda_kind", lambda device: kind[0])
    cuda = torch.device("cuda", 0)
    assert backend.resolved_ops(cuda) == {"attention": "peer", "roi_align": "dynrefer", "dcnv4": "peer"}
    assert backend._dr_op("roi_align", cuda) is ops.roi_align and backend._dr_op("dcnv4", cuda) is None
    kind[0] = "sm_80"   # another kind of GPU: nothing measured there
    assert set(backend.resolved_ops(cuda).values()) == {"peer"}
    assert set(backend.resolved_ops().values()) == {"dynrefer"}   # the CPU is not governed by the table
    try:
        backend.set_cuda_dispatch("dynrefer")
        assert set(backend.resolved_ops(cuda).values()) == {"dynrefer"}
        backend.set_cuda_dispatch("peer")
        kind[0] = "sm_90"
        assert set(backend.resolved_ops(cuda).values()) == {"peer"}
        with pytest.raises(ValueError, match="cuda dispatch"):
            backend.set_cuda_dispatch("fastest")
    finally:
        backend.set_cuda_dispatch(None)
    monkeypatch.setenv("DYNREFER_CUDA_DISPATCH", "dynrefer")
    assert set(backend.resolved_ops(cuda).values()) == {"dynrefer"}
    monkeypatch.setenv("DYNREFER_CUDA_DISPATCH", "bogus")
    with pytest.raises(ValueError, match="DYNREFER_CUDA_DISPATCH"):
        backend.resolved_ops(cuda)
    with backend.use_backend("peer"):
        monkeypatch.setenv("DYNREFER_CUDA_DISPATCH", "dynrefer")
        assert set(backend.resolved_ops(cuda).values()) == {"peer"}


def test_shipped_cuda_dispatch_table_is_well_formed():
    table = backend.cuda_dispatch_table()
    assert table["format"] == 1 and table["devices"]
    for kind, entry in table["devices"].items():
        assert kind.startswith("sm_") and kind[3:].isdigit()
        for op, passes in entry["ops"].items():
            assert op in backend.OPS and passes
            assert set(passes) <= {"forward", "forward_backward"} and all(float(r) > 0 for r in passes.values())


def test_backend_roi_align_matches_torchvision(rng):
    x = torch.from_numpy(rng.standard_normal((3, 8, 16, 16)).astype(np.float32))
    xy = rng.uniform(0, 200, (5, 2))
    wh = rng.uniform(5, 100, (5, 2))
    boxes = torch.from_numpy(np.concatenate([rng.integers(0, 3, (5, 1)), xy, xy + wh], 1).astype(np.float32))
    ref = torchvision.ops.roi_align(x, boxes, (16, 16), 1 / 14, 2, False)
    for name in ("dynrefer", "peer"):
        with backend.use_backend(name):
            out = backend.roi_align(x, boxes, (16, 16), 1 / 14, 2, False)
        assert rel(out, ref) < 1e-5


def test_backend_attention_matches_sdpa(rng):
    q, k, v = (torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in
               [(2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)])
    mask = torch.from_numpy(rng.random((2, 1, 1, 7)) > 0.3)
    mask[..., 0] = True
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    for name in ("dynrefer", "peer"):
        with backend.use_backend(name):
            out = backend.attention(q, k, v, attn_mask=mask)
        assert rel(out.double(), ref) < 1e-5


# ------------------------------------------------------------------------------------------------ DCNv4 reference
def naive_dcnv4(value, om, k, stride, pad, dil, G, os_, remove_center=False):
    """Straight loops over docs/DESIGN.md §7.5 (float64 NumPy)."""
    N, H, W, C = value.shape
    D = C // G
    Ho = (H + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    Wo = (W + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    taps = [(i, j) for i in range(k) for j in range(k) if not (remove_center and i == k // 2 and j == k // 2)]
    K = len(taps)
    out = np.zeros((N, Ho, Wo, C))

    def px(n, y, x, c):
        return value[n, y, x, c] if 0 <= y < H and 0 <= x < W else 0.0

    for n in range(N):
        for ho in range(Ho):
            for wo in range(Wo):
                for g in range(G):
                    base = g * 3 * K
                    for t, (i, j) in enumerate(taps):
                        dx, dy = om[n, ho, wo, base + 2 * t], om[n, ho, wo, base + 2 * t + 1]
                        m = om[n, ho, wo, base + 2 * K + t]
                        w = wo * stride - pad + (dil * (k - 1)) // 2 * (1 - os_) + (i * dil + dx) * os_
                        h = ho * stride - pad + (dil * (k - 1)) // 2 * (1 - os_) + (j * dil + dy) * os_
                        if not (h > -1 and w > -1 and h < H and w < W):
                            continue
                        h0, w0 = int(np.floor(h)), int(np.floor(w))
                        lh, lw = h - h0, w - w0
                        for c in range(g * D, (g + 1) * D):
                            s = ((1 - lh) * (1 - lw) * px(n, h0, w0, c) + (1 - lh) * lw * px(n, h0, w0 + 1, c)
                                 + lh * (1 - lw) * px(n, h0 + 1, w0, c) + lh * lw * px(n, h0 + 1, w0 + 1, c))
                            out[n, ho, wo, c] += m * s
    return out


@pytest.mark.parametrize("k,stride,pad,dil,G,os_,rc", [(3, 1, 1, 1, 4, 1.0, False), (3, 2, 0, 2, 2, 0.5, False),
                                                       (3, 1, 1, 1, 1, 1.0, True), (1, 1, 0, 1, 2, 2.0, False)])
def test_dcnv4_reference_matches_formula(rng, k, stride, pad, dil, G, os_, rc):
    N, H, W, D = 2, 5, 6, 3
    K = k * k - int(rc)
    P = -(-3 * G * K // 8) * 8
    value = rng.standard_normal((N, H, W, G * D))
    Ho = (H + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    Wo = (W + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    om = rng.standard_normal((N, Ho, Wo, P)) * 1.5
    ref = naive_dcnv4(value, om, k, stride, pad, dil, G, os_, rc)
    out = backend.dcnv4_reference(torch.from_numpy(value), torch.from_numpy(om), k, stride, pad, dil, G, None, os_,
                                  rc)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_dcnv4_reference_matches_torchvision_deform_conv2d(rng):
    """With offset_scale 1 DCNv4 is a modulated deformable depthwise conv with unit weights."""
    N, H, W, G, D, k = 2, 7, 6, 4, 2, 3
    C, K = G * D, k * k
    value = torch.from_numpy(rng.standard_normal((N, H, W, C)))
    om = torch.from_numpy(rng.standard_normal((N, H, W, 3 * G * K + 4)) * 2)  # P padded to 112/8: 108 → 112
    out = backend.dcnv4_reference(value, om, k, 1, 1, 1, G, None, 1.0)
    o = om[..., :3 * G * K].reshape(N, H, W, G, 3 * K)
    off = o[..., :2 * K].reshape(N, H, W, G, k, k, 2)      # taps (i = x outer, j = y inner), pairs (dx, dy)
    off = off.permute(0, 1, 2, 3, 5, 4, 6).flip(-1)        # torchvision: taps row-major (y outer), pairs (dy, dx)
    mask = o[..., 2 * K:].reshape(N, H, W, G, k, k).permute(0, 1, 2, 3, 5, 4)
    off = off.reshape(N, H, W, G * K * 2).permute(0, 3, 1, 2)
    mask = mask.reshape(N, H, W, G * K).permute(0, 3, 1, 2)
    weight = torch.ones(C, 1, k, k, dtype=torch.float64)
    ref = torchvision.ops.deform_conv2d(value.permute(0, 3, 1, 2), off.contiguous(), weight, padding=1,
                                        mask=mask.contiguous())
    assert rel(out.permute(0, 3, 1, 2), ref) < 1e-12


def test_dcnv4_reference_gradcheck(rng):
    value = torch.from_numpy(rng.standard_normal((1, 4, 3, 4))).requires_grad_()
    om = torch.from_numpy(rng.standard_normal((1, 4, 3, 32)) * 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, o: backend.dcnv4_reference(v, o, 3, 1, 1, 1, 1, None, 1.0),
                                    (value, om), eps=1e-6, atol=1e-6)


def test_dcnv4_reference_bad_shapes():
    with pytest.raises(ValueError, match="offset_mask"):
        backend.dcnv4_reference(torch.zeros(1, 4, 4, 8), torch.zeros(1, 4, 4, 8), group=4)
    with pytest.raises(ValueError, match="group"):
        backend.dcnv4_reference(torch.zeros(1, 4, 4, 8), torch.zeros(1, 4, 4, 112), group=3)


# ------------------------------------------------------------------------------------------------ attention layers
def test_inproj_attention_equals_nn_multihead_attention(rng):
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).double()
    ours = InProjAttention(16, 4).double()
    ours.load_state_dict(mha.state_dict())
    x = torch.from_numpy(rng.standard_normal((3, 5, 16)))
    assert rel(ours(x), mha(x, x, x, need_weights=False)[0]) < 1e-12


def test_fused_qkv_attention_formula(rng):
    torch.manual_seed(2)
    att = FusedQKVAttention(12, 3).double()
    torch.nn.init.normal_(att.q_bias)
    torch.nn.init.normal_(att.v_bias)
    x = torch.from_numpy(rng.standard_normal((2, 4, 12)))
    W = att.qkv.weight
    q = x @ W[:12].T + att.q_bias
    k = x @ W[12:24].T
    v = x @ W[24:].T + att.v_bias
    split = lambda t: t.view(2, 4, 3, 4).transpose(1, 2)  # noqa: E731
    a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0, -1)
    ref = att.proj((a @ split(v)).transpose(1, 2).reshape(2, 4, 12))
    assert rel(att(x), ref) < 1e-12


def test_separate_qkv_cross_attention_with_mask(rng):
    torch.manual_seed(3)
    att = SeparateQKVAttention(8, 2, context_width=6).double()
    x = torch.from_numpy(rng.standard_normal((2, 3, 8)))
    ctx = torch.from_numpy(rng.standard_normal((2, 5, 6)))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = att(x, ctx, mask)
    ref0 = att(x[:1], ctx[:1, :3])  # masked keys contribute nothing
    assert rel(out[:1], ref0) < 1e-12
    with pytest.raises(ValueError, match="num_heads"):
        SeparateQKVAttention(10, 3)


# ------------------------------------------------------------------------------------------------ align module
OFFICIAL_ALIGN_KEYS = {"offset_mask_dw.weight": (128, 2, 3, 3), "offset_mask_dw.bias": (128,),
                       "offset_mask.weight": (112, 128), "offset_mask.bias": (112,),
                       "value_proj.weight": (128, 128), "value_proj.bias": (128,),
                       "output_proj.weight": (128, 128), "output_proj.bias": (128,)}


def test_align_state_dict_layout_and_init():
    m = DeformableAlign(128)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == OFFICIAL_ALIGN_KEYS
    assert not m.offset_mask.weight.any() and not m.offset_mask.bias.any()
    with pytest.raises(ValueError, match="divisible"):
        DeformableAlign(30, group=4)


def test_align_forward_matches_manual_pipeline(rng):
    torch.manual_seed(4)
    m = DeformableAlign(16, group=4).double()
    torch.nn.init.normal_(m.offset_mask.weight, std=0.3)
    torch.nn.init.normal_(m.offset_mask.bias, std=0.3)
    ref_in = torch.from_numpy(rng.standard_normal((2, 16, 5, 5)))
    x = torch.from_numpy(rng.standard_normal((2, 16, 5, 5)))
    value = m.value_proj(x.permute(0, 2, 3, 1))
    om = m.offset_mask(m.offset_mask_dw(torch.cat([x, ref_in], 1)).permute(0, 2, 3, 1))
    expect = m.output_proj(naive_tensor(value, om)).permute(0, 3, 1, 2)
    for name in ("peer", "dynrefer"):
        with backend.use_backend(name):
            out = m(ref_in, x)
        assert out.shape == x.shape
        assert rel(out, expect) < 1e-10
    with pytest.raises(ValueError, match="reference and input"):
        m(ref_in, x[:, :8])


def naive_tensor(value, om):
    return torch.from_numpy(naive_dcnv4(value.detach().numpy(), om.detach().numpy(), 3, 1, 1, 1, 4, 1.0))


def test_align_gradients_reach_every_parameter(rng):
    m = DeformableAlign(16, group=4).double()
    torch.nn.init.normal_(m.offset_mask.weight, std=0.1)
    a = torch.from_numpy(rng.standard_normal((1, 16, 4, 4)))
    b = torch.from_numpy(rng.standard_normal((1, 16, 4, 4)))
    m(a, b).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_align_backends_agree_in_value_and_gradient(rng):
    torch.manual_seed(6)
    m = DeformableAlign(32, group=4).double()
    torch.nn.init.normal_(m.offset_mask.weight, std=0.2)
    torch.nn.init.normal_(m.offset_mask.bias, std=0.5)
    a = torch.from_numpy(rng.standard_normal((2, 32, 6, 5)))
    b = torch.from_numpy(rng.standard_normal((2, 32, 6, 5))).requires_grad_()
    res = {}
    for name in ("peer", "dynrefer"):
        m.zero_grad()
        b.grad = None
        with backend.use_backend(name):
            out = m(a, b)
        out.pow(2).sum().backward()
        res[name] = (out.detach(), b.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()})
    (o1, g1, p1), (o2, g2, p2) = res["peer"], res["dynrefer"]
    assert rel(o2, o1) < 1e-10 and rel(g2, g1) < 1e-10
    for n in p1:
        assert rel(p2[n], p1[n]) < 1e-9, n
