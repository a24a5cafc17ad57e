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

static void load_box(const dr_tensor *t, int64_t v, double b[4]) {
    for (int k = 0; k < 4; k++)
        b[k] = dr_load_real(t->data, t->dtype, v * t->strides[0] + k * t->strides[1]);
}

static int64_t image_of(const dr_tensor *index, int64_t v) {
    return index ? ((const int64_t *)index->data)[v * index->strides[0]] : 0;
}

static void store_out(dr_tensor *out, int64_t v, int c, int64_t y, int64_t x, float val) {
    dr_views_store(out->data, out->dtype,
                   v * out->strides[0] + c * out->strides[1] + y * out->strides[2] + x * out->strides[3], val);
}

/* Validate the per-view image indices against n_images, and that no image is empty. */
static dr_status check_images(const dr_image_ref *images, int64_t n_images, const dr_tensor *index, int64_t nv,
                              const char *op) {
    for (int64_t v = 0; v < nv; v++) {
        int64_t i = image_of(index, v);
        if (i < 0 || i >= n_images)
            return dr_set_error(DR_EINVAL, "%s: image_index[%lld] = %lld is not an image index in [0, %lld)", op,
                                (long long)v, (long long)i, (long long)n_images);
    }
    for (int64_t i = 0; i < n_images; i++)
        if (images[i].h < 1 || images[i].w < 1)
            return dr_set_error(DR_EINVAL, "%s: image %lld is empty (%lld x %lld)", op, (long long)i,
                                (long long)images[i].h, (long long)images[i].w);
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

/* ---- Pillow's two-pass resize, vectorisable ------------------------------------------------------------
 * Both passes are written as "row combinations": output row i = clip8(½ + Σ_j w_i[j] · input row (s_i + j)), all
 * rows contiguous, so the inner loop runs over a whole row with one weight (vectorised by the compiler: AVX2 clones
 * where the CPU has it). The horizontal pass becomes a row combination on the transposed image. Same integer
 * arithmetic as Pillow, so bit-exact. */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define DR_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DR_SIMD_CLONES
#endif

DR_SIMD_CLONES
static void combine_rows_default(const uint8_t *src, int64_t stride, int64_t s, int64_t n, const int32_t *w,
                                 int64_t len, int32_t *acc, uint8_t *dst) {
    const int32_t half = 1 << (DR_PIL_PRECISION_BITS - 1);
    for (int64_t k = 0; k < len; k++)
        acc[k] = half;
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *r = src + (s + j) * stride;
        const int32_t wj = w[j];
        for (int64_t k = 0; k < len; k++)
            acc[k] += (int32_t)r[k] * wj;
    }
    for (int64_t k = 0; k < len; k++) {
        int32_t v = acc[k] >> DR_PIL_PRECISION_BITS;
        dst[k] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* [a][b][C] → [b][a][C], in blocks of 32 source rows so reads stream and writes stay in cache */
static void transpose_px(const uint8_t *src, int64_t a, int64_t b, int C, uint8_t *dst) {
    for (int64_t i0 = 0; i0 < a; i0 += 32) {
        int64_t i1 = i0 + 32 < a ? i0 + 32 : a;
        if (C == 1) {
            for (int64_t j = 0; j < b; j++)
                for (int64_t i = i0; i < i1; i++)
                    dst[j * a + i] = src[i * b + j];
        } else {
            for (int64_t j = 0; j < b; j++)
                for (int64_t i = i0; i < i1; i++) {
                    const uint8_t *sp = src + (i * b + j) * 3;
                    uint8_t *dp = dst + (j * a + i) * 3;
                    dp[0] = sp[0];
                    dp[1] = sp[1];
                    dp[2] = sp[2];
                }
        }
    }
}

/* Scratch buffers reused across the views of one task (fresh multi-100 KB mallocs per view cost page faults). */
typedef struct {
    void *p[6];
    size_t n[6];
} scratch;

static void *scratch_get(scratch *s, int slot, size_t n) {
    if (s->n[slot] < n) {
        free(s->p[slot]);
        s->p[slot] = malloc(n ? n : 1);
        s->n[slot] = s->p[slot] ? n : 0;
    }
    return s->p[slot];
}

static void scratch_free(scratch *s) {
    for (int i = 0; i < 6; i++)
        free(s->p[i]);
    memset(s, 0, sizeof *s);
}

/* ---- Pillow fixed-point dot products along rows -------------------------------------------------------
 * The LANCZOS pass of imagehash's 32 × 32 resize reads ~6 source pixels per pixel: the cost of the whole hash. It
 * runs here as dot products along contiguous luma rows (no transposes): each fixed-point weight k (|k| < 2^22) is
 * split into k = 2048·hi + lo with hi, lo int16 (0 <= lo < 2048), so Σ p·k = 2048·Σ p·hi + Σ p·lo exactly in
 * int32 (the same sum Pillow forms), and Σ p·hi, Σ p·lo are int16 × int16 pair sums the CPU does 16 or 32 at a
 * time (AVX2 vpmaddwd, AVX-512 VNNI vpdpwssd). Weights are zero-padded to a multiple of DOT_PAD taps; reads past a
 * row's end (see dot_rows) meet zero weights, and callers over-allocate. */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DOT_X86 1

/* 3: AMX-INT8 + AVX-512, 2: AVX-512 (BW, VNNI), 1: AVX2, 0: portable; DYNREFER_CPU_ISA=avx512|avx2|default caps it
 * (tests run every level). A pure function of the machine and the environment: racing first calls store the same
 * value. */
static int cpu_isa(void) {
    static int isa = -1;
    int i = __atomic_load_n(&isa, __ATOMIC_RELAXED);
    if (i < 0) {
        const char *cap = getenv("DYNREFER_CPU_ISA");
        int top = !cap ? 3 : !strcmp(cap, "default") ? 0 : !strcmp(cap, "avx2") ? 1 : !strcmp(cap, "avx512") ? 2 : 3;
        /* (dr_cpu_amx() reads the same cap) */
        i = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") ? 2
            : __builtin_cpu_supports("avx2")                                            ? 1
                                                                                        : 0;
        if (i == 2 && top == 3 && (dr_cpu_amx() & DR_CPU_AMX_INT8))
            i = 3;
        i = i < top ? i : top;
        __atomic_store_n(&isa, i, __ATOMIC_RELAXED);
    }
    return i;
}
#endif

#define DOT_PAD 32

typedef struct {
    taps t;               /* start, n and the int32 weights */
    int64_t kpad;         /* padded taps per output in hi / lo */
    int16_t *hi, *lo;     /* [out][kpad] */
    /* AMX form (out_size 32, when cpu_isa() == 3): the weights as a banded [in][32] matrix in three signed-byte
     * digits (k = d0 + 256·d1 + 65536·d2), packed as tiles [digit][group of 16 outputs][block of 64 inputs] of
     * 16 × 64 bytes in the dot-product layout (row i, output n, byte t ↔ input 64·kb + 4i + t); amx_nz[g][kb]
     * marks the blocks with any weight. */
    int64_t nkb;
    int8_t *amx;
    uint8_t *amx_nz;
} dot_taps;

static void dot_taps_free(dot_taps *d) {
    if (!d)
        return;
    taps_free(&d->t);
    free(d->hi);
    free(d->amx);
    free(d);
}

static dot_taps *dot_taps_make(const dr_axis *a) {
    dot_taps *d = (dot_taps *)calloc(1, sizeof *d);
    if (!d)
        return NULL;
    if (taps_make(&d->t, a, 1) < 0) {
        free(d);
        return NULL;
    }
    int64_t m = a->out_size;
    d->kpad = (d->t.kmax + DOT_PAD - 1) / DOT_PAD * DOT_PAD;
    d->hi = (int16_t *)calloc((size_t)(2 * m * d->kpad), sizeof(int16_t));
    if (!d->hi) {
        taps_free(&d->t);
        free(d);
        return NULL;
    }
    d->lo = d->hi + m * d->kpad;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < d->t.n[i]; j++) {
            int32_t k = d->t.wi[i * d->t.kmax + j];
            int32_t lo = k & 2047;
            d->hi[i * d->kpad + j] = (int16_t)((k - lo) / 2048);
            d->lo[i * d->kpad + j] = (int16_t)lo;
        }
#ifdef DOT_X86
    if (m == 32 && cpu_isa() == 3) {
        d->nkb = (a->in_size + 63) / 64;
        d->amx = (int8_t *)calloc((size_t)(3 * 2 * d->nkb * 1024 + 2 * d->nkb), 1);
        if (!d->amx) {
            dot_taps_free(d);
            return NULL;
        }
        d->amx_nz = (uint8_t *)d->amx + 3 * 2 * d->nkb * 1024;
        for (int64_t x = 0; x < m; x++)
            for (int64_t j = 0; j < d->t.n[x]; j++) {
                int32_t k = d->t.wi[x * d->t.kmax + j], dg[3];
                dg[0] = (int8_t)(uint8_t)(k & 255); /* signed digits: each step leaves an exact multiple of 256 */
                k = (k - dg[0]) / 256;
                dg[1] = (int8_t)(uint8_t)(k & 255);
                dg[2] = (k - dg[1]) / 256; /* |k| <= 2^22 + rounding: |d2| <= 65 */
                int64_t q = d->t.start[x] + j, g = x / 16, kb = q / 64, i = (q % 64) / 4, t = q % 4;
                for (int e = 0; e < 3; e++)
                    d->amx[(((e * 2 + g) * d->nkb + kb) * 16 + i) * 64 + (x % 16) * 4 + t] = (int8_t)dg[e];
                d->amx_nz[g * d->nkb + kb] = 1;
            }
    }
#endif
    return d;
}

/* Process-wide cache of the LANCZOS → 32 taps by source length (they depend on nothing else): a dataset's crops
 * repeat lengths, and the weights cost two sin() per tap. Entries are immutable once published; the cache stops
 * growing at DOT_CACHE_BYTES. */
#define DOT_CACHE_LEN 4096
#define DOT_CACHE_BYTES ((size_t)64 << 20)
static dot_taps *dot_cache[DOT_CACHE_LEN];
static size_t dot_cache_bytes;

/* LANCZOS taps for n source samples → 32; *owned = 1 when the caller must free them (not cached). */
static dot_taps *ih_taps(int64_t n, int *owned) {
    *owned = 0;
    if (n < DOT_CACHE_LEN) {
        dot_taps *d = __atomic_load_n(&dot_cache[n], __ATOMIC_ACQUIRE);
        if (d)
            return d;
    }
    dr_axis a = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, n, DR_PHASH_IH_RES);
    dot_taps *d = dot_taps_make(&a);
    if (!d || n >= DOT_CACHE_LEN) {
        *owned = d != NULL;
        return d;
    }
    size_t bytes = (size_t)(DR_PHASH_IH_RES * (d->t.kmax * 4 + d->kpad * 4 + 16) + d->nkb * (6 * 1024 + 2));
    if (__atomic_add_fetch(&dot_cache_bytes, bytes, __ATOMIC_RELAXED) > DOT_CACHE_BYTES) {
        *owned = 1;
        return d;
    }
    dot_taps *expected = NULL;
    if (!__atomic_compare_exchange_n(&dot_cache[n], &expected, d, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        dot_taps_free(d); /* another thread published the same taps first */
        return expected;
    }
    return d;
}

static void dot_rows_default(const uint8_t *src, int64_t stride, int64_t rows, const dot_taps *d, int64_t off,
                             int64_t m, uint8_t *dst, int64_t rs, int64_t xs) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t x = 0; x < m; x++) {
            const uint8_t *p = src + r * stride + d->t.start[x] - off;
            const int32_t *k = d->t.wi + x * d->t.kmax;
            int32_t ss = 1 << (DR_PIL_PRECISION_BITS - 1);
            for (int64_t j = 0; j < d->t.n[x]; j++)
                ss += (int32_t)p[j] * k[j];
            dst[r * rs + x * xs] = dr_pil_clip8(ss);
        }
}

