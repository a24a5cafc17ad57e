"""DCNv4 deformable aggregation in plain NumPy float64, written from the formulas (docs/DESIGN.md §7.5; slow; tiny shapes).

dcnv4_ref follows DCNv4's forward kernel one tap at a time; dcnv4_grad_ref gives the gradients of
sum(out * grad_output) for value and offset_mask from the bilinear derivatives. Both are the golden of the
NumPy-only tests (also run under the sanitizer build) and of the torch tests.
"""
import math

import numpy as np


def out_size(n, k, s, p, d):
    return (n + 2 * p - (d * (k - 1) + 1)) // s + 1


def taps(kh, kw, remove_center):
    """(i, j) kernel coordinates in DCNv4's order: x (i) outer, y (j) inner, centre dropped with remove_center."""
    return [(i, j) for i in range(kw) for j in range(kh) if not (remove_center and i == kw // 2 and j == kh // 2)]


def _samples(value, om, kh, kw, sh, sw, ph, pw, dh, dw, G, scale, remove_center):
    """Yield (n, ho, wo, g, k, m, h, w) for every tap whose sample lies in (-1, H) x (-1, W)."""
    N, H, W, C = value.shape
    Ho, Wo = om.shape[1], om.shape[2]
    tl = taps(kh, kw, remove_center)
    K = len(tl)
    half_w, half_h = (dw * (kw - 1)) >> 1, (dh * (kh - 1)) >> 1
    for n in range(N):
        for ho in range(Ho):
            for wo in range(Wo):
                for g in range(G):
                    base = g * 3 * K
                    for k, (i, j) in enumerate(tl):
                        dx, dy = om[n, ho, wo, base + 2 * k], om[n, ho, wo, base + 2 * k + 1]
                        m = om[n, ho, wo, base + 2 * K + k]
                        w = wo * sw - pw + half_w * (1 - scale) + (i * dw + dx) * scale
                        h = ho * sh - ph + half_h * (1 - scale) + (j * dh + dy) * scale
                        if h > -1 and w > -1 and h < H and w < W:
                            yield n, ho, wo, g, k, m, h, w


def _corners(H, W, h, w):
    y0, x0 = math.floor(h), math.floor(w)
    lh, lw = h - y0, w - x0
    out = []
    for (y, x, wt, dwt_dh, dwt_dw) in (
        (y0, x0, (1 - lh) * (1 - lw), -(1 - lw), -(1 - lh)),
        (y0, x0 + 1, (1 - lh) * lw, -lw, 1 - lh),
        (y0 + 1, x0, lh * (1 - lw), 1 - lw, -lh),
        (y0 + 1, x0 + 1, lh * lw, lw, lh),
    ):
        if 0 <= y < H and 0 <= x < W:
            out.append((y, x, wt, dwt_dh, dwt_dw))
    return out


def dcnv4_ref(value, om, kernel=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), group=4, offset_scale=1.0,
              remove_center=False):
    value = np.asarray(value, np.float64)
    om = np.asarray(om, np.float64)
    N, H, W, C = value.shape
    D = C // group
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dil
    Ho, Wo = out_size(H, kh, sh, ph, dh), out_size(W, kw, sw, pw, dw)
    out = np.zeros((N, Ho, Wo, C))
    for n, ho, wo, g, k, m, h, w in _samples(value, om, kh, kw, sh, sw, ph, pw, dh, dw, group, offset_scale,
                                             remove_center):
        for y, x, wt, _, _ in _corners(H, W, h, w):
            out[n, ho, wo, g * D:(g + 1) * D] += m * wt * value[n, y, x, g * D:(g + 1) * D]
    return out


def dcnv4_grad_ref(value, om, grad_out, kernel=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), group=4,
                   offset_scale=1.0, remove_center=False):
    """(d value, d offset_mask) of sum(dcnv4_ref(value, om) * grad_out)."""
    value = np.asarray(value, np.float64)
    om = np.asarray(om, np.float64)
    go = np.asarray(grad_out, np.float64)
    N, H, W, C = value.shape
    D = C // group
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dil
    K = len(taps(kh, kw, remove_center))
    gv = np.zeros_like(value)
    gom = np.zeros_like(om)
    for n, ho, wo, g, k, m, h, w in _samples(value, om, kh, kw, sh, sw, ph, pw, dh, dw, group, offset_scale,
                                             remove_center):
        sl = slice(g * D, (g + 1) * D)
        gc = go[n, ho, wo, sl]
        base = g * 3 * K
        for y, x, wt, dwt_dh, dwt_dw in _corners(H, W, h, w):
            v = value[n, y, x, sl]
            gv[n, y, x, sl] += m * wt * gc
            gom[n, ho, wo, base + 2 * K + k] += wt * np.dot(gc, v)
            gom[n, ho, wo, base + 2 * k] += m * offset_scale * dwt_dw * np.dot(gc, v)
            gom[n, ho, wo, base + 2 * k + 1] += m * offset_scale * dwt_dh * np.dot(gc, v)
    return gv, gom
