/* attention.c — fused scaled-dot-product attention on the CPU (F.scaled_dot_product_attention semantics,
 * DESIGN §7.6): forward (O and log-sum-exp) and backward (dQ, dK, dV recomputed from O, LSE and dO).
 *
 * The fast path (attention_cpu.inc) is instantiated for AVX-512, AVX2+FMA and a portable vector width with GCC
 * vector extensions; the variant is picked at run time from the CPU's features (impl "avx512"/"avx2"/"portable"
 * force one). float32/float16/bfloat16 compute in float32, float64 in float64. Work is split over batch x heads x
 * query chunks (forward) and batch x heads (backward) with dr_parallel_for; every sum runs in a fixed order, so
 * results are bitwise repeatable whatever the thread count. Complexity: forward O(B H Lq Lk (D + Dv)), backward
 * O(B H Lq Lk (2 D + 3 Dv)); memory per task O((Lq + Lk)(D + Dv)) (backward), never Lq x Lk.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dr_attention.h"
#include "dynrefer.h"

/* ---- helpers shared by every variant ------------------------------------------------------------------ */

static void *dr_attn_alloc(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

static void dr_attn_free(void *p) { free(p); }

static size_t dr_attn_dsize(int dtype) { return dtype == DR_FLOAT64 ? 8 : dtype == DR_FLOAT32 ? 4 : 2; }

/* exp(x) for float lanes, x <= ~0.5 (scores minus their running max or their log-sum-exp): Cephes' expf
 * reduction x = n ln2 + r, |r| <= ln2/2, degree-7 polynomial, 2^n from the exponent bits; x < -87 (and -inf)
 * gives exactly 0. About 1 ulp. */
#define DR_DEFINE_VEXP_F(NAME, VT, VI, ATTR)                                                                       \
    ATTR static inline VT NAME(VT x) {                                                                             \
        const VT zero = {0};                                                                                       \
        const VT lo = zero - 87.0f;                                                                                \
        const VI dead = x < lo;                                                                                    \
        VT xc = (VT)(((VI)x & ~dead) | ((VI)lo & dead));                                                           \
        const VT t = xc * 1.44269504088896341f - 0.5f;                                                             \
        const VI n = __builtin_convertvector(t, VI);                                                               \
        const VT nf = __builtin_convertvector(n, VT);                                                              \
        const VT r = xc - nf * 0.693359375f + nf * 2.12194440e-4f;                                                 \
        VT p = r * 1.9875691500e-4f + 1.3981999507e-3f;                                                            \
        p = p * r + 8.3334519073e-3f;                                                                              \
        p = p * r + 4.1665795894e-2f;                                                                              \
        p = p * r + 1.6666665459e-1f;                                                                              \
        p = p * r + 5.0000001201e-1f;                                                                              \
        p = p * r * r + r + 1.0f;                                                                                  \
        const VT scale2 = (VT)((n + 127) << 23);                                                                   \
        return (VT)((VI)(p * scale2) & ~dead);                                                                     \
    }

#define DR_DEFINE_VMAX(NAME, VT, VI, ATTR)                                                                         \
    ATTR static inline VT NAME(VT x, VT y) {                                                                       \
        const VI gt = x > y;                                                                                       \
        return (VT)(((VI)x & gt) | ((VI)y & ~gt));                                                                 \
    }

static inline float sexp_f(float x) { return expf(x); }
static inline float slog_f(float x) { return logf(x); }
static inline double sexp_d(double x) { return exp(x); }
static inline double slog_d(double x) { return log(x); }

/* A parallel loop's context: the kernel arguments and the query chunking (forward). */
typedef struct {
    const dr_attn_args *a;
    int64_t qchunk, nqc;
    volatile int failed;
} dr_attn_ctx;

/* ---- variants ----------------------------------------------------------------------------------------- */

typedef float dr_v4f __attribute__((vector_size(16)));
typedef int32_t dr_v4i __attribute__((vector_size(16)));
typedef double dr_v2d __attribute__((vector_size(16)));
typedef int64_t dr_v2l __attribute__((vector_size(16)));

#define DR_ATTR_PORTABLE
DR_DEFINE_VEXP_F(vexp_v4f, dr_v4f, dr_v4i, DR_ATTR_PORTABLE)
DR_DEFINE_VMAX(vmax_v4f, dr_v4f, dr_v4i, DR_ATTR_PORTABLE)
DR_DEFINE_VMAX(vmax_v2d, dr_v2d, dr_v2l, DR_ATTR_PORTABLE)

static inline dr_v2d vexp_v2d(dr_v2d x) {
    dr_v2d y;
    y[0] = exp(x[0]);
    y[1] = exp(x[1]);
    return y;
}

/* portable float: 4 lanes */
#define RT float
#define VT dr_v4f
#define VI dr_v4i
#define VW 4
#define SFX(n) n##_pf
#define ATTR DR_ATTR_PORTABLE
#define VEXP vexp_v4f
#define VMAX vmax_v4f
#define SEXP sexp_f
#define SLOG slog_f
#include "attention_cpu.inc"
#undef RT
#undef VT
#undef VI
#undef VW
#undef SFX
#undef ATTR
#undef VEXP
#undef VMAX
#undef SEXP
#undef SLOG

/* float64: 2 lanes, libm exp (float64 serves gradient checks; precision first) */
#define RT double
#define VT dr_v2d
#define VI dr_v2l
#define VW 2
#define SFX(n) n##_pd
#define ATTR DR_ATTR_PORTABLE
#define VEXP vexp_v2d
#define VMAX vmax_v2d
#define SEXP sexp_d
#define SLOG slog_d
#include "attention_cpu.inc"
#undef RT
#undef VT
#undef VI
#undef VW
#undef SFX
#undef ATTR
#undef VEXP
#undef VMAX
#undef SEXP
#undef SLOG

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DR_ATTN_X86 1
#define DR_ATTR_AVX2 __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#define DR_ATTR_AVX512 __attribute__((target("avx512f,avx2,fma"), optimize("fp-contract=fast")))
#elif defined(__x86_64__) && defined(__clang__)
#define DR_ATTN_X86 1
#define DR_ATTR_AVX2 __attribute__((target("avx2,fma")))
#define DR_ATTR_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

#ifdef DR_ATTN_X86
#include <immintrin.h>

typedef float dr_v8f __attribute__((vector_size(32)));
typedef uint32_t dr_v16u __attribute__((vector_size(64)));
typedef int32_t dr_v8i __attribute__((vector_size(32)));
typedef float dr_v16f __attribute__((vector_size(64)));
typedef int32_t dr_v16i __attribute__((vector_size(64)));
DR_DEFINE_VEXP_F(vexp_v8f, dr_v8f, dr_v8i, DR_ATTR_AVX2)
DR_DEFINE_VMAX(vmax_v8f, dr_v8f, dr_v8i, DR_ATTR_AVX2)
DR_DEFINE_VEXP_F(vexp_v16f, dr_v16f, dr_v16i, DR_ATTR_AVX512)
DR_DEFINE_VMAX(vmax_v16f, dr_v16f, dr_v16i, DR_ATTR_AVX512)

#define RT float
#define VT dr_v8f
#define VI dr_v8i
#define VW 8
#define SFX(n) n##_avx2
#define ATTR DR_ATTR_AVX2
#define VEXP vexp_v8f
#define VMAX vmax_v8f
#define SEXP sexp_f
#define SLOG slog_f
#include "attention_cpu.inc"
#undef VT
#undef VI
#undef VW
#undef SFX
#undef ATTR
#undef VEXP
#undef VMAX

#define VT dr_v16f
#define VI dr_v16i
#define VW 16
#define SFX(n) n##_avx512
#define RROWS 8 /* 32 vector registers: 8 rows x 2 vectors of accumulators */
#define ATTR DR_ATTR_AVX512
#define VEXP vexp_v16f
#define VMAX vmax_v16f
#include "attention_cpu.inc"
#undef RROWS
#undef RT
#undef VT
#undef VI
#undef VW
#undef SFX
#undef ATTR
#undef VEXP
#undef VMAX
#undef SEXP
#undef SLOG

/* ---- bfloat16 forward on the AMX tile unit ------------------------------------------------------------
 * Per batch-head, K is packed once as tiles of K^T (16 keys × 32 dims, dimension pairs adjacent) and V as tiles
 * (32 keys × 16 dims, key pairs adjacent). Per 16 query rows: S = Q K^T on the tiles (bf16 products, float32
 * sums), the whole row of scores at once (Lk <= DR_ATTN_AMX_MAX_LK: no online rescaling), then in float32 with
 * AVX-512 the scale, the mask (the same apply_mask as the vector kernels), the row maximum, P = exp(S - max) and
 * its sum, lse = max + log(sum); P is rounded to bfloat16 for O = P V on the tiles (as flash attention does) and O
 * is divided by the float32 sum. Fully masked rows give O = 0 and lse = -inf. Tiles: 0 and 6 S, 1 Q, 2 and 7
 * K^T, then 3 and 6 O, 4 P, 5 and 7 V, each 16 rows × 64 bytes. */
#define DR_ATTN_AMX_MAX_LK 8192

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} dr_amx_cfg;

