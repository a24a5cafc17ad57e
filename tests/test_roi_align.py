"""RoI-Align against torchvision: its own TestRoIAlign cases (TorchScript, torch.fx and quantized inputs
included), property tests, autograd, compile, autocast, DataLoader workers, and CUDA (skipped without a GPU)."""
import io
import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dynrefer  # noqa: E402
from conftest import cuda_devices  # noqa: E402
from dynrefer import ops  # noqa: E402

tv_roi_align = torchvision.ops.roi_align
DEVICES = ["cpu"] + cuda_devices()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# --- torchvision's TestRoIAlign ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("rois_dtype", [None, torch.float16, torch.float32, torch.float64])
def test_forward_torchvision_cases(device, contiguous, aligned, x_dtype, rois_dtype):
    # torchvision test_ops.py RoIOpTester._helper_forward: 2x50x10x10, pool 5, sampling -1, four rois
    rois_dtype = x_dtype if rois_dtype is None else rois_dtype
    torch.manual_seed(zlib.crc32(repr((contiguous, aligned, x_dtype, rois_dtype)).encode()))
    x = torch.rand(2, 50, 10, 10, dtype=x_dtype, device=device)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]], dtype=rois_dtype, device=device)
    y = ops.roi_align(x, rois, 5, spatial_scale=1, sampling_ratio=-1, aligned=aligned)
    assert y.dtype == x.dtype and y.shape == (4, 50, 5, 5)
    golden = tv_roi_align(x.double(), rois.double(), 5, 1, -1, aligned)
    if x_dtype in (torch.float32, torch.float64) and rois_dtype in (torch.float32, torch.float64):
        assert rel_err(y, golden) < 1e-5
    else:
        # low precision: within a small multiple of torchvision's own error in that precision
        try:
            peer = tv_roi_align(x, rois.to(x_dtype), 5, 1, -1, aligned)
        except (RuntimeError, NotImplementedError):  # no bfloat16 kernel on this device: its autocast route
            peer = tv_roi_align(x.float(), rois.float(), 5, 1, -1, aligned).to(x_dtype)
        assert rel_err(y, golden) <= 2 * rel_err(peer, golden) + 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("contiguous", [True, False])
