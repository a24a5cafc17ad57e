/* phash.c — CPU kernels of phash (math in dr_phash.h, resampling in resample.c).
 *
 * The fast path works per view (one task per view on the thread pool) on each image's luma plane, computed once:
 * the official hash folds the crop's rows into the 8 low vertical frequencies (small crops) or resamples rows on
 * the fly (large ones); imagehash's resize runs as Pillow fixed-point row kernels. The `elementwise` path evaluates
 * the per-view bodies the CUDA kernel runs, so tests exercise the GPU arithmetic on the CPU.
 */
#include "dr_phash.h"
#include "resample.inc"

#ifdef DOT_X86
/* P[u][q] += m0[u] · g0[q] + m1[u] · g1[q] for the 8 frequencies: two source rows per pass over P (float32 FMAs). */
__attribute__((target("avx512f"))) static void fold_rows_512(float *P, int64_t w, const uint8_t *g0, const float *m0,
                                                             const uint8_t *g1, const float *m1) {
    int64_t q = 0;
    for (; q + 16 <= w; q += 16) {
        __m512 x0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(g0 + q))));
        __m512 x1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(g1 + q))));
        for (int u = 0; u < 8; u++) {
            float *pu = P + u * w + q;
            __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(m0[u]), x0, _mm512_loadu_ps(pu));
            _mm512_storeu_ps(pu, _mm512_fmadd_ps(_mm512_set1_ps(m1[u]), x1, v));
        }
    }
    for (; q < w; q++)
        for (int u = 0; u < 8; u++)
            P[u * w + q] += m0[u] * (float)g0[q] + m1[u] * (float)g1[q];
}
#endif

typedef struct {
    const dr_image_ref *images;
    const dr_tensor *boxes, *index;
    dr_tensor *hashes, *thumbs;
    int method, pil_order;
    const double *cos224; /* [8][224] */
    const double *dct_tab; /* dr_dct_tab_fill */
    uint8_t **planes;     /* per image: its luma (the method's formula), h × w contiguous */
    int failed;
} phash_ctx;

static void put_hash(dr_tensor *h, int64_t v, uint64_t value) { ((uint64_t *)h->data)[v * h->strides[0]] = value; }

static uint8_t *thumb_of(const phash_ctx *c, int64_t v) {
    return c->thumbs ? (uint8_t *)c->thumbs->data + v * DR_PHASH_IH_RES * DR_PHASH_IH_RES : NULL;
}

/* acc[u][x] += cy[u] · row[x] for the 8 low vertical frequencies (float32, vectorised). */
DR_SIMD_CLONES
static void dct_rows_accumulate(float acc[8][DR_PHASH_DYN_RES], const float *row, const float *cy) {
    for (int u = 0; u < 8; u++) {
        const float c = cy[u];
        float *a = acc[u];
        for (int64_t x = 0; x < DR_PHASH_DYN_RES; x++)
            a[x] += c * row[x];
    }
}

/* Official pHash of one view, large crops: resize rows on the fly, accumulate the 8 low vertical frequencies per
 * column (cost independent of the crop size). */
static uint64_t phash_dyn_rows(const dr_image_ref *im, const uint8_t *plane, const dr_crop *cr, const double *cs) {
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
    float acc[8][R];
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
                const uint8_t *g = plane + (cr->y0 + sy) * im->w;
                for (int64_t x = 0; x < R; x++)
                    h0[x] = (float)g[x0[x]] * wx0[x] + (float)g[x1[x]] * wx1[x];
            }
            cached0 = sy;
        }
        if (cached1 != sy1) {
            const uint8_t *g = plane + (cr->y0 + sy1) * im->w;
            for (int64_t x = 0; x < R; x++)
                h1[x] = (float)g[x0[x]] * wx0[x] + (float)g[x1[x]] * wx1[x];
            cached1 = sy1;
        }
        for (int64_t x = 0; x < R; x++)
            row[x] = h0[x] * wy0 + h1[x] * wy1;
        float cy[8];
        for (int u = 0; u < 8; u++)
            cy[u] = (float)cs[u * R + y];
        dct_rows_accumulate(acc, row, cy);
    }
    double coef[64];
    const double n = (double)R;
    for (int u = 0; u < 8; u++)
        for (int v = 0; v < 8; v++) {
            double s = 0.0;
            for (int64_t x = 0; x < R; x++)
                s += (double)acc[u][x] * cs[v * R + x];
            double cu = u == 0 ? sqrt(1.0 / n) : sqrt(2.0 / n), cv = v == 0 ? sqrt(1.0 / n) : sqrt(2.0 / n);
            coef[u * 8 + v] = s * cu * cv;
        }
    return dr_phash_bits(coef, DR_PHASH_DYNREFER);
}

