/* dr_views.h — nested views of referred regions: crop + resize + normalise, perceptual hashes, view selection
 * (DESIGN §7.2–7.4).
 *
 * The per-element math is `static inline DR_HD` so the CPU loops (csrc/core/views.c) and the CUDA kernels
 * (csrc/cuda/views.cu) run the same arithmetic; the entry points are declared at the end.
 *
 * Geometry. A view box (x1, y1, x2, y2) in image pixels becomes an integer crop: each coordinate is clipped to the
 * image ([0, W] / [0, H]) and truncated, and the crop is the pixel slice [y1:y2, x1:x2]. An empty crop (zero width
 * or height after that: a degenerate or outside box) is widened to one pixel at the clamped position, so every view
 * is defined; non-finite coordinates are refused before the kernels run.
 *
 * Resampling, per axis, as a list of contiguous taps (start, n, weights) per output coordinate:
 *   DR_RS_PIL   Pillow's Image.resize (antialiased filters: support scaled by the downscale factor, weights
 *               normalised, then 22-bit fixed point; uint8 rounding after each pass; the pass order Pillow
 *               picks, see dr_pil_vertical_first).
 *   DR_RS_AA    torch.nn.functional.interpolate(antialias=True) in floating point: the same taps, no rounding.
 *   DR_RS_PLAIN torch.nn.functional.interpolate(antialias=False, align_corners=False): bilinear (2 taps) or
 *               bicubic with a = -0.75 (4 taps, borders clamped — merged here into contiguous taps).
 *   DR_RS_CV    OpenCV INTER_LINEAR on float32 (what the official pHash uses).
 */
#ifndef DR_VIEWS_H
#define DR_VIEWS_H

#include "dr_math.h"
#include "dynrefer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- images and crops -------------------------------------------------------------------------------- */

#define DR_VIEWS_MAX_IMAGES 32 /* images per kernel call (the Python layer splits larger batches) */

typedef struct {
    const uint8_t *data; /* HWC uint8 RGB (alpha or more channels ignored: channels 0..2 are read) */
    int64_t h, w;
    int64_t sh, sw, sc; /* strides in elements */
} dr_image_ref;

typedef struct {
    int64_t x0, y0, w, h; /* an integer crop inside the image, w, h >= 1 */
} dr_crop;

DR_HD static inline int64_t dr_crop_coord(double v, int64_t limit) {
    if (!(v > 0.0)) /* negative, zero and NaN */
        return 0;
    if (v >= (double)limit)
        return limit;
    return (int64_t)v; /* truncation (v > 0) */
}

/* The crop of view box (x1, y1, x2, y2) in an image of size w × h (both >= 1). */
DR_HD static inline dr_crop dr_crop_of_box(double x1, double y1, double x2, double y2, int64_t w, int64_t h) {
    int64_t a = dr_crop_coord(x1, w), b = dr_crop_coord(x2, w);
    int64_t c = dr_crop_coord(y1, h), d = dr_crop_coord(y2, h);
    if (b <= a) { /* empty: one pixel at the clamped start */
        a = a < w - 1 ? a : w - 1;
        b = a + 1;
    }
    if (d <= c) {
        c = c < h - 1 ? c : h - 1;
        d = c + 1;
    }
    dr_crop r = {a, c, b - a, d - c};
    return r;
}

/* ---- resampling filters ------------------------------------------------------------------------------ */

enum { DR_FILTER_BILINEAR = 0, DR_FILTER_BICUBIC = 1, DR_FILTER_LANCZOS = 2 };
enum { DR_RS_PIL = 0, DR_RS_AA = 1, DR_RS_PLAIN = 2, DR_RS_CV = 3 };

#define DR_PIL_PRECISION_BITS 22 /* Pillow's 32 - 8 - 2 */

DR_HD static inline double dr_filter_support(int filter) {
    return filter == DR_FILTER_BILINEAR ? 1.0 : (filter == DR_FILTER_BICUBIC ? 2.0 : 3.0);
}

DR_HD static inline double dr_sinc(double x) {
    if (x == 0.0)
        return 1.0;
    x *= 3.14159265358979323846;
    return sin(x) / x;
}

/* The antialiasing filters of Pillow (and of torch's antialiased interpolate): triangle, Keys cubic a = -0.5,
 * Lanczos-3. */