def test_backward_gradcheck_torchvision_cases(device, seed, contiguous):
    # torchvision RoIOpTester.test_backward: 1x8x5x5 float64, pool 2, sampling 1
    torch.manual_seed(seed)
    x = torch.rand(1, 8, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor([[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]], dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda z: ops.roi_align(z, rois, 2, 1, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda z: ops.roi_align(z, rois, 2, 1, 1), (x,))


def test_boxes_shape_torchvision_cases():
    a = torch.linspace(1, 8 * 8, 8 * 8).reshape(1, 1, 8, 8)
    with pytest.raises(AssertionError):
        ops.roi_align(a, torch.tensor([[0, 0, 3, 3]], dtype=a.dtype), output_size=(2, 2))
    with pytest.raises(AssertionError):
        ops.roi_align(a, [torch.tensor([[0, 0, 3]], dtype=a.dtype)], output_size=(2, 2))
    with pytest.raises(AssertionError):
        ops.roi_align(a, "boxes", output_size=(2, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_boxes_and_module(device):
    torch.manual_seed(3)
    x = torch.rand(2, 4, 12, 12, device=device)
    boxes = [torch.rand(3, 4, device=device) * 10, torch.rand(5, 4, device=device) * 10]
    boxes = [torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1) for b in boxes]
    ours = ops.roi_align(x, boxes, (3, 2), 0.75, 2, True)
    # bit-exact with torchvision's CPU kernel; its CUDA kernel contracts to FMAs, so equal to rounding there
    same = torch.equal if device == "cpu" else (lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-7))
    assert same(ours, tv_roi_align(x, boxes, (3, 2), 0.75, 2, True))
    m, ref = ops.RoIAlign((3, 2), 0.75, 2, True), torchvision.ops.RoIAlign((3, 2), 0.75, 2, True)
    assert repr(m) == repr(ref)
    assert same(m(x, boxes), ref(x, boxes))


def test_golden_detectron2_with_gradients():
    x = torch.arange(25.0).reshape(1, 1, 5, 5).requires_grad_()
    box = torch.tensor([[0, 3, 4, 5, 4.0]])  # empty box: zeros and zero gradient (aligned)
    y = ops.roi_align(x, box, 7, 1.0, 0, aligned=True)
    y.sum().backward()
    assert torch.all(y == 0) and torch.all(x.grad == 0)
    empty = ops.roi_align(torch.zeros(0, 3, 5, 5, requires_grad=True), torch.zeros(0, 5), 4, 1.0, 0, True)
    assert empty.shape == (0, 3, 4, 4)
    empty.sum().backward()


# --- torchvision's TestRoIAlign: TorchScript, torch.fx, quantized inputs -------------------------------------
# cases from torchvision's test/test_ops.py, TestRoIAlign / RoIOpTester, with dynrefer's op in place of
# torchvision's (scripting, FX tracing as a leaf, quantized inputs), plus checks of what they rely on

_TV_ROIS = [[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]]
_jit = pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:FutureWarning")  # still supported


class _PoolWrapper(torch.nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, imgs: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.pool(imgs, boxes)


class _CallWrapper(torch.nn.Module):  # RoIOpTesterModuleWrapper
    def __init__(self, obj):
        super().__init__()
        self.layer = obj
        self.n_inputs = 2

    def forward(self, a, b):
        self.layer(a, b)


@_jit
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("contiguous", [True, False])
def test_script_gradcheck_torchvision_cases(seed, contiguous):
    # RoIOpTester.test_backward, its scripted half: torch.jit.script(ops.roi_align), gradcheck through it
    torch.manual_seed(seed)
    x = torch.rand(1, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor([[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]], dtype=torch.float64)
    scripted = torch.jit.script(ops.roi_align)
    assert torch.autograd.gradcheck(lambda z: scripted(z, rois, 2), (x,))
    assert torch.equal(scripted(x, rois, 2, 1.0, 1), ops.roi_align(x, rois, 2, 1.0, 1))
    assert "dynrefer::roi_align" in str(torch.jit.script(ops.RoIAlign(2, 1.0, 1)).inlined_graph)


@_jit
def test_script_boxes_list_torchvision_case():
    # TestRoIAlign.test_jit_boxes_list: a scripted module holding RoIAlign(output_size=[3, 3]), boxes as a list
    model = _PoolWrapper(ops.RoIAlign(output_size=[3, 3], spatial_scale=1.0, sampling_ratio=-1))
    x = torch.rand(2, 1, 10, 10)
    roi = torch.tensor(_TV_ROIS, dtype=torch.float).t()
    scripted = torch.jit.script(model)
    y = scripted(x, [roi, roi])
    assert y.shape == (10, 1, 3, 3)
    assert torch.equal(y, tv_roi_align(x, [roi, roi], [3, 3], 1.0, -1))


@_jit
def test_script_module_save_load_and_callers():
    x = torch.rand(2, 3, 10, 10)
    rois = torch.tensor([[0, 0, 0, 9, 9], [1, 0, 5, 4, 9.0]])
    boxes = [rois[:1, 1:], rois[1:, 1:]]
    m = torch.jit.script(ops.RoIAlign((2, 3), 0.5, 2, True))
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for b in (rois, boxes):
        assert torch.equal(loaded(x, b), tv_roi_align(x, b, (2, 3), 0.5, 2, True))

    @torch.jit.script
    def caller(a: torch.Tensor, b: list[torch.Tensor]) -> torch.Tensor:
        return ops.roi_align(a, b, 2, 1.0, -1, False) * 2

    assert torch.equal(caller(x, boxes), 2 * tv_roi_align(x, boxes, 2))
    scripted = torch.jit.script(ops.roi_align)
    for bad in (torch.zeros(1, 4), [torch.zeros(1, 3)]):  # torchvision's boxes-shape errors, scripted
        with pytest.raises(Exception, match="not correct"):
            scripted(x, bad, 2)


def test_script_before_any_tensor_call():
    # the torch-free module meets torch only when TorchScript compiles it
    import subprocess
    import sys

    code = ("import sys, numpy as np, dynrefer.ops as o; assert 'torch' not in sys.modules; import torch; "
            "f = torch.jit.script(o.roi_align); x = torch.rand(1, 2, 6, 6); r = torch.tensor([[0, 1, 1, 5, 5.0]]); "
            "assert torch.equal(f(x, r, 2), o.roi_align(x, r, 2)); "
            "assert np.array_equal(o.roi_align(x.numpy(), r.numpy(), 2), f(x, r, 2).numpy())")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fx_trace_torchvision_case():
    # RoIOpTester.test_torch_fx_trace: symbolic_trace(RoIAlign) runs like the module
    op_obj = ops.RoIAlign((5, 5), spatial_scale=1, sampling_ratio=-1, aligned=False)
    graph_module = torch.fx.symbolic_trace(op_obj)
    x = torch.rand(2, 50, 5, 5)
    rois = torch.tensor(_TV_ROIS, dtype=torch.float)
    output_gt = op_obj(x, rois)
    output_fx = graph_module(x, rois)
    assert output_fx.dtype == output_gt.dtype == x.dtype
    torch.testing.assert_close(output_gt, output_fx, rtol=1e-5, atol=1e-5)
    calls = [n for n in graph_module.graph.nodes if n.op not in ("placeholder", "output")]
    assert len(calls) == 1 and calls[0].op == "call_function"


def test_fx_leaf_node_torchvision_case():
    # RoIOpTester.test_is_leaf_node, with torchvision's feature-extraction tracer (our module is not among the
    # leaf modules it knows, so the op itself must be the leaf), and plain symbolic_trace of code calling the op
    from torchvision.models.feature_extraction import get_graph_node_names

    op_obj = _CallWrapper(ops.RoIAlign((5, 5), spatial_scale=1, sampling_ratio=-1, aligned=False))
    graph_node_names = get_graph_node_names(op_obj)
    assert len(graph_node_names) == 2
    assert len(graph_node_names[0]) == len(graph_node_names[1])
    assert len(graph_node_names[0]) == 1 + op_obj.n_inputs

    class Caller(torch.nn.Module):
        def forward(self, a, b):
            return ops.roi_align(a, b, (2, 2), 0.5, 2, True) * 2

    gm = torch.fx.symbolic_trace(Caller())
    kinds = [n.op for n in gm.graph.nodes]
    assert kinds == ["placeholder", "placeholder", "call_function", "call_function", "output"]
    x, rois = torch.rand(2, 3, 10, 10), torch.tensor(_TV_ROIS, dtype=torch.float)
    assert torch.equal(gm(x, rois), Caller()(x, rois))


def _tv_make_rois(img_size, num_imgs, dtype, num_rois=1000):  # TestRoIAlign._make_rois
    rois = torch.randint(0, img_size // 2, size=(num_rois, 5)).to(dtype)
    rois[:, 0] = torch.randint(0, num_imgs, size=(num_rois,))
    rois[:, 3:] += rois[:, 1:3]
    return rois


def _quantize(t, scale, zero_point, qdtype):
    with warnings.catch_warnings():  # quantized tensors are deprecated in recent PyTorch; still supported
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t, scale=scale, zero_point=zero_point, dtype=qdtype)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale, zero_point", [(1, 0), (2, 10), (0.1, 50)])
@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8, torch.qint32])
def test_quantized_torchvision_cases(aligned, scale, zero_point, qdtype):
    # TestRoIAlign.test_qroialign: the quantized op is close to the float op on the dequantized inputs
    # (equal, or one quantization step away in under 5% of the values); and equal to torchvision's quantized op
    torch.manual_seed(zlib.crc32(repr((aligned, scale, zero_point, qdtype)).encode()))
    x = torch.randint(50, 100, size=(1, 2, 10, 10)).to(torch.float)
    qx = _quantize(x, scale, zero_point, qdtype)
    qrois = _quantize(_tv_make_rois(10, 1, torch.float), scale, zero_point, qdtype)
    y = ops.roi_align(qx.dequantize(), qrois.dequantize(), output_size=5, spatial_scale=1, sampling_ratio=-1,
                      aligned=aligned)
    qy = ops.roi_align(qx, qrois, output_size=5, spatial_scale=1, sampling_ratio=-1, aligned=aligned)
    assert qy.dtype == qdtype and qy.q_scale() == scale and qy.q_zero_point() == zero_point
    quantized_float_y = _quantize(y, scale, zero_point, qdtype)
    diff_idx = torch.where(qy != quantized_float_y)
    assert diff_idx[0].numel() / qy.numel() < 0.05
    abs_diff = torch.abs(qy[diff_idx].dequantize() - quantized_float_y[diff_idx].dequantize())
    torch.testing.assert_close(abs_diff, torch.full_like(abs_diff, scale), rtol=1e-5, atol=1e-5)
    ref = tv_roi_align(qx, qrois, output_size=5, spatial_scale=1, sampling_ratio=-1, aligned=aligned)
    assert torch.equal(qy.int_repr(), ref.int_repr())


@pytest.mark.parametrize("seed", range(12))
def test_quantized_bitwise_torchvision(seed):
    # random shapes, boxes (partly outside, empty), scales, sampling ratios: torchvision's quantized op, bit for bit
    g = torch.Generator().manual_seed(seed)
    qdtype = [torch.quint8, torch.qint8, torch.qint32][seed % 3]
    scale, zero_point = [(0.37, 3), (0.013, 7), (1e-5 if qdtype == torch.qint32 else 0.5, 2)][seed // 3 % 3]
    c, h, w = 1 + seed % 4, 3 + seed % 9, 4 + (seed * 5) % 11
    qx = _quantize(torch.randn(1, c, h, w, generator=g) * 40 + 30, scale, zero_point, qdtype)
    k = 1 + seed * 3
    r = torch.rand(k, 5, generator=g) * (max(h, w) + 4) - 2
    r[:, 3:] = r[:, 1:3] + torch.rand(k, 2, generator=g) * max(h, w) * (seed % 4 != 0)
    qrois = _quantize(r, [0.5, 0.1, 0.013][seed % 3], 5, qdtype)
    for aligned, sampling_ratio, spatial_scale, output_size in [(False, -1, 1.0, 5), (True, 2, 0.5, (2, 3)),
                                                                (bool(seed % 2), 0, 1.7, (4, 1))]:
        ours = ops.roi_align(qx, qrois, output_size, spatial_scale, sampling_ratio, aligned)
        ref = tv_roi_align(qx, qrois, output_size, spatial_scale, sampling_ratio, aligned)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        assert (ours.q_scale(), ours.q_zero_point()) == (ref.q_scale(), ref.q_zero_point())
        assert torch.equal(ours.int_repr(), ref.int_repr())
    boxes = [_quantize(r[:, 1:], 0.5, 5, qdtype)]  # boxes as a list, as torchvision takes them
    assert torch.equal(ops.roi_align(qx, boxes, 3).int_repr(), tv_roi_align(qx, boxes, 3).int_repr())


def test_quantized_errors_torchvision_cases():
    # TestRoIAlign.test_qroi_align_multiple_images, and rois that are not quantized
    x = torch.randint(50, 100, size=(2, 3, 10, 10)).to(torch.float)
    qx = _quantize(x, 1, 0, torch.qint8)
    qrois = _quantize(_tv_make_rois(img_size=10, num_imgs=2, dtype=torch.float, num_rois=10), 1, 0, torch.qint8)
    with pytest.raises(RuntimeError, match="Only one image per batch is allowed"):
        ops.roi_align(qx, qrois, output_size=5)
    with pytest.raises(ValueError, match="rois must also be quantized"):
        ops.roi_align(qx[:1], qrois.dequantize(), output_size=5)
    assert ops.roi_align(qx[:1], qrois[:0], 5).shape == (0, 3, 5, 5)


# --- property tests against torchvision ----------------------------------------------------------------------

@st.composite
def roi_cases(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 5))
    h = draw(st.integers(1, 11))
    w = draw(st.integers(1, 11))
    k = draw(st.integers(0, 7))
    kind = draw(st.sampled_from(["inside", "partly", "outside", "negative", "tiny", "huge"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    size = max(h, w)
    if kind == "inside":
        xy, wh = g.uniform(0, size * 0.8, (k, 2)), g.uniform(0.5, size * 0.5, (k, 2))
    elif kind == "partly":
        xy, wh = g.uniform(-size, size, (k, 2)), g.uniform(0, 2 * size, (k, 2))
    elif kind == "outside":
        xy, wh = g.uniform(size * 2, size * 4, (k, 2)) * g.choice([-1, 1], (k, 2)), g.uniform(0, size, (k, 2))
    elif kind == "negative":  # x2 < x1 and/or y2 < y1
        xy, wh = g.uniform(0, size, (k, 2)), -g.uniform(0, size, (k, 2))
    elif kind == "tiny":
        xy, wh = g.uniform(0, size, (k, 2)), g.uniform(0, 1e-3, (k, 2))
    else:
        xy, wh = -g.uniform(0, 50 * size, (k, 2)), g.uniform(50 * size, 150 * size, (k, 2))
    rois = np.concatenate([g.integers(0, n, (k, 1)), xy, xy + wh], 1)
    return dict(
        shape=(n, c, h, w),
        rois=rois,
        output_size=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        spatial_scale=draw(st.sampled_from([0.25, 0.5, 1.0, 1.3])),
        sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2, 3]) if kind != "huge" else st.sampled_from([1, 2, 0])),
        aligned=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "channels_last", "permuted", "sliced"])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=seed,
    )


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "permuted":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":
        big = torch.zeros(x.shape[0], x.shape[1] * 2, x.shape[2], x.shape[3] + 3, dtype=x.dtype)
        big[:, ::2, :, 1:-2] = x
        return big[:, ::2, :, 1:-2]
    return x


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(roi_cases())
def test_property_against_torchvision(case):
    torch.manual_seed(case["seed"])
    x0 = torch.randn(case["shape"], dtype=torch.float64)
    x = _layout(x0.to(case["dtype"]), case["layout"]).requires_grad_(True)
    rois = torch.tensor(case["rois"], dtype=case["dtype"])
    kw = {k: case[k] for k in ("output_size", "spatial_scale", "sampling_ratio", "aligned")}
    y = ops.roi_align(x, rois, **kw)
    # the peer in the same dtype (torchvision computes its geometry in the data type, as we do); errors are
    # measured against the data's scale (inputs ~ N(0, 1)), so outputs that nearly vanish are not over-judged
    xr = x0.to(case["dtype"]).requires_grad_(True)
    ref = tv_roi_align(xr, rois, **kw)
    tol = 1e-5 if case["dtype"] == torch.float32 else 1e-12
    assert y.shape == ref.shape and y.dtype == case["dtype"]
    assert (y.double() - ref.double()).norm() <= tol * max(ref.norm().item(), 1.0)
    go = torch.randn(ref.shape, dtype=torch.float64).to(case["dtype"])
    (gx,) = torch.autograd.grad(y, x, go)
    (gref,) = torch.autograd.grad(ref, xr, go)
    assert gx.shape == x.shape and gx.dtype == x.dtype
    assert (gx.double() - gref.double()).norm() <= tol * max(gref.norm().item(), 1.0)