/* P[u][q] += m[u] · g[q] for the 8 frequencies (float32, vectorised along the row; gf: scratch of w floats). */
DR_SIMD_CLONES
static void dct_fold_row(float *DR_RESTRICT P, int64_t w, const uint8_t *DR_RESTRICT g, const float *m,
                         float *DR_RESTRICT gf) {
    for (int64_t q = 0; q < w; q++)
        gf[q] = (float)g[q];
    for (int u = 0; u < 8; u++) {
        const float mu = m[u];
        float *pu = P + u * w;
        for (int64_t q = 0; q < w; q++)
            pu[q] += mu * gf[q];
    }
}

/* Official pHash of one view, small crops, without forming the 224 × 224 resize: with R = Wy · G · Wxᵀ (OpenCV's bilinear taps)
 * the low vertical frequencies are A = (C8 · Wy) · G · Wxᵀ, so fold each used source row of the crop into
 * P = (C8 · Wy) · G (8 sums per pixel, contiguous), then resample P's 8 rows horizontally and finish the DCT. */
static uint64_t phash_dyn_fold(const dr_image_ref *im, const uint8_t *plane, const dr_crop *cr, const double *cs,
                               int *failed) {
    enum { R = DR_PHASH_DYN_RES };
    dr_axis ax = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->w, R), ay = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->h, R);
    const int64_t w = cr->w, h = cr->h;
    double *M = (double *)calloc((size_t)(8 * h), sizeof(double)); /* M[r][u] = Σ_y c_u(y) · wy(y, r) */
    float *P = (float *)calloc((size_t)(9 * w), sizeof(float)); /* 8 rows + one scratch row */
    if (!M || !P) {
        free(M);
        free(P);
        *failed = 1;
        return 0;
    }
    for (int64_t y = 0; y < R; y++) {
        int64_t sy, ny;
        double fy;
        dr_axis_span(&ay, y, &sy, &ny, &fy);
        double wy0 = (double)(float)dr_axis_weight(&ay, sy, 0, fy, 1.0), wy1 = (double)(float)dr_axis_weight(&ay, sy, 1, fy, 1.0);
        int64_t sy1 = ny > 1 ? sy + 1 : sy;
        for (int u = 0; u < 8; u++) {
            M[sy * 8 + u] += cs[u * R + y] * wy0;
            M[sy1 * 8 + u] += cs[u * R + y] * wy1;
        }
    }
#ifdef DOT_X86
    const int wide = dr_cpu_level() >= DR_CPU_LEVEL_AVX512;
#else
    const int wide = 0;
