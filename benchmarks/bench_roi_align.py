"""RoI-Align: dynrefer vs torchvision, forward and forward+backward, in one process on the same inputs.

    python benchmarks/bench_roi_align.py [--device cpu|cuda] [--quick]

Shapes: (a) DynRefer's multi-view embedding (``dynrefer.app.bench.multiview_case``) — 64 regions x 3 nested views:
192 RoIs on 192 feature maps of 1408 channels, 16x16 (laid out channels-last as the ViT produces it), output 16x16,
sampling_ratio 2, spatial_scale 1/14, aligned=False;
(b) detection — N=2, C=256, 200x200, 512 boxes, output 7x7, sampling_ratio 2, aligned=True.
Prints one table: shape, pass, torchvision time, dynrefer time, ratio (torchvision / dynrefer; > 1 = faster).
"""
import argparse
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench, fmt_ms, table  # noqa: E402

import dynrefer  # noqa: E402
from dynrefer.app.bench import ROI_ALIGN_ARGS, multiview_case  # noqa: E402
from dynrefer.ops import roi_align  # noqa: E402


def dynrefer_case(device, quick):
    # the case `dynrefer bench` checks: 64 regions x 3 nested views, each view's box in its own 224x224 frame
    regions, c = (8, 1408) if quick else (64, 1408)
    x, rois, _ = multiview_case(regions, 3, c, seed=0, device=device)
    return f"DynRefer {x.shape[0]}x{c}x16x16 CL→16x16", x, rois, dict(ROI_ALIGN_ARGS)


def detection_case(device, quick):
    g = torch.Generator().manual_seed(1)
    k = 128 if quick else 512
    x = torch.randn(2, 256, 200, 200, generator=g).to(device)
    xy = torch.rand(k, 2, generator=g) * 160
    wh = torch.rand(k, 2, generator=g) * 60 + 2
    idx = torch.randint(0, 2, (k, 1), generator=g).float()
    rois = torch.cat([idx, xy, xy + wh], 1).to(device)
    return f"detection 2x256x200x200, {k} boxes→7x7", x, rois, dict(output_size=7, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    ap.add_argument("--no-index-checks", action="store_true",
                    help="CUDA: do not raise a recorded bad batch index at the next call (indices are checked on the "
                         "device either way, without a host sync)")
    args = ap.parse_args()
    dev = args.device
    if args.no_index_checks:
        from dynrefer.ops import set_cuda_index_checks

        set_cuda_index_checks(False)
    rows = []
    for case in (dynrefer_case, detection_case):
        name, x, rois, kw = case(dev, args.quick)
        impls = {"torchvision": torchvision.ops.roi_align, "dynrefer": roi_align}
        # correctness guard: the two must agree before they are timed
        ref = impls["torchvision"](x, rois, **kw)
        ours = impls["dynrefer"](x, rois, **kw)
        err = ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        assert err < 1e-5, f"{name}: dynrefer differs from torchvision (rel err {err})"
        go = torch.randn_like(ref)
        times = {}
        for label, fn in impls.items():
            times[(label, "fwd")] = bench(lambda: fn(x, rois, **kw), dev)
            xg = x.detach().clone().requires_grad_(True)  # clone keeps the layout (channels-last stays so)

            def fwd_bwd():
                xg.grad = None
                fn(xg, rois, **kw).backward(go)

            times[(label, "fwd+bwd")] = bench(fwd_bwd, dev)
        for p in ("fwd", "fwd+bwd"):
            tv, ours_t = times[("torchvision", p)], times[("dynrefer", p)]
            rows.append([name, p, fmt_ms(tv), fmt_ms(ours_t), f"{tv / ours_t:.2f}x"])
    if dev.startswith("cuda"):
        dynrefer.ops.check_errors()  # no kernel recorded a bad batch index
    dev_name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU, {dynrefer.get_num_threads()} threads"
    print(f"RoI-Align on {dev_name} (torch {torch.__version__}, torchvision {torchvision.__version__}, torch threads {torch.get_num_threads()})")
    print(table(rows, ["shape", "pass", "torchvision", "dynrefer", "speed-up"]))


if __name__ == "__main__":
    main()
