/* resample.c — the nested views' CPU resampling kernels, shared by crop_resize.c and phash.c: per-view taps,
 * Pillow's two-pass resize as row combinations, Pillow fixed-point dot products along rows (portable, AVX2, AVX-512
 * VNNI, AMX-INT8) and the process-wide cache of imagehash's LANCZOS taps. Same integer arithmetic as Pillow at every
 * instruction set, so bit-exact. */
#include "dr_phash.h"
#include "resample.inc"

/* ---- taps and scratch -------------------------------------------------------------------------------- */

int dr_taps_make(dr_taps *t, const dr_axis *a, int fixed) {
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

void dr_taps_free(dr_taps *t) {
    free(t->start);
    free(t->wi);
    free(t->wf);
}

void *dr_scratch_get(dr_scratch *s, int slot, size_t n) {
    if (s->n[slot] < n) {
        free(s->p[slot]);
        s->p[slot] = malloc(n ? n : 1);
        s->n[slot] = s->p[slot] ? n : 0;
    }
    return s->p[slot];
}

void dr_scratch_free(dr_scratch *s) {
    for (int i = 0; i < 6; i++)
        free(s->p[i]);
    memset(s, 0, sizeof *s);
}

/* Rows [ylo, yhi) covered by the taps of an axis. */
void dr_taps_rows(const dr_taps *t, int64_t m, int64_t *lo, int64_t *hi) {
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

/* ---- Pillow's two-pass resize, vectorisable ------------------------------------------------------------
 * Both passes are written as "row combinations": output row i = clip8(½ + Σ_j w_i[j] · input row (s_i + j)), all
 * rows contiguous, so the inner loop runs over a whole row with one weight (vectorised by the compiler: AVX2 clones
 * where the CPU has it). The horizontal pass becomes a row combination on the transposed image. Same integer
 * arithmetic as Pillow, so bit-exact. */


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

/* ---- Pillow fixed-point dot products along rows -------------------------------------------------------
 * The LANCZOS pass of imagehash's 32 × 32 resize reads ~6 source pixels per pixel: the cost of the whole hash. It
 * runs here as dot products along contiguous luma rows (no transposes): each fixed-point weight k (|k| < 2^22) is
 * split into k = 2048·hi + lo with hi, lo int16 (0 <= lo < 2048), so Σ p·k = 2048·Σ p·hi + Σ p·lo exactly in
 * int32 (the same sum Pillow forms), and Σ p·hi, Σ p·lo are int16 × int16 pair sums the CPU does 16 or 32 at a
 * time (AVX2 vpmaddwd, AVX-512 VNNI vpdpwssd). Weights are zero-padded to a multiple of DOT_PAD taps; reads past a
 * row's end (see dr_dot_rows) meet zero weights, and callers over-allocate. */


#define DOT_PAD 32

void dr_dot_taps_free(dr_dot_taps *d) {
    if (!d)
        return;
    dr_taps_free(&d->t);
    free(d->hi);
    free(d->amx);
    free(d);
}

static dr_dot_taps *dot_taps_make(const dr_axis *a) {
    dr_dot_taps *d = (dr_dot_taps *)calloc(1, sizeof *d);
    if (!d)
        return NULL;
    if (dr_taps_make(&d->t, a, 1) < 0) {
        free(d);
        return NULL;
    }
    int64_t m = a->out_size;
    d->kpad = (d->t.kmax + DOT_PAD - 1) / DOT_PAD * DOT_PAD;
    d->hi = (int16_t *)calloc((size_t)(2 * m * d->kpad), sizeof(int16_t));
    if (!d->hi) {
        dr_taps_free(&d->t);
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
    if (m == 32 && dr_cpu_level() == DR_CPU_LEVEL_AMX) {
        d->nkb = (a->in_size + 63) / 64;
        d->amx = (int8_t *)calloc((size_t)(3 * 2 * d->nkb * 1024 + 2 * d->nkb), 1);
        if (!d->amx) {
            dr_dot_taps_free(d);
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
static dr_dot_taps *dot_cache[DOT_CACHE_LEN];
static size_t dot_cache_bytes;

/* LANCZOS taps for n source samples → m outputs; *owned = 1 when the caller must free them (not cached: m != 32 or
 * a long or uncacheable length). */
dr_dot_taps *dr_lanczos_taps(int64_t n, int64_t m, int *owned) {
    *owned = 0;
    if (m != DR_PHASH_IH_RES) {
        dr_axis a = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, n, m);
        dr_dot_taps *d = dot_taps_make(&a);
        *owned = d != NULL;
        return d;
    }
    if (n < DOT_CACHE_LEN) {
        dr_dot_taps *d = __atomic_load_n(&dot_cache[n], __ATOMIC_ACQUIRE);
        if (d)
            return d;
    }
    dr_axis a = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, n, DR_PHASH_IH_RES);
    dr_dot_taps *d = dot_taps_make(&a);
    if (!d || n >= DOT_CACHE_LEN) {
        *owned = d != NULL;
        return d;
    }
    size_t bytes = (size_t)(DR_PHASH_IH_RES * (d->t.kmax * 4 + d->kpad * 4 + 16) + d->nkb * (6 * 1024 + 2));
    if (__atomic_add_fetch(&dot_cache_bytes, bytes, __ATOMIC_RELAXED) > DOT_CACHE_BYTES) {
        *owned = 1;
        return d;
    }
    dr_dot_taps *expected = NULL;
    if (!__atomic_compare_exchange_n(&dot_cache[n], &expected, d, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        dr_dot_taps_free(d); /* another thread published the same taps first */
        return expected;
    }
    return d;
}

static void dot_rows_default(const uint8_t *src, int64_t stride, int64_t rows, const dr_dot_taps *d, int64_t off,
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
                                                          const dr_dot_taps *d, int64_t off, int64_t m, uint8_t *dst,
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
                                                                                 int64_t rows, const dr_dot_taps *d,
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
#endif

#ifdef DOT_X86
#define AMX_DIGITS(G, C0, C1, C2, kb)                                                                                \
    if (d->amx_nz[(G) * d->nkb + (kb)]) {                                                                          \
        _tile_loadd(7, d->amx + ((0 * 2 + (G)) * d->nkb + (kb)) * 1024, 64);                                       \
        _tile_dpbusd(C0, 6, 7);                                                                                    \
        _tile_loadd(7, d->amx + ((1 * 2 + (G)) * d->nkb + (kb)) * 1024, 64);                                       \
        _tile_dpbusd(C1, 6, 7);                                                                                    \
        _tile_loadd(7, d->amx + ((2 * 2 + (G)) * d->nkb + (kb)) * 1024, 64);                                       \
        _tile_dpbusd(C2, 6, 7);                                                                                    \
    }

/* dr_dot_rows for 32 outputs as a banded matrix product on the tile unit: per 16 source rows, C[digit][group] +=
 * A(16 × 64 inputs) · B(64 inputs × 16 outputs) over the blocks with weights; then Σ digits · 256^e (exact in
 * int32, the sum Pillow forms), shifted and clamped. Reads up to 15 rows past the last one and 63 bytes past a row's
 * inputs (callers over-allocate: AMX_OVER). Needs dr_amx_tiles_load() on this thread. */
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void dot_rows_amx(
    const uint8_t *src, int64_t stride, int64_t rows, const dr_dot_taps *d, uint8_t *dst, int64_t rs, int64_t xs) {
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
void dr_combine_rows_u8(const uint8_t *src, int64_t stride, int64_t s, int64_t n, const int32_t *w, int64_t len,
                        int32_t *acc, uint8_t *dst) {
    int64_t k = 0;
#ifdef DOT_X86
    int i = dr_cpu_level();
    if (i >= DR_CPU_LEVEL_AVX512)
        k = combine_rows_512(src, stride, s, n, w, len, dst);
    else if (i == DR_CPU_LEVEL_AVX2)
        k = combine_rows_256(src, stride, s, n, w, len, dst);

#endif
    if (k < len)
        combine_rows_default(src + k, stride, s, n, w, len - k, acc, dst + k);
}

void dr_dot_rows(const uint8_t *src, int64_t stride, int64_t rows, const dr_dot_taps *d, int64_t off, int64_t m,
                 uint8_t *dst, int64_t rs, int64_t xs) {
#ifdef DOT_X86
    if (d->amx && off == 0 && m == 32)
        return dot_rows_amx(src, stride, rows, d, dst, rs, xs);
    int i = dr_cpu_level();
    if (i >= DR_CPU_LEVEL_AVX512 && m % 16 == 0 && d->kpad % 32 == 0)
        return dot_rows_vnni(src, stride, rows, d, off, m, dst, rs, xs);
    if (i >= DR_CPU_LEVEL_AVX2 && m % 8 == 0)
        return dot_rows_avx2(src, stride, rows, d, off, m, dst, rs, xs);
#endif
    dot_rows_default(src, stride, rows, d, off, m, dst, rs, xs);
}

/* ---- Pillow's two-pass resize of a crop, read in place ---------------------------------------------------
 * Only the source rows and columns the taps cover are read, straight from the strided image, and no buffer is
 * the size of the crop: the horizontal-first order transposes HBLK source rows at a time (a block of HBLK × the
 * covered width) and keeps its result (rows × ow); the vertical-first order combines the image rows in place when
 * the pixels are packed RGB, else accumulates row by row in int32 (oh × covered width), and transposes only its
 * oh-row result. Same integer sums as Pillow, so bit-exact. */

#define HBLK 64 /* source rows per block of the horizontal-first pass: 192-byte rows, four AVX-512 blocks */

/* dst[q][i][c] = pixel (r0 + i, x0 + q) channel c of the image, for i < b, q < n: a block of rows, transposed.
 * Column by column, all b rows at once: each destination column is written whole, and the b source lines in use
 * stay in L1 across the columns they hold. */
static void transpose_rows_in(const dr_image_ref *im, int64_t r0, int64_t x0, int64_t b, int64_t n, uint8_t *dst) {
    const uint8_t *s0 = im->data + r0 * im->sh + x0 * im->sw;
    const int64_t sh = im->sh, sw = im->sw, sc = im->sc;
    if (sw == 3 && sc == 1) {
        for (int64_t q = 0; q < n; q++) {
            const uint8_t *sp = s0 + q * 3;
            uint8_t *dp = dst + q * b * 3;
            for (int64_t i = 0; i < b; i++) {
                dp[i * 3 + 0] = sp[i * sh];
                dp[i * 3 + 1] = sp[i * sh + 1];
                dp[i * 3 + 2] = sp[i * sh + 2];
            }
        }
        return;
    }
    for (int64_t q = 0; q < n; q++) {
        const uint8_t *sp = s0 + q * sw;
        uint8_t *dp = dst + q * b * 3;
        for (int64_t i = 0; i < b; i++) {
            dp[i * 3 + 0] = sp[i * sh];
            dp[i * 3 + 1] = sp[i * sh + sc];
            dp[i * 3 + 2] = sp[i * sh + 2 * sc];
        }
    }
}

/* acc[k] += w · line[k], k < len. */
DR_SIMD_CLONES
static void accumulate_row(const uint8_t *line, int32_t w, int64_t len, int32_t *acc) {
    for (int64_t k = 0; k < len; k++)
        acc[k] += (int32_t)line[k] * w;
}

/* dst[k] = Pillow's 8-bit result of the fixed-point sum acc[k] (which includes the rounding half). */
DR_SIMD_CLONES
static void clip_row(const int32_t *acc, int64_t len, uint8_t *dst) {
    for (int64_t k = 0; k < len; k++) {
        int32_t v = acc[k] >> DR_PIL_PRECISION_BITS;
        dst[k] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* The vertical pass over rows [ylo, yhi) and columns [xlo, xlo + n) of the crop into v [oh][n][3]: combinations of
 * the image rows in place when pixels are packed RGB, else each source row gathered once and added, with its
 * weight, to the int32 sums of the outputs whose taps cover it. -1 on allocation failure. */
static int vertical_pass_in(const dr_image_ref *im, const dr_crop *cr, int64_t xlo, int64_t n, const dr_taps *ty,
                            int64_t ylo, int64_t yhi, int64_t oh, uint8_t *v, dr_scratch *sc) {
    const int64_t len = n * 3;
    const uint8_t *base = im->data + cr->y0 * im->sh + (cr->x0 + xlo) * im->sw;
    if (im->sw == 3 && im->sc == 1) {
        int32_t *acc = (int32_t *)dr_scratch_get(sc, 2, (size_t)len * sizeof(int32_t));
        if (!acc)
            return -1;
        for (int64_t y = 0; y < oh; y++)
            dr_combine_rows_u8(base, im->sh, ty->start[y], ty->n[y], ty->wi + y * ty->kmax, len, acc, v + y * len);
        return 0;
    }
    int32_t *acc = (int32_t *)dr_scratch_get(sc, 2, (size_t)(oh * len) * sizeof(int32_t));
    uint8_t *line = (uint8_t *)dr_scratch_get(sc, 1, (size_t)len);
    if (!acc || !line)
        return -1;
    const int32_t half = 1 << (DR_PIL_PRECISION_BITS - 1);
    for (int64_t k = 0; k < oh * len; k++)
        acc[k] = half;
    int64_t y0 = 0; /* first output whose taps end after the current row (tap spans only move forward) */
    for (int64_t r = ylo; r < yhi; r++) {
        const uint8_t *src = base + r * im->sh;
        for (int64_t q = 0; q < n; q++, src += im->sw) {
            line[q * 3 + 0] = src[0];
            line[q * 3 + 1] = src[im->sc];
            line[q * 3 + 2] = src[2 * im->sc];
        }
        while (y0 < oh && ty->start[y0] + ty->n[y0] <= r)
            y0++;
        for (int64_t y = y0; y < oh && ty->start[y] <= r; y++)
            if (r < ty->start[y] + ty->n[y])
                accumulate_row(line, ty->wi[y * ty->kmax + r - ty->start[y]], len, acc + y * len);
    }
    for (int64_t y = 0; y < oh; y++)
        clip_row(acc + y * len, len, v + y * len);
    return 0;
}

int dr_pil_resize_crop(const dr_image_ref *im, const dr_crop *cr, const dr_taps *tx, const dr_taps *ty, int64_t ow,
                       int64_t oh, int vfirst, uint8_t *out, dr_scratch *sc) {
    int64_t ylo, yhi, xlo, xhi;
    dr_taps_rows(ty, oh, &ylo, &yhi);
    dr_taps_rows(tx, ow, &xlo, &xhi);
    const int64_t rows = yhi - ylo, n = xhi - xlo;
    if (!vfirst) {
        /* horizontal: blocks of HBLK source rows, transposed ([n][b][3]), combined per output column ([ow][b][3]),
         * transposed back into rows [b][ow][3] of h */
        uint8_t *h = (uint8_t *)dr_scratch_get(sc, 0, (size_t)(rows * ow * 3));
        uint8_t *blk = (uint8_t *)dr_scratch_get(sc, 1, (size_t)(n * HBLK * 3));
        uint8_t *t2 = (uint8_t *)dr_scratch_get(sc, 3, (size_t)(ow * HBLK * 3));
        int32_t *acc = (int32_t *)dr_scratch_get(sc, 2, (size_t)((ow > HBLK ? ow : HBLK) * 3) * sizeof(int32_t));
        if (!h || !blk || !t2 || !acc)
            return -1;
        for (int64_t r0 = ylo; r0 < yhi; r0 += HBLK) {
            const int64_t b = yhi - r0 < HBLK ? yhi - r0 : HBLK;
            transpose_rows_in(im, cr->y0 + r0, cr->x0 + xlo, b, n, blk);
            for (int64_t x = 0; x < ow; x++)
                dr_combine_rows_u8(blk, b * 3, tx->start[x] - xlo, tx->n[x], tx->wi + x * tx->kmax, b * 3, acc,
                                   t2 + x * b * 3);
            transpose_px(t2, ow, b, 3, h + (r0 - ylo) * ow * 3);
        }
        for (int64_t y = 0; y < oh; y++) /* vertical */
            dr_combine_rows_u8(h, ow * 3, ty->start[y] - ylo, ty->n[y], ty->wi + y * ty->kmax, ow * 3, acc,
                               out + y * ow * 3);
        return 0;
    }
    /* vertical into v [oh][n][3], transposed ([n][oh][3]), horizontal per output column ([ow][oh][3]), transposed
     * into out */
    uint8_t *v = (uint8_t *)dr_scratch_get(sc, 0, (size_t)(oh * n * 3));
    uint8_t *t1 = (uint8_t *)dr_scratch_get(sc, 3, (size_t)(oh * n * 3));
    if (!v || !t1 || vertical_pass_in(im, cr, xlo, n, ty, ylo, yhi, oh, v, sc) < 0)
        return -1;
    int32_t *acc = (int32_t *)dr_scratch_get(sc, 2, (size_t)(oh * 3) * sizeof(int32_t));
    uint8_t *t2 = (uint8_t *)dr_scratch_get(sc, 1, (size_t)(ow * oh * 3));
    if (!acc || !t2)
        return -1;
    transpose_px(v, oh, n, 3, t1);
    for (int64_t x = 0; x < ow; x++)
        dr_combine_rows_u8(t1, oh * 3, tx->start[x] - xlo, tx->n[x], tx->wi + x * tx->kmax, oh * 3, acc, t2 + x * oh * 3);
    transpose_px(t2, ow, oh, 3, out);
    return 0;
}