# --- robustness ----------------------------------------------------------------------------------------------

def test_non_finite_boxes_zero_output_and_grad():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    rois = torch.tensor([[0, float("nan"), 1, 4, 4], [1, 1, float("inf"), 4, 4], [1, -float("inf"), 0, float("inf"), 5]])
    for sr in (-1, 2):
        y = ops.roi_align(x, rois, 3, 1.0, sr)
        assert torch.all(y == 0)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.all(g == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_batch_index(device):
    x = torch.randn(2, 1, 4, 4, device=device)
    for b in (-1.0, 2.0, float("nan")):
        if device == "cpu":
            with pytest.raises(ValueError, match="batch index"):
                ops.roi_align(x, torch.tensor([[b, 0, 0, 2, 2]], device=device), 2)
            continue
        # CUDA checks on the device without a sync: the RoI pools to zeros, check_errors (or the next call) raises
        y = ops.roi_align(x, torch.tensor([[b, 0, 0, 2, 2]], device=device), 2)
        with pytest.raises(ValueError, match="batch index in \\[0, 2\\)"):
            ops.check_errors()
        assert torch.all(y == 0)


def test_bad_arguments_torch():
    x = torch.randn(1, 2, 4, 4)
    r = torch.tensor([[0, 0, 0, 2, 2.0]])
    with pytest.raises(TypeError):
        ops.roi_align(x.int(), r, 2)
    with pytest.raises(TypeError):
        ops.roi_align(x, r.long(), 2)
    with pytest.raises(ValueError):
        ops.roi_align(x[0], r, 2)
    with pytest.raises(ValueError):
        ops.roi_align(x, r, 0)
    with pytest.raises(ValueError):
        ops.roi_align(x, r, 2, float("nan"))
    with pytest.raises(TypeError):
        ops.roi_align(x, [r.numpy()[:, 1:]], 2)
    with pytest.raises(ValueError, match="are on meta but input is on cpu"):
        ops.roi_align(x, r.to("meta"), 2)
    with pytest.raises(TypeError):
        ops.roi_align(x.to(torch.complex64), r, 2)


# --- PyTorch integration -------------------------------------------------------------------------------------

def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 12, requires_grad=True)
    boxes = [torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([[0.0, 0, 3, 3], [2, 2, 9, 7]])]

    def f(t, bs):
        return ops.roi_align(t, bs, (2, 3), 1.0, -1, True).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (g1,) = torch.autograd.grad(compiled(x, boxes), x)
    (g2,) = torch.autograd.grad(tv_roi_align(x, boxes, (2, 3), 1.0, -1, True).relu().sum(), x)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_torch_library_opcheck():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 1, 4, 5], [1, 1, 0, 6, 6.5]], dtype=torch.float64)
    torch.library.opcheck(torch.ops.dynrefer.roi_align.default, (x, rois, 0.8, 3, 2, 2, False))
    xcl = torch.randn(2, 3, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.dynrefer.roi_align.default, (xcl, rois.float(), 1.0, 2, 2, -1, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_keeps_input_dtype(dtype):
    x = torch.randn(1, 4, 8, 8, dtype=dtype)
    rois = torch.tensor([[0, 1, 1, 6, 6.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.roi_align(x, rois, 2, 1.0, 2)
        ref = tv_roi_align(x, rois.to(dtype), 2, 1.0, 2)
    assert y.dtype == ref.dtype == dtype


def test_channels_last_gradient_keeps_layout():
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = torch.tensor([[1, 0, 0, 8, 8], [0, 2, 1, 5, 7.5]])
    ops.roi_align(x, rois, 4, 1.0, 2).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_torch_tensors_through_dlpack():
    # the raw binding takes torch tensors through their __dlpack__ (legacy or versioned), zero-copy
    from dynrefer import _C

    x = torch.randn(2, 3, 7, 7).contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[1, 0.5, 1, 6, 5.5], [0, 2, 2, 4, 6]])
    out = torch.empty(2, 3, 2, 2)
    _C.roi_align_forward(x, rois, out, 1.0, 2, 2, 2, False)
    assert torch.equal(out, tv_roi_align(x.contiguous(), rois, 2, 1.0, 2))
    with pytest.raises(TypeError):
        _C.roi_align_forward(x.requires_grad_(), rois, out, 1.0, 2, 2, 2, False)  # torch refuses to export


def test_import_ops_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, numpy as np, dynrefer.ops as o; o.roi_align(np.zeros((1,1,3,3)), np.zeros((1,5)), 2); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class _RoIDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(1, 8, 16, 16, generator=g)
        rois = torch.tensor([[0, 1.0 + i, 1, 12, 13]])
        return ops.roi_align(x, rois, 4, 1.0, 2), tv_roi_align(x, rois, 4, 1.0, 2)


def test_dataloader_forked_workers():
    ops.roi_align(torch.randn(2, 64, 32, 32), torch.tensor([[0, 1, 1, 30, 30.0]] * 64), 7)  # pool up in parent
    loader = torch.utils.data.DataLoader(_RoIDataset(), batch_size=2, num_workers=2, multiprocessing_context="fork", timeout=120)
    for ours, ref in loader:
        assert torch.equal(ours, ref)


# --- the tiled CUDA forward's block schedule on the CPU, against torchvision ------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiled_schedule_bitwise_equals_torchvision(rng, layout, dtype):
    """The CUDA forward's tiling and indexing (impl="tiled": one block per RoI and channel slice, taps from the
    block's table or, when they do not fit, per element) equal torchvision's CPU kernel bit for bit: ragged sizes,
    sampling_ratio 0 and > 0, aligned True/False, boxes partly outside the map, empty boxes."""
    for trial in range(25):
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 80))
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        k = int(rng.integers(1, 16))
        x = _layout(torch.from_numpy(rng.standard_normal((n, c, h, w))).to(dtype), layout)
        xy = rng.uniform(-0.3, 1.1, (k, 2)) * [w, h]
        wh = rng.uniform(0, 1.2, (k, 2)) * [w, h]
        rois = torch.from_numpy(np.concatenate([rng.integers(0, n, (k, 1)), xy, xy + wh], 1)).to(dtype)
        rois[0, 3:] = rois[0, 1:3]  # empty box
        ph, pw = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 3]))
        for sr in (0, 1, 2, 3):
            for aligned in (False, True):
                ref = tv_roi_align(x, rois, (ph, pw), scale, sr, aligned)
                for taps in (-1, 0):
                    out = torch.full((k, c, ph, pw), 7.0, dtype=dtype)
                    _C_forward_tiled(x, rois, out, scale, ph, pw, sr, aligned, taps)
                    assert torch.equal(out, ref), (trial, sr, aligned, taps, (out - ref).abs().max())