static const dr_amx_cfg dr_attn_tiles = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

#define DR_ATTR_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx2,fma")))

/* dst[r][c] (row pitch 32 bf16) = the c-th bf16 of row r of src (n rows of `len` values from base + off, row
 * stride rs, element stride es), zero beyond. */
static void amx_rows(const uint16_t *src, int64_t rs, int64_t es, int64_t n, int64_t c0, int64_t len,
                     uint16_t *dst) {
    for (int64_t r = 0; r < 16; r++)
        for (int64_t c = 0; c < 32; c++)
            dst[r * 32 + c] = (r < n && c0 + c < len) ? src[r * rs + (c0 + c) * es] : 0;
}

/* The packing of fwd_task_amx for rows with unit element stride and an even row stride, vectorised: a K^T tile
 * row, read as 32-bit words, is one dimension pair of 16 keys (a masked gather down the key rows); a V tile row
 * interleaves two consecutive keys' 16 dimensions. */
DR_ATTR_AMX static void amx_pack_contiguous(const uint16_t *k, int64_t ks, const uint16_t *v, int64_t vs, int64_t Lk,
                                            int64_t D, int64_t Dv, int64_t nd, int64_t ndv, uint16_t *Kt,
                                            uint16_t *Vt) {
    const int64_t nkk = (Lk + 31) / 32, nkb = 2 * nkk; /* the block counts of fwd_task_amx */
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)(2 * ks)));
    for (int64_t k0 = 0; k0 < nkb; k0++) {
        const int64_t nv = dr_min_i64(16, Lk - 16 * k0);
        const __mmask16 live = (__mmask16)(nv > 0 ? (1u << nv) - 1u : 0u); /* none: a padding block of zeros */
        const char *base = (const char *)(k + 16 * k0 * ks);
        for (int64_t d0 = 0; d0 < nd; d0++)
            for (int64_t i = 0; i < 16; i++) {
                const int64_t word = 16 * d0 + i; /* dimensions 2 word, 2 word + 1 (D is even) */
                __m512i w = _mm512_setzero_si512();
                if (2 * word < D)
                    w = _mm512_mask_i32gather_epi32(w, live, _mm512_add_epi32(rows, _mm512_set1_epi32((int)(4 * word))),
                                                    base, 1);
                _mm512_storeu_si512(Kt + (k0 * nd + d0) * 512 + i * 32, w);
            }
    }
    for (int64_t c0 = 0; c0 < nkk; c0++)
        for (int64_t e0 = 0; e0 < ndv; e0++) {
            const int64_t nd16 = dr_min_i64(16, Dv - 16 * e0);
            const __mmask16 dm = (__mmask16)(nd16 > 0 ? (1u << nd16) - 1u : 0u);
            for (int64_t i = 0; i < 16; i++) {
                const int64_t key = 32 * c0 + 2 * i;
                __m256i x0 = _mm256_setzero_si256(), x1 = _mm256_setzero_si256();
                if (key < Lk)
                    x0 = _mm256_maskz_loadu_epi16(dm, v + key * vs + 16 * e0);
                if (key + 1 < Lk)
                    x1 = _mm256_maskz_loadu_epi16(dm, v + (key + 1) * vs + 16 * e0);
                const __m512i pair = _mm512_or_si512(_mm512_cvtepu16_epi32(x0),
                                                     _mm512_slli_epi32(_mm512_cvtepu16_epi32(x1), 16));
                _mm512_storeu_si512(Vt + (c0 * ndv + e0) * 512 + i * 32, pair);
            }
        }
}

