/* phash.c — CPU kernels of phash (math in dr_phash.h, resampling in resample.c).
 *
 * The fast path works per view (one task per view on the thread pool) on each image's luma plane, computed once:
 * the official hash folds the crop's rows into the 8 low vertical frequencies (small crops) or resamples rows on
 * the fly (large ones); imagehash's resize runs as Pillow fixed-point kernels (16 rows per vector with AVX-512
 * VNNI) and its DCT on 8 lines per vector. The `elementwise` path evaluates
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

/* The luma of the part of an image its views read: the rectangle [x0, x0 + w) × [y0, y0 + h) bounding their crops,
 * row stride w (plus zeroed padding the row kernels may read). */
typedef struct {
    uint8_t *data;
    int64_t x0, y0, w, h;
} luma_plane;

typedef struct {
    const dr_image_ref *images;
    const dr_tensor *boxes, *index;
    dr_tensor *hashes, *thumbs;
    int method, pil_order;
    int64_t hash_size, res, words; /* imagehash: K, R = K · highfreq_factor, uint64 words per hash */
    const double *cos224;          /* [8][224] */
    const dr_dct2_plan *plan;      /* imagehash: length-R DCT-II */
    luma_plane *planes;            /* per image */
    int failed;
} phash_ctx;

static void put_hash(dr_tensor *h, int64_t v, uint64_t value) { ((uint64_t *)h->data)[v * h->strides[0]] = value; }

static void put_words(dr_tensor *h, int64_t v, const uint64_t *w, int64_t n) {
    if (h->ndim == 1)
        put_hash(h, v, w[0]);
    else
        for (int64_t k = 0; k < n; k++)
            ((uint64_t *)h->data)[v * h->strides[0] + k * h->strides[1]] = w[k];
}

static uint8_t *thumb_of(const phash_ctx *c, int64_t v) {
    return c->thumbs ? (uint8_t *)c->thumbs->data + v * c->res * c->res : NULL;
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
static uint64_t phash_dyn_rows(const uint8_t *crop, int64_t stride, const dr_crop *cr, const double *cs) {
    enum { R = DR_PHASH_DYN_RES };
    dr_axis ax = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->w, R), ay = dr_axis_make(DR_RS_CV, DR_FILTER_BILINEAR, cr->h, R);
    int64_t x0[R], x1[R];
    float wx0[R], wx1[R];
    for (int64_t x = 0; x < R; x++) {
        int64_t s, n;
        double f;
        dr_axis_span(&ax, x, &s, &n, &f);
        x0[x] = s;
        x1[x] = n > 1 ? s + 1 : s;
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
                const uint8_t *g = crop + sy * stride;
                for (int64_t x = 0; x < R; x++)
                    h0[x] = (float)g[x0[x]] * wx0[x] + (float)g[x1[x]] * wx1[x];
            }
            cached0 = sy;
        }
        if (cached1 != sy1) {
            const uint8_t *g = crop + sy1 * stride;
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
    return dr_phash_bits(coef);
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
static uint64_t phash_dyn_fold(const uint8_t *crop, int64_t stride, const dr_crop *cr, const double *cs,
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
        const uint8_t *g = crop + r * stride;
        if (!wide) {
            dct_fold_row(P, w, g, m, P + 8 * w);
        } else if (pending < 0) {
            pending = r;
            memcpy(mp, m, sizeof m);
        } else {
#ifdef DOT_X86
            fold_rows_512(P, w, crop + pending * stride, mp, g, m);
#endif
            pending = -1;
        }
    }
    if (pending >= 0)
        dct_fold_row(P, w, crop + pending * stride, mp, P + 8 * w);
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
    return dr_phash_bits(coef);
}

/* The k-th smallest of a[0 .. n) (k < n), the array reordered: a[k] holds it, a[0 .. k) are <= it and a(k .. n) >=
 * it. The median is a value, so it does not depend on how it is found. */
static double select_kth(double *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const double pv = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pv)
                i++;
            while (a[j] > pv)
                j--;
            if (i <= j) {
                double t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    return a[k];
}

/* imagehash's bits of K × K coefficients (row-major) into W words (dr_ih_word): bit = c > numpy's median. */
static void ih_bits(const double *coef, int64_t K, double *sorted, uint64_t *out, int64_t W) {
    const int64_t L = K * K, lo = (L - 1) / 2, hi = L / 2;
    memcpy(sorted, coef, (size_t)L * sizeof(double));
    double mid[2];
    mid[0] = select_kth(sorted, L, lo);
    mid[1] = mid[0];
    for (int64_t i = lo + 1; hi > lo && i < L; i++) /* the next value: the smallest of those after lo */
        mid[1] = i == lo + 1 || sorted[i] < mid[1] ? sorted[i] : mid[1];
    const double med = dr_ih_median(mid, K);
    for (int64_t w = 0; w < W; w++)
        out[w] = dr_ih_word(coef, K, K, med, w);
}