DR_HD static inline double dr_filter_eval(int filter, double x) {
    if (filter == DR_FILTER_BILINEAR) {
        if (x < 0.0)
            x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }
    if (filter == DR_FILTER_BICUBIC) {
        const double a = -0.5;
        if (x < 0.0)
            x = -x;
        if (x < 1.0)
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
        if (x < 2.0)
            return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
        return 0.0;
    }
    if (-3.0 <= x && x < 3.0)
        return dr_sinc(x) * dr_sinc(x / 3.0);
    return 0.0;
}

/* Keys cubic convolution with a = -0.75 (torch's non-antialiased bicubic). */
DR_HD static inline double dr_cubic1(double x) { return ((1.25 * x - 2.25) * x) * x + 1.0; }
DR_HD static inline double dr_cubic2(double x) { return ((-0.75 * x + 3.75) * x - 6.0) * x + 3.0; }

/* One resampling axis: `in_size` source samples (the crop) → `out_size` outputs. */
typedef struct {
    int kind;   /* DR_RS_* */
    int filter; /* DR_FILTER_* (BILINEAR or BICUBIC for PLAIN; BILINEAR for CV) */
    int64_t in_size, out_size;
    double scale;   /* in_size / out_size */
    double support; /* scaled support (PIL / AA) */
    double inv;     /* 1 / filter scale (PIL / AA) */
} dr_axis;

DR_HD static inline dr_axis dr_axis_make(int kind, int filter, int64_t in_size, int64_t out_size) {
    dr_axis a;
    a.kind = kind;
    a.filter = filter;
    a.in_size = in_size;
    a.out_size = out_size;
    a.scale = (double)in_size / (double)out_size;
    if (kind == DR_RS_CV) /* OpenCV: scale_x = 1 / (dsize / ssize) */
        a.scale = 1.0 / ((double)out_size / (double)in_size);
    double fs = a.scale < 1.0 ? 1.0 : a.scale;
    a.support = dr_filter_support(filter) * fs;
    a.inv = 1.0 / fs;
    return a;
}

/* Largest number of taps of any output on this axis. */
DR_HD static inline int64_t dr_axis_max_taps(const dr_axis *a) {
    if (a->kind == DR_RS_PIL || a->kind == DR_RS_AA)
        return (int64_t)ceil(a->support) * 2 + 1;
    return a->kind == DR_RS_PLAIN && a->filter == DR_FILTER_BICUBIC ? 4 : 2;
}

/* Taps of output i: the first source index and the count; `center` is an opaque value for dr_axis_weight. */
DR_HD static inline void dr_axis_span(const dr_axis *a, int64_t i, int64_t *start, int64_t *n, double *center) {
    if (a->kind == DR_RS_PIL || a->kind == DR_RS_AA) {
        double c = ((double)i + 0.5) * a->scale;
        int64_t lo = (int64_t)(c - a->support + 0.5); /* C truncation, as Pillow and torch */
        if (lo < 0)
            lo = 0;
        int64_t hi = (int64_t)(c + a->support + 0.5);
        if (hi > a->in_size)
            hi = a->in_size;
        *start = lo;
        *n = hi > lo ? hi - lo : 0;
        *center = c;
        return;
    }
    if (a->kind == DR_RS_CV) {
        float fx = (float)(((double)i + 0.5) * a->scale - 0.5);
        int64_t sx = (int64_t)floorf(fx);
        fx -= (float)sx;
        if (sx < 0) {
            fx = 0.0f;
            sx = 0;
        }
        if (sx >= a->in_size - 1) {
            fx = 0.0f;
            sx = a->in_size - 1;
        }
        *start = sx;
        *n = sx + 1 < a->in_size ? 2 : 1;
        *center = (double)fx;
        return;
    }
    /* PLAIN */
    double src = a->scale * ((double)i + 0.5) - 0.5;
    if (a->filter == DR_FILTER_BILINEAR) {
        if (src < 0.0)
            src = 0.0;
        int64_t i0 = (int64_t)src;
        if (i0 > a->in_size - 1)
            i0 = a->in_size - 1;
        *start = i0;
        *n = i0 < a->in_size - 1 ? 2 : 1;
        *center = *n == 2 ? src - (double)i0 : 0.0; /* at the last sample both taps read it: weight 1 */
        return;
    }
    double f = floor(src);
    int64_t i0 = (int64_t)f;
    int64_t lo = i0 - 1 < 0 ? 0 : (i0 - 1 > a->in_size - 1 ? a->in_size - 1 : i0 - 1);
    int64_t hi = i0 + 2 < 0 ? 0 : (i0 + 2 > a->in_size - 1 ? a->in_size - 1 : i0 + 2);
    *start = lo;
    *n = hi - lo + 1;
    *center = src;
}