#ifdef DOT_X86

/* Sums of 8 (AVX2) or 16 (AVX-512) accumulators in one vector, in order: a transpose-and-add tree (the pairs'
 * unpacks keep each 128-bit block's outputs adjacent, the cross-block shuffles then finish them in order). */
__attribute__((target("avx2"))) static inline __m256i dot_sum8(const __m256i *a) {
    __m256i c[4], d[2];
    for (int i = 0; i < 4; i++)
        c[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(a[2 * i], a[2 * i + 1]),
                                _mm256_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        d[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(c[2 * i], c[2 * i + 1]),
                                _mm256_unpackhi_epi64(c[2 * i], c[2 * i + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(d[0], d[1], 0x20), _mm256_permute2x128_si256(d[0], d[1], 0x31));
}

__attribute__((target("avx2"))) static void dot_rows_avx2(const uint8_t *src, int64_t stride, int64_t rows,
                                                          const dot_taps *d, int64_t off, int64_t m, uint8_t *dst,
                                                          int64_t rs, int64_t xs) {
    const __m256i half = _mm256_set1_epi32(1 << (DR_PIL_PRECISION_BITS - 1));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t x0 = 0; x0 < m; x0 += 8) {
            __m256i acc[8];
            for (int q = 0; q < 8; q += 2) { /* two outputs at a time: four independent accumulator chains */
                int64_t x = x0 + q, n = d->t.n[x] > d->t.n[x + 1] ? d->t.n[x] : d->t.n[x + 1];
                const uint8_t *p0 = src + r * stride + d->t.start[x] - off;
                const uint8_t *p1 = src + r * stride + d->t.start[x + 1] - off;
                const int16_t *h0 = d->hi + x * d->kpad, *l0 = d->lo + x * d->kpad;
                const int16_t *h1 = h0 + d->kpad, *l1 = l0 + d->kpad;
                __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0;
                for (int64_t j = 0; j < n; j += 16) {
                    __m256i v0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p0 + j)));
                    __m256i v1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p1 + j)));
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v0, _mm256_loadu_si256((const __m256i *)(h0 + j))));
                    b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(v0, _mm256_loadu_si256((const __m256i *)(l0 + j))));
                    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(v1, _mm256_loadu_si256((const __m256i *)(h1 + j))));
                    b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(v1, _mm256_loadu_si256((const __m256i *)(l1 + j))));
                }
                acc[q] = _mm256_add_epi32(_mm256_slli_epi32(a0, 11), b0);
                acc[q + 1] = _mm256_add_epi32(_mm256_slli_epi32(a1, 11), b1);
            }
            __m256i v = _mm256_srai_epi32(_mm256_add_epi32(dot_sum8(acc), half), DR_PIL_PRECISION_BITS);
            v = _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(255));
            int32_t o[8];
            _mm256_storeu_si256((__m256i *)o, v);
            for (int q = 0; q < 8; q++)
                dst[r * rs + (x0 + q) * xs] = (uint8_t)o[q];
        }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static inline __m512i dot_sum16(const __m512i *a) {
    __m512i c[8], d[4], e[2];
    for (int i = 0; i < 8; i++)
        c[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]),
                                _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        d[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(c[2 * i], c[2 * i + 1]),
                                _mm512_unpackhi_epi64(c[2 * i], c[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        e[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(d[2 * i], d[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(d[2 * i], d[2 * i + 1], 0xdd));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(e[0], e[1], 0x88), _mm512_shuffle_i32x4(e[0], e[1], 0xdd));
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void dot_rows_vnni(const uint8_t *src, int64_t stride,
                                                                                 int64_t rows, const dot_taps *d,
                                                                                 int64_t off, int64_t m, uint8_t *dst,
                                                                                 int64_t rs, int64_t xs) {
    const __m512i half = _mm512_set1_epi32(1 << (DR_PIL_PRECISION_BITS - 1));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t x0 = 0; x0 < m; x0 += 16) {
            __m512i acc[16];
            for (int q = 0; q < 16; q += 4) { /* four outputs at a time: eight independent accumulator chains */
                int64_t x = x0 + q, n = d->t.n[x];
                for (int e = 1; e < 4; e++)
                    n = d->t.n[x + e] > n ? d->t.n[x + e] : n;
                const uint8_t *p[4];
                const int16_t *hw[4], *lw[4];
                for (int e = 0; e < 4; e++) {
                    p[e] = src + r * stride + d->t.start[x + e] - off;
                    hw[e] = d->hi + (x + e) * d->kpad;
                    lw[e] = d->lo + (x + e) * d->kpad;
                }
                __m512i ah[4], al[4];
                for (int e = 0; e < 4; e++)
                    ah[e] = al[e] = _mm512_setzero_si512();
                for (int64_t j = 0; j < n; j += 32)
                    for (int e = 0; e < 4; e++) {
                        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p[e] + j)));
                        ah[e] = _mm512_dpwssd_epi32(ah[e], v, _mm512_loadu_si512(hw[e] + j));
                        al[e] = _mm512_dpwssd_epi32(al[e], v, _mm512_loadu_si512(lw[e] + j));
                    }
                for (int e = 0; e < 4; e++)
                    acc[q + e] = _mm512_add_epi32(_mm512_slli_epi32(ah[e], 11), al[e]);
            }
            __m512i v = _mm512_srai_epi32(_mm512_add_epi32(dot_sum16(acc), half), DR_PIL_PRECISION_BITS);
            v = _mm512_max_epi32(v, _mm512_setzero_si512()); /* then unsigned saturation to 255 */
            if (xs == 1) {
                _mm_storeu_si128((__m128i *)(dst + r * rs + x0), _mm512_cvtusepi32_epi8(v));
            } else {
                uint8_t o[16];
                _mm_storeu_si128((__m128i *)o, _mm512_cvtusepi32_epi8(v));
                for (int q = 0; q < 16; q++)
                    dst[r * rs + (x0 + q) * xs] = o[q];
            }
        }
}