#ifdef DOT_X86

/* ---- imagehash's LANCZOS passes, 16 rows per vector (AVX-512 VNNI) ------------------------------------------
 * A pass computes, for m outputs x and every row r, Pillow's ½ + Σ_j k_x[j] · p[r][s_x + j] (int32, 22-bit weights),
 * clipped to 8 bits. Here the 16 int32 lanes of a vector are 16 rows, so no horizontal sums are needed: the rows'
 * samples are transposed in 4-byte groups ("quads": Q[q][r] = samples 4q .. 4q + 3 of row r), each weight is split
 * exactly into signed bytes k = d0 + 256·d1 + 65536·d2, and vpdpbusd adds 4 taps × 16 rows per instruction and
 * digit. Σ p·d0 + 256·Σ p·d1 + 65536·Σ p·d2 is the sum Pillow forms (exact in int32), so the result is Pillow's
 * bit for bit. The taps of an output start at a quad boundary (zero weights before and after its span). */
typedef struct {
    int64_t m, mp;   /* outputs; padded to a multiple of 4 (the padding outputs have zero weights) */
    int64_t off;     /* the first sample any tap reads: quad 0 starts there */
    int64_t len;     /* samples from off that the taps read */
    int64_t nq;      /* quads per output: the longest span */
    int64_t qmax;    /* quads the kernel may read: max(q0) + nq */
    int64_t *q0;     /* [mp] first quad of each output */
    int32_t *w;      /* [mp][nq][3] the 3 digits' 4 signed bytes for each quad */
} quad_taps;

static void quad_taps_free(quad_taps *q) {
    if (q) {
        free(q->q0);
        free(q->w);
        free(q);
    }
}

static quad_taps *quad_taps_make(const dr_taps *t, int64_t m) {
    quad_taps *q = (quad_taps *)calloc(1, sizeof *q);
    if (!q)
        return NULL;
    int64_t lo = t->start[0], hi = t->start[0] + t->n[0];
    for (int64_t x = 0; x < m; x++) {
        lo = t->start[x] < lo ? t->start[x] : lo;
        hi = t->start[x] + t->n[x] > hi ? t->start[x] + t->n[x] : hi;
    }
    q->m = m;
    q->mp = (m + 3) / 4 * 4;
    q->off = lo;
    q->len = hi - lo;
    for (int64_t x = 0; x < m; x++) {
        int64_t s = t->start[x] - lo, n = (s % 4 + t->n[x] + 3) / 4;
        q->nq = n > q->nq ? n : q->nq;
    }
    q->q0 = (int64_t *)calloc((size_t)q->mp, sizeof(int64_t));
    q->w = (int32_t *)calloc((size_t)(q->mp * q->nq * 3), sizeof(int32_t));
    if (!q->q0 || !q->w) {
        quad_taps_free(q);
        return NULL;
    }
    for (int64_t x = 0; x < m; x++) {
        int64_t s = t->start[x] - lo;
        q->q0[x] = s / 4;
        uint8_t *b = (uint8_t *)(q->w + x * q->nq * 3);
        for (int64_t j = 0; j < t->n[x]; j++) {
            int32_t k = t->wi[x * t->kmax + j], d[3];
            d[0] = (int8_t)(uint8_t)(k & 255); /* signed digits: each step leaves an exact multiple of 256 */
            k = (k - d[0]) / 256;
            d[1] = (int8_t)(uint8_t)(k & 255);
            d[2] = (k - d[1]) / 256; /* |k| <= 2^22 + rounding: |d2| <= 65 */
            int64_t p = s % 4 + j;   /* position in the output's quads */
            for (int e = 0; e < 3; e++)
                b[((p / 4) * 3 + e) * 4 + p % 4] = (uint8_t)(int8_t)d[e];
        }
    }
    for (int64_t x = 0; x < q->mp; x++)
        q->qmax = q->q0[x] + q->nq > q->qmax ? q->q0[x] + q->nq : q->qmax;
    return q;
}

/* Process-wide cache of the quad form of the LANCZOS → 32 taps by source length (as dr_lanczos_taps'). */
#define QUAD_CACHE_LEN 4096
#define QUAD_CACHE_BYTES ((size_t)32 << 20)
static quad_taps *quad_cache[QUAD_CACHE_LEN];
static size_t quad_cache_bytes;