/* Weight of source index j (absolute) for the output whose span gave `center`: unnormalised for PIL / AA taps,
 * final for PLAIN bicubic (its four clamped taps merged onto j). CV and PLAIN bilinear weights come straight from
 * dr_axis_weight. */
DR_HD static inline double dr_axis_raw(const dr_axis *a, int64_t j, double center) {
    if (a->kind == DR_RS_PIL || a->kind == DR_RS_AA)
        return dr_filter_eval(a->filter, ((double)j - center + 0.5) * a->inv);
    /* PLAIN bicubic: raw taps i0-1..i0+2 clamped, merged onto j */
    double f = floor(center);
    int64_t i0 = (int64_t)f;
    double t = center - f;
    double w = 0.0;
    const double ws[4] = {dr_cubic2(t + 1.0), dr_cubic1(t), dr_cubic1(1.0 - t), dr_cubic2(2.0 - t)};
    for (int k = 0; k < 4; k++) {
        int64_t idx = i0 - 1 + k;
        idx = idx < 0 ? 0 : (idx > a->in_size - 1 ? a->in_size - 1 : idx);
        if (idx == j)
            w += ws[k];
    }
    return w;
}

/* Sum of the raw weights of a span (the normaliser of PIL / AA taps; 1 for the others). */
DR_HD static inline double dr_axis_total(const dr_axis *a, int64_t start, int64_t n, double center) {
    if (a->kind != DR_RS_PIL && a->kind != DR_RS_AA)
        return 1.0;
    double ww = 0.0;
    for (int64_t j = 0; j < n; j++)
        ww += dr_axis_raw(a, start + j, center);
    return ww;
}

/* Normalised floating-point weight of tap k (0-based within the span) of an output. */
DR_HD static inline double dr_axis_weight(const dr_axis *a, int64_t start, int64_t k, double center, double total) {
    if (a->kind == DR_RS_PIL || a->kind == DR_RS_AA) {
        double w = dr_axis_raw(a, start + k, center);
        return total != 0.0 ? w / total : w;
    }
    if (a->kind == DR_RS_CV)
        return k == 0 ? (double)(1.0f - (float)center) : center;
    if (a->filter == DR_FILTER_BILINEAR)
        return k == 0 ? 1.0 - center : center;
    return dr_axis_raw(a, start + k, center);
}

/* Pillow's fixed-point conversion of a normalised weight. */
DR_HD static inline int32_t dr_pil_fixed(double k) {
    const double one = (double)(1 << DR_PIL_PRECISION_BITS);
    return k < 0.0 ? (int32_t)(-0.5 + k * one) : (int32_t)(0.5 + k * one);
}

