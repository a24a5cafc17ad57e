"""DCNv4 deformable aggregation with PyTorch: against torchvision.ops.deform_conv2d (depthwise, all-ones weights,
DCNv4's weights as the modulation mask), the float64 reference, gradcheck, torch.compile, and CUDA vs CPU."""
import numpy as np
import pytest
import torch
from torchvision.ops import deform_conv2d

from conftest import cuda_devices
from dynrefer.ops import dcnv4, offset_mask_channels
from reference_dcn import dcnv4_grad_ref, dcnv4_ref, out_size, taps


def rel_err(a, b):
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def make_inputs(g, n=2, h=6, w=7, group=2, d=3, kernel=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), rc=False,
                spread=1.5, dtype=torch.float64, p=None):
    kh, kw = kernel
    k = kh * kw - int(rc)
    ho, wo = out_size(h, kh, stride[0], pad[0], dil[0]), out_size(w, kw, stride[1], pad[1], dil[1])
    p = offset_mask_channels(group, kernel, rc) if p is None else p
    value = torch.randn(n, h, w, group * d, generator=g, dtype=torch.float64)
    om = torch.randn(n, ho, wo, p, generator=g, dtype=torch.float64)
    for gi in range(group):
        om[..., gi * 3 * k:gi * 3 * k + 2 * k] *= spread
        om[..., gi * 3 * k + 2 * k:gi * 3 * k + 3 * k] = torch.rand(n, ho, wo, k, generator=g, dtype=torch.float64) * 2 - 0.5
    return value.to(dtype), om.to(dtype)


def to_torchvision(value, om, kernel, stride, pad, dil, group, scale, rc):
    """DCNv4 inputs → deform_conv2d(input, offset, weight, mask) with the same result: taps re-ordered (DCNv4: x
    outer, y inner; torchvision: row-major y outer), offset_scale folded into the offsets, the removed centre as a
    zero-weight tap, depthwise all-ones weights, offset groups = DCNv4 groups."""
    kh, kw = kernel
    N, H, W, C = value.shape
    tl = taps(kh, kw, rc)
    K = len(tl)
    Ho, Wo = om.shape[1], om.shape[2]
    offset = torch.zeros(N, group, kh * kw, 2, Ho, Wo, dtype=value.dtype)
    mask = torch.zeros(N, group, kh * kw, Ho, Wo, dtype=value.dtype)
    half_w, half_h = (dil[1] * (kw - 1)) >> 1, (dil[0] * (kh - 1)) >> 1
    for gi in range(group):
        base = gi * 3 * K
        for k, (i, j) in enumerate(tl):
            t = j * kw + i
            dx = om[..., base + 2 * k]
            dy = om[..., base + 2 * k + 1]
            offset[:, gi, t, 1] = half_w + (i * dil[1] - half_w + dx) * scale - i * dil[1]
            offset[:, gi, t, 0] = half_h + (j * dil[0] - half_h + dy) * scale - j * dil[0]
            mask[:, gi, t] = om[..., base + 2 * K + k]
    x = value.permute(0, 3, 1, 2)
    weight = torch.ones(C, 1, kh, kw, dtype=value.dtype)
    return x, offset.reshape(N, -1, Ho, Wo), weight, mask.reshape(N, -1, Ho, Wo)


def tv_dcnv4(value, om, kernel, stride, pad, dil, group, scale, rc):
    x, off, weight, mask = to_torchvision(value, om, kernel, stride, pad, dil, group, scale, rc)
    y = deform_conv2d(x, off, weight, stride=stride, padding=pad, dilation=dil, mask=mask)
    return y.permute(0, 2, 3, 1)