/* The quad form of the taps d (n samples → m outputs); *owned = 1 when the caller must free it. */
static quad_taps *quad_taps_of(const dr_dot_taps *d, int64_t n, int64_t m, int *owned) {
    *owned = 0;
    const int cached = m == DR_PHASH_IH_RES && n < QUAD_CACHE_LEN;
    if (cached) {
        quad_taps *q = __atomic_load_n(&quad_cache[n], __ATOMIC_ACQUIRE);
        if (q)
            return q;
    }
    quad_taps *q = quad_taps_make(&d->t, m);
    if (!q || !cached) {
        *owned = q != NULL;
        return q;
    }
    size_t bytes = sizeof *q + (size_t)(q->mp * (8 + 12 * q->nq));
    if (__atomic_add_fetch(&quad_cache_bytes, bytes, __ATOMIC_RELAXED) > QUAD_CACHE_BYTES) {
        *owned = 1;
        return q;
    }
    quad_taps *expected = NULL;
    if (!__atomic_compare_exchange_n(&quad_cache[n], &expected, q, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        quad_taps_free(q); /* another thread published the same taps first */
        return expected;
    }
    return q;
}

/* Quads of scratch quad_pass needs (16 uint32 each). */
static int64_t quad_scratch(const quad_taps *q) {
    int64_t nqin = (q->len + 63) / 64 * 16;
    return nqin > q->qmax ? nqin : q->qmax;
}

/* 16 × 16 uint32 transpose in registers: v[i] (row i) → v[j] (column j). */
__attribute__((target("avx512f"))) static inline void transpose16x16(__m512i *v) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* b[4i + c], 128-bit lane L: rows 4i .. 4i + 3 of column 4L + c */
        b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i s0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), s1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
        __m512i s2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), s3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
        v[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
        v[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
        v[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
    }
}

/* dst[x·ld + r] = the pass's 8-bit output x of row r (r < rows, x < m), src[r·stride] being sample q->off of row
 * r; reads only the q->len samples of each row from there. Q: quad_scratch(q) · 64 bytes. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void quad_pass(const uint8_t *src, int64_t stride,
                                                                             int64_t rows, const quad_taps *q,
                                                                             uint8_t *dst, int64_t ld, __m512i *Q) {
    const int64_t nch = (q->len + 63) / 64, nq = q->nq;
    const __m512i half = _mm512_set1_epi32(1 << (DR_PIL_PRECISION_BITS - 1)), zero = _mm512_setzero_si512();
    for (int64_t i = nch * 16; i < quad_scratch(q); i++)
        _mm512_store_si512(Q + i, zero); /* quads past the samples meet zero weights only */
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int64_t nr = rows - r0 < 16 ? rows - r0 : 16;
        for (int64_t c = 0; c < nch; c++) {
            const int64_t nb = q->len - 64 * c;
            const __mmask64 mk = nb >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << nb) - 1);
            __m512i v[16];
            if (nr == 16)
                for (int64_t i = 0; i < 16; i++)
                    v[i] = _mm512_maskz_loadu_epi8(mk, src + (r0 + i) * stride + 64 * c);
            else
                for (int64_t i = 0; i < 16; i++)
                    v[i] = i < nr ? _mm512_maskz_loadu_epi8(mk, src + (r0 + i) * stride + 64 * c) : zero;
            transpose16x16(v);
            for (int i = 0; i < 16; i++)
                _mm512_store_si512(Q + 16 * c + i, v[i]);
        }
        const __mmask16 sm = (__mmask16)((1u << nr) - 1);
        for (int64_t x = 0; x < q->mp; x += 4) {
            /* 12 named accumulators (4 outputs × 3 digits): independent chains, no spills between taps */
            __m512i a00 = zero, a01 = zero, a02 = zero, a10 = zero, a11 = zero, a12 = zero;
            __m512i a20 = zero, a21 = zero, a22 = zero, a30 = zero, a31 = zero, a32 = zero;
            const __m512i *p0 = Q + q->q0[x], *p1 = Q + q->q0[x + 1], *p2 = Q + q->q0[x + 2], *p3 = Q + q->q0[x + 3];
            const int32_t *w0 = q->w + x * nq * 3, *w1 = w0 + nq * 3, *w2 = w1 + nq * 3, *w3 = w2 + nq * 3;
            for (int64_t j = 0; j < nq; j++, w0 += 3, w1 += 3, w2 += 3, w3 += 3) {
                const __m512i v0 = _mm512_load_si512(p0 + j), v1 = _mm512_load_si512(p1 + j);
                const __m512i v2 = _mm512_load_si512(p2 + j), v3 = _mm512_load_si512(p3 + j);
                a00 = _mm512_dpbusd_epi32(a00, v0, _mm512_set1_epi32(w0[0]));
                a01 = _mm512_dpbusd_epi32(a01, v0, _mm512_set1_epi32(w0[1]));
                a02 = _mm512_dpbusd_epi32(a02, v0, _mm512_set1_epi32(w0[2]));
                a10 = _mm512_dpbusd_epi32(a10, v1, _mm512_set1_epi32(w1[0]));
                a11 = _mm512_dpbusd_epi32(a11, v1, _mm512_set1_epi32(w1[1]));
                a12 = _mm512_dpbusd_epi32(a12, v1, _mm512_set1_epi32(w1[2]));
                a20 = _mm512_dpbusd_epi32(a20, v2, _mm512_set1_epi32(w2[0]));
                a21 = _mm512_dpbusd_epi32(a21, v2, _mm512_set1_epi32(w2[1]));
                a22 = _mm512_dpbusd_epi32(a22, v2, _mm512_set1_epi32(w2[2]));
                a30 = _mm512_dpbusd_epi32(a30, v3, _mm512_set1_epi32(w3[0]));
                a31 = _mm512_dpbusd_epi32(a31, v3, _mm512_set1_epi32(w3[1]));
                a32 = _mm512_dpbusd_epi32(a32, v3, _mm512_set1_epi32(w3[2]));
            }
            const __m512i a[4][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
            for (int e = 0; e < 4 && x + e < q->m; e++) {
                __m512i s = _mm512_add_epi32(a[e][0], _mm512_slli_epi32(a[e][1], 8));
                s = _mm512_add_epi32(_mm512_add_epi32(s, _mm512_slli_epi32(a[e][2], 16)), half);
                s = _mm512_max_epi32(_mm512_srai_epi32(s, DR_PIL_PRECISION_BITS), zero); /* then saturation to 255 */
                _mm512_mask_cvtusepi32_storeu_epi8(dst + (x + e) * ld + r0, sm, s);
            }
        }
    }
}
#endif