DR_ATTR_AMX static void fwd_task_amx(void *vctx, int64_t begin, int64_t end) {
    dr_attn_ctx *ctx = (dr_attn_ctx *)vctx;
    const dr_attn_args *a = ctx->a;
    const int64_t D = a->D, Dv = a->Dv, Lk = a->Lk;
    /* key blocks and 16-dim output blocks in even numbers (zero padding), so both go through tiles in pairs */
    const int64_t nd = (D + 31) / 32, nkk = (Lk + 31) / 32, nkb = 2 * nkk, ndv = 2 * ((Dv + 31) / 32);
    const int64_t ldS = nkk * 32, ldO = ndv * 16; /* S rows padded to whole 32-key chunks */
    const size_t kt_n = (size_t)(nkb * nd * 512), vt_n = (size_t)(nkk * ndv * 512), qt_n = (size_t)(nd * 512),
                 pt_n = (size_t)(nkk * 512);
    uint16_t *Kt = (uint16_t *)dr_attn_alloc((kt_n + vt_n + qt_n + pt_n) * 2 + (size_t)(16 * (ldS + ldO)) * 4);
    if (!Kt) {
        ctx->failed = 1;
        return;
    }
    uint16_t *Vt = Kt + kt_n, *Qt = Vt + vt_n, *Pt = Qt + qt_n;
    float *S = (float *)(Pt + pt_n), *O = S + 16 * ldS;
    const float scale = (float)a->scale;
    _tile_loadconfig(&dr_attn_tiles);
    int64_t cur = -1;
    for (int64_t t = begin; t < end; t++) {
        const int64_t bh = t / ctx->nqc, qc = t % ctx->nqc, b = bh / a->H, h = bh % a->H;
        const int64_t i0 = qc * ctx->qchunk, i1 = dr_min_i64(a->Lq, i0 + ctx->qchunk);
        const uint16_t *qb = (const uint16_t *)a->q + b * a->q_s[0] + h * a->q_s[1];
        if (bh != cur) { /* pack K^T and V of this batch-head */
            const uint16_t *kb = (const uint16_t *)a->k + b * a->k_s[0] + h * a->k_s[1];
            const uint16_t *vb = (const uint16_t *)a->v + b * a->v_s[0] + h * a->v_s[1];
            cur = bh;
            if (a->k_s[3] == 1 && a->v_s[3] == 1 && a->k_s[2] % 2 == 0 && D % 2 == 0 && 32 * a->k_s[2] < INT32_MAX) {
                amx_pack_contiguous(kb, a->k_s[2], vb, a->v_s[2], Lk, D, Dv, nd, ndv, Kt, Vt);
                goto packed;
            }
            for (int64_t k0 = 0; k0 < nkb; k0++)
                for (int64_t d0 = 0; d0 < nd; d0++) {
                    uint16_t *tile = Kt + (k0 * nd + d0) * 512; /* [i][2n + p] = K[key 16 k0 + n][dim 32 d0 + 2i + p] */
                    for (int64_t i = 0; i < 16; i++)
                        for (int64_t n = 0; n < 16; n++)
                            for (int p = 0; p < 2; p++) {
                                const int64_t key = 16 * k0 + n, dim = 32 * d0 + 2 * i + p;
                                tile[i * 32 + 2 * n + p] =
                                    key < Lk && dim < D ? kb[key * a->k_s[2] + dim * a->k_s[3]] : 0;
                            }
                }
            for (int64_t c0 = 0; c0 < nkk; c0++)
                for (int64_t e0 = 0; e0 < ndv; e0++) {
                    uint16_t *tile = Vt + (c0 * ndv + e0) * 512; /* [i][2n + p] = V[key 32 c0 + 2i + p][dim 16 e0 + n] */
                    for (int64_t i = 0; i < 16; i++)
                        for (int64_t n = 0; n < 16; n++)
                            for (int p = 0; p < 2; p++) {
                                const int64_t key = 32 * c0 + 2 * i + p, dim = 16 * e0 + n;
                                tile[i * 32 + 2 * n + p] =
                                    key < Lk && dim < Dv ? vb[key * a->v_s[2] + dim * a->v_s[3]] : 0;
                            }
                }
        }
    packed:
        for (int64_t r0 = i0; r0 < i1; r0 += 16) {
            const int64_t nr = dr_min_i64(16, i1 - r0);
            for (int64_t d0 = 0; d0 < nd; d0++) {
                if (a->q_s[3] != 1) {
                    amx_rows(qb + r0 * a->q_s[2], a->q_s[2], a->q_s[3], nr, 32 * d0, D, Qt + d0 * 512);
                    continue;
                }
                const int64_t nc = dr_min_i64(32, D - 32 * d0);
                const __mmask32 cm = (__mmask32)(nc == 32 ? 0xffffffffu : ((1u << nc) - 1u));
                for (int64_t r = 0; r < 16; r++)
                    _mm512_storeu_si512(Qt + d0 * 512 + r * 32,
                                        r < nr ? _mm512_maskz_loadu_epi16(cm, qb + (r0 + r) * a->q_s[2] + 32 * d0)
                                               : _mm512_setzero_si512());
            }
            for (int64_t k0 = 0; k0 < nkb; k0 += 2) { /* two key blocks at a time: independent accumulators 0, 6 */
                _tile_zero(0);
                _tile_zero(6);
                for (int64_t d0 = 0; d0 < nd; d0++) {
                    _tile_loadd(1, Qt + d0 * 512, 64);
                    _tile_loadd(2, Kt + (k0 * nd + d0) * 512, 64);
                    _tile_loadd(7, Kt + ((k0 + 1) * nd + d0) * 512, 64);
                    _tile_dpbf16ps(0, 1, 2);
                    _tile_dpbf16ps(6, 1, 7);
                }
                _tile_stored(0, S + k0 * 16, ldS * 4);
                _tile_stored(6, S + (k0 + 1) * 16, ldS * 4);
            }
            float inv[16], lse[16];
            for (int64_t r = 0; r < 16; r++) {
                float *Sr = S + r * ldS;
                uint16_t *Pr = Pt + r * 32; /* P tile c0 holds keys [32 c0, 32 c0 + 32) of row r */
                const int64_t i = r < nr ? r0 + r : a->Lq; /* rows past the chunk: padding, all masked */
                for (int64_t j = 0; j < ldS; j += 16)
                    *(dr_v16f *)(Sr + j) *= scale;
                if (a->mask_dtype >= 0 || a->causal || Lk < ldS || i >= a->Lq)
                    apply_mask_avx512(a, b, h, i, 0, ldS, Lk, Sr);
                dr_v16f mv = (dr_v16f){0} - INFINITY;
                for (int64_t j = 0; j < ldS; j += 16)
                    mv = vmax_v16f(*(dr_v16f *)(Sr + j), mv);
                const float m = _mm512_reduce_max_ps((__m512)mv);
                if (m == -INFINITY) {
                    for (int64_t c0 = 0; c0 < nkk; c0++)
                        memset(Pr + c0 * 512, 0, 64);
                    inv[r] = 0.0f;
                    lse[r] = -INFINITY;
                    continue;
                }
                dr_v16f sum = {0};
                for (int64_t j = 0; j < ldS; j += 16) {
                    const dr_v16f p = vexp_v16f(*(dr_v16f *)(Sr + j) - m);
                    sum += p;
                    /* round to nearest even (p is finite and >= 0, so no NaN or sign cases) */
                    dr_v16u u = (dr_v16u)p;
                    u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
                    _mm256_storeu_si256((__m256i *)(Pr + (j / 32) * 512 + (j % 32)), _mm512_cvtepi32_epi16((__m512i)u));
                }
                const float l = _mm512_reduce_add_ps((__m512)sum);
                inv[r] = 1.0f / l;
                lse[r] = m + logf(l);
            }
            for (int64_t e0 = 0; e0 < ndv; e0 += 2) { /* two 16-dim blocks at a time: accumulators 3 and 6 */
                _tile_zero(3);
                _tile_zero(6);
                for (int64_t c0 = 0; c0 < nkk; c0++) {
                    _tile_loadd(4, Pt + c0 * 512, 64);
                    _tile_loadd(5, Vt + (c0 * ndv + e0) * 512, 64);
                    _tile_loadd(7, Vt + (c0 * ndv + e0 + 1) * 512, 64);
                    _tile_dpbf16ps(3, 4, 5);
                    _tile_dpbf16ps(6, 4, 7);
                }
                _tile_stored(3, O + e0 * 16, ldO * 4);
                _tile_stored(6, O + (e0 + 1) * 16, ldO * 4);
            }
            for (int64_t r = 0; r < nr; r++) {
                uint16_t *o = (uint16_t *)a->out + b * a->o_s[0] + h * a->o_s[1] + (r0 + r) * a->o_s[2];
                if (a->o_s[3] == 1) { /* 16 values at a time, rounded to nearest even as dr_f32_to_bf16 */
                    for (int64_t c = 0; c < Dv; c += 16) {
                        const dr_v16f x = *(dr_v16f *)(O + r * ldO + c) * inv[r];
                        dr_v16u u = (dr_v16u)x;
                        const dr_v16u nan = (dr_v16u)(x != x); /* all ones where NaN: keep it a quiet NaN */
                        u = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16 & ~nan) | (((u >> 16) | 0x40u) & nan);
                        const int64_t n = dr_min_i64(16, Dv - c);
                        _mm256_mask_storeu_epi16(o + c, (__mmask16)((1u << n) - 1u), _mm512_cvtepi32_epi16((__m512i)u));
                    }
                } else {
                    for (int64_t c = 0; c < Dv; c++)
                        o[c * a->o_s[3]] = dr_f32_to_bf16(O[r * ldO + c] * inv[r]);
                }
                ((float *)a->lse)[b * a->lse_s[0] + h * a->lse_s[1] + (r0 + r) * a->lse_s[2]] = lse[r];
            }
        }
    }
    _tile_release();
    dr_attn_free(Kt);
}
#endif

