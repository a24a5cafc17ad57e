"""The ``dynrefer`` command.

    dynrefer demo [--views N] [--threads T]   the built-in demo: RoI-Align of DynRefer's multi-view embedding
    dynrefer info                             build and device facts
"""
import argparse
import sys
import time


def _info(_args):
    import numpy as np

    import dynrefer
    from dynrefer import _C

    print(f"dynrefer {dynrefer.__version__} | numpy {np.__version__}")
    print(f"CPU threads: {dynrefer.get_num_threads()}")
    print(f"CUDA kernels built: {_C.cuda_built()} | CUDA device usable: {dynrefer.cuda_available()}")
    return 0


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _demo(args):
    """DynRefer's multi-view region embedding step on synthetic ViT features: each region is seen in nested views
    (t = 0, then larger context); every view's 16x16 ViT map (patch 14 on 224x224) is pooled by RoI-Align with the
    referred box expressed in that view's frame (16x16 output, spatial_scale 1/14, sampling_ratio 2). Runs the
    op through NumPy and, when PyTorch is installed, checks it against torchvision and times both."""
    import numpy as np

    import dynrefer
    from dynrefer.ops import roi_align

    if args.threads:
        dynrefer.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    regions, views, c = args.regions, args.views, args.channels
    # a region box in a 640x480 image, and nested views b(t) = b_r + t ([0,0,W,H] - b_r)
    W, H = 640.0, 480.0
    xy = rng.uniform(0, [W * 0.7, H * 0.7], size=(regions, 2))
    wh = rng.uniform(20, [W * 0.3, H * 0.3], size=(regions, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    ts = np.concatenate([[0.0], np.sort(rng.choice(np.arange(1, 11) / 10, views - 1, replace=False))])
    rois = []
    for r in range(regions):
        for v, t in enumerate(ts):
            view = boxes[r] + t * (np.array([0, 0, W, H]) - boxes[r])
            sx, sy = 224.0 / (view[2] - view[0]), 224.0 / (view[3] - view[1])
            b = (boxes[r] - [view[0], view[1], view[0], view[1]]) * [sx, sy, sx, sy]
            rois.append([r * views + v, *b])
    rois = np.asarray(rois, np.float32)
    n = regions * views
    feats = rng.standard_normal((n, 16, 16, c), dtype=np.float32).transpose(0, 3, 1, 2)  # channels-last view
    print(f"dynrefer demo: {regions} regions x {views} nested views (t = {', '.join(f'{t:.1f}' for t in ts)}), "
          f"ViT maps {n}x{c}x16x16 channels-last, {dynrefer.get_num_threads()} CPU threads")
    out = roi_align(feats, rois, 16, 1 / 14, 2, False)
    print(f"NumPy path: region features {out.shape} {out.dtype}, mean {out.mean():+.4f}, std {out.std():.4f}")
    t_np = _median_time(lambda: roi_align(feats, rois, 16, 1 / 14, 2, False), args.repeats)
    print(f"  dynrefer (NumPy arrays)        {t_np * 1e3:8.2f} ms")
    try:
        import torch
        import torchvision
    except ImportError:
        print("PyTorch/torchvision not installed: skipping the comparison")
        return 0
    x = torch.from_numpy(feats)
    r = torch.from_numpy(rois)
    ours = roi_align(x, r, 16, 1 / 14, 2, False)
    ref = torchvision.ops.roi_align(x, r, 16, 1 / 14, 2, False)
    err = ((ours - ref).norm() / ref.norm()).item()
    print(f"torch path agrees with torchvision.ops.roi_align: relative error {err:.2e}")
    if err > 1e-5:
        print("MISMATCH", file=sys.stderr)
        return 1
    t_ours = _median_time(lambda: roi_align(x, r, 16, 1 / 14, 2, False), args.repeats)
    t_tv = _median_time(lambda: torchvision.ops.roi_align(x, r, 16, 1 / 14, 2, False), args.repeats)
    print(f"  dynrefer (torch tensors)       {t_ours * 1e3:8.2f} ms")
    print(f"  torchvision.ops.roi_align      {t_tv * 1e3:8.2f} ms   -> dynrefer is {t_tv / t_ours:.1f}x faster")
    xg = x.clone(memory_format=torch.channels_last).requires_grad_()
    go = torch.randn_like(ref)

    def fb(fn):
        xg.grad = None
        fn(xg, r, 16, 1 / 14, 2, False).backward(go)

    t_ours = _median_time(lambda: fb(roi_align), max(1, args.repeats // 2))
    t_tv = _median_time(lambda: fb(torchvision.ops.roi_align), max(1, args.repeats // 2))
    print(f"forward+backward: dynrefer {t_ours * 1e3:.2f} ms, torchvision {t_tv * 1e3:.2f} ms "
          f"-> {t_tv / t_ours:.1f}x")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dynrefer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the built-in demo of the kernels on DynRefer's multi-view shapes")
    d.add_argument("--regions", type=int, default=16)
    d.add_argument("--views", type=int, default=3, help="nested views per region (the tight one included)")
    d.add_argument("--channels", type=int, default=1408, help="ViT width (1408 for EVA ViT-g)")
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--repeats", type=int, default=5)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_demo)
    i = sub.add_parser("info", help="build and device facts")
    i.set_defaults(fn=_info)
    args = ap.parse_args(argv)
    if getattr(args, "views", 3) < 1 or getattr(args, "views", 3) > 11 or getattr(args, "regions", 1) < 1:
        ap.error("--views must be in [1, 11] and --regions >= 1")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
