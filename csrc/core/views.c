/* views.c — CPU kernels of the nested views: crop_resize, phash, select_views (math in dr_views.h).
 *
 * Fast paths work per view (one task per view on the thread pool): the resampling taps of each axis are computed
 * once per view, the horizontal pass runs over the source rows the vertical pass needs, and nothing the size of a
 * crop is materialised beyond one pass buffer of S columns. The `elementwise` paths evaluate the per-element bodies
 * the CUDA kernels run, for every output, so tests exercise the GPU arithmetic on the CPU.
 */
#include <stdlib.h>
#include <string.h>

#include "dr_views.h"

/* ---- shared helpers ---------------------------------------------------------------------------------- */

static double load_real(const dr_tensor *t, int64_t off) {
    return t->dtype == DR_FLOAT64 ? ((const double *)t->data)[off] : (double)((const float *)t->data)[off];
}

static void load_box(const dr_tensor *t, int64_t v, double b[4]) {
    for (int k = 0; k < 4; k++)
        b[k] = load_real(t, v * t->strides[0] + k * t->strides[1]);
}

static int64_t image_of(const dr_tensor *index, int64_t v) {
    return index ? ((const int64_t *)index->data)[v * index->strides[0]] : 0;
}

static void store_out(dr_tensor *out, int64_t v, int c, int64_t y, int64_t x, float val) {
    dr_views_store(out->data, out->dtype,
                   v * out->strides[0] + c * out->strides[1] + y * out->strides[2] + x * out->strides[3], val);
}

/* Validate the per-view image indices against n_images. */
static dr_status check_index(const dr_tensor *index, int64_t nv, int64_t n_images, const char *op) {
    for (int64_t v = 0; v < nv; v++) {
        int64_t i = image_of(index, v);
        if (i < 0 || i >= n_images)
            return dr_set_error(DR_EINVAL, "%s: image_index[%lld] = %lld is not an image index in [0, %lld)", op,
                                (long long)v, (long long)i, (long long)n_images);
    }
    return DR_OK;
}

/* Taps of one axis, precomputed for a view. */
typedef struct {
    int64_t *start, *n;
    int32_t *wi; /* fixed point (PIL) */
    float *wf;   /* floating point */
    int64_t kmax;
} taps;

static int taps_make(taps *t, const dr_axis *a, int fixed) {
    int64_t m = a->out_size, k = dr_axis_max_taps(a);
    t->kmax = k;
    t->start = (int64_t *)malloc((size_t)(2 * m) * sizeof(int64_t));
    t->wi = fixed ? (int32_t *)calloc((size_t)(m * k), sizeof(int32_t)) : NULL;
    t->wf = fixed ? NULL : (float *)calloc((size_t)(m * k), sizeof(float));
    if (!t->start || (fixed ? !t->wi : !t->wf)) {
        free(t->start);
        free(t->wi);
        free(t->wf);
        return -1;
    }
    t->n = t->start + m;
    for (int64_t i = 0; i < m; i++) {
        int64_t s, n;
        double c;
        dr_axis_span(a, i, &s, &n, &c);
        double tot = dr_axis_total(a, s, n, c);
        t->start[i] = s;
        t->n[i] = n;
        for (int64_t j = 0; j < n; j++) {
            double w = dr_axis_weight(a, s, j, c, tot);
            if (fixed)
                t->wi[i * k + j] = dr_pil_fixed(w);
            else
                t->wf[i * k + j] = (float)w;
        }
    }
    return 0;
}

static void taps_free(taps *t) {
    free(t->start);
    free(t->wi);
    free(t->wf);
}

/* ---- crop_resize ------------------------------------------------------------------------------------- */

typedef struct {
    const dr_image_ref *images;
    const dr_tensor *boxes, *index, *ref_boxes;
    dr_tensor *out, *ref_out;
    const dr_crop_resize_params *p;
    int failed; /* allocation failure in a task */
} crop_ctx;

