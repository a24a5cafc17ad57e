"""The CUDA kernels' schedules run on the CPU: per-element bodies (``impl="elementwise"``, one GPU thread per
output) against the tiled block schedules (``impl="tiled"``: geometry and taps once per block in shared tables), on
one CPU thread, same inputs, outputs asserted equal bit for bit first.

    python benchmarks/bench_cuda_schedules.py [--quick]

This measures the arithmetic and memory reads each schedule does per output (the CPU executes every step of them
in order), not GPU time: the ratio says how much per-element recomputation the tiling removes. GPU timings come
from ``benchmarks/gpu_check.sh``.
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench, fmt_ms, table  # noqa: E402

import dynrefer  # noqa: E402
from dynrefer import _C  # noqa: E402
from dynrefer.ops import crop_resize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def roi_case(quick):
    from dynrefer.app.bench import ROI_ALIGN_ARGS, multiview_case

    x, rois, _ = multiview_case(4 if quick else 16, 3, 1408, seed=0)
    x = x.numpy().transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)  # channels-last, as the ViT lays it out
    rois = rois.numpy()
    a = ROI_ALIGN_ARGS
    size = a["output_size"]
    out = {k: np.empty((rois.shape[0], x.shape[1], size, size), np.float32) for k in ("elementwise", "tiled")}

    def run(impl):
        return lambda: _C.roi_align_forward(x, rois, out[impl], a["spatial_scale"], size, size, a["sampling_ratio"],
                                            a["aligned"], impl=impl)

    return f"RoI-Align DynRefer {x.shape[0]}x1408x16x16 CL→16x16", run, out


def views_case(quick):
    photos = sorted(glob.glob(os.path.join(os.path.dirname(ROOT), "shared", "data", "images", "COCO_*.jpg")))
    from PIL import Image

    im = np.asarray(Image.open(photos[0]).convert("RGB")) if photos else \
        np.random.default_rng(0).integers(0, 256, (478, 640, 3), np.uint8)
    h, w = im.shape[:2]
    b = np.array([[0, 0, w, h], [w * 0.2, h * 0.1, w * 0.9, h * 0.8], [w * 0.4, h * 0.3, w * 0.6, h * 0.6]],
                 np.float32)
    if not quick:
        b = np.repeat(b, 2, 0)
    out = {}

    def run(impl):
        def f():
            out[impl] = crop_resize(im, b, 224, impl=impl)
        return f

    return f"crop_resize PIL {len(b)} views of {w}x{h} → 224", run, out


def dcn_case(quick):
    rng = np.random.default_rng(0)
    n, hw, g, d = 1, (16 if quick else 32), 4, 64
    value = rng.standard_normal((n, hw, hw, g * d)).astype(np.float32)
    om = rng.standard_normal((n, hw, hw, g * 27)).astype(np.float32)
    prm = (3, 3, 1, 1, 1, 1, 1, 1, g, d, 1.0, False)
    out = {k: np.empty_like(value) for k in ("elementwise", "tiled")}

    def run(impl):
        return lambda: _C.dcnv4_forward(value, om, out[impl], *prm, impl=impl)

    return f"DCNv4 {n}x{hw}x{hw}x{g * d}, G={g}, 3x3", run, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    args = ap.parse_args()
    dynrefer.set_num_threads(1)
    rows = []
    for case in (roi_case, views_case, dcn_case):
        name, run, out = case(args.quick)
        run("elementwise")()
        run("tiled")()
        assert np.array_equal(out["elementwise"], out["tiled"]), name
        te = bench(run("elementwise"), budget_s=2.0, min_repeats=3)
        tt = bench(run("tiled"), budget_s=2.0, min_repeats=3)
        rows.append([name, fmt_ms(te), fmt_ms(tt), f"{te / tt:.1f}x"])
    print("CUDA schedules on the CPU (1 thread): per-element bodies vs tiled blocks")
    print(table(rows, ["shape", "elementwise", "tiled", "work ratio"]))


if __name__ == "__main__":
    main()