/* combine_rows with the accumulators in registers: blocks of 64 (AVX-512) or 32 (AVX2) outputs, every tap added
 * in turn (int32 lanes: the same sums as Pillow's), then shifted, clamped and packed. */
/* 16 or 8 uint8 → int32 lanes; 16 int32 lanes → Pillow's clip to [0, 255] after the precision shift, stored. */
#define CR_LOAD16(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#define CR_LOAD8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define CR_STORE16(p, a)                                                                                             \
    _mm_storeu_si128((__m128i *)(p), _mm512_cvtusepi32_epi8(_mm512_max_epi32(                                      \
                                         _mm512_srai_epi32((a), DR_PIL_PRECISION_BITS), _mm512_setzero_si512())))

__attribute__((target("avx512f,avx512bw"))) static int64_t combine_rows_512(const uint8_t *src, int64_t stride,
                                                                            int64_t s, int64_t n, const int32_t *w,
                                                                            int64_t len, uint8_t *dst) {
    const __m512i half = _mm512_set1_epi32(1 << (DR_PIL_PRECISION_BITS - 1));
    int64_t k = 0;
    for (; k + 64 <= len; k += 64) {
        __m512i a0 = half, a1 = half, a2 = half, a3 = half;
        for (int64_t j = 0; j < n; j++) {
            const uint8_t *r = src + (s + j) * stride + k;
            const __m512i wj = _mm512_set1_epi32(w[j]);
            a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(CR_LOAD16(r), wj));
            a1 = _mm512_add_epi32(a1, _mm512_mullo_epi32(CR_LOAD16(r + 16), wj));
            a2 = _mm512_add_epi32(a2, _mm512_mullo_epi32(CR_LOAD16(r + 32), wj));
            a3 = _mm512_add_epi32(a3, _mm512_mullo_epi32(CR_LOAD16(r + 48), wj));
        }
        CR_STORE16(dst + k, a0);
        CR_STORE16(dst + k + 16, a1);
        CR_STORE16(dst + k + 32, a2);
        CR_STORE16(dst + k + 48, a3);
    }
    for (; k + 16 <= len; k += 16) {
        __m512i a0 = half;
        for (int64_t j = 0; j < n; j++) {
            const __m512i wj = _mm512_set1_epi32(w[j]);
            a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(CR_LOAD16(src + (s + j) * stride + k), wj));
        }
        CR_STORE16(dst + k, a0);
    }
    return k;
}