static dr_crop view_crop(const crop_ctx *c, int64_t v, const dr_image_ref **im) {
    double b[4];
    load_box(c->boxes, v, b);
    *im = &c->images[image_of(c->index, v)];
    return dr_crop_of_box(b[0], b[1], b[2], b[3], (*im)->w, (*im)->h);
}

static void write_ref(const crop_ctx *c, int64_t v, const dr_crop *cr, const dr_image_ref *im) {
    if (!c->ref_boxes)
        return;
    double rb[4];
    float o[4];
    load_box(c->ref_boxes, v, rb);
    dr_ref_box(cr, rb, im->w, im->h, c->p->size, c->p->kind == DR_RS_PIL, o);
    for (int k = 0; k < 4; k++)
        ((float *)c->ref_out->data)[v * c->ref_out->strides[0] + k * c->ref_out->strides[1]] = o[k];
}

/* Pillow's vertical-first order: vertical pass over every crop column into buf[y][q][c], then the horizontal pass. */
static int pil_vertical_first(crop_ctx *c, int64_t v, const dr_image_ref *im, const dr_crop *cr, const taps *tx,
                              const taps *ty) {
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size, W = cr->w;
    uint8_t *buf = (uint8_t *)malloc((size_t)(S * W * 3));
    if (!buf)
        return -1;
    const int32_t half = 1 << (DR_PIL_PRECISION_BITS - 1);
    for (int64_t y = 0; y < S; y++) {
        const int32_t *w = ty->wi + y * ty->kmax;
        const uint8_t *src0 = im->data + (cr->y0 + ty->start[y]) * im->sh + cr->x0 * im->sw;
        uint8_t *d = buf + y * W * 3;
        for (int64_t q = 0; q < W; q++) {
            const uint8_t *px = src0 + q * im->sw;
            int32_t a0 = half, a1 = half, a2 = half;
            for (int64_t j = 0; j < ty->n[y]; j++, px += im->sh) {
                a0 += (int32_t)px[0] * w[j];
                a1 += (int32_t)px[im->sc] * w[j];
                a2 += (int32_t)px[2 * im->sc] * w[j];
            }
            d[q * 3 + 0] = dr_pil_clip8(a0);
            d[q * 3 + 1] = dr_pil_clip8(a1);
            d[q * 3 + 2] = dr_pil_clip8(a2);
        }
    }
    for (int64_t y = 0; y < S; y++) {
        const uint8_t *row = buf + y * W * 3;
        for (int64_t x = 0; x < S; x++) {
            const int32_t *w = tx->wi + x * tx->kmax;
            const uint8_t *px = row + tx->start[x] * 3;
            int32_t a[3] = {half, half, half};
            for (int64_t j = 0; j < tx->n[x]; j++, px += 3) {
                a[0] += (int32_t)px[0] * w[j];
                a[1] += (int32_t)px[1] * w[j];
                a[2] += (int32_t)px[2] * w[j];
            }
            for (int ch = 0; ch < 3; ch++)
                store_out(c->out, v, ch, y, x, dr_normalize_u8(dr_pil_clip8(a[ch]), p->mean[ch], p->std[ch]));
        }
    }
    free(buf);
    return 0;
}

