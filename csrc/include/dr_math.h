/* dr_math.h — per-element math shared by the CPU loops and the CUDA kernels.
 *
 * Everything here is `static inline DR_HD`: __host__ __device__ under nvcc, plain inline C under a C compiler.
 * The CPU kernels and the CUDA kernels call these same functions, so a CPU test exercises the exact arithmetic
 * the GPU runs.
 */
#ifndef DR_MATH_H
#define DR_MATH_H

#include <stdint.h>
#include <math.h>
#include <string.h>

#include "dynrefer.h"

#ifdef __CUDACC__
#define DR_HD __host__ __device__
#else
#define DR_HD
#endif

#ifndef __cplusplus
#define DR_RESTRICT restrict
#else
#define DR_RESTRICT __restrict__
#endif

/* ---- float16 / bfloat16 storage <-> float32 ---------------------------------------------------------- */

DR_HD static inline uint32_t dr_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

DR_HD static inline float dr_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 → float32 (exact, subnormals and NaN payloads kept). */
DR_HD static inline float dr_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    return dr_bits_f32(bits);
}

/* float32 → IEEE binary16, round to nearest even, overflow to ±inf, NaN stays NaN. */
DR_HD static inline uint16_t dr_f32_to_f16(float f) {
    uint32_t x = dr_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520 → inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u) /* < 2^-25: rounds to zero */
            return (uint16_t)sign;
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u; /* rebias exponent 127 → 15 */
    uint32_t lsb = (r >> 13) & 1u;
    r = (r + 0xfffu + lsb) >> 13;
    return (uint16_t)(sign | r);
}

DR_HD static inline float dr_bf16_to_f32(uint16_t b) { return dr_bits_f32((uint32_t)b << 16); }

/* float32 → bfloat16, round to nearest even; NaN stays a quiet NaN. */
DR_HD static inline uint16_t dr_f32_to_bf16(float f) {
    uint32_t x = dr_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* ---- integer helpers ----------------------------------------------------------------------------------- */

DR_HD static inline int64_t dr_min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
DR_HD static inline int64_t dr_max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Read element `off` of a float tensor of any supported float dtype as double. */
DR_HD static inline double dr_load_real(const void *p, int dtype, int64_t off) {
    switch (dtype) {
    case DR_FLOAT32:
        return (double)((const float *)p)[off];
    case DR_FLOAT64:
        return ((const double *)p)[off];
    case DR_FLOAT16:
        return (double)dr_f16_to_f32(((const uint16_t *)p)[off]);
    case DR_BFLOAT16:
        return (double)dr_bf16_to_f32(((const uint16_t *)p)[off]);
    default:
        return 0.0;
    }
}

DR_HD static inline int dr_popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
    return __popcll(x);
#elif defined(__GNUC__)
    return __builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (int)((x * 0x0101010101010101ull) >> 56);
#endif
}

/* ---- RoI-Align geometry and bilinear taps, in float and in double --------------------------------------
 * dr_roi_math.inc is instantiated twice: DR_RT = float (suffix _f), DR_RT = double (suffix _d). float serves
 * float32/float16/bfloat16 data (float32 arithmetic), double serves float64 data, as torchvision computes in
 * the data's own type. */
#define DR_RT float
#define DR_RS(name) name##_f
#include "dr_roi_math.inc"
#undef DR_RT
#undef DR_RS
#define DR_RT double
#define DR_RS(name) name##_d
#include "dr_roi_math.inc"
#undef DR_RT
#undef DR_RS

#endif /* DR_MATH_H */