/* ---- dispatch ----------------------------------------------------------------------------------------- */

typedef void (*task_fn)(void *, int64_t, int64_t);

/* The variant for `isa` (DR_ATTN_ISA_*), or the best this CPU supports for DR_ATTN_ISA_AUTO. */
static dr_status pick(int dtype, int isa, task_fn *fwd, task_fn *fwd_t, task_fn *bwd) {
    if (dtype == DR_FLOAT64) { /* one float64 variant */
        *fwd = fwd_task_pd;
        *fwd_t = fwd_task_t_pd;
        *bwd = bwd_task_pd;
        return DR_OK;
    }
#ifdef DR_ATTN_X86
    __builtin_cpu_init();
    const int has512 = __builtin_cpu_supports("avx512f");
    const int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == DR_ATTN_ISA_AUTO)
        isa = has512 ? DR_ATTN_ISA_AVX512 : has2 ? DR_ATTN_ISA_AVX2 : DR_ATTN_ISA_PORTABLE;
    if ((isa == DR_ATTN_ISA_AVX512 && !has512) || (isa == DR_ATTN_ISA_AVX2 && !has2))
        return dr_set_error(DR_EUNSUPPORTED, "attention: this CPU does not support the requested instruction set");
    if (isa == DR_ATTN_ISA_AVX512) {
        *fwd = fwd_task_avx512;
        *fwd_t = fwd_task_t_avx512;
        *bwd = bwd_task_avx512;
        return DR_OK;
    }
    if (isa == DR_ATTN_ISA_AVX2) {
        *fwd = fwd_task_avx2;
        *fwd_t = fwd_task_t_avx2;
        *bwd = bwd_task_avx2;
        return DR_OK;
    }
