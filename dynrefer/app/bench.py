"""RoI-Align on DynRefer's multi-view shapes, checked against torchvision and timed side by side
(``dynrefer bench``; ``benchmarks/bench_roi_align.py`` times the same case among others).

The case: each region is seen in nested views (the tight view t = 0 and ``views - 1`` sorted random candidates);
every view's 16x16 ViT map (patch 14 on 224x224) is pooled with the referred box in that view's frame (16x16
output, spatial_scale 1/14, sampling_ratio 2, aligned=False), the maps laid out channels-last as the ViT produces
them.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import numpy as np

from dynrefer.app.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["multiview_case", "median_time", "roi_align_bench"]

ROI_ALIGN_ARGS: Dict[str, Any] = dict(output_size=16, spatial_scale=1 / 14, sampling_ratio=2, aligned=False)


def multiview_case(regions: int = 16, views: int = 3, channels: int = 1408, seed: int = 0,
                   device: str = "cpu") -> Tuple[Tensor, Tensor, np.ndarray]:
    """``(x [R*V, C, 16, 16] channels-last, rois [R*V, 5], coefficients [V])`` for ``regions`` random boxes of a
    640x480 image, each in ``views`` nested views, with the region's box in each view's 224x224 frame."""
    import torch

    from dynrefer.views import view_boxes

    if not (1 <= views <= 11 and regions >= 1 and channels >= 1):
        raise UserError(f"views must be in [1, 11], regions and channels >= 1; got views={views}, "
                        f"regions={regions}, channels={channels}")
    rng = np.random.default_rng(seed)
    W, H = 640.0, 480.0
    xy = rng.uniform(0, [W * 0.7, H * 0.7], size=(regions, 2))
    wh = rng.uniform(20, [W * 0.3, H * 0.3], size=(regions, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    ts = np.concatenate([[0.0], np.sort(rng.choice(np.arange(1, 11) / 10, views - 1, replace=False))])
    vb = view_boxes(boxes, ts, W, H)
    rows = []
    for r in range(regions):
        for v in range(views):
            x0, y0, x1, y1 = vb[r, v]
            sx, sy = 224.0 / (x1 - x0), 224.0 / (y1 - y0)
            b = (boxes[r] - [x0, y0, x0, y0]) * [sx, sy, sx, sy]
            rows.append([r * views + v, *b])
    rois = torch.tensor(np.asarray(rows, np.float32), device=device)
    n = regions * views
    x = torch.randn(n, 16, 16, channels, generator=torch.Generator().manual_seed(seed)).to(device).permute(0, 3, 1, 2)
    return x, rois, ts


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds)."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def roi_align_bench(regions: int = 16, views: int = 3, channels: int = 1408, threads: int = 0, repeats: int = 5,
                    seed: int = 0, log: Optional[Callable[[str], None]] = print) -> Dict[str, float]:
    """Check dynrefer's RoI-Align against torchvision's on :func:`multiview_case` and time both (forward, median of
    ``repeats``). Returns ``{"error", "dynrefer_s", "torchvision_s", "ratio"}``; raises :class:`UserError` when
    they disagree."""
    import torchvision

    import dynrefer
    from dynrefer.ops import roi_align

    if threads:
        dynrefer.set_num_threads(threads)
    log = log or (lambda _msg: None)
    x, rois, ts = multiview_case(regions, views, channels, seed)
    a = ROI_ALIGN_ARGS
    args = (a["output_size"], a["spatial_scale"], a["sampling_ratio"], a["aligned"])
    log(f"{regions} regions x {views} views (t = {', '.join(f'{t:.1f}' for t in ts)}), ViT maps "
        f"{x.shape[0]}x{channels}x16x16 channels-last, {dynrefer.get_num_threads()} threads")
    ours = roi_align(x, rois, *args)
    ref = torchvision.ops.roi_align(x, rois, *args)
    err = ((ours - ref).norm() / ref.norm()).item()
    log(f"agrees with torchvision.ops.roi_align: relative error {err:.2e}")
    if err > 1e-5:
        raise UserError(f"dynrefer and torchvision disagree (relative error {err:.2e})")
    t_ours = median_time(lambda: roi_align(x, rois, *args), repeats)
    t_tv = median_time(lambda: torchvision.ops.roi_align(x, rois, *args), repeats)
    log(f"forward: dynrefer {t_ours * 1e3:.2f} ms, torchvision {t_tv * 1e3:.2f} ms -> {t_tv / t_ours:.1f}x")
    return {"error": err, "dynrefer_s": t_ours, "torchvision_s": t_tv, "ratio": t_tv / t_ours}
