"""DCNv4 deformable aggregation: dynrefer vs torchvision.ops.deform_conv2d and vs a grid_sample formulation,
forward and forward+backward, in one process on the same inputs.

    python benchmarks/bench_dcn.py [--device cpu|cuda] [--quick]

Shape: DynRefer's align module — value [N, 16, 16, 1408] (channels last), group 4 (352 channels each), 3x3 kernel,
stride 1, pad 1, offset_scale 1, offset_mask [N, 16, 16, 112]; N = 128 (8 with --quick). The peers compute the
same function: deform_conv2d with depthwise all-ones weights and DCNv4's weights as its modulation mask (inputs
converted to its layout before timing), and grid_sample over the N*G group maps followed by a weighted sum over
the 9 taps. Gradients flow to value and offset_mask in every contender. Prints one table: pass, peer times, our
time, speed-ups (peer / dynrefer; > 1 = faster).
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import deform_conv2d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench, fmt_ms, table  # noqa: E402

import dynrefer  # noqa: E402
from dynrefer.ops import dcnv4, offset_mask_channels  # noqa: E402

G, KS = 4, 3


def make_inputs(n, device):
    g = torch.Generator().manual_seed(0)
    c, h, w = 1408, 16, 16
    k = KS * KS
    p = offset_mask_channels(G, KS)
    value = torch.randn(n, h, w, c, generator=g)
    om = torch.randn(n, h, w, p, generator=g)
    for gi in range(G):
        om[..., gi * 3 * k:gi * 3 * k + 2 * k] *= 2.0  # offsets of a few pixels
        om[..., gi * 3 * k + 2 * k:gi * 3 * k + 3 * k] = torch.rand(n, h, w, k, generator=g)
    return value.to(device), om.to(device)


def ours(value, om):
    return dcnv4(value, om, KS, 1, 1, 1, G)


def split_offset_mask(om):
    """DCNv4's offset_mask → dx, dy, m of shape [N, Ho, Wo, G, K] (tap k: kernel x = k // 3, y = k % 3)."""
    n, ho, wo, _ = om.shape
    k = KS * KS
    t = om[..., :3 * G * k].reshape(n, ho, wo, G, 3 * k)
    off = t[..., :2 * k].reshape(n, ho, wo, G, k, 2)
    return off[..., 0], off[..., 1], t[..., 2 * k:]


def to_deform_conv2d(value, om):
    """deform_conv2d inputs (NCHW; offsets and mask in its row-major tap order)."""
    dx, dy, m = split_offset_mask(om)
    n, ho, wo = om.shape[:3]
    perm = [j * KS + i for i in range(KS) for j in range(KS)]  # DCNv4 tap → torchvision tap index
    inv = torch.empty(KS * KS, dtype=torch.long)
    inv[torch.tensor(perm)] = torch.arange(KS * KS)
    inv = inv.to(om.device)
    dx, dy, m = dx[..., inv], dy[..., inv], m[..., inv]
    offset = torch.stack([dy, dx], -1).reshape(n, ho, wo, -1).permute(0, 3, 1, 2)
    mask = m.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)
    weight = torch.ones(value.shape[3], 1, KS, KS, device=value.device)
    return value.permute(0, 3, 1, 2), offset, weight, mask


def tv_deform(x, offset, weight, mask):
    return deform_conv2d(x, offset, weight, padding=1, mask=mask)


def grid_sample_dcnv4(value, om):
    """DCNv4 (offset_scale 1, stride 1, pad 1, dilation 1) from F.grid_sample: every tap is a bilinear sample with
    zero padding (align_corners=False maps x to pixel x exactly), then a weighted sum over the taps."""
    n, h, w, c = value.shape
    d = c // G
    ho, wo = om.shape[1:3]
    dx, dy, m = split_offset_mask(om)  # [N, Ho, Wo, G, K]
    i = torch.arange(KS, device=value.device, dtype=value.dtype).repeat_interleave(KS)  # x outer
    j = torch.arange(KS, device=value.device, dtype=value.dtype).repeat(KS)  # y inner
    xs = torch.arange(wo, device=value.device, dtype=value.dtype)[None, :, None, None] - 1 + i + dx
    ys = torch.arange(ho, device=value.device, dtype=value.dtype)[:, None, None, None] - 1 + j + dy
    grid = torch.stack([(xs + 0.5) * (2.0 / w) - 1, (ys + 0.5) * (2.0 / h) - 1], -1)  # [N, Ho, Wo, G, K, 2]
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * G, ho, wo * KS * KS, 2)
    x = value.reshape(n, h, w, G, d).permute(0, 3, 4, 1, 2).reshape(n * G, d, h, w)
    s = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*G, D, Ho, Wo*K]
    s = s.reshape(n, G, d, ho, wo, KS * KS)
    out = torch.einsum("ngdhwk,nhwgk->nhwgd", s, m)
    return out.reshape(n, ho, wo, c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="N=8 instead of 128, for a smoke run")
    args = ap.parse_args()
    dev = args.device
    n = 8 if args.quick else 128
    value, om = make_inputs(n, dev)
    tv_in = to_deform_conv2d(value, om)
    ref = ours(value, om)
    for label, y in (("deform_conv2d", tv_deform(*tv_in).permute(0, 2, 3, 1)), ("grid_sample", grid_sample_dcnv4(value, om))):
        err = ((y - ref).norm() / ref.norm()).item()
        assert err < 1e-5, f"dynrefer differs from {label} (rel err {err})"
    go = torch.randn_like(ref)
    go_tv = go.permute(0, 3, 1, 2)
    rows = []
    times = {}
    contenders = {
        "deform_conv2d": (tv_deform, tv_in, go_tv),
        "grid_sample": (grid_sample_dcnv4, (value, om), go),
        "dynrefer": (ours, (value, om), go),
    }
    def timed(f):
        # a call of several seconds (deform_conv2d's backward on the CPU) is its own warm-up: time one more call
        t0 = time.perf_counter()
        f()
        if time.perf_counter() - t0 > 5.0:
            return bench(f, dev, min_repeats=1, warmup=0)
        return bench(f, dev, min_repeats=3, warmup=0)

    for label, (fn, inputs, g) in contenders.items():
        times[(label, "fwd")] = timed(lambda: fn(*inputs))
        leaves = [t.detach().clone().requires_grad_(k in (0, 1, 3) if label == "deform_conv2d" else True)
                  for k, t in enumerate(inputs)]

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(g)

        times[(label, "fwd+bwd")] = timed(fwd_bwd)
    name = f"N={n} 16x16 C=1408 G=4 3x3"
    for p in ("fwd", "fwd+bwd"):
        t_tv, t_gs, t_us = times[("deform_conv2d", p)], times[("grid_sample", p)], times[("dynrefer", p)]
        rows.append([name, p, fmt_ms(t_tv), fmt_ms(t_gs), fmt_ms(t_us), f"{t_tv / t_us:.2f}x", f"{t_gs / t_us:.2f}x"])
    dev_name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU, {dynrefer.get_num_threads()} threads"
    print(f"DCNv4 on {dev_name} (torch {torch.__version__}, torchvision {torchvision.__version__}, torch threads "
          f"{torch.get_num_threads()})")
    print(table(rows, ["shape", "pass", "deform_conv2d", "grid_sample", "dynrefer", "vs deform_conv2d",
                       "vs grid_sample"]))


if __name__ == "__main__":
    main()