#else
    if (isa == DR_ATTN_ISA_AVX512 || isa == DR_ATTN_ISA_AVX2)
        return dr_set_error(DR_EUNSUPPORTED, "attention: this build has no x86 vector kernels");
#endif
    *fwd = fwd_task_pf;
    *fwd_t = fwd_task_t_pf;
    *bwd = bwd_task_pf;
    return DR_OK;
}

static dr_status cpu_args(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v, const dr_tensor *mask,
                          const dr_tensor *o, const dr_tensor *lse, const dr_tensor *dout, const dr_tensor *dq,
                          const dr_tensor *dk, const dr_tensor *dv, const dr_attention_params *p, dr_attn_args *a) {
    dr_status st = dr_attention_make_args(q, k, v, mask, o, lse, dout, dq, dk, dv, p, a);
    if (st != DR_OK)
        return st;
    const dr_tensor *all[10] = {q, k, v, mask, o, lse, dout, dq, dk, dv};
    for (int i = 0; i < 10; i++)
        if (all[i] && all[i]->device != DR_CPU)
            return dr_set_error(DR_EINVAL, "attention: CPU kernel called with tensors on another device");
    return DR_OK;
}

/* Forward with a chosen instruction set (DR_ATTN_ISA_*). */
dr_status dr_attention_forward_cpu_isa(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                       const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                       const dr_attention_params *p, int isa) {
    dr_attn_args a;
    dr_status st = cpu_args(q, k, v, mask, o, lse, NULL, NULL, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    task_fn fwd = NULL, fwd_t = NULL, bwd = NULL;
    if ((st = pick(a.dtype, isa, &fwd, &fwd_t, &bwd)) != DR_OK)
        return st;
    const int64_t bh = a.B * a.H;
    if (bh == 0 || a.Lq == 0)
        return DR_OK;
    /* whole heads when there are enough of them; otherwise split the query rows (in multiples of 4 rows) */
    const int64_t want = 4 * (int64_t)dr_get_num_threads();
    int64_t nsplit = bh >= want ? 1 : (want + bh - 1) / bh;
    int64_t qchunk = (a.Lq + nsplit - 1) / nsplit;
    if (qchunk > 512)
        qchunk = 512;
    qchunk = (qchunk + 7) / 8 * 8; /* whole micro-tiles of every variant */
    const int64_t nqc = (a.Lq + qchunk - 1) / qchunk;
    dr_attn_ctx ctx = {&a, qchunk, nqc, 0};
#ifdef DR_ATTN_X86
    /* bfloat16 on the tile unit where the process may use it (the automatic choice only: a forced instruction set
     * runs its vector kernel) */
    if (isa == DR_ATTN_ISA_AUTO && a.dtype == DR_BFLOAT16 && a.Lk >= 1 && a.Lk <= DR_ATTN_AMX_MAX_LK &&
        (dr_cpu_amx() & DR_CPU_AMX_BF16) && __builtin_cpu_supports("avx512bw")) {
        dr_parallel_for(bh * nqc, 1, fwd_task_amx, &ctx);
        if (ctx.failed)
            return dr_set_error(DR_ENOMEM, "attention: out of memory for the packed blocks");
        return DR_OK;
    }
#endif
    /* short query chunks against long key lists: transpose the queries rather than the keys */
    dr_parallel_for(bh * nqc, 1, qchunk < a.Lk ? fwd_t : fwd, &ctx);
    if (ctx.failed)
        return dr_set_error(DR_ENOMEM, "attention: out of memory for the packed blocks");
    return DR_OK;
}

/* Backward with a chosen instruction set (DR_ATTN_ISA_*). */
dr_status dr_attention_backward_cpu_isa(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                        const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                        const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                        const dr_attention_params *p, int isa) {
    dr_attn_args a;
    dr_status st = cpu_args(q, k, v, mask, o, lse, dout, dq, dk, dv, p, &a);
    if (st != DR_OK)
        return st;
    task_fn fwd = NULL, fwd_t = NULL, bwd = NULL;
    if ((st = pick(a.dtype, isa, &fwd, &fwd_t, &bwd)) != DR_OK)
        return st;
    const int64_t bh = a.B * a.H;
    if (bh == 0)
        return DR_OK;
    dr_attn_ctx ctx = {&a, 0, 0, 0};
    dr_parallel_for(bh, 1, bwd, &ctx);
    if (ctx.failed)
        return dr_set_error(DR_ENOMEM, "attention: out of memory for the packed blocks");
    return DR_OK;
}

/* Forward, fastest instruction set of this CPU. */
dr_status dr_attention_forward_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                   const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                   const dr_attention_params *p) {
    return dr_attention_forward_cpu_isa(q, k, v, mask, o, lse, p, DR_ATTN_ISA_AUTO);
}

