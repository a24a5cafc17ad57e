/* attention.c — fused scaled-dot-product attention on the CPU (F.scaled_dot_product_attention semantics,
 * DESIGN §7.6): forward (O and log-sum-exp) and backward (dQ, dK, dV recomputed from O, LSE and dO).
 *
 * The fast path (attention_cpu.inc) is instantiated for AVX-512, AVX2+FMA and a portable vector width with GCC
 * vector extensions; the variant is picked at run time from the CPU's features (dr_cpu.h: DYNREFER_CPU_ISA caps
 * the choice; impl "avx512"/"avx2"/"portable" force one where the CPU has it). float32/float16/bfloat16 compute in float32, float64 in float64;
 * bfloat16 runs on the AMX tile unit in both directions where the process may use it (attention_amx.inc). Work is split over batch x heads x
 * query chunks (forward; the chunks and the kernel for each depend on the shapes only) and batch x key/value heads
 * (backward) with dr_parallel_for; every sum runs in a fixed order, so results are bitwise repeatable and the same
 * whatever the thread count. Complexity: forward O(B H Lq Lk (D + Dv)), backward
 * O(B H Lq Lk (2 D + 3 Dv)); memory per task O(Lk (D + Dv)) plus blocks of a fixed number of query rows (the
 * query rows stream through; float16/bfloat16 backward: their P and dP against every key), never Lq x Lk.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dr_attention.h"
#include "dr_cpu.h"
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

/* max(x, y) lane by lane, NaN if either is NaN (a score row with a NaN gives a NaN softmax, as in PyTorch). */
#define DR_DEFINE_VMAX(NAME, VT, VI, ATTR)                                                                         \
    ATTR static inline VT NAME(VT x, VT y) {                                                                       \
        const VI gt = (x > y) | (x != x);                                                                          \
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
#define DR_INSTANTIATE "attention_cpu.inc"
#define DR_INSTANTIATE_VARIANT
#define DR_RT float
#define DR_VT dr_v4f
#define DR_VI dr_v4i
#define DR_VW 4
#define DR_KS(n) n##_pf
#define DR_ATTR DR_ATTR_PORTABLE
#define DR_VEXP vexp_v4f
#define DR_VMAX vmax_v4f
#define DR_SEXP sexp_f
#define DR_SLOG slog_f
#include "dr_instantiate.h"

/* float64: 2 lanes, libm exp (float64 serves gradient checks; precision first) */
#define DR_INSTANTIATE "attention_cpu.inc"
#define DR_INSTANTIATE_VARIANT
#define DR_RT double
#define DR_VT dr_v2d
#define DR_VI dr_v2l
#define DR_VW 2
#define DR_KS(n) n##_pd
#define DR_ATTR DR_ATTR_PORTABLE
#define DR_VEXP vexp_v2d
#define DR_VMAX vmax_v2d
#define DR_SEXP sexp_d
#define DR_SLOG slog_d
#include "dr_instantiate.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DR_ATTN_X86 1
#define DR_ATTR_AVX2                                                                                               \
    __attribute__((target("avx2,fma"), optimize("fp-contract=fast", "no-tree-loop-distribute-patterns")))
#define DR_ATTR_AVX512                                                                                             \
    __attribute__((target("avx512f,avx2,fma"), optimize("fp-contract=fast", "no-tree-loop-distribute-patterns")))
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

/* dst (row pitch ldd bytes) = the transpose of the 16 x 16 block of 32-bit words at src (row pitch lds bytes):
 * unpacks of 32- and 64-bit pairs, then a 4 x 4 transpose of 128-bit lanes. */
DR_ATTR_AVX512 static inline void dr_tr16_avx512(const void *src, int64_t lds, void *dst, int64_t ldd) {
    __m512i r[16], u[16];
    for (int n = 0; n < 16; n++)
        r[n] = _mm512_loadu_si512((const char *)src + n * lds);
    for (int i = 0; i < 8; i++) {
        u[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        u[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) { /* r[4 g + c], 128-bit lane L: word 4 L + c of rows 4 g .. 4 g + 3 */
        r[4 * g + 0] = _mm512_unpacklo_epi64(u[4 * g], u[4 * g + 2]);
        r[4 * g + 1] = _mm512_unpackhi_epi64(u[4 * g], u[4 * g + 2]);
        r[4 * g + 2] = _mm512_unpacklo_epi64(u[4 * g + 1], u[4 * g + 3]);
        r[4 * g + 3] = _mm512_unpackhi_epi64(u[4 * g + 1], u[4 * g + 3]);
    }
    char *d = (char *)dst;
    for (int c = 0; c < 4; c++) { /* 4 x 4 transpose of 128-bit lanes across r[c], r[4 + c], r[8 + c], r[12 + c] */
        const __m512i x0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
        const __m512i x1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
        const __m512i x2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        const __m512i x3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
        _mm512_storeu_si512(d + (0 + c) * ldd, _mm512_shuffle_i32x4(x0, x2, 0x88));
        _mm512_storeu_si512(d + (4 + c) * ldd, _mm512_shuffle_i32x4(x1, x3, 0x88));
        _mm512_storeu_si512(d + (8 + c) * ldd, _mm512_shuffle_i32x4(x0, x2, 0xdd));
        _mm512_storeu_si512(d + (12 + c) * ldd, _mm512_shuffle_i32x4(x1, x3, 0xdd));
    }
}

/* The largest of 16 lanes, NaN if one is NaN (_mm512_reduce_max_ps alone may drop a NaN). */
DR_ATTR_AVX512 static inline float hmax_v16f(dr_v16f v) {
    if (_mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q))
        return NAN;
    return _mm512_reduce_max_ps((__m512)v);
}

/* log(x) for 16 float lanes, x > 0 finite (a softmax denominator, >= 1 in practice): Cephes' logf, the
 * mantissa in [sqrt(1/2), sqrt(2)) and a degree-8 polynomial of z = m - 1, ln 2 in two parts. About 1 ulp. */
DR_ATTR_AVX512 static inline dr_v16f vlog_v16f(dr_v16f xv) {
    const __m512 x = (__m512)xv;
    __m512 e = _mm512_getexp_ps(x);                                        /* floor(log2 x) */
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src); /* [1, 2) */
    const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
    const __m512 z = _mm512_sub_ps(m, _mm512_set1_ps(1.0f)), z2 = _mm512_mul_ps(z, z);
    static const float c[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                               -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                               2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
    __m512 y = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 9; i++)
        y = _mm512_fmadd_ps(y, z, _mm512_set1_ps(c[i]));
    y = _mm512_mul_ps(_mm512_mul_ps(y, z), z2);
    y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
    y = _mm512_fmadd_ps(z2, _mm512_set1_ps(-0.5f), y);
    return (dr_v16f)_mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(z, y));
}