__attribute__((target("avx2"))) static int64_t combine_rows_256(const uint8_t *src, int64_t stride, int64_t s,
                                                                int64_t n, const int32_t *w, int64_t len,
                                                                uint8_t *dst) {
    const __m256i half = _mm256_set1_epi32(1 << (DR_PIL_PRECISION_BITS - 1));
    int64_t k = 0;
    for (; k + 32 <= len; k += 32) {
        __m256i a[4] = {half, half, half, half};
        for (int64_t j = 0; j < n; j++) {
            const uint8_t *r = src + (s + j) * stride + k;
            const __m256i wj = _mm256_set1_epi32(w[j]);
            for (int q = 0; q < 4; q++)
                a[q] = _mm256_add_epi32(a[q], _mm256_mullo_epi32(CR_LOAD8(r + 8 * q), wj));
        }
        for (int q = 0; q < 4; q++)
            a[q] = _mm256_srai_epi32(a[q], DR_PIL_PRECISION_BITS);
        /* saturating packs clamp to [0, 255]; dwords come out as k / 4 = 0,2,4,6,1,3,5,7 */
        __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(a[0], a[1]), _mm256_packs_epi32(a[2], a[3]));
        b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(dst + k), b);
    }
    return k;
}

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

#ifdef DOT_X86
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Every tile 16 rows × 64 bytes: C tiles 0–5 ([digit][group]), A tile 6 (16 source rows × 64 inputs), B tile 7.
 * A static object: ldtilecfg reads memory the compiler does not see it read. */