DR_HD static inline uint8_t dr_pil_clip8(int32_t ss) {
    int32_t v = ss >> DR_PIL_PRECISION_BITS; /* arithmetic shift, as Pillow */
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* ---- pixels ------------------------------------------------------------------------------------------ */

DR_HD static inline uint8_t dr_img_at(const dr_image_ref *im, int64_t y, int64_t x, int c) {
    return im->data[y * im->sh + x * im->sw + (int64_t)c * im->sc];
}

/* Pillow's convert("L"): ITU-R 601-2 luma in 16-bit fixed point. */
DR_HD static inline uint8_t dr_luma_pil(const dr_image_ref *im, int64_t y, int64_t x) {
    uint32_t r = dr_img_at(im, y, x, 0), g = dr_img_at(im, y, x, 1), b = dr_img_at(im, y, x, 2);
    return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

/* OpenCV's COLOR_RGB2GRAY on uint8: 14-bit fixed point. */
DR_HD static inline uint8_t dr_luma_cv(const dr_image_ref *im, int64_t y, int64_t x) {
    uint32_t r = dr_img_at(im, y, x, 0), g = dr_img_at(im, y, x, 1), b = dr_img_at(im, y, x, 2);
    return (uint8_t)((r * 4899u + g * 9617u + b * 1868u + (1u << 13)) >> 14);
}

/* ---- crop_resize bodies ------------------------------------------------------------------------------ */

typedef struct {
    int kind;      /* DR_RS_PIL, DR_RS_AA or DR_RS_PLAIN */
    int filter;    /* DR_FILTER_BILINEAR or DR_FILTER_BICUBIC */
    int pil_order; /* DR_PIL_ORDER_* (PIL path) */
    int64_t size;
    float mean[3], std[3];
} dr_crop_resize_params;

/* Horizontal-pass value at source row r (absolute in the crop) for output column x, channel c, on the PIL path:
 * clip8 of the fixed-point sum. */
DR_HD static inline uint8_t dr_pil_hpass(const dr_image_ref *im, const dr_crop *cr, const dr_axis *ax, int64_t r,
                                         int64_t x, int c, int luma) {
    int64_t s, n;
    double center;
    dr_axis_span(ax, x, &s, &n, &center);
    double total = dr_axis_total(ax, s, n, center);
    int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
    for (int64_t k = 0; k < n; k++) {
        int32_t w = dr_pil_fixed(dr_axis_weight(ax, s, k, center, total));
        int32_t v = luma ? dr_luma_pil(im, cr->y0 + r, cr->x0 + s + k) : dr_img_at(im, cr->y0 + r, cr->x0 + s + k, c);
        ss += v * w;
    }
    return dr_pil_clip8(ss);
}

/* Vertical-pass value at output row y for source column q (absolute in the crop), on the PIL path. */
DR_HD static inline uint8_t dr_pil_vpass(const dr_image_ref *im, const dr_crop *cr, const dr_axis *ay, int64_t y,
                                         int64_t q, int c, int luma) {
    int64_t s, n;
    double center;
    dr_axis_span(ay, y, &s, &n, &center);
    double total = dr_axis_total(ay, s, n, center);
    int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
    for (int64_t k = 0; k < n; k++) {
        int32_t w = dr_pil_fixed(dr_axis_weight(ay, s, k, center, total));
        int32_t v = luma ? dr_luma_pil(im, cr->y0 + s + k, cr->x0 + q) : dr_img_at(im, cr->y0 + s + k, cr->x0 + q, c);
        ss += v * w;
    }
    return dr_pil_clip8(ss);
}

/* Pass order of Pillow's resize: `order` 0 is the adaptive rule of current Pillow (vertical pass first when the
 * height shrinks by more than twice as many pixels as the width), 1 is horizontal first always (older Pillow). */
enum { DR_PIL_ORDER_ADAPTIVE = 0, DR_PIL_ORDER_HORIZONTAL = 1 };

DR_HD static inline int dr_pil_vertical_first(int64_t in_w, int64_t in_h, int64_t out_w, int64_t out_h, int order) {
    if (order == DR_PIL_ORDER_HORIZONTAL)
        return 0;
    return (in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2;
}

/* One output value of a PIL-path resize of the crop (8-bit result), channel c (or luma). */
DR_HD static inline uint8_t dr_pil_resize_px(const dr_image_ref *im, const dr_crop *cr, const dr_axis *ax,
                                             const dr_axis *ay, int64_t y, int64_t x, int c, int luma, int vfirst) {
    int64_t s, n;
    double center;
    const dr_axis *second = vfirst ? ax : ay;
    dr_axis_span(second, vfirst ? x : y, &s, &n, &center);
    double total = dr_axis_total(second, s, n, center);
    int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
    for (int64_t k = 0; k < n; k++) {
        int32_t w = dr_pil_fixed(dr_axis_weight(second, s, k, center, total));
        uint8_t first = vfirst ? dr_pil_vpass(im, cr, ay, y, s + k, c, luma) : dr_pil_hpass(im, cr, ax, s + k, x, c, luma);
        ss += (int32_t)first * w;
    }
    return dr_pil_clip8(ss);
}

/* One output value of a floating-point resize of the crop (0..255 scale), channel c. */
DR_HD static inline float dr_float_resize_px(const dr_image_ref *im, const dr_crop *cr, const dr_axis *ax,
                                             const dr_axis *ay, int64_t y, int64_t x, int c) {
    int64_t sy, ny, sx, nx;
    double cy, cx;
    dr_axis_span(ay, y, &sy, &ny, &cy);
    dr_axis_span(ax, x, &sx, &nx, &cx);
    double ty = dr_axis_total(ay, sy, ny, cy), tx = dr_axis_total(ax, sx, nx, cx);
    float acc = 0.0f;
    for (int64_t i = 0; i < ny; i++) {
        float row = 0.0f;
        for (int64_t j = 0; j < nx; j++)
            row += (float)dr_axis_weight(ax, sx, j, cx, tx) * (float)dr_img_at(im, cr->y0 + sy + i, cr->x0 + sx + j, c);
        acc += (float)dr_axis_weight(ay, sy, i, cy, ty) * row;
    }
    return acc;
}

/* torchvision's ToImage + ConvertImageDtype (x · (1/255) in float32) then Normalize ((x − mean) / std). */
DR_HD static inline float dr_normalize_u8(uint8_t v, float mean, float std) {
    float x = (float)v * (float)(1.0 / 255.0);
    return (x - mean) / std;
}

DR_HD static inline float dr_normalize_f(float v, float mean, float std) {
    return (v * (float)(1.0 / 255.0) - mean) / std;
}

/* The referred box in the S × S frame of a view with crop `cr`.
 * PIL path (the official pipeline): the referred box clipped and truncated like a crop, minus the crop origin, times
 * float32(S / crop size), truncated toward zero (torchvision resizes integer boxes in their dtype).
 * Float paths: (box − origin) · S / crop size in double precision. */
DR_HD static inline void dr_ref_box(const dr_crop *cr, const double rb[4], int64_t img_w, int64_t img_h, int64_t size,
                                    int official, float out[4]) {
    if (official) {
        int64_t q[4] = {dr_crop_coord(rb[0], img_w), dr_crop_coord(rb[1], img_h), dr_crop_coord(rb[2], img_w),
                        dr_crop_coord(rb[3], img_h)};
        float rx = (float)((double)size / (double)cr->w), ry = (float)((double)size / (double)cr->h);
        int same = cr->w == size && cr->h == size;
        for (int k = 0; k < 4; k++) {
            int64_t rel = q[k] - ((k & 1) ? cr->y0 : cr->x0);
            out[k] = same ? (float)rel : (float)(int64_t)((float)rel * ((k & 1) ? ry : rx));
        }
        return;
    }
    for (int k = 0; k < 4; k++) {
        double rel = rb[k] - (double)((k & 1) ? cr->y0 : cr->x0);
        out[k] = (float)(rel * (double)size / (double)((k & 1) ? cr->h : cr->w));
    }
}

/* Store one float into a float32 / float16 / bfloat16 tensor at element offset off. */
DR_HD static inline void dr_views_store(void *data, int dtype, int64_t off, float v) {
    if (dtype == DR_FLOAT16)
        ((uint16_t *)data)[off] = dr_f32_to_f16(v);
    else if (dtype == DR_BFLOAT16)
        ((uint16_t *)data)[off] = dr_f32_to_bf16(v);
    else
        ((float *)data)[off] = v;
}

/* ---- perceptual hashes ------------------------------------------------------------------------------- */

enum { DR_PHASH_DYNREFER = 0, DR_PHASH_IMAGEHASH = 1 };

#define DR_PHASH_DYN_RES 224 /* the official function resizes each view to 224 × 224 */
#define DR_PHASH_IH_RES 32   /* imagehash: hash_size 8 × highfreq_factor 4 */

DR_HD static inline double dr_dct_cos(int64_t u, int64_t i, int64_t n) {
    return cos(3.14159265358979323846 * (double)u * (double)(2 * i + 1) / (double)(2 * n));
}

/* Official pHash, column x of the 224 × 224 resized gray view: a[u] = Σ_y cos_u(y) · R(y, x) for u < 8, with R the
 * OpenCV INTER_LINEAR resize of the float gray crop. */
DR_HD static inline void dr_phash_dyn_column(const dr_image_ref *im, const dr_crop *cr, int64_t x, double a[8]) {
    dr_axis ax = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->w, DR_PHASH_DYN_RES);
    dr_axis ay = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->h, DR_PHASH_DYN_RES);
    int64_t sx, nx;
    double fx;
    dr_axis_span(&ax, x, &sx, &nx, &fx);
    float wx0 = (float)dr_axis_weight(&ax, sx, 0, fx, 1.0), wx1 = (float)dr_axis_weight(&ax, sx, 1, fx, 1.0);
    int64_t sx1 = nx > 1 ? sx + 1 : sx;
    for (int u = 0; u < 8; u++)
        a[u] = 0.0;
    for (int64_t y = 0; y < DR_PHASH_DYN_RES; y++) {
        int64_t sy, ny;
        double fy;
        dr_axis_span(&ay, y, &sy, &ny, &fy);
        int64_t sy1 = ny > 1 ? sy + 1 : sy;
        float wy0 = (float)dr_axis_weight(&ay, sy, 0, fy, 1.0), wy1 = (float)dr_axis_weight(&ay, sy, 1, fy, 1.0);
        float r0 = (float)dr_luma_cv(im, cr->y0 + sy, cr->x0 + sx) * wx0 +
                   (float)dr_luma_cv(im, cr->y0 + sy, cr->x0 + sx1) * wx1;
        float r1 = (float)dr_luma_cv(im, cr->y0 + sy1, cr->x0 + sx) * wx0 +
                   (float)dr_luma_cv(im, cr->y0 + sy1, cr->x0 + sx1) * wx1;
        float v = r0 * wy0 + r1 * wy1;
        for (int u = 0; u < 8; u++)
            a[u] += dr_dct_cos(u, y, DR_PHASH_DYN_RES) * (double)v;
    }
}

/* Orthonormal DCT-II coefficient (u, v) from the column sums a[x][u] (x < 224). */
DR_HD static inline double dr_phash_dyn_coef(const double *cols /* [224][8] */, int u, int v) {
    double s = 0.0;
    for (int64_t x = 0; x < DR_PHASH_DYN_RES; x++)
        s += cols[x * 8 + u] * dr_dct_cos(v, x, DR_PHASH_DYN_RES);
    double n = (double)DR_PHASH_DYN_RES;
    double cu = u == 0 ? sqrt(1.0 / n) : sqrt(2.0 / n), cv = v == 0 ? sqrt(1.0 / n) : sqrt(2.0 / n);
    return s * cu * cv;
}

/* Σ_i x_i cos(πk(2i+1)/(2n)) for n a power of two (n <= 32), by the even/odd split of DCT-II: an even k is the
 * half-length transform of the folded sums x_i + x_{n−1−i} at k/2, an odd k a sum over the folded differences
 * x_i − x_{n−1−i}. Like the FFT-based reference, this gives exactly 0 whenever the input's symmetry makes the
 * coefficient vanish (a constant column, a mirror-symmetric one), so flat or symmetric crops hash bit for bit. */
/* Table of the cosines dr_dct_fold uses (odd k < n, i < n/2, n = 32 … 2), so a caller hashing many views computes
 * them once: tab[dr_dct_tab_off(n) + (k / 2) · (n / 2) + i] = dr_dct_cos(k, i, n). */
#define DR_DCT_TAB_SIZE 341
DR_HD static inline int64_t dr_dct_tab_off(int64_t n) {
    return n == 32 ? 0 : (n == 16 ? 256 : (n == 8 ? 320 : (n == 4 ? 336 : 340)));
}

DR_HD static inline void dr_dct_tab_fill(double *tab) {
    for (int64_t n = 32; n > 1; n /= 2)
        for (int64_t k = 1; k < n; k += 2)
            for (int64_t i = 0; i < n / 2; i++)
                tab[dr_dct_tab_off(n) + (k / 2) * (n / 2) + i] = dr_dct_cos(k, i, n);
}

/* `tab`: NULL, or the table of dr_dct_tab_fill (same values, no cos calls). */
DR_HD static inline double dr_dct_fold(const double *x, int64_t n, int k, const double *tab) {
    double p[32];
    for (int64_t i = 0; i < n; i++)
        p[i] = x[i];
    while (k > 0 && (k & 1) == 0 && n > 1) {
        for (int64_t i = 0; i < n / 2; i++)
            p[i] = p[i] + p[n - 1 - i];
        n /= 2;
        k /= 2;
    }
    if (k == 0) { /* balanced tree: exact for integers and for equal values */
        for (int64_t m = n; m > 1; m /= 2)
            for (int64_t i = 0; i < m / 2; i++)
                p[i] = p[2 * i] + p[2 * i + 1];
        return p[0];
    }
    double acc = 0.0;
    for (int64_t i = 0; i < n / 2; i++)
        acc += (p[i] - p[n - 1 - i]) * (tab ? tab[dr_dct_tab_off(n) + (k / 2) * (n / 2) + i] : dr_dct_cos(k, i, n));
    return acc;
}

/* scipy.fftpack's unnormalised DCT-II of 32 values, coefficient k: 2·Σ x_i cos(πk(2i+1)/64). */
DR_HD static inline double dr_dct32(const double *x, int k, const double *tab) { return 2.0 * dr_dct_fold(x, 32, k, tab); }

/* imagehash: coefficient (u, v) of the 2-D DCT-II (axis 0, then axis 1) of the 32 × 32 uint8 image px. */
DR_HD static inline double dr_imagehash_coef(const uint8_t *px /* [32][32] */, int u, int v) {
    double col[32], t[32];
    for (int64_t j = 0; j < 32; j++) {
        for (int64_t i = 0; i < 32; i++)
            col[i] = (double)px[i * 32 + j];
        t[j] = dr_dct32(col, u, NULL);
    }
    return dr_dct32(t, v, NULL);
}

/* 64 coefficients (row-major u, v) → hash, first coefficient in the most significant bit.
 * DYNREFER: bit = c > mean (float32 mean, as NumPy on the float32 DCT); IMAGEHASH: bit = c > median. */
DR_HD static inline uint64_t dr_phash_bits(const double c[64], int method) {
    double thr;
    if (method == DR_PHASH_DYNREFER) {
        double s = 0.0;
        for (int k = 0; k < 64; k++)
            s += c[k];
        thr = s / 64.0;
    } else {
        double srt[64];
        for (int k = 0; k < 64; k++)
            srt[k] = c[k];
        for (int k = 1; k < 64; k++) { /* insertion sort: 64 values */
            double v = srt[k];
            int j = k - 1;
            while (j >= 0 && srt[j] > v) {
                srt[j + 1] = srt[j];
                j--;
            }
            srt[j + 1] = v;
        }
        thr = (srt[31] + srt[32]) / 2.0;
    }
    uint64_t h = 0;
    for (int k = 0; k < 64; k++)
        if (c[k] > thr)
            h |= (uint64_t)1 << (63 - k);
    return h;
}

/* ---- view selection ---------------------------------------------------------------------------------- */

/* Paper Eq. 1 for one region: score_i = hamming(h0, h_i) / t_i; pick the best n_sel candidates greedily, ties to the
 * smaller index (the candidates are in increasing t), never the same candidate twice. idx receives candidate
 * indices. */
DR_HD static inline void dr_select_region(uint64_t h0, const uint64_t *hc, int64_t hc_stride, const double *t,
                                          int64_t nc, int64_t n_sel, int64_t *idx, int64_t idx_stride) {
    for (int64_t s = 0; s < n_sel; s++) {
        int64_t best = -1;
        double best_score = 0.0;
        for (int64_t i = 0; i < nc; i++) {
            int taken = 0;
            for (int64_t q = 0; q < s; q++)
                taken |= idx[q * idx_stride] == i;
            if (taken)
                continue;
            double sc = (double)dr_popcount64(h0 ^ hc[i * hc_stride]) / t[i];
            if (best < 0 || sc > best_score) {
                best = i;
                best_score = sc;
            }
        }
        idx[s * idx_stride] = best;
    }
}

/* ---- entry points ------------------------------------------------------------------------------------ */

/* images[n_images]; boxes [V,4] float32/float64 view boxes; image_index [V] int64 or NULL (all image 0);
 * ref_boxes [V,4] float32/float64 or NULL; out [V,3,S,S] float32/float16/bfloat16; ref_out [V,4] float32 or NULL. */
dr_status dr_crop_resize_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                             const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                             dr_tensor *ref_out, const dr_crop_resize_params *p, int elementwise);
dr_status dr_crop_resize_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                              const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                              dr_tensor *ref_out, const dr_crop_resize_params *p, void *stream);

/* The instruction set the views' CPU kernels use: "amx", "avx512", "avx2" or "portable" (decided once per process;
 * DYNREFER_CPU_ISA caps it). */
const char *dr_views_cpu_isa(void);

/* hashes [V] uint64; thumbs: NULL, or (imagehash only) uint8 [V, 32, 32] contiguous for the resized luma views. */
dr_status dr_phash_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                       const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order, int elementwise,
                       dr_tensor *thumbs);
dr_status dr_phash_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                        const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order, void *stream);

/* hashes [R, 1+C] uint64 (tight view first), coeffs [C] float64 (> 0), out [R, n_sel] int64 candidate indices. */
dr_status dr_select_views_cpu(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out);
dr_status dr_select_views_cuda(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out, void *stream);

#ifdef __cplusplus
}
#endif

#endif