static void crop_resize_task(void *vctx, int64_t begin, int64_t end) {
    crop_ctx *c = (crop_ctx *)vctx;
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    const int fixed = p->kind == DR_RS_PIL;
    for (int64_t v = begin; v < end; v++) {
        const dr_image_ref *im;
        dr_crop cr = view_crop(c, v, &im);
        write_ref(c, v, &cr, im);
        dr_axis ax = dr_axis_make(p->kind, p->filter, cr.w, S), ay = dr_axis_make(p->kind, p->filter, cr.h, S);
        taps tx, ty;
        if (taps_make(&tx, &ax, fixed) < 0) {
            c->failed = 1;
            return;
        }
        if (taps_make(&ty, &ay, fixed) < 0) {
            taps_free(&tx);
            c->failed = 1;
            return;
        }
        if (fixed && dr_pil_vertical_first(cr.w, cr.h, S, S, p->pil_order)) {
            if (pil_vertical_first(c, v, im, &cr, &tx, &ty) < 0)
                c->failed = 1;
            taps_free(&tx);
            taps_free(&ty);
            continue;
        }
        /* source rows the vertical pass reads */
        int64_t ylo = ty.start[0], yhi = ty.start[S - 1] + ty.n[S - 1];
        for (int64_t y = 0; y < S; y++) {
            if (ty.start[y] < ylo)
                ylo = ty.start[y];
            if (ty.start[y] + ty.n[y] > yhi)
                yhi = ty.start[y] + ty.n[y];
        }
        int64_t rows = yhi - ylo > 0 ? yhi - ylo : 1;
        size_t cells = (size_t)(rows * S * 3);
        void *buf = fixed ? malloc(cells) : malloc(cells * sizeof(float));
        if (!buf) {
            taps_free(&tx);
            taps_free(&ty);
            c->failed = 1;
            return;
        }
        /* horizontal pass: rows [ylo, yhi) of the crop → buf[row][x][c] */
        for (int64_t r = ylo; r < yhi; r++) {
            const uint8_t *src = im->data + (cr.y0 + r) * im->sh + cr.x0 * im->sw;
            for (int64_t x = 0; x < S; x++) {
                int64_t s = tx.start[x], n = tx.n[x];
                const uint8_t *px = src + s * im->sw;
                if (fixed) {
                    const int32_t *w = tx.wi + x * tx.kmax;
                    int32_t a0 = 1 << (DR_PIL_PRECISION_BITS - 1), a1 = a0, a2 = a0;
                    for (int64_t j = 0; j < n; j++, px += im->sw) {
                        a0 += (int32_t)px[0] * w[j];
                        a1 += (int32_t)px[im->sc] * w[j];
                        a2 += (int32_t)px[2 * im->sc] * w[j];
                    }
                    uint8_t *d = (uint8_t *)buf + ((r - ylo) * S + x) * 3;
                    d[0] = dr_pil_clip8(a0);
                    d[1] = dr_pil_clip8(a1);
                    d[2] = dr_pil_clip8(a2);
                } else {
                    const float *w = tx.wf + x * tx.kmax;
                    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
                    for (int64_t j = 0; j < n; j++, px += im->sw) {
                        a0 += w[j] * (float)px[0];
                        a1 += w[j] * (float)px[im->sc];
                        a2 += w[j] * (float)px[2 * im->sc];
                    }
                    float *d = (float *)buf + ((r - ylo) * S + x) * 3;
                    d[0] = a0;
                    d[1] = a1;
                    d[2] = a2;
                }
            }
        }
        /* vertical pass + normalisation */
        for (int64_t y = 0; y < S; y++) {
            int64_t s = ty.start[y] - ylo, n = ty.n[y];
            for (int64_t x = 0; x < S; x++) {
                if (fixed) {
                    const int32_t *w = ty.wi + y * ty.kmax;
                    int32_t a[3] = {1 << (DR_PIL_PRECISION_BITS - 1), 1 << (DR_PIL_PRECISION_BITS - 1),
                                    1 << (DR_PIL_PRECISION_BITS - 1)};
                    const uint8_t *col = (const uint8_t *)buf + (s * S + x) * 3;
                    for (int64_t j = 0; j < n; j++, col += S * 3) {
                        a[0] += (int32_t)col[0] * w[j];
                        a[1] += (int32_t)col[1] * w[j];
                        a[2] += (int32_t)col[2] * w[j];
                    }
                    for (int ch = 0; ch < 3; ch++)
                        store_out(c->out, v, ch, y, x, dr_normalize_u8(dr_pil_clip8(a[ch]), p->mean[ch], p->std[ch]));
                } else {
                    const float *w = ty.wf + y * ty.kmax;
                    float a[3] = {0.0f, 0.0f, 0.0f};
                    const float *col = (const float *)buf + (s * S + x) * 3;
                    for (int64_t j = 0; j < n; j++, col += S * 3) {
                        a[0] += w[j] * col[0];
                        a[1] += w[j] * col[1];
                        a[2] += w[j] * col[2];
                    }
                    for (int ch = 0; ch < 3; ch++)
                        store_out(c->out, v, ch, y, x, dr_normalize_f(a[ch], p->mean[ch], p->std[ch]));
                }
            }
        }
        free(buf);
        taps_free(&tx);
        taps_free(&ty);
    }
}