static const amx_config amx_tiles = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile,amx-int8"))) static void amx_begin(void) { _tile_loadconfig(&amx_tiles); }

__attribute__((target("amx-tile,amx-int8"))) static void amx_end(void) { _tile_release(); }

#define AMX_DIGITS(G, C0, C1, C2, kb)                                                                                \
    if (d->amx_nz[(G) * d->nkb + (kb)]) {                                                                          \
        _tile_loadd(7, d->amx + ((0 * 2 + (G)) * d->nkb + (kb)) * 1024, 64);                                       \
        _tile_dpbusd(C0, 6, 7);                                                                                    \
        _tile_loadd(7, d->amx + ((1 * 2 + (G)) * d->nkb + (kb)) * 1024, 64);                                       \
        _tile_dpbusd(C1, 6, 7);                                                                                    \
        _tile_loadd(7, d->amx + ((2 * 2 + (G)) * d->nkb + (kb)) * 1024, 64);                                       \
        _tile_dpbusd(C2, 6, 7);                                                                                    \
    }

/* dot_rows for 32 outputs as a banded matrix product on the tile unit: per 16 source rows, C[digit][group] +=
 * A(16 × 64 inputs) · B(64 inputs × 16 outputs) over the blocks with weights; then Σ digits · 256^e (exact in
 * int32, the sum Pillow forms), shifted and clamped. Reads up to 15 rows past the last one and 63 bytes past a row's
 * inputs (callers over-allocate: AMX_OVER). Needs amx_begin() on this thread. */
#define AMX_OVER(w) (16 * (w) + 128)
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void dot_rows_amx(
    const uint8_t *src, int64_t stride, int64_t rows, const dot_taps *d, uint8_t *dst, int64_t rs, int64_t xs) {
    int32_t c[6][16][16];
    const __m512i half = _mm512_set1_epi32(1 << (DR_PIL_PRECISION_BITS - 1)), zero = _mm512_setzero_si512();
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        _tile_zero(4);
        _tile_zero(5);
        for (int64_t kb = 0; kb < d->nkb; kb++) {
            if (!d->amx_nz[kb] && !d->amx_nz[d->nkb + kb])
                continue;
            _tile_loadd(6, src + r0 * stride + kb * 64, stride);
            AMX_DIGITS(0, 0, 1, 2, kb)
            AMX_DIGITS(1, 3, 4, 5, kb)
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        _tile_stored(4, c[4], 64);
        _tile_stored(5, c[5], 64);
        int64_t nr = rows - r0 < 16 ? rows - r0 : 16;
        for (int64_t i = 0; i < nr; i++)
            for (int g = 0; g < 2; g++) {
                __m512i v = _mm512_add_epi32(_mm512_loadu_si512(c[3 * g][i]),
                                             _mm512_slli_epi32(_mm512_loadu_si512(c[3 * g + 1][i]), 8));
                v = _mm512_add_epi32(v, _mm512_slli_epi32(_mm512_loadu_si512(c[3 * g + 2][i]), 16));
                v = _mm512_max_epi32(_mm512_srai_epi32(_mm512_add_epi32(v, half), DR_PIL_PRECISION_BITS), zero);
                uint8_t o[16];
                _mm_storeu_si128((__m128i *)o, _mm512_cvtusepi32_epi8(v));
                for (int n = 0; n < 16; n++)
                    dst[(r0 + i) * rs + (g * 16 + n) * xs] = o[n];
            }
    }
}
#endif

