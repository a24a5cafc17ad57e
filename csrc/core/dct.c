/* dct.c — scipy.fftpack.dct (type II, unnormalised) in the same double-precision arithmetic as scipy, for
 * imagehash's pHash (dr_dct2_*, declared in resample.inc).
 *
 * The arithmetic is dr_dct_radix.inc's, the plan (factors, twiddles) dr_phash_math.inc's: the code the CUDA kernel
 * and the CPU's elementwise path run per line. Here it runs per line (dr_dct2_exec) and on 8 lines at once, one
 * per lane of a vector of doubles (dr_dct2_exec8): every lane performs the scalar operations in the scalar order
 * (no fused multiply-adds: the build passes -ffp-contract=off), so each line's values are the scalar ones bit for
 * bit, at every instruction set.
 * Cost: O(N log N) per line for the small factors, O(N·p) for a prime factor p.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dr_phash.h"
#include "resample.inc"

struct dr_dct2_plan {
    dr_dct_plan p;
    double *tw;
};

void dr_dct2_free(dr_dct2_plan *p) {
    if (!p)
        return;
    free(p->tw);
    free(p);
}

dr_dct2_plan *dr_dct2_make(int64_t n) {
    dr_dct2_plan *p = (dr_dct2_plan *)calloc(1, sizeof *p);
    if (!p)
        return NULL;
    int64_t size = dr_dct_plan_init(&p->p, n);
    p->tw = size < 0 ? NULL : (double *)malloc((size_t)(size + 1) * sizeof(double));
    if (!p->tw) {
        dr_dct2_free(p);
        return NULL;
    }
    dr_dct_plan_twiddles(&p->p, p->tw);
    return p;
}

/* Plans by length, made once per process: immutable once published (a racing thread's duplicate is freed), the
 * cache stops growing at PLAN_CACHE_BYTES. */
#define PLAN_CACHE_LEN 4097
#define PLAN_CACHE_BYTES ((size_t)16 << 20)
static dr_dct2_plan *plan_cache[PLAN_CACHE_LEN];
static size_t plan_cache_bytes;

dr_dct2_plan *dr_dct2_plan_get(int64_t n, int *owned) {
    *owned = 0;
    if (n >= 1 && n < PLAN_CACHE_LEN) {
        dr_dct2_plan *p = __atomic_load_n(&plan_cache[n], __ATOMIC_ACQUIRE);
        if (p)
            return p;
    }
    dr_dct2_plan *p = dr_dct2_make(n);
    if (!p || n >= PLAN_CACHE_LEN) {
        *owned = p != NULL;
        return p;
    }
    size_t bytes = sizeof *p + (size_t)(p->p.size + 1) * sizeof(double);
    if (__atomic_add_fetch(&plan_cache_bytes, bytes, __ATOMIC_RELAXED) > PLAN_CACHE_BYTES) {
        *owned = 1;
        return p;
    }
    dr_dct2_plan *expected = NULL;
    if (!__atomic_compare_exchange_n(&plan_cache[n], &expected, p, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        dr_dct2_free(p);
        return expected;
    }
    return p;
}

const dr_dct_plan *dr_dct2_plan_of(const dr_dct2_plan *p, const double **tw) {
    *tw = p->tw;
    return &p->p;
}

void dr_dct2_exec(const dr_dct2_plan *p, double *c, double *work) { dr_dct_exec(&p->p, p->tw, c, work); }

/* 8 doubles, any 8-byte aligned address. */
typedef double dct_v8 __attribute__((vector_size(64), aligned(8)));

#define DR_DCT_T dct_v8
#define DR_DCT_FN(name) dct8_##name
#define DR_DCT_QUAL static
#include "dr_dct_radix.inc"

#ifdef DOT_X86
#define DR_DCT_T dct_v8
#define DR_DCT_FN(name) dct8_avx2_##name
#define DR_DCT_QUAL __attribute__((target("avx2"))) static
#include "dr_dct_radix.inc"

#define DR_DCT_T dct_v8
#define DR_DCT_FN(name) dct8_avx512_##name
#define DR_DCT_QUAL __attribute__((target("avx512f"))) static
#include "dr_dct_radix.inc"
#endif

void dr_dct2_exec8(const dr_dct2_plan *p, double *c, double *work) {
#ifdef DOT_X86
    const int level = dr_cpu_level();
    if (level >= DR_CPU_LEVEL_AVX512)
        return dct8_avx512_exec(&p->p, p->tw, (dct_v8 *)c, (dct_v8 *)work);
    if (level == DR_CPU_LEVEL_AVX2)
        return dct8_avx2_exec(&p->p, p->tw, (dct_v8 *)c, (dct_v8 *)work);
#endif
    dct8_exec(&p->p, p->tw, (dct_v8 *)c, (dct_v8 *)work);
}