/* The CUDA kernel's body for every output element, on the CPU. */
static void crop_resize_elem_task(void *vctx, int64_t begin, int64_t end) {
    crop_ctx *c = (crop_ctx *)vctx;
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    for (int64_t v = begin; v < end; v++) {
        const dr_image_ref *im;
        dr_crop cr = view_crop(c, v, &im);
        write_ref(c, v, &cr, im);
        dr_axis ax = dr_axis_make(p->kind, p->filter, cr.w, S), ay = dr_axis_make(p->kind, p->filter, cr.h, S);
        int vf = dr_pil_vertical_first(cr.w, cr.h, S, S, p->pil_order);
        for (int ch = 0; ch < 3; ch++)
            for (int64_t y = 0; y < S; y++)
                for (int64_t x = 0; x < S; x++) {
                    float val = p->kind == DR_RS_PIL
                                    ? dr_normalize_u8(dr_pil_resize_px(im, &cr, &ax, &ay, y, x, ch, 0, vf), p->mean[ch],
                                                      p->std[ch])
                                    : dr_normalize_f(dr_float_resize_px(im, &cr, &ax, &ay, y, x, ch), p->mean[ch],
                                                     p->std[ch]);
                    store_out(c->out, v, ch, y, x, val);
                }
    }
}

dr_status dr_crop_resize_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                             const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                             dr_tensor *ref_out, const dr_crop_resize_params *p, int elementwise) {
    int64_t nv = boxes->shape[0];
    dr_status st = check_index(image_index, nv, n_images, "crop_resize");
    if (st != DR_OK)
        return st;
    for (int64_t i = 0; i < n_images; i++)
        if (images[i].h < 1 || images[i].w < 1)
            return dr_set_error(DR_EINVAL, "crop_resize: image %lld is empty (%lld x %lld)", (long long)i,
                                (long long)images[i].h, (long long)images[i].w);
    crop_ctx c = {images, boxes, image_index, ref_boxes, out, ref_out, p, 0};
    dr_hint_output_memory(out);
    dr_parallel_for(nv, 1, elementwise ? crop_resize_elem_task : crop_resize_task, &c);
    if (c.failed)
        return dr_set_error(DR_ENOMEM, "crop_resize: out of memory");
    return DR_OK;
}

/* ---- phash ------------------------------------------------------------------------------------------- */

typedef struct {
    const dr_image_ref *images;
    const dr_tensor *boxes, *index;
    dr_tensor *hashes;
    int method, pil_order;
    const double *cos224; /* [8][224] */
    int failed;
} phash_ctx;

static void put_hash(dr_tensor *h, int64_t v, uint64_t value) { ((uint64_t *)h->data)[v * h->strides[0]] = value; }