#define DR_INSTANTIATE "attention_cpu.inc"
#define DR_INSTANTIATE_VARIANT
#define DR_RT float
#define DR_VT dr_v8f
#define DR_VI dr_v8i
#define DR_VW 8
#define DR_KS(n) n##_avx2
#define DR_ATTR DR_ATTR_AVX2
#define DR_SFMA(x, y, z) __builtin_fmaf(x, y, z)
#define DR_VEXP vexp_v8f
#define DR_VMAX vmax_v8f
#define DR_SEXP sexp_f
#define DR_SLOG slog_f
#include "dr_instantiate.h"

#define DR_INSTANTIATE "attention_cpu.inc"
#define DR_INSTANTIATE_VARIANT
#define DR_RT float
#define DR_VT dr_v16f
#define DR_VI dr_v16i
#define DR_VW 16
#define DR_KS(n) n##_avx512
#define DR_ATTR DR_ATTR_AVX512
#define DR_SFMA(x, y, z) __builtin_fmaf(x, y, z)
#define DR_VEXP vexp_v16f
#define DR_VMAX vmax_v16f
#define DR_SEXP sexp_f
#define DR_SLOG slog_f
#define DR_RROWS 8 /* 32 vector registers: 8 rows x 2 vectors of accumulators */
#define DR_VHMAX(v) hmax_v16f(v)
#define DR_VHSUM(v) _mm512_reduce_add_ps((__m512)(v))
#define DR_VTR16 dr_tr16_avx512
#define DR_VLOG vlog_v16f
#include "dr_instantiate.h"

/* ---- the tile-unit kernels (bfloat16) ------------------------------------------------------------------ */
#include "attention_amx.inc"
#endif

/* ---- dispatch ----------------------------------------------------------------------------------------- */

typedef void (*task_fn)(void *, int64_t, int64_t);