#endif
    float mp[8];
    int64_t pending = -1; /* AVX-512: rows go in pairs */
    for (int64_t r = 0; r < h; r++) {
        float m[8];
        int any = 0;
        for (int u = 0; u < 8; u++) {
            m[u] = (float)M[r * 8 + u];
            any |= m[u] != 0.0f;
        }
        if (!any)
            continue;
        const uint8_t *g = plane + (cr->y0 + r) * im->w + cr->x0;
        if (!wide) {
            dct_fold_row(P, w, g, m, P + 8 * w);
        } else if (pending < 0) {
            pending = r;
            memcpy(mp, m, sizeof m);
        } else {
#ifdef DOT_X86
            fold_rows_512(P, w, plane + (cr->y0 + pending) * im->w + cr->x0, mp, g, m);
#endif
            pending = -1;
        }
    }
    if (pending >= 0)
        dct_fold_row(P, w, plane + (cr->y0 + pending) * im->w + cr->x0, mp, P + 8 * w);
    double acc[8][R];
    for (int64_t x = 0; x < R; x++) {
        int64_t s, n;
        double f;
        dr_axis_span(&ax, x, &s, &n, &f);
        double w0 = (double)(float)dr_axis_weight(&ax, s, 0, f, 1.0), w1 = (double)(float)dr_axis_weight(&ax, s, 1, f, 1.0);
        int64_t s1 = n > 1 ? s + 1 : s;
        for (int u = 0; u < 8; u++)
            acc[u][x] = w0 * (double)P[u * w + s] + w1 * (double)P[u * w + s1];
    }
    free(M);
    free(P);
    double coef[64];
    const double nn = (double)R;
    for (int u = 0; u < 8; u++)
        for (int v = 0; v < 8; v++) {
            double sum = 0.0;
            for (int64_t x = 0; x < R; x++)
                sum += acc[u][x] * cs[v * R + x];
            double cu = u == 0 ? sqrt(1.0 / nn) : sqrt(2.0 / nn), cv = v == 0 ? sqrt(1.0 / nn) : sqrt(2.0 / nn);
            coef[u * 8 + v] = sum * cu * cv;
        }
    return dr_phash_bits(coef, DR_PHASH_DYNREFER);
}

/* dr_dct32 of every column of a [32][nc] block at once (nc <= 32): the same double operations per column as
 * dr_dct_fold, in the same order, so the same values — vectorised across columns. */
DR_SIMD_CLONES
static void dct32_cols(const double *x, int64_t nc, int k, const double *tab, double *out) {
    double p[32 * 32];
    int64_t n = 32;
    memcpy(p, x, sizeof(double) * (size_t)(32 * nc));
    while (k > 0 && (k & 1) == 0 && n > 1) {
        for (int64_t i = 0; i < n / 2; i++)
            for (int64_t c = 0; c < nc; c++)
                p[i * nc + c] = p[i * nc + c] + p[(n - 1 - i) * nc + c];
        n /= 2;
        k /= 2;
    }
    if (k == 0) {
        for (int64_t m = n; m > 1; m /= 2)
            for (int64_t i = 0; i < m / 2; i++)
                for (int64_t c = 0; c < nc; c++)
                    p[i * nc + c] = p[2 * i * nc + c] + p[(2 * i + 1) * nc + c];
        for (int64_t c = 0; c < nc; c++)
            out[c] = 2.0 * p[c];
        return;
    }
    double acc[32] = {0};
    for (int64_t i = 0; i < n / 2; i++) {
        const double cs = tab[dr_dct_tab_off(n) + (k / 2) * (n / 2) + i];
        for (int64_t c = 0; c < nc; c++)
            acc[c] += (p[i * nc + c] - p[(n - 1 - i) * nc + c]) * cs;
    }
    for (int64_t c = 0; c < nc; c++)
        out[c] = 2.0 * acc[c];
}

/* imagehash pHash of one view: Pillow LANCZOS 32 × 32 of the luma crop (fixed point, uint8 between passes; the
 * source-sized pass as row dot products, the 32-wide one as row combinations), separable DCT of the low 8 × 8,
 * median threshold. Returns 0 and sets *failed on allocation failure. */