/* imagehash pHash of one view (hash_size K, resize side R = K · highfreq_factor): Pillow LANCZOS R × R of the luma
 * crop (fixed point, uint8 between passes; horizontal first: both passes as quad_pass with AVX-512 VNNI, else row
 * dot products; vertical first: row combinations, then row dot products), scipy's DCT-II along axis 0 then axis 1
 * (dr_dct2_exec8: scipy's own arithmetic on 8 lines per vector, so coefficients that vanish in exact arithmetic
 * carry scipy's rounding), the low K × K block, median threshold into `out` (W words). Returns -1 on allocation
 * failure. */
static int phash_ih_fast(const uint8_t *plane, int64_t pstride, const dr_crop *cr, int pil_order, int64_t R, int64_t K,
                         const dr_dct2_plan *plan, uint8_t *thumb, uint64_t *out, int64_t W, dr_scratch *sc) {
    int own_x, own_y;
    dr_dot_taps *dx = dr_lanczos_taps(cr->w, R, &own_x), *dy = dr_lanczos_taps(cr->h, R, &own_y);
    uint8_t *px = (uint8_t *)dr_scratch_get(sc, 3, (size_t)(R * R));
    const uint8_t *src = plane;
    int rc = -1;
    if (dx && dy && px) {
        const dr_taps *ty = &dy->t;
        const int vfirst = dr_pil_vertical_first(cr->w, cr->h, R, R, pil_order);
#ifdef DOT_X86
        if (!vfirst && !dx->amx && dr_cpu_level() >= DR_CPU_LEVEL_AVX512) {
            /* both passes 16 rows per vector: rows → [R][rows], then its R rows → px */
            int oqx = 0, oqy = 0;
            quad_taps *qx = quad_taps_of(dx, cr->w, R, &oqx), *qy = qx ? quad_taps_of(dy, cr->h, R, &oqy) : NULL;
            if (qy) {
                const int64_t rows = qy->len, nq = quad_scratch(qx) > quad_scratch(qy) ? quad_scratch(qx) : quad_scratch(qy);
                uint8_t *t2 = (uint8_t *)dr_scratch_get(sc, 1, (size_t)(rows * R));
                uint8_t *qb = (uint8_t *)dr_scratch_get(sc, 0, (size_t)(nq * 64 + 64));
                if (t2 && qb) {
                    __m512i *Q = (__m512i *)(qb + (64 - (uintptr_t)qb % 64) % 64);
                    quad_pass(src + qy->off * pstride + qx->off, pstride, rows, qx, t2, rows, Q);
                    quad_pass(t2, rows, R, qy, px, R, Q);
                    rc = 0;
                }
            }
            if (oqx)
                quad_taps_free(qx);
            if (oqy)
                quad_taps_free(qy);
        } else
#endif
        if (!vfirst) {
            /* rows → [R][rows] (written transposed), so the vertical pass is row dot products too */
            int64_t ylo, yhi;
            dr_taps_rows(ty, R, &ylo, &yhi);
            int64_t rows = yhi - ylo;
            uint8_t *t2 = (uint8_t *)dr_scratch_get(sc, 1, (size_t)(rows * R + DOT_OVER(rows)));
            if (t2) {
                dr_dot_rows(src + ylo * pstride, pstride, rows, dx, 0, R, t2, 1, rows); /* stored transposed */
                memset(t2 + rows * R, 0, (size_t)DOT_OVER(rows));
                dr_dot_rows(t2, rows, R, dy, ylo, R, px, 1, R);
                rc = 0;
            }
        } else { /* R row combinations over the crop → [R][w], then row dot products */
            uint8_t *t1 = (uint8_t *)dr_scratch_get(sc, 0, (size_t)(R * cr->w + DOT_OVER(cr->w)));
            int32_t *acc = (int32_t *)dr_scratch_get(sc, 2, (size_t)cr->w * sizeof(int32_t));
            if (t1 && acc) {
                memset(t1 + R * cr->w, 0, (size_t)DOT_OVER(cr->w));
                for (int64_t y = 0; y < R; y++)
                    dr_combine_rows_u8(src, pstride, ty->start[y], ty->n[y], ty->wi + y * ty->kmax, cr->w, acc,
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
    const int64_t Kp = (K + 7) / 8 * 8;
    double *buf = rc < 0 ? NULL : (double *)dr_scratch_get(sc, 4, (size_t)(16 * R + R * Kp + K * K) * sizeof(double));
    if (!buf)
        return -1;
    if (thumb)
        memcpy(thumb, px, (size_t)(R * R));
    /* axis 0: the DCT of 8 columns at a time (one per lane; lanes past R compute zeros), their first K values into
     * T[j][u]; axis 1: the DCT of 8 of those K rows at a time, their first K values into coef[u][v] */
    double *V = buf, *work = buf + 8 * R, *T = work + 8 * R, *coef = T + R * Kp;
    for (int64_t j0 = 0; j0 < R; j0 += 8) {
        const int64_t nl = R - j0 < 8 ? R - j0 : 8;
        for (int64_t i = 0; i < R; i++)
            for (int64_t l = 0; l < 8; l++)
                V[i * 8 + l] = l < nl ? (double)px[i * R + j0 + l] : 0.0;
        dr_dct2_exec8(plan, V, work);
        for (int64_t l = 0; l < nl; l++)
            for (int64_t u = 0; u < Kp; u++)
                T[(j0 + l) * Kp + u] = u < K ? V[u * 8 + l] : 0.0;
    }
    for (int64_t u0 = 0; u0 < K; u0 += 8) {
        for (int64_t j = 0; j < R; j++)
            memcpy(V + j * 8, T + j * Kp + u0, 8 * sizeof(double));
        dr_dct2_exec8(plan, V, work);
        for (int64_t l = 0; l < 8 && u0 + l < K; l++)
            for (int64_t v = 0; v < K; v++)
                coef[(u0 + l) * K + v] = V[v * 8 + l];
    }
    double *sorted = (double *)dr_scratch_get(sc, 5, (size_t)(K * K) * sizeof(double));
    if (!sorted)
        return -1;
    ih_bits(coef, K, sorted, out, W);
    return 0;
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
    uint64_t wbuf[64], *wp = c->words <= 64 ? wbuf : (uint64_t *)malloc((size_t)c->words * sizeof(uint64_t));
    if (!wp)
        c->failed = 1;
    for (int64_t v = begin; wp && v < end; v++) {
        double b[4];
        load_box(c->boxes, v, b);
        const dr_image_ref *im = &c->images[image_of(c->index, v)];
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        const luma_plane *pl = &c->planes[image_of(c->index, v)];
        const uint8_t *crop = pl->data + (cr.y0 - pl->y0) * pl->w + (cr.x0 - pl->x0);
        /* the fold costs ~8 FMAs per pixel of the rows bilinear taps use (at most 2·224), the row method a
         * constant ~224·224·(8 + 4) with gathers: measured, the fold wins up to ~500k such pixels with AVX-512
         * (two rows per pass), ~150k without */
        const int64_t used = cr.h < 2 * DR_PHASH_DYN_RES ? cr.h : 2 * DR_PHASH_DYN_RES;
        if (c->method != DR_PHASH_DYNREFER) {
            if (phash_ih_fast(crop, pl->w, &cr, c->pil_order, c->res, c->hash_size, c->plan, thumb_of(c, v), wp,
                              c->words, &sc) < 0) {
                c->failed = 1;
                break;
            }
            put_words(c->hashes, v, wp, c->words);
        } else if (used * cr.w <= fold_limit()) {
            put_hash(c->hashes, v, phash_dyn_fold(crop, pl->w, &cr, c->cos224, &c->failed));
        } else {
            put_hash(c->hashes, v, phash_dyn_rows(crop, pl->w, &cr, c->cos224));
        }
    }
    if (wp != wbuf)
        free(wp);
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
            dr_phash_dyn_tap *taps = (dr_phash_dyn_tap *)malloc(sizeof(dr_phash_dyn_tap) * 2 * DR_PHASH_DYN_RES);
            if (!cols || !taps) {
                free(cols);
                free(taps);
                c->failed = 1;
                return;
            }
            for (int64_t e = 0; e < 2 * DR_PHASH_DYN_RES; e++)
                dr_phash_dyn_taps(&cr, taps, e);
            for (int64_t x = 0; x < DR_PHASH_DYN_RES; x++)
                dr_phash_dyn_column(im, &cr, taps, x, c->cos224, cols + x * 8);
            free(taps);
            for (int k = 0; k < 64; k++)
                coef[k] = dr_phash_dyn_coef(cols, c->cos224, k / 8, k % 8);
            free(cols);
        } else { /* the CUDA kernel's steps, one thread's work at a time (R <= DR_PHASH_IH_GPU_RES) */
            const int64_t R = c->res, K = c->hash_size, L = K * K;
            uint8_t *px = (uint8_t *)malloc((size_t)(R * R));
            double *T = (double *)malloc(DR_PHASH_IH_TILE_BYTES); /* also the pixels' scratch, as on the GPU */
            if (!px || !T) {
                free(px);
                free(T);
                c->failed = 1;
                return;
            }
            dr_ih_tile t;
            dr_ih_tile_begin(&cr, R, c->pil_order, &t);
            if (t.table) {
                for (int64_t e = 0; e < 2 * R + R * R; e++)
                    dr_ih_tile_taps(&t, T, e);
                for (int64_t c0 = 0; c0 < t.lines; c0 += t.chunk) {
                    for (int64_t e = 0; e < dr_ih_tile_pass_count(&t, c0); e++)
                        dr_ih_tile_pass(im, &cr, &t, T, c0, e);
                    for (int64_t k = 0; k < R * R; k++)
                        dr_ih_tile_acc(&t, T, c0, k);
                }
                for (int64_t k = 0; k < R * R; k++)
                    px[k] = dr_ih_tile_px(&t, T, k);
            } else {
                for (int64_t k = 0; k < R * R; k++)
                    px[k] = dr_pil_resize_px(im, &cr, &t.ax, &t.ay, k / R, k % R, 0, 1, t.vf);
            }
            if (thumb_of(c, v))
                memcpy(thumb_of(c, v), px, (size_t)(R * R));
            const double *tw;
            const dr_dct_plan *pl = dr_dct2_plan_of(c->plan, &tw);
            for (int64_t j = 0; j < R; j++)
                dr_ih_dct_column(px, R, K, j, pl, tw, T);
            for (int64_t u = 0; u < K; u++)
                dr_ih_dct_row(T, R, K, u, pl, tw);
            double mid[2] = {0.0, 0.0};
            for (int64_t i = 0; i < L; i++)
                dr_ih_median_rank(T, R, K, i, mid);
            const double med = dr_ih_median(mid, K);
            uint64_t w[DR_PHASH_IH_GPU_RES * DR_PHASH_IH_GPU_RES / 64];
            for (int64_t k = 0; k < c->words; k++)
                w[k] = dr_ih_word(T, R, K, med, k);
            put_words(c->hashes, v, w, c->words);
            free(px);
            free(T);
            continue;
        }
        put_hash(c->hashes, v, dr_phash_bits(coef));
    }
}

typedef struct {
    const dr_image_ref *images;
    luma_plane *planes;
    int64_t *row0; /* first global row of each image's plane; row0[n] = total */
    int64_t n;
    int method;
} luma_ctx;

/* dr_luma_pil / dr_luma_cv of n packed RGB pixels (vectorised). */
DR_SIMD_CLONES
static void luma_row_pil(const uint8_t *DR_RESTRICT p, int64_t n, uint8_t *DR_RESTRICT d) {
    for (int64_t x = 0; x < n; x++)
        d[x] = (uint8_t)(((uint32_t)p[3 * x] * 19595u + (uint32_t)p[3 * x + 1] * 38470u +
                          (uint32_t)p[3 * x + 2] * 7471u + 0x8000u) >> 16);
}

DR_SIMD_CLONES
static void luma_row_cv(const uint8_t *DR_RESTRICT p, int64_t n, uint8_t *DR_RESTRICT d) {
    for (int64_t x = 0; x < n; x++)
        d[x] = (uint8_t)(((uint32_t)p[3 * x] * 4899u + (uint32_t)p[3 * x + 1] * 9617u + (uint32_t)p[3 * x + 2] * 1868u +
                          (1u << 13)) >> 14);
}

static void luma_task(void *vctx, int64_t begin, int64_t end) {
    luma_ctx *c = (luma_ctx *)vctx;
    int64_t i = 0;
    for (int64_t g = begin; g < end; g++) {
        while (g >= c->row0[i + 1])
            i++;
        const dr_image_ref *im = &c->images[i];
        const luma_plane *pl = &c->planes[i];
        int64_t r = g - c->row0[i], y = pl->y0 + r;
        uint8_t *d = pl->data + r * pl->w;
        if (im->sw == 3 && im->sc == 1) { /* packed RGB rows */
            const uint8_t *p = im->data + y * im->sh + pl->x0 * 3;
            if (c->method == DR_PHASH_DYNREFER)
                luma_row_cv(p, pl->w, d);
            else
                luma_row_pil(p, pl->w, d);
        } else if (c->method == DR_PHASH_DYNREFER)
            for (int64_t x = 0; x < pl->w; x++)
                d[x] = dr_luma_cv(im, y, pl->x0 + x);
        else
            for (int64_t x = 0; x < pl->w; x++)
                d[x] = dr_luma_pil(im, y, pl->x0 + x);
    }
}

dr_status dr_phash_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                       const dr_tensor *image_index, dr_tensor *hashes, const dr_phash_params *p, int elementwise,
                       dr_tensor *thumbs) {
    int64_t nv = boxes->shape[0];
    dr_status st = check_images(images, n_images, image_index, nv, "phash");
    if (st != DR_OK)
        return st;
    const int64_t K = p->method == DR_PHASH_IMAGEHASH ? p->hash_size : 8;
    const int64_t R = p->method == DR_PHASH_IMAGEHASH ? p->hash_size * p->highfreq_factor : DR_PHASH_IH_RES;
    if (elementwise && p->method == DR_PHASH_IMAGEHASH && R > DR_PHASH_IH_GPU_RES)
        return dr_set_error(DR_EUNSUPPORTED, "phash: impl='elementwise' (the CUDA kernel's body) hashes with "
                            "hash_size * highfreq_factor <= %d, got %lld * %lld", DR_PHASH_IH_GPU_RES, (long long)K,
                            (long long)p->highfreq_factor);
    static double cos224[8 * DR_PHASH_DYN_RES];
    static int ready = 0; /* the tables are pure functions: racing initialisers write the same values */
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        for (int64_t k = 0; k < 8 * DR_PHASH_DYN_RES; k++)
            dr_phash_dyn_cos(cos224, k);
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    phash_ctx c;
    memset(&c, 0, sizeof c);
    c.images = images;
    c.boxes = boxes;
    c.index = image_index;
    c.hashes = hashes;
    c.thumbs = thumbs;
    c.method = p->method;
    c.pil_order = p->pil_order;
    c.hash_size = K;
    c.res = R;
    c.words = (K * K + 63) / 64;
    c.cos224 = cos224;
    if (elementwise) {
        int own_plan = 0;
        dr_dct2_plan *plan = p->method == DR_PHASH_IMAGEHASH ? dr_dct2_plan_get(R, &own_plan) : NULL;
        c.plan = plan;
        if (plan || p->method != DR_PHASH_IMAGEHASH)
            dr_parallel_for(nv, 1, phash_elem_task, &c);
        else
            c.failed = 1;
        if (own_plan)
            dr_dct2_free(plan);
    } else if (nv > 0) {
        /* per image, the luma of the rectangle bounding its views' crops (not the whole image: a small box of a
         * large image reads only its own pixels), once, shared by those views */
        luma_plane *planes = (luma_plane *)calloc((size_t)n_images, sizeof(luma_plane));
        int64_t *row0 = (int64_t *)malloc((size_t)(n_images + 1) * sizeof(int64_t));
        int own_plan = 0;
        dr_dct2_plan *plan = p->method == DR_PHASH_IMAGEHASH ? dr_dct2_plan_get(R, &own_plan) : NULL;
        int ok = planes && row0 && (plan || p->method != DR_PHASH_IMAGEHASH);
        for (int64_t i = 0; ok && i < n_images; i++) {
            planes[i].x0 = images[i].w;
            planes[i].y0 = images[i].h;
        }
        for (int64_t v = 0; ok && v < nv; v++) {
            double b[4];
            load_box(boxes, v, b);
            const int64_t i = image_of(image_index, v);
            dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], images[i].w, images[i].h);
            luma_plane *pl = &planes[i]; /* w, h hold the end coordinates until the loop ends */
            pl->x0 = cr.x0 < pl->x0 ? cr.x0 : pl->x0;
            pl->y0 = cr.y0 < pl->y0 ? cr.y0 : pl->y0;
            pl->w = cr.x0 + cr.w > pl->w ? cr.x0 + cr.w : pl->w;
            pl->h = cr.y0 + cr.h > pl->h ? cr.y0 + cr.h : pl->h;
        }
        for (int64_t i = 0; ok && i < n_images; i++) {
            luma_plane *pl = &planes[i];
            pl->w = pl->w > pl->x0 ? pl->w - pl->x0 : 0;
            pl->h = pl->h > pl->y0 ? pl->h - pl->y0 : 0;
            if (pl->w == 0 || pl->h == 0) { /* no view on this image */
                pl->w = pl->h = 0;
                continue;
            }
            pl->data = (uint8_t *)malloc((size_t)(pl->h * pl->w + PLANE_OVER(pl->w)));
            ok = pl->data != NULL;
            if (ok)
                memset(pl->data + pl->h * pl->w, 0, (size_t)PLANE_OVER(pl->w));
        }
        if (ok) {
            row0[0] = 0;
            for (int64_t i = 0; i < n_images; i++)
                row0[i + 1] = row0[i] + planes[i].h;
            luma_ctx lc = {images, planes, row0, n_images, p->method};
            dr_parallel_for(row0[n_images], 16, luma_task, &lc);
            c.planes = planes;
            c.plan = plan;
            dr_parallel_for(nv, 1, phash_task, &c);
        }
        for (int64_t i = 0; planes && i < n_images; i++)
            free(planes[i].data);
        free(planes);
        free(row0);
        if (own_plan)
            dr_dct2_free(plan);
        if (!ok)
            c.failed = 1;
    }
    if (c.failed)
        return dr_set_error(DR_ENOMEM, "phash: out of memory");
    return DR_OK;
}