/* The variant for `isa` (DR_ATTN_ISA_*), or the widest dr_cpu_features() allows for DR_ATTN_ISA_AUTO. */
static dr_status pick(int dtype, int isa, task_fn *fwd, task_fn *fwd_t, task_fn *bwd) {
    if (dtype == DR_FLOAT64) { /* one float64 variant */
        *fwd = fwd_task_pd;
        *fwd_t = fwd_task_t_pd;
        *bwd = bwd_task_pd;
        return DR_OK;
    }
#ifdef DR_ATTN_X86
    /* the automatic choice within DYNREFER_CPU_ISA's cap; a forced one wherever the CPU has it */
    const int auto_isa = isa == DR_ATTN_ISA_AUTO;
    const int f = auto_isa ? dr_cpu_features() : dr_cpu_vector_features();
    const int has512 = (f & DR_CPU_AVX512F) != 0;
    const int has2 = (f & (DR_CPU_AVX2 | DR_CPU_FMA)) == (DR_CPU_AVX2 | DR_CPU_FMA);
    if (auto_isa)
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

#ifdef DR_ATTN_X86
/* bfloat16 on the tile unit where the process may use it (the automatic choice only: a forced instruction set
 * runs its vector kernel). One key runs on the vector kernels, which set dS to exactly 0 there (the softmax over
 * one key is constant), so that dQ and dK are exact zeros; so do grouped-query attention and head dims above 128
 * (the tile kernels handle neither). */
static int use_amx(const dr_attn_args *a, int isa) {
    return isa == DR_ATTN_ISA_AUTO && a->dtype == DR_BFLOAT16 && a->Lk >= 2 && a->G == 1 && a->D <= 128 &&
           a->Dv <= 128 &&
           a->Lk <= DR_ATTN_AMX_MAX_LK && dr_cpu_has(DR_CPU_AMX_BF16 | DR_CPU_AVX512BW | DR_CPU_AVX512BF16);
}
#endif

/* n tasks of fn over the thread pool; a task that could not get its scratch memory sets ctx->failed. */
static dr_status run_attn_tasks(int64_t n, task_fn fn, dr_attn_ctx *ctx) {
    dr_parallel_for(n, 1, fn, ctx);
    if (ctx->failed)
        return dr_set_error(DR_ENOMEM, "attention: out of memory for the packed blocks");
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
    /* Chunks from the shapes alone, never the thread count, so that the kernel chosen for a chunk and every sum are
     * the same at any thread count (bitwise equal results): whole heads when there are at least 64 of them,
     * otherwise query chunks of at least 32 rows for about 64 tasks; at most 512 rows. */
    const int64_t want = 64;
    int64_t nsplit = bh >= want ? 1 : (want + bh - 1) / bh;
    int64_t qchunk = (a.Lq + nsplit - 1) / nsplit;
    if (qchunk < 32)
        qchunk = 32;
    if (qchunk > 512)
        qchunk = 512;
    qchunk = (qchunk + 7) / 8 * 8; /* whole micro-tiles of every variant */
    const int64_t nqc = (a.Lq + qchunk - 1) / qchunk;
    dr_attn_ctx ctx = {&a, qchunk, nqc, 0};
#ifdef DR_ATTN_X86
    if (use_amx(&a, isa)) {
        ctx.qchunk = (qchunk + 31) / 32 * 32; /* whole 32-row blocks */
        ctx.nqc = (a.Lq + ctx.qchunk - 1) / ctx.qchunk;
        return run_attn_tasks(bh * ctx.nqc, fwd_task_amx, &ctx);
    }
#endif
    /* short query chunks against long key lists: transpose the queries rather than the keys */
    return run_attn_tasks(bh * nqc, qchunk < a.Lk ? fwd_t : fwd, &ctx);
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
    const int64_t bh = a.B * a.H, bk = a.B * a.Hk; /* one task per key/value head: a gather over its query heads */
    if (bh == 0)
        return DR_OK;
    dr_attn_ctx ctx = {&a, 0, 0, 0};
#ifdef DR_ATTN_X86
    if (use_amx(&a, isa))
        return run_attn_tasks(bh, bwd_task_amx, &ctx);
#endif
    return run_attn_tasks(bk, bwd, &ctx);
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
    dr_parallel_for(a.B * a.Hk * a.Lk, 16, elem_task, &c2);
    return DR_OK;
}
