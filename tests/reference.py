"""Reference implementations in plain NumPy/Python, written from the formulas in docs/DESIGN.md (slow; tiny shapes).

roi_align_ref follows torchvision's CPU kernel (docs/DESIGN.md §7.1) in float64, one sample at a time; it is the golden
for tests that run without PyTorch (the sanitizer run) and for inputs torchvision cannot take (non-finite boxes).
"""
import math

import numpy as np


def _bilinear(plane, y, x):
    H, W = plane.shape
    if not (y >= -1.0 and y <= H and x >= -1.0 and x <= W):
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * plane[y0, x0] + hy * lx * plane[y0, x1] + ly * hx * plane[y1, x0] + ly * lx * plane[y1, x1]


def roi_align_ref(x, rois, ph, pw, scale, sampling, aligned):
    """RoI-Align of x [N,C,H,W] over rois [K,5] → [K,C,ph,pw] float64; non-finite boxes pool to zeros."""
    x = np.asarray(x, dtype=np.float64)
    rois = np.asarray(rois, dtype=np.float64)
    K, C = rois.shape[0], x.shape[1]
    out = np.zeros((K, C, ph, pw))
    off = 0.5 if aligned else 0.0
    for k in range(K):
        b, x1, y1, x2, y2 = rois[k]
        if not all(map(math.isfinite, (x1, y1, x2, y2))) or x.shape[2] == 0 or x.shape[3] == 0:
            continue
        sw, sh = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sw, y2 * scale - off - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling if sampling > 0 else math.ceil(rh / ph)
        gw = sampling if sampling > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for c in range(C):
            plane = x[int(b), c]
            for i in range(ph):
                for j in range(pw):
                    acc = 0.0
                    for iy in range(gh):
                        yy = sh + i * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = sw + j * bw + (ix + 0.5) * bw / gw
                            acc += _bilinear(plane, yy, xx)
                    out[k, c, i, j] = acc / count
    return out