/* Official pHash of one view: resize rows on the fly, accumulate the 8 low vertical frequencies per column. */
static uint64_t phash_dyn_fast(const dr_image_ref *im, const dr_crop *cr, const double *cs) {
    enum { R = DR_PHASH_DYN_RES };
    dr_axis ax = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->w, R), ay = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->h, R);
    int64_t x0[R], x1[R];
    float wx0[R], wx1[R];
    for (int64_t x = 0; x < R; x++) {
        int64_t s, n;
        double f;
        dr_axis_span(&ax, x, &s, &n, &f);
        x0[x] = cr->x0 + s;
        x1[x] = cr->x0 + (n > 1 ? s + 1 : s);
        wx0[x] = (float)dr_axis_weight(&ax, s, 0, f, 1.0);
        wx1[x] = (float)dr_axis_weight(&ax, s, 1, f, 1.0);
    }
    double acc[8][R];
    memset(acc, 0, sizeof acc);
    float h0[R], h1[R], row[R];
    int64_t cached0 = -1, cached1 = -1;
    for (int64_t y = 0; y < R; y++) {
        int64_t sy, ny;
        double fy;
        dr_axis_span(&ay, y, &sy, &ny, &fy);
        int64_t sy1 = ny > 1 ? sy + 1 : sy;
        float wy0 = (float)dr_axis_weight(&ay, sy, 0, fy, 1.0), wy1 = (float)dr_axis_weight(&ay, sy, 1, fy, 1.0);
        /* horizontally resampled source rows sy and sy1 (reused while the vertical taps stay) */
        if (cached0 != sy) {
            if (cached1 == sy) {
                memcpy(h0, h1, sizeof h0);
            } else {
                for (int64_t x = 0; x < R; x++)
                    h0[x] = (float)dr_luma_cv(im, cr->y0 + sy, x0[x]) * wx0[x] +
                            (float)dr_luma_cv(im, cr->y0 + sy, x1[x]) * wx1[x];
            }
            cached0 = sy;
        }
        if (cached1 != sy1) {
            for (int64_t x = 0; x < R; x++)
                h1[x] = (float)dr_luma_cv(im, cr->y0 + sy1, x0[x]) * wx0[x] +
                        (float)dr_luma_cv(im, cr->y0 + sy1, x1[x]) * wx1[x];
            cached1 = sy1;
        }
        for (int64_t x = 0; x < R; x++)
            row[x] = h0[x] * wy0 + h1[x] * wy1;
        for (int u = 0; u < 8; u++) {
            double cu = cs[u * R + y];
            double *a = acc[u];
            for (int64_t x = 0; x < R; x++)
                a[x] += cu * (double)row[x];
        }
    }
    double coef[64];
    const double n = (double)R;
    for (int u = 0; u < 8; u++)
        for (int v = 0; v < 8; v++) {
            double s = 0.0;
            for (int64_t x = 0; x < R; x++)
                s += acc[u][x] * cs[v * R + x];
            double cu = u == 0 ? sqrt(1.0 / n) : sqrt(2.0 / n), cv = v == 0 ? sqrt(1.0 / n) : sqrt(2.0 / n);
            coef[u * 8 + v] = s * cu * cv;
        }
    return dr_phash_bits(coef, DR_PHASH_DYNREFER);
}

/* imagehash pHash of one view: Pillow LANCZOS 32 × 32 of the luma crop (fixed point, uint8 between passes),
 * separable DCT of the low 8 × 8, median threshold. Returns 0 and sets *failed on allocation failure. */