/* dst[k] = Pillow's 8-bit result of ½ + Σ_j w[j] · src[(s + j) · stride + k], k < len (acc: len int32 of scratch
 * for the portable version). */
static void combine_rows_u8(const uint8_t *src, int64_t stride, int64_t s, int64_t n, const int32_t *w, int64_t len,
                            int32_t *acc, uint8_t *dst) {
    int64_t k = 0;
#ifdef DOT_X86
    int i = cpu_isa();
    if (i >= 2)
        k = combine_rows_512(src, stride, s, n, w, len, dst);
    else if (i == 1)
        k = combine_rows_256(src, stride, s, n, w, len, dst);

#endif
    if (k < len)
        combine_rows_default(src + k, stride, s, n, w, len - k, acc, dst + k);
}

/* dst[r·rs + x·xs] = Pillow's 8-bit result of taps x over row r of src (rows × m outputs), src[0] being sample
 * `off`. Reads up to DOT_OVER(row length) bytes past a row's last sample: groups of outputs run to their longest
 * span, and every span to a multiple of 32; taps with an AMX form (the thread has called amx_begin) also read up
 * to 15 rows past the last (AMX_OVER). */
#define DOT_OVER(len) ((len) + 64)
static void dot_rows(const uint8_t *src, int64_t stride, int64_t rows, const dot_taps *d, int64_t off, int64_t m,
                     uint8_t *dst, int64_t rs, int64_t xs) {
#ifdef DOT_X86
    if (d->amx && off == 0 && m == 32)
        return dot_rows_amx(src, stride, rows, d, dst, rs, xs);
    int i = cpu_isa();
    if (i >= 2 && m % 16 == 0 && d->kpad % 32 == 0)
        return dot_rows_vnni(src, stride, rows, d, off, m, dst, rs, xs);
    if (i >= 1 && m % 8 == 0)
        return dot_rows_avx2(src, stride, rows, d, off, m, dst, rs, xs);
#endif
    dot_rows_default(src, stride, rows, d, off, m, dst, rs, xs);
}

/* Resize `packed` (rows [ylo, ylo + rows) of a crop, each `w` pixels of C channels, contiguous) to oh × ow × C with
 * the taps tx (columns) and ty (rows, in crop coordinates), in Pillow's order. Returns -1 on allocation failure. */
static int pil_resize_packed(const uint8_t *packed, int64_t ylo, int64_t rows, int64_t w, int C, const taps *tx,
                             const taps *ty, int64_t ow, int64_t oh, int vfirst, uint8_t *out, scratch *sc) {
    int64_t mr = rows > oh ? rows : oh, mc = w > ow ? w : ow;
    int64_t big = mr * mc * C, line = (mr > mc ? mr : mc) * C;
    uint8_t *t1 = (uint8_t *)scratch_get(sc, 0, (size_t)big), *t2 = (uint8_t *)scratch_get(sc, 1, (size_t)big);
    int32_t *acc = (int32_t *)scratch_get(sc, 2, (size_t)line * sizeof(int32_t));
    if (!t1 || !t2 || !acc)
        return -1;
    if (!vfirst) {
        transpose_px(packed, rows, w, C, t1);                 /* [w][rows][C] */
        for (int64_t x = 0; x < ow; x++)                      /* horizontal: rows of t1 → t2 [ow][rows][C] */
            combine_rows_u8(t1, rows * C, tx->start[x], tx->n[x], tx->wi + x * tx->kmax, rows * C, acc, t2 + x * rows * C);
        transpose_px(t2, ow, rows, C, t1);                    /* [rows][ow][C] */
        for (int64_t y = 0; y < oh; y++)                      /* vertical */
            combine_rows_u8(t1, ow * C, ty->start[y] - ylo, ty->n[y], ty->wi + y * ty->kmax, ow * C, acc, out + y * ow * C);
    } else {
        for (int64_t y = 0; y < oh; y++)                      /* vertical: t1 [oh][w][C] */
            combine_rows_u8(packed, w * C, ty->start[y] - ylo, ty->n[y], ty->wi + y * ty->kmax, w * C, acc, t1 + y * w * C);
        transpose_px(t1, oh, w, C, t2);                       /* [w][oh][C] */
        for (int64_t x = 0; x < ow; x++)                      /* horizontal: t1 [ow][oh][C] */
            combine_rows_u8(t2, oh * C, tx->start[x], tx->n[x], tx->wi + x * tx->kmax, oh * C, acc, t1 + x * oh * C);
        transpose_px(t1, ow, oh, C, out);                     /* [oh][ow][C] */
    }
    return 0;
}