/* Backward, fastest instruction set of this CPU. */
dr_status dr_attention_backward_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                    const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                    const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                    const dr_attention_params *p) {
    return dr_attention_backward_cpu_isa(q, k, v, mask, o, lse, dout, dq, dk, dv, p, DR_ATTN_ISA_AUTO);
}

/* ---- the CUDA bodies, run row by row on the CPU ------------------------------------------------------- */

typedef struct {
    const dr_attn_args *a;
    int which; /* 0 forward, 1 dq, 2 dk/dv */
} elem_ctx;

static void elem_task(void *vctx, int64_t begin, int64_t end) {
    const elem_ctx *c = (const elem_ctx *)vctx;
    const dr_attn_args *a = c->a;
    for (int64_t r = begin; r < end; r++) {
#define DR_ELEM_CASE(DT, SFX)                                                                                      \
    case DT:                                                                                                       \
        if (c->which == 0)                                                                                         \
            dr_attn_fwd_row_##SFX(a, r);                                                                           \
        else if (c->which == 1)                                                                                    \
            dr_attn_dq_row_##SFX(a, r);                                                                            \
        else                                                                                                       \
            dr_attn_dkv_row_##SFX(a, r);                                                                           \
        break;
        switch (a->dtype) {
            DR_ELEM_CASE(DR_FLOAT32, f32)
            DR_ELEM_CASE(DR_FLOAT64, f64)
            DR_ELEM_CASE(DR_FLOAT16, f16)
        default:
            if (c->which == 0)
                dr_attn_fwd_row_bf16(a, r);
            else if (c->which == 1)
                dr_attn_dq_row_bf16(a, r);
            else
                dr_attn_dkv_row_bf16(a, r);
            break;
        }
#undef DR_ELEM_CASE
    }
}

/* Forward through the CUDA kernel's per-row body, every query row. O(B H Lq Lk (D + Dv)). */
dr_status dr_attention_forward_elementwise_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                               const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                               const dr_attention_params *p) {
    dr_attn_args a;
    dr_status st = cpu_args(q, k, v, mask, o, lse, NULL, NULL, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    elem_ctx c = {&a, 0};
    dr_parallel_for(a.B * a.H * a.Lq, 16, elem_task, &c);
    return DR_OK;
}

/* Backward through the CUDA kernels' per-row bodies: dq by query row, dk/dv by key row (gathers, no atomics). */
dr_status dr_attention_backward_elementwise_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                                const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                                const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                                const dr_attention_params *p) {
    dr_attn_args a;
    dr_status st = cpu_args(q, k, v, mask, o, lse, dout, dq, dk, dv, p, &a);
    if (st != DR_OK)
        return st;
    elem_ctx c1 = {&a, 1}, c2 = {&a, 2};
    dr_parallel_for(a.B * a.H * a.Lq, 16, elem_task, &c1);
    dr_parallel_for(a.B * a.H * a.Lk, 16, elem_task, &c2);
    return DR_OK;
}