def _C_forward_tiled(x, rois, out, scale, ph, pw, sr, aligned, taps):
    from dynrefer import _C

    # NumPy views share memory with the tensors (strides, channels-last included)
    xn = x.numpy() if x.is_contiguous() else x.permute(0, 2, 3, 1).numpy().transpose(0, 3, 1, 2)
    _C.roi_align_forward(xn, rois.numpy(), out.numpy(), scale, ph, pw, sr, aligned, impl="tiled", tile_taps=taps)


# --- CUDA ------------------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not cuda_devices(), reason="no CUDA device (or dynrefer built without CUDA)")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_matches_cpu(dtype, layout):
    torch.manual_seed(0)
    x = _layout(torch.randn(3, 6, 13, 11, dtype=dtype), layout)
    rois = torch.cat([torch.randint(0, 3, (20, 1)).float(), torch.rand(20, 2) * 8, torch.rand(20, 2) * 8 + 8], 1)
    rois[0, 1] = float("nan")
    for aligned in (False, True):
        cpu = ops.roi_align(x, rois, (3, 4), 0.9, -1, aligned)
        gpu = ops.roi_align(x.cuda(), rois.cuda(), (3, 4), 0.9, -1, aligned)
        tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
        assert rel_err(gpu.cpu(), cpu) < tol
        xg = x.cuda().requires_grad_()
        go = torch.randn(gpu.shape, device="cuda", dtype=dtype)
        (g_gpu,) = torch.autograd.grad(ops.roi_align(xg, rois.cuda(), (3, 4), 0.9, -1, aligned), xg, go)
        xc = x.clone().requires_grad_()
        (g_cpu,) = torch.autograd.grad(ops.roi_align(xc, rois, (3, 4), 0.9, -1, aligned), xc, go.cpu())
        assert rel_err(g_gpu.cpu(), g_cpu) < tol