/* ---- arguments --------------------------------------------------------------------------------------- */

dr_status dr_phash_make_args(const dr_tensor *images, int64_t n_images, const dr_tensor *boxes,
                             const dr_tensor *image_index, const dr_tensor *hashes, const dr_tensor *thumbs,
                             const dr_phash_params *p, dr_image_ref *refs) {
    const char *op = "phash";
    const long long hs = (long long)p->hash_size, hf = (long long)p->highfreq_factor;
    if (p->pil_order != DR_PIL_ORDER_ADAPTIVE && p->pil_order != DR_PIL_ORDER_HORIZONTAL)
        return dr_set_error(DR_EINVAL, "%s: unknown pil_order %lld", op, (long long)p->pil_order);
    if (p->method != DR_PHASH_DYNREFER && p->method != DR_PHASH_IMAGEHASH)
        return dr_set_error(DR_EINVAL, "%s: unknown method %lld", op, (long long)p->method);
    if (p->method == DR_PHASH_DYNREFER && (hs != 8 || hf != 4))
        return dr_set_error(DR_EINVAL, "%s: the official (dynrefer) hash is 8 x 8: hash_size and highfreq_factor are "
                            "imagehash's (method='imagehash')", op);
    if (hs < 2)
        return dr_set_error(DR_EINVAL, "%s: hash_size must be >= 2 (imagehash: Hash size must be greater than or equal "
                            "to 2), got %lld", op, hs);
    if (hf < 1)
        return dr_set_error(DR_EINVAL, "%s: highfreq_factor must be >= 1 (the resize side hash_size * "
                            "highfreq_factor must be > 0; Pillow: height and width must be > 0), got %lld", op, hf);
    if (hs > DR_PHASH_IH_MAX_RES || hf > DR_PHASH_IH_MAX_RES / hs)
        return dr_set_error(DR_EINVAL, "%s: hash_size * highfreq_factor (the resize side) must be at most %d, got "
                            "%lld * %lld", op, DR_PHASH_IH_MAX_RES, hs, hf);
    dr_status st = dr_views_images_make(op, images, n_images, refs);
    if (st == DR_OK)
        st = dr_views_boxes_check(op, &images[0], n_images, boxes, "boxes", image_index);
    if (st != DR_OK)
        return st;
    const long long nv = (long long)boxes->shape[0], words = (hs * hs + 63) / 64, res = hs * hf;
    st = dr_check_ndim(op, "hashes", hashes, words == 1 ? 1 : 2);
    if (st == DR_OK)
        st = dr_check_dtype(op, "hashes", hashes, DR_UINT64);
    if (st == DR_OK)
        st = dr_check_same_device(op, "images", &images[0], "hashes", hashes);
    if (st != DR_OK)
        return st;
    if (hashes->shape[0] != nv || (words > 1 && hashes->shape[1] != words))
        return dr_set_error(DR_EINVAL, "%s: hashes must have shape [%lld] (or [%lld, %lld] uint64 words for hashes "
                            "wider than 64 bits), got %d-D with %lld entries", op, nv, nv, words, hashes->ndim,
                            (long long)hashes->shape[0]);
    if (!thumbs)
        return DR_OK;
    /* the resized luma views imagehash hashes: [V, R, R] uint8, contiguous, CPU */
    if (p->method != DR_PHASH_IMAGEHASH || images[0].device != DR_CPU)
        return dr_set_error(DR_EINVAL, "%s: thumbnails are only available for method imagehash on the CPU", op);
    st = dr_check_ndim(op, "thumbnails", thumbs, 3);
    if (st == DR_OK)
        st = dr_check_dtype(op, "thumbnails", thumbs, DR_UINT8);
    if (st != DR_OK)
        return st;
    if (thumbs->shape[0] != nv || thumbs->shape[1] != res || thumbs->shape[2] != res || !dr_is_contiguous(thumbs))
        return dr_set_error(DR_EINVAL, "%s: thumbnails must be a contiguous [%lld, %lld, %lld] array", op, nv, res,
                            res);
    return DR_OK;
}