static uint64_t phash_ih_fast(const dr_image_ref *im, const uint8_t *plane, const dr_crop *cr, int pil_order,
                              const double *tab, uint8_t *thumb, int *failed, dr_scratch *sc) {
    enum { R = DR_PHASH_IH_RES };
    int own_x, own_y;
    dr_dot_taps *dx = dr_lanczos32_taps(cr->w, &own_x), *dy = dr_lanczos32_taps(cr->h, &own_y);
    uint8_t px[R * R];
    const uint8_t *src = plane + cr->y0 * im->w + cr->x0;
    int rc = -1;
    if (dx && dy) {
        const dr_taps *ty = &dy->t;
        if (!dr_pil_vertical_first(cr->w, cr->h, R, R, pil_order)) {
            /* rows → [32][rows] (written transposed), so the vertical pass is row dot products too */
            int64_t ylo, yhi;
            dr_taps_rows(ty, R, &ylo, &yhi);
            int64_t rows = yhi - ylo;
            uint8_t *t2 = (uint8_t *)dr_scratch_get(sc, 1, (size_t)(rows * R + DOT_OVER(rows)));
            if (t2) {
                dr_dot_rows(src + ylo * im->w, im->w, rows, dx, 0, R, t2, 1, rows); /* stored transposed */
                memset(t2 + rows * R, 0, (size_t)DOT_OVER(rows));
                dr_dot_rows(t2, rows, R, dy, ylo, R, px, 1, R);
                rc = 0;
            }
        } else { /* 32 row combinations over the crop → [32][w], then row dot products */
            uint8_t *t1 = (uint8_t *)dr_scratch_get(sc, 0, (size_t)(R * cr->w + DOT_OVER(cr->w)));
            int32_t *acc = (int32_t *)dr_scratch_get(sc, 2, (size_t)cr->w * sizeof(int32_t));
            if (t1 && acc) {
                memset(t1 + R * cr->w, 0, (size_t)DOT_OVER(cr->w));
                for (int64_t y = 0; y < R; y++)
                    dr_combine_rows_u8(src, im->w, ty->start[y], ty->n[y], ty->wi + y * ty->kmax, cr->w, acc,
                                    t1 + y * cr->w);
                dr_dot_rows(t1, cr->w, R, dx, 0, R, px, R, 1);
                rc = 0;
            }
        }
    }
    if (own_x)
        dr_dot_taps_free(dx);
    if (own_y)
        dr_dot_taps_free(dy);
    if (rc < 0) {
        *failed = 1;
        return 0;
    }
    if (thumb)
        memcpy(thumb, px, sizeof px);
    /* DCT-II along axis 0 for u < 8 (all 32 columns at once), then along axis 1 for v < 8 (all 8 rows u at once):
     * scipy's unnormalised 2·Σ per axis, the operations of dr_dct32 */
    double X[R * R], t[8][R], Y[R * 8], cv[8], coef[64];
    for (int64_t i = 0; i < R * R; i++)
        X[i] = (double)px[i];
    for (int u = 0; u < 8; u++)
        dct32_cols(X, R, u, tab, t[u]);
    for (int64_t j = 0; j < R; j++)
        for (int u = 0; u < 8; u++)
            Y[j * 8 + u] = t[u][j];
    for (int v = 0; v < 8; v++) {
        dct32_cols(Y, 8, v, tab, cv);
        for (int u = 0; u < 8; u++)
            coef[u * 8 + v] = cv[u];
    }
    return dr_phash_bits(coef, DR_PHASH_IMAGEHASH);
}

/* Bytes after a luma plane that the row kernels may read (zero weights meet them). */
#ifdef DOT_X86
#define PLANE_OVER(w) AMX_OVER(w)
#else
#define PLANE_OVER(w) DOT_OVER(w)
#endif

static int64_t fold_limit(void) {
#ifdef DOT_X86
    if (dr_cpu_level() >= DR_CPU_LEVEL_AVX512)
        return 500000;
#endif
    return 150000;
}

static void phash_task(void *vctx, int64_t begin, int64_t end) {
    phash_ctx *c = (phash_ctx *)vctx;
    dr_scratch sc;
    memset(&sc, 0, sizeof sc);
#ifdef DOT_X86
    const int amx = c->method == DR_PHASH_IMAGEHASH && dr_cpu_level() == DR_CPU_LEVEL_AMX;
    if (amx)
        dr_amx_tiles_load();
#endif
    for (int64_t v = begin; v < end; v++) {
        double b[4];
        load_box(c->boxes, v, b);
        const dr_image_ref *im = &c->images[image_of(c->index, v)];
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        const uint8_t *plane = c->planes[image_of(c->index, v)];
        /* the fold costs ~8 FMAs per pixel of the rows bilinear taps use (at most 2·224), the row method a
         * constant ~224·224·(8 + 4) with gathers: measured, the fold wins up to ~500k such pixels with AVX-512
         * (two rows per pass), ~150k without */
        uint64_t h;
        const int64_t used = cr.h < 2 * DR_PHASH_DYN_RES ? cr.h : 2 * DR_PHASH_DYN_RES;
        if (c->method != DR_PHASH_DYNREFER)
            h = phash_ih_fast(im, plane, &cr, c->pil_order, c->dct_tab, thumb_of(c, v), &c->failed, &sc);
        else if (used * cr.w <= fold_limit())
            h = phash_dyn_fold(im, plane, &cr, c->cos224, &c->failed);
        else
            h = phash_dyn_rows(im, plane, &cr, c->cos224);
        put_hash(c->hashes, v, h);
    }
#ifdef DOT_X86
    if (amx)
        dr_amx_tiles_release();
#endif
    dr_scratch_free(&sc);
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
            if (thumb_of(c, v))
                memcpy(thumb_of(c, v), px, sizeof px);
            for (int k = 0; k < 64; k++)
                coef[k] = dr_imagehash_coef(px, k / 8, k % 8);
        }
        put_hash(c->hashes, v, dr_phash_bits(coef, c->method));
    }
}