CASES = [  # (group, d, kernel, stride, pad, dil, scale, remove_center, h, w)
    (2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, 6, 7),
    (1, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1.0, False, 7, 6),
    (4, 2, (3, 3), (1, 1), (2, 2), (2, 2), 1.0, False, 6, 6),
    (2, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, True, 5, 5),
    (2, 3, (3, 5), (2, 1), (1, 2), (1, 2), 0.5, False, 7, 8),
    (3, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False, 1, 1),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_and_grads_match_torchvision(case):
    g = torch.Generator().manual_seed(100 + case)
    gr, d, kernel, stride, pad, dil, scale, rc, h, w = CASES[case]
    value, om = make_inputs(g, h=h, w=w, group=gr, d=d, kernel=kernel, stride=stride, pad=pad, dil=dil, rc=rc)
    # float64 torchvision is the golden for the forward
    ref = tv_dcnv4(value, om, kernel, stride, pad, dil, gr, scale, rc)
    out64 = dcnv4(value, om, kernel, stride, pad, dil, gr, d, scale, rc)
    assert rel_err(out64, ref) < 1e-13
    # float32: ours against the float64 golden, and gradients against torchvision's float32 gradients
    v32 = value.float().requires_grad_()
    o32 = om.float().requires_grad_()
    out = dcnv4(v32, o32, kernel, stride, pad, dil, gr, d, scale, rc)
    assert out.dtype == torch.float32 and rel_err(out, ref) < 1e-5
    go = torch.randn(out.shape, generator=g)
    gv, gom = torch.autograd.grad(out, (v32, o32), go)
    vt = value.float().requires_grad_()
    omt = om.float().requires_grad_()
    reft = tv_dcnv4(vt, omt, kernel, stride, pad, dil, gr, scale, rc)
    gvt, gomt = torch.autograd.grad(reft, (vt, omt), go)
    assert rel_err(gv, gvt) < 1e-5 and rel_err(gom, gomt) < 1e-5
    k = kernel[0] * kernel[1] - int(rc)
    assert torch.all(gom[..., 3 * gr * k:] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    g = torch.Generator().manual_seed(7)
    value, om = make_inputs(g, n=2, h=8, w=8, group=2, d=8)
    ref = dcnv4(value, om, 3, 1, 1, 1, 2)
    vh, omh = value.to(dtype).requires_grad_(), om.to(dtype).requires_grad_()
    out = dcnv4(vh, omh, 3, 1, 1, 1, 2)
    assert out.dtype == dtype
    # error from rounding the inputs and the output to half precision only (float32 accumulation)
    ref_h = dcnv4(vh.detach().double(), omh.detach().double(), 3, 1, 1, 1, 2)
    eps = torch.finfo(dtype).eps
    assert rel_err(out, ref_h) < eps
    assert rel_err(out, ref) < 8 * eps
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    gv, gom = torch.autograd.grad(out, (vh, omh), go.to(dtype))
    assert gv.dtype == gom.dtype == dtype
    v64, om64 = vh.detach().double().requires_grad_(), omh.detach().double().requires_grad_()
    rgv, rgom = torch.autograd.grad(dcnv4(v64, om64, 3, 1, 1, 1, 2), (v64, om64), go.to(dtype).double())
    assert rel_err(gv, rgv) < 2 * eps and rel_err(gom, rgom) < 2 * eps


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    for kw in (dict(kernel_size=3, stride=1, padding=1, dilation=1, group=2, offset_scale=0.8),
               dict(kernel_size=(3, 3), stride=2, padding=2, dilation=2, group=1, remove_center=True)):
        gr = kw["group"]
        value, om = make_inputs(g, n=1, h=5, w=4, group=gr, d=2, kernel=(3, 3), stride=(kw["stride"],) * 2,
                                pad=(kw["padding"],) * 2, dil=(kw["dilation"],) * 2, rc=kw.get("remove_center", False),
                                spread=0.7)
        value.requires_grad_()
        om.requires_grad_()
        assert torch.autograd.gradcheck(lambda v, o: dcnv4(v, o, **kw), (value, om), eps=1e-6, atol=1e-6)


def test_matches_numpy_reference_and_numpy_path():
    g = torch.Generator().manual_seed(11)
    value, om = make_inputs(g, n=1, h=5, w=5, group=2, d=3, rc=True)
    out = dcnv4(value, om, 3, 1, 1, 1, 2, remove_center=True)
    ref = dcnv4_ref(value.numpy(), om.numpy(), group=2, remove_center=True)
    assert rel_err(out, torch.from_numpy(ref)) < 1e-13
    np.testing.assert_array_equal(dcnv4(value.numpy(), om.numpy(), 3, 1, 1, 1, 2, remove_center=True), out.numpy())
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    v, o = value.requires_grad_(), om.requires_grad_()
    gv, gom = torch.autograd.grad(dcnv4(v, o, 3, 1, 1, 1, 2, remove_center=True), (v, o), go)
    rgv, rgom = dcnv4_grad_ref(value.detach().numpy(), om.detach().numpy(), go.numpy(), group=2, remove_center=True)
    assert rel_err(gv, torch.from_numpy(rgv)) < 1e-12 and rel_err(gom, torch.from_numpy(rgom)) < 1e-12


def test_non_contiguous_tensors():
    g = torch.Generator().manual_seed(5)
    value, om = make_inputs(g, n=2, h=6, w=6, group=2, d=4, dtype=torch.float32)
    ref = dcnv4(value, om, 3, 1, 1, 1, 2)
    v_nchw = value.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1).requires_grad_()  # channel stride H*W
    om_wide = torch.zeros(om.shape[:3] + (2 * om.shape[3],))
    om_wide[..., ::2] = om
    om_view = om_wide[..., ::2].requires_grad_()
    out = dcnv4(v_nchw, om_view, 3, 1, 1, 1, 2)
    assert torch.allclose(out, ref, atol=1e-6)
    go = torch.randn(out.shape[0], out.shape[3], out.shape[1], out.shape[2], generator=g).permute(0, 2, 3, 1)
    gv, gom = torch.autograd.grad(out, (v_nchw, om_view), go)
    v2, o2 = value.clone().requires_grad_(), om.clone().requires_grad_()
    rgv, rgom = torch.autograd.grad(dcnv4(v2, o2, 3, 1, 1, 1, 2), (v2, o2), go.contiguous())
    assert torch.allclose(gv, rgv, atol=1e-5) and torch.allclose(gom, rgom, atol=1e-5)


def test_bad_arguments_torch():
    value, om = make_inputs(torch.Generator().manual_seed(0), n=1, h=4, w=4, group=2, d=3, dtype=torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        dcnv4(value, om.double(), 3, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="floating-point"):
        dcnv4(value.int(), om.int(), 3, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="offset_mask"):
        dcnv4(value, om.numpy(), 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="4-D"):
        dcnv4(value[0], om, 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="4-D"):
        dcnv4(value, om[0], 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="P >= 3"):
        dcnv4(value, om[..., :53], 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="not divisible"):
        dcnv4(value, om, 3, 1, 1, 1, 4)
    with pytest.raises(ValueError, match=r"\[1, 2, 2, P\]"):
        dcnv4(value, om, 3, 2, 1, 1, 2)
    with pytest.raises(ValueError, match="on meta"):
        dcnv4(value, om.to("meta"), 3, 1, 1, 1, 2)


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(1)
    value, om = make_inputs(g, n=2, h=5, w=5, group=2, d=4, dtype=torch.float32)
    value.requires_grad_()

    def f(v, o):
        return dcnv4(v, o, 3, 1, 1, 1, 2, offset_scale=0.5).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (g1,) = torch.autograd.grad(compiled(value, om), value)
    (g2,) = torch.autograd.grad(f(value, om), value)
    assert torch.equal(g1, g2)


def test_torch_library_opcheck():
    g = torch.Generator().manual_seed(2)
    value, om = make_inputs(g, n=1, h=4, w=5, group=2, d=2)
    args = (value.requires_grad_(), om.requires_grad_(), 3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 1.0, False)
    torch.library.opcheck(torch.ops.dynrefer.dcnv4.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_runs_in_input_dtype(dtype):
    value, om = make_inputs(torch.Generator().manual_seed(6), n=1, h=4, w=4, group=2, d=4, dtype=dtype)
    value.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dcnv4(value, om, group=2)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert value.grad.dtype == dtype


def test_deterministic_mode_cpu_bitwise():
    g = torch.Generator().manual_seed(4)
    value, om = make_inputs(g, n=2, h=6, w=6, group=4, d=4, dtype=torch.float32)
    value.requires_grad_()
    om.requires_grad_()
    go = torch.randn(2, 6, 6, 16, generator=g)
    a = torch.autograd.grad(dcnv4(value, om, group=4), (value, om), go)
    b = torch.autograd.grad(dcnv4(value, om, group=4), (value, om), go)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# --- CUDA ------------------------------------------------------------------------------------------------------

CUDA = pytest.mark.skipif(not cuda_devices(), reason="needs a CUDA GPU and dynrefer built with CUDA")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cuda_matches_cpu(dtype, case):
    g = torch.Generator().manual_seed(200 + case)
    gr, d, kernel, stride, pad, dil, scale, rc, h, w = CASES[case]
    value, om = make_inputs(g, h=h, w=w, group=gr, d=d, kernel=kernel, stride=stride, pad=pad, dil=dil, rc=rc,
                            dtype=dtype)
    go = torch.randn(value.shape[0], om.shape[1], om.shape[2], value.shape[3], generator=g).to(dtype)
    res = {}
    for dev in ("cpu", "cuda"):
        v = value.to(dev).requires_grad_()
        o = om.to(dev).requires_grad_()
        out = dcnv4(v, o, kernel, stride, pad, dil, gr, d, scale, rc)
        res[dev] = (out,) + torch.autograd.grad(out, (v, o), go.to(dev))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for c, x in zip(res["cpu"], res["cuda"]):
        assert x.device.type == "cuda" and x.dtype == c.dtype
        assert rel_err(x.cpu(), c) < tol


@CUDA
@pytest.mark.parametrize("shape", [(4, 16, (3, 3), False, 20, 24), (2, 64, (3, 3), True, 13, 9),
                                   (1, 1100, (3, 3), False, 4, 5), (2, 8, (7, 7), False, 12, 12)])
def test_cuda_tiled_forward_matches_torchvision_cuda(shape):
    """The tiled forward on the GPU (several (pixel, group) pairs per block, one pair per block, large K) against
    torchvision's deform_conv2d on the GPU."""
    gr, d, kernel, rc, h, w = shape
    g = torch.Generator().manual_seed(300 + d)
    pad = (kernel[0] // 2, kernel[1] // 2)
    value, om = make_inputs(g, n=2, h=h, w=w, group=gr, d=d, kernel=kernel, pad=pad, rc=rc, dtype=torch.float32,
                            spread=2.0)
    value, om = value.cuda(), om.cuda()
    out = dcnv4(value, om, kernel, 1, pad, 1, gr, d, 1.0, rc)
    x, off, weight, mask = to_torchvision(value.cpu(), om.cpu(), kernel, (1, 1), pad, (1, 1), gr, 1.0, rc)
    ref = deform_conv2d(x.cuda(), off.cuda(), weight.cuda(), padding=pad, mask=mask.cuda()).permute(0, 2, 3, 1)
    assert rel_err(out.cpu(), ref.cpu()) < 1e-5


@CUDA
def test_cuda_deterministic_backward_bitwise():
    g = torch.Generator().manual_seed(9)
    value, om = make_inputs(g, n=4, h=16, w=16, group=4, d=32, dtype=torch.float32, spread=0.5)
    v, o = value.cuda().requires_grad_(), om.cuda().requires_grad_()
    go = torch.randn(4, 16, 16, 128, generator=g).cuda()
    torch.use_deterministic_algorithms(True)
    try:
        a = torch.autograd.grad(dcnv4(v, o, group=4), (v, o), go)
        b = torch.autograd.grad(dcnv4(v, o, group=4), (v, o), go)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = torch.autograd.grad(dcnv4(v, o, group=4), (v, o), go)  # atomic mode agrees up to rounding
    assert all(rel_err(x.cpu(), y.cpu()) < 1e-6 for x, y in zip(a, c))


@CUDA
def test_cuda_gradcheck_and_stream():
    g = torch.Generator().manual_seed(10)
    value, om = make_inputs(g, n=1, h=4, w=5, group=2, d=2, spread=0.7)
    v, o = value.cuda().requires_grad_(), om.cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: dcnv4(a, b, 3, 1, 1, 1, 2, offset_scale=0.9), (v, o), eps=1e-6,
                                    atol=1e-6)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = dcnv4(v.detach(), o.detach(), 3, 1, 1, 1, 2)
    s.synchronize()
    assert torch.allclose(out.cpu(), dcnv4(value, om, 3, 1, 1, 1, 2), atol=1e-12)


@CUDA
def test_cuda_cpu_mixed_devices_rejected():
    value, om = make_inputs(torch.Generator().manual_seed(0), n=1, h=4, w=4, group=2, d=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="on cuda"):
        dcnv4(value, om.cuda(), 3, 1, 1, 1, 2)