@cuda
def test_cuda_deterministic_backward_bitwise():
    torch.manual_seed(1)
    x = torch.randn(2, 32, 20, 20, device="cuda", requires_grad=True)
    rois = torch.cat([torch.randint(0, 2, (300, 1)).float(), torch.rand(300, 2) * 10, torch.rand(300, 2) * 10 + 10], 1).cuda()
    go = torch.randn(300, 32, 5, 5, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        grads = [torch.autograd.grad(ops.roi_align(x, rois, 5, 1.0, 2), x, go)[0] for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    (fast,) = torch.autograd.grad(ops.roi_align(x, rois, 5, 1.0, 2), x, go)
    assert rel_err(fast, grads[0]) < 1e-5


@cuda
def test_cuda_gradcheck_and_stream():
    x = torch.rand(1, 4, 6, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 4, 4], [0, 1.5, 2, 5, 5]], dtype=torch.float64, device="cuda")
    assert torch.autograd.gradcheck(lambda z: ops.roi_align(z, rois, 2, 1.0, -1, True), (x,))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = ops.roi_align(x.detach(), rois, 2, 1.0, -1, True)
    s.synchronize()
    assert torch.allclose(y, tv_roi_align(x.detach(), rois, 2, 1.0, -1, True))


@cuda
def test_cuda_index_checks_off_gives_zeros():
    x = torch.randn(2, 3, 6, 6, device="cuda")
    rois = torch.tensor([[5.0, 0, 0, 4, 4], [1, 0, 0, 4, 4]], device="cuda")
    ops.set_cuda_index_checks(False)
    try:
        y = ops.roi_align(x, rois, 2)
        ops.roi_align(x, rois[1:], 2)  # the next call does not raise: checks are off
    finally:
        ops.set_cuda_index_checks(True)
    assert torch.all(y[0] == 0) and torch.allclose(y[1], tv_roi_align(x, rois[1:], 2)[0])
    with pytest.raises(ValueError, match=r"rois\[0, 0\] = 5 is not a batch index in \[0, 2\)"):
        ops.check_errors("cuda")
    ops.check_errors()