/* Rows [ylo, yhi) covered by the taps of an axis. */
static void taps_rows(const taps *t, int64_t m, int64_t *lo, int64_t *hi) {
    int64_t a = t->start[0], b = t->start[0] + t->n[0];
    for (int64_t i = 0; i < m; i++) {
        if (t->start[i] < a)
            a = t->start[i];
        if (t->start[i] + t->n[i] > b)
            b = t->start[i] + t->n[i];
    }
    *lo = a;
    *hi = b > a ? b : a + 1;
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

/* Pack rows [ylo, yhi) of a crop, C = 3 channels (or C = 1: Pillow luma), contiguous. */
static void pack_crop(const dr_image_ref *im, const dr_crop *cr, int64_t ylo, int64_t yhi, int C, uint8_t *dst) {
    for (int64_t r = ylo; r < yhi; r++) {
        const uint8_t *src = im->data + (cr->y0 + r) * im->sh + cr->x0 * im->sw;
        uint8_t *d = dst + (r - ylo) * cr->w * C;
        if (C == 1) {
            for (int64_t q = 0; q < cr->w; q++)
                d[q] = dr_luma_pil(im, cr->y0 + r, cr->x0 + q);
        } else if (im->sw == 3 && im->sc == 1) {
            memcpy(d, src, (size_t)(cr->w * 3));
        } else {
            for (int64_t q = 0; q < cr->w; q++, src += im->sw) {
                d[q * 3 + 0] = src[0];
                d[q * 3 + 1] = src[im->sc];
                d[q * 3 + 2] = src[2 * im->sc];
            }
        }
    }
}

/* Pillow path of one view: pack, two passes, normalise. */
/* dst[x] = normalised channel value of packed pixels src[x * 3] (the same float operations as dr_normalize_u8,
 * vectorised). */
DR_SIMD_CLONES
static void normalize_row_u8(const uint8_t *src, int64_t n, float mean, float std, float *dst) {
    for (int64_t x = 0; x < n; x++) {
        float v = (float)src[x * 3] * (float)(1.0 / 255.0);
        dst[x] = (v - mean) / std;
    }
}

static int crop_resize_pil_view(crop_ctx *c, int64_t v, const dr_image_ref *im, const dr_crop *cr, const taps *tx,
                                const taps *ty, scratch *sc) {
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    int64_t ylo, yhi;
    taps_rows(ty, S, &ylo, &yhi);
    uint8_t *packed = (uint8_t *)scratch_get(sc, 3, (size_t)((yhi - ylo) * cr->w * 3));
    uint8_t *o8 = (uint8_t *)scratch_get(sc, 4, (size_t)(S * S * 3));
    if (!packed || !o8)
        return -1;
    pack_crop(im, cr, ylo, yhi, 3, packed);
    int vf = dr_pil_vertical_first(cr->w, cr->h, S, S, p->pil_order);
    if (pil_resize_packed(packed, ylo, yhi - ylo, cr->w, 3, tx, ty, S, S, vf, o8, sc) < 0)
        return -1;
    dr_tensor *out = c->out;
    if (out->dtype == DR_FLOAT32 && out->strides[3] == 1) {
        for (int ch = 0; ch < 3; ch++)
            for (int64_t y = 0; y < S; y++)
                normalize_row_u8(o8 + y * S * 3 + ch, S, p->mean[ch], p->std[ch],
                                 (float *)out->data + v * out->strides[0] + ch * out->strides[1] + y * out->strides[2]);
    } else { /* other dtypes or strides: a 256-entry table per channel, then a converting store */
        float lut[3][256];
        for (int ch = 0; ch < 3; ch++)
            for (int k = 0; k < 256; k++)
                lut[ch][k] = dr_normalize_u8((uint8_t)k, p->mean[ch], p->std[ch]);
        for (int ch = 0; ch < 3; ch++)
            for (int64_t y = 0; y < S; y++)
                for (int64_t x = 0; x < S; x++)
                    store_out(out, v, ch, y, x, lut[ch][o8[(y * S + x) * 3 + ch]]);
    }
    return 0;
}

static void crop_resize_task(void *vctx, int64_t begin, int64_t end) {
    crop_ctx *c = (crop_ctx *)vctx;
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    const int fixed = p->kind == DR_RS_PIL;
    scratch sc;
    memset(&sc, 0, sizeof sc);
    for (int64_t v = begin; v < end; v++) {
        const dr_image_ref *im;
        dr_crop cr = view_crop(c, v, &im);
        write_ref(c, v, &cr, im);
        dr_axis ax = dr_axis_make(p->kind, p->filter, cr.w, S), ay = dr_axis_make(p->kind, p->filter, cr.h, S);
        taps tx, ty;
        if (taps_make(&tx, &ax, fixed) < 0) {
            c->failed = 1;
            break;
        }
        if (taps_make(&ty, &ay, fixed) < 0) {
            taps_free(&tx);
            c->failed = 1;
            break;
        }
        if (fixed) {
            if (crop_resize_pil_view(c, v, im, &cr, &tx, &ty, &sc) < 0)
                c->failed = 1;
            taps_free(&tx);
            taps_free(&ty);
            continue;
        }
        /* floating point (torch interpolate semantics): horizontal pass over the rows the vertical pass reads */
        int64_t ylo, yhi;
        taps_rows(&ty, S, &ylo, &yhi);
        int64_t rows = yhi - ylo;
        float *buf = (float *)scratch_get(&sc, 5, (size_t)(rows * S * 3) * sizeof(float));
        if (!buf) {
            taps_free(&tx);
            taps_free(&ty);
            c->failed = 1;
            break;
        }
        for (int64_t r = ylo; r < yhi; r++) {
            const uint8_t *src = im->data + (cr.y0 + r) * im->sh + cr.x0 * im->sw;
            for (int64_t x = 0; x < S; x++) {
                const float *w = tx.wf + x * tx.kmax;
                const uint8_t *px = src + tx.start[x] * im->sw;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
                for (int64_t j = 0; j < tx.n[x]; j++, px += im->sw) {
                    a0 += w[j] * (float)px[0];
                    a1 += w[j] * (float)px[im->sc];
                    a2 += w[j] * (float)px[2 * im->sc];
                }
                float *d = buf + ((r - ylo) * S + x) * 3;
                d[0] = a0;
                d[1] = a1;
                d[2] = a2;
            }
        }
        for (int64_t y = 0; y < S; y++) {
            const float *w = ty.wf + y * ty.kmax;
            int64_t s0 = ty.start[y] - ylo;
            for (int64_t x = 0; x < S; x++) {
                float a[3] = {0.0f, 0.0f, 0.0f};
                const float *col = buf + (s0 * S + x) * 3;
                for (int64_t j = 0; j < ty.n[y]; j++, col += S * 3) {
                    a[0] += w[j] * col[0];
                    a[1] += w[j] * col[1];
                    a[2] += w[j] * col[2];
                }
                for (int ch = 0; ch < 3; ch++)
                    store_out(c->out, v, ch, y, x, dr_normalize_f(a[ch], p->mean[ch], p->std[ch]));
            }
        }
        taps_free(&tx);
        taps_free(&ty);
    }
    scratch_free(&sc);
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
    dr_status st = check_images(images, n_images, image_index, nv, "crop_resize");
    if (st != DR_OK)
        return st;
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
    const int wide = cpu_isa() >= 2;
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
                              const double *tab, uint8_t *thumb, int *failed, scratch *sc) {
    enum { R = DR_PHASH_IH_RES };
    int own_x, own_y;
    dot_taps *dx = ih_taps(cr->w, &own_x), *dy = ih_taps(cr->h, &own_y);
    uint8_t px[R * R];
    const uint8_t *src = plane + cr->y0 * im->w + cr->x0;
    int rc = -1;
    if (dx && dy) {
        const taps *ty = &dy->t;
        if (!dr_pil_vertical_first(cr->w, cr->h, R, R, pil_order)) {
            /* rows → [32][rows] (written transposed), so the vertical pass is row dot products too */
            int64_t ylo, yhi;
            taps_rows(ty, R, &ylo, &yhi);
            int64_t rows = yhi - ylo;
            uint8_t *t2 = (uint8_t *)scratch_get(sc, 1, (size_t)(rows * R + DOT_OVER(rows)));
            if (t2) {
                dot_rows(src + ylo * im->w, im->w, rows, dx, 0, R, t2, 1, rows); /* stored transposed */
                memset(t2 + rows * R, 0, (size_t)DOT_OVER(rows));
                dot_rows(t2, rows, R, dy, ylo, R, px, 1, R);
                rc = 0;
            }
        } else { /* 32 row combinations over the crop → [32][w], then row dot products */
            uint8_t *t1 = (uint8_t *)scratch_get(sc, 0, (size_t)(R * cr->w + DOT_OVER(cr->w)));
            int32_t *acc = (int32_t *)scratch_get(sc, 2, (size_t)cr->w * sizeof(int32_t));
            if (t1 && acc) {
                memset(t1 + R * cr->w, 0, (size_t)DOT_OVER(cr->w));
                for (int64_t y = 0; y < R; y++)
                    combine_rows_u8(src, im->w, ty->start[y], ty->n[y], ty->wi + y * ty->kmax, cr->w, acc,
                                    t1 + y * cr->w);
                dot_rows(t1, cr->w, R, dx, 0, R, px, R, 1);
                rc = 0;
            }
        }
    }
    if (own_x)
        dot_taps_free(dx);
    if (own_y)
        dot_taps_free(dy);
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

const char *dr_views_cpu_isa(void) {
#ifdef DOT_X86
    static const char *names[] = {"portable", "avx2", "avx512", "amx"};
    return names[cpu_isa()];
#else
    return "portable";
#endif
}

/* Bytes after a luma plane that the row kernels may read (zero weights meet them). */
#ifdef DOT_X86
#define PLANE_OVER(w) AMX_OVER(w)
#else
#define PLANE_OVER(w) DOT_OVER(w)
#endif

static int64_t fold_limit(void) {
#ifdef DOT_X86
    if (cpu_isa() >= 2)
        return 500000;
#endif
    return 150000;
}

static void phash_task(void *vctx, int64_t begin, int64_t end) {
    phash_ctx *c = (phash_ctx *)vctx;
    scratch sc;
    memset(&sc, 0, sizeof sc);
#ifdef DOT_X86
    const int amx = c->method == DR_PHASH_IMAGEHASH && cpu_isa() == 3;
    if (amx)
        amx_begin();
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
        amx_end();
#endif
    scratch_free(&sc);
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