static uint64_t phash_ih_fast(const dr_image_ref *im, const dr_crop *cr, int pil_order,
                              int *failed) {
    enum { R = DR_PHASH_IH_RES };
    dr_axis ax = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, cr->w, R), ay = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, cr->h, R);
    taps tx, ty;
    if (taps_make(&tx, &ax, 1) < 0) {
        *failed = 1;
        return 0;
    }
    if (taps_make(&ty, &ay, 1) < 0) {
        taps_free(&tx);
        *failed = 1;
        return 0;
    }
    uint8_t px[R * R];
    uint8_t *hbuf = NULL, *lrow = NULL;
    if (dr_pil_vertical_first(cr->w, cr->h, R, R, pil_order)) {
        /* vertical pass over every column (luma on the fly), then horizontal */
        hbuf = (uint8_t *)malloc((size_t)(R * cr->w));
        int32_t *acc = (int32_t *)malloc((size_t)cr->w * sizeof(int32_t));
        lrow = (uint8_t *)malloc((size_t)cr->w);
        if (!hbuf || !acc || !lrow) {
            free(hbuf);
            free(acc);
            free(lrow);
            taps_free(&tx);
            taps_free(&ty);
            *failed = 1;
            return 0;
        }
        for (int64_t y = 0; y < R; y++) {
            const int32_t *w = ty.wi + y * ty.kmax;
            for (int64_t q = 0; q < cr->w; q++)
                acc[q] = 1 << (DR_PIL_PRECISION_BITS - 1);
            for (int64_t j = 0; j < ty.n[y]; j++) {
                int64_t r = ty.start[y] + j;
                for (int64_t q = 0; q < cr->w; q++)
                    acc[q] += (int32_t)dr_luma_pil(im, cr->y0 + r, cr->x0 + q) * w[j];
            }
            for (int64_t q = 0; q < cr->w; q++)
                hbuf[y * cr->w + q] = dr_pil_clip8(acc[q]);
        }
        free(acc);
        for (int64_t y = 0; y < R; y++)
            for (int64_t x = 0; x < R; x++) {
                const int32_t *w = tx.wi + x * tx.kmax;
                const uint8_t *src = hbuf + y * cr->w + tx.start[x];
                int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
                for (int64_t j = 0; j < tx.n[x]; j++)
                    ss += (int32_t)src[j] * w[j];
                px[y * R + x] = dr_pil_clip8(ss);
            }
    } else {
        int64_t ylo = ty.start[0], yhi = ty.start[R - 1] + ty.n[R - 1];
        int64_t rows = yhi - ylo > 0 ? yhi - ylo : 1;
        hbuf = (uint8_t *)malloc((size_t)(rows * R));
        lrow = (uint8_t *)malloc((size_t)cr->w);
        if (!hbuf || !lrow) {
            free(hbuf);
            free(lrow);
            taps_free(&tx);
            taps_free(&ty);
            *failed = 1;
            return 0;
        }
        for (int64_t r = ylo; r < yhi; r++) {
            for (int64_t x = 0; x < cr->w; x++)
                lrow[x] = dr_luma_pil(im, cr->y0 + r, cr->x0 + x);
            for (int64_t x = 0; x < R; x++) {
                const int32_t *w = tx.wi + x * tx.kmax;
                const uint8_t *src = lrow + tx.start[x];
                int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
                for (int64_t j = 0; j < tx.n[x]; j++)
                    ss += (int32_t)src[j] * w[j];
                hbuf[(r - ylo) * R + x] = dr_pil_clip8(ss);
            }
        }
        for (int64_t y = 0; y < R; y++) {
            const int32_t *w = ty.wi + y * ty.kmax;
            const uint8_t *col = hbuf + (ty.start[y] - ylo) * R;
            for (int64_t x = 0; x < R; x++) {
                int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
                for (int64_t j = 0; j < ty.n[y]; j++)
                    ss += (int32_t)col[j * R + x] * w[j];
                px[y * R + x] = dr_pil_clip8(ss);
            }
        }
    }
    free(hbuf);
    free(lrow);
    taps_free(&tx);
    taps_free(&ty);
    /* DCT-II along axis 0 for u < 8, then along axis 1 for v < 8 (scipy's unnormalised 2·Σ per axis) */
    double t[8][R], col[R];
    for (int64_t j = 0; j < R; j++) {
        for (int64_t i = 0; i < R; i++)
            col[i] = (double)px[i * R + j];
        for (int u = 0; u < 8; u++)
            t[u][j] = dr_dct32(col, u);
    }
    double coef[64];
    for (int u = 0; u < 8; u++)
        for (int v = 0; v < 8; v++)
            coef[u * 8 + v] = dr_dct32(t[u], v);
    return dr_phash_bits(coef, DR_PHASH_IMAGEHASH);
}

static void phash_task(void *vctx, int64_t begin, int64_t end) {
    phash_ctx *c = (phash_ctx *)vctx;
    for (int64_t v = begin; v < end; v++) {
        double b[4];
        load_box(c->boxes, v, b);
        const dr_image_ref *im = &c->images[image_of(c->index, v)];
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        uint64_t h = c->method == DR_PHASH_DYNREFER ? phash_dyn_fast(im, &cr, c->cos224)
                                                    : phash_ih_fast(im, &cr, c->pil_order, &c->failed);
        put_hash(c->hashes, v, h);
    }
}