@cuda
def test_cuda_bad_batch_index_without_sync_raised_by_next_call():
    x = torch.randn(2, 8, 16, 16, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 1, 1, 9, 9], [3.0, 0, 0, 4, 4], [1, 2, 2, 12, 14]], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising torch call in the op raises
    try:
        y = ops.roi_align(x, rois, 3, 1.0, 2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match=r"rois\[1, 0\] = 3 is not a batch index in \[0, 2\).*forward"):
        ops.roi_align(x, rois[:1], 3, 1.0, 2)  # the next call on the device raises the recorded error
    ops.check_errors()  # taken: nothing pending
    assert torch.all(y[1] == 0)
    good = rois[[0, 2]]
    assert torch.allclose(y[[0, 2]], tv_roi_align(x, good, 3, 1.0, 2), rtol=1e-5, atol=1e-6)
    # backward reports too, and grad_input holds only the good RoIs' gradient
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    with pytest.raises(ValueError, match="backward"):
        ops.check_errors(torch.device("cuda", 0))
    xt = x.detach().requires_grad_()
    (gt,) = torch.autograd.grad(tv_roi_align(xt, good, 3, 1.0, 2).sum(), xt)
    assert torch.allclose(g, gt, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_tiled_forward_matches_torchvision_cuda(dtype, layout):
    """The tiled kernel on the GPU against torchvision's CUDA kernel: ragged sizes, RoIs with more taps than the
    block's table, more channels than a block holds, boxes partly outside, empty boxes."""
    g = torch.Generator().manual_seed(5)
    for n, c, h, w, k, ph, pw in [(2, 3, 13, 11, 40, 3, 4), (3, 70, 25, 31, 64, 7, 7), (1, 256, 50, 40, 30, 14, 14),
                                  (2, 5, 300, 200, 9, 2, 3)]:
        x = _layout(torch.randn(n, c, h, w, generator=g).to(dtype), layout).cuda()
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w, h]) * 1.2 - 0.1 * torch.tensor([w, h])
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w, h])
        rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), xy, xy + wh], 1)
        rois[0, 3:] = rois[0, 1:3]  # empty
        rois[1, 1:] = torch.tensor([-0.3 * w, -0.3 * h, 1.3 * w, 1.3 * h])  # partly outside, many taps
        rois = rois.cuda()
        for sr in (-1, 0, 2):
            for aligned in (False, True):
                ours = ops.roi_align(x, rois, (ph, pw), 0.8, sr, aligned)
                ref = tv_roi_align(x.float(), rois, (ph, pw), 0.8, sr, aligned).to(dtype)
                tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
                assert rel_err(ours.cpu(), ref.cpu()) < tol, (n, c, h, w, sr, aligned)
    ops.check_errors()


@cuda
def test_cuda_cpu_mixed_devices_rejected():
    with pytest.raises(ValueError, match="boxes are on cpu but input is on cuda"):
        ops.roi_align(torch.randn(1, 1, 4, 4, device="cuda"), torch.tensor([[0, 0, 0, 2, 2.0]]), 2)


@pytest.mark.parametrize("kw, match", [
    (dict(output_size=(2 ** 40, 2 ** 40)), r"output_size \(1099511627776, 1099511627776\) is too large"),
    (dict(output_size=2, sampling_ratio=2 ** 40), r"sampling_ratio must be at most 65536"),
])
def test_huge_arguments_are_named_not_run(kw, match):
    """An output or a sampling grid no machine could produce is refused at once, naming the argument."""
    x = np.zeros((1, 2, 8, 8), np.float32)
    b = np.array([[0, 0, 0, 4, 4]], np.float32)
    for inp, boxes in ((x, b), (torch.from_numpy(x), torch.from_numpy(b))):
        with pytest.raises(ValueError, match=match):
            ops.roi_align(inp, boxes, **kw)