typedef struct {
    const dr_image_ref *images;
    uint8_t **planes;
    int64_t *row0; /* first global row of each image; row0[n] = total */
    int64_t n;
    int method;
} luma_ctx;

static void luma_task(void *vctx, int64_t begin, int64_t end) {
    luma_ctx *c = (luma_ctx *)vctx;
    int64_t i = 0;
    for (int64_t g = begin; g < end; g++) {
        while (g >= c->row0[i + 1])
            i++;
        const dr_image_ref *im = &c->images[i];
        int64_t y = g - c->row0[i];
        uint8_t *d = c->planes[i] + y * im->w;
        if (c->method == DR_PHASH_DYNREFER)
            for (int64_t x = 0; x < im->w; x++)
                d[x] = dr_luma_cv(im, y, x);
        else
            for (int64_t x = 0; x < im->w; x++)
                d[x] = dr_luma_pil(im, y, x);
    }
}

dr_status dr_phash_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                       const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order, int elementwise,
                       dr_tensor *thumbs) {
    int64_t nv = boxes->shape[0];
    dr_status st = check_images(images, n_images, image_index, nv, "phash");
    if (st != DR_OK)
        return st;
    static double cos224[8 * DR_PHASH_DYN_RES], dct_tab[DR_DCT_TAB_SIZE];
    static int ready = 0; /* the tables are pure functions: racing initialisers write the same values */
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        for (int u = 0; u < 8; u++)
            for (int64_t i = 0; i < DR_PHASH_DYN_RES; i++)
                cos224[u * DR_PHASH_DYN_RES + i] = dr_dct_cos(u, i, DR_PHASH_DYN_RES);
        dr_dct_tab_fill(dct_tab);
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    phash_ctx c = {images, boxes, image_index, hashes, thumbs, method, pil_order, cos224, dct_tab, NULL, 0};
    if (elementwise) {
        dr_parallel_for(nv, 1, phash_elem_task, &c);
    } else if (nv > 0) {
        /* the luma of each image once, shared by all its views */
        uint8_t **planes = (uint8_t **)calloc((size_t)n_images, sizeof(uint8_t *));
        int64_t *row0 = (int64_t *)malloc((size_t)(n_images + 1) * sizeof(int64_t));
        int ok = planes && row0;
        for (int64_t i = 0; ok && i < n_images; i++) {
            planes[i] = (uint8_t *)malloc((size_t)(images[i].h * images[i].w + PLANE_OVER(images[i].w)));
            ok = planes[i] != NULL;
            if (ok)
                memset(planes[i] + images[i].h * images[i].w, 0, (size_t)PLANE_OVER(images[i].w));
        }
        if (ok) {
            row0[0] = 0;
            for (int64_t i = 0; i < n_images; i++)
                row0[i + 1] = row0[i] + images[i].h;
            luma_ctx lc = {images, planes, row0, n_images, method};
            dr_parallel_for(row0[n_images], 16, luma_task, &lc);
            c.planes = planes;
            dr_parallel_for(nv, 1, phash_task, &c);
        }
        for (int64_t i = 0; planes && i < n_images; i++)
            free(planes[i]);
        free(planes);
        free(row0);
        if (!ok)
            c.failed = 1;
    }
    if (c.failed)
        return dr_set_error(DR_ENOMEM, "phash: out of memory");
    return DR_OK;
}