/* The CUDA kernels' bodies, per view, on the CPU. */
static void phash_elem_task(void *vctx, int64_t begin, int64_t end) {
    phash_ctx *c = (phash_ctx *)vctx;
    for (int64_t v = begin; v < end; v++) {
        double b[4];
        load_box(c->boxes, v, b);
        const dr_image_ref *im = &c->images[image_of(c->index, v)];
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        double coef[64];
        if (c->method == DR_PHASH_DYNREFER) {
            double *cols = (double *)malloc(sizeof(double) * DR_PHASH_DYN_RES * 8);
            if (!cols) {
                c->failed = 1;
                return;
            }
            for (int64_t x = 0; x < DR_PHASH_DYN_RES; x++)
                dr_phash_dyn_column(im, &cr, x, cols + x * 8);
            for (int k = 0; k < 64; k++)
                coef[k] = dr_phash_dyn_coef(cols, k / 8, k % 8);
            free(cols);
        } else {
            uint8_t px[DR_PHASH_IH_RES * DR_PHASH_IH_RES];
            dr_axis ax = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, cr.w, DR_PHASH_IH_RES);
            dr_axis ay = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, cr.h, DR_PHASH_IH_RES);
            for (int64_t y = 0; y < DR_PHASH_IH_RES; y++)
                for (int64_t x = 0; x < DR_PHASH_IH_RES; x++)
                    px[y * DR_PHASH_IH_RES + x] = dr_pil_resize_px(
                        im, &cr, &ax, &ay, y, x, 0, 1,
                        dr_pil_vertical_first(cr.w, cr.h, DR_PHASH_IH_RES, DR_PHASH_IH_RES, c->pil_order));
            for (int k = 0; k < 64; k++)
                coef[k] = dr_imagehash_coef(px, k / 8, k % 8);
        }
        put_hash(c->hashes, v, dr_phash_bits(coef, c->method));
    }
}

dr_status dr_phash_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                       const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order, int elementwise) {
    int64_t nv = boxes->shape[0];
    dr_status st = check_index(image_index, nv, n_images, "phash");
    if (st != DR_OK)
        return st;
    for (int64_t i = 0; i < n_images; i++)
        if (images[i].h < 1 || images[i].w < 1)
            return dr_set_error(DR_EINVAL, "phash: image %lld is empty (%lld x %lld)", (long long)i,
                                (long long)images[i].h, (long long)images[i].w);
    static double cos224[8 * DR_PHASH_DYN_RES];
    static int ready = 0; /* the tables are pure functions: racing initialisers write the same values */
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        for (int u = 0; u < 8; u++)
            for (int64_t i = 0; i < DR_PHASH_DYN_RES; i++)
                cos224[u * DR_PHASH_DYN_RES + i] = dr_dct_cos(u, i, DR_PHASH_DYN_RES);
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    phash_ctx c = {images, boxes, image_index, hashes, method, pil_order, cos224, 0};
    dr_parallel_for(nv, 1, elementwise ? phash_elem_task : phash_task, &c);
    if (c.failed)
        return dr_set_error(DR_ENOMEM, "phash: out of memory");
    return DR_OK;
}

/* ---- select_views ------------------------------------------------------------------------------------ */

dr_status dr_select_views_cpu(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out) {
    int64_t nr = hashes->shape[0], nc = coeffs->shape[0], ns = out->shape[1];
    const uint64_t *h = (const uint64_t *)hashes->data;
    const double *tc = (const double *)coeffs->data;
    double *t = (double *)malloc((size_t)(nc > 0 ? nc : 1) * sizeof(double));
    if (!t)
        return dr_set_error(DR_ENOMEM, "select_views: out of memory");
    for (int64_t i = 0; i < nc; i++)
        t[i] = tc[i * coeffs->strides[0]];
    int64_t *o = (int64_t *)out->data;
    for (int64_t r = 0; r < nr; r++) {
        const uint64_t *row = h + r * hashes->strides[0];
        dr_select_region(row[0], row + hashes->strides[1], hashes->strides[1], t, nc, ns, o + r * out->strides[0],
                         out->strides[1]);
    }
    free(t);
    return DR_OK;
}
