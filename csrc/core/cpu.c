/* cpu.c — CPU features the kernels choose their code by, decided once per process (dr_cpu.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>

#include "dr_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* AMX needs the CPU (CPUID leaf 7: EDX bit 24 AMX-TILE, 22 AMX-BF16, 25 AMX-INT8) and Linux's grant of the tile
 * data state to this process (arch_prctl ARCH_REQ_XCOMP_PERM; refused e.g. where a thread's signal stack is too
 * small for the larger signal frame). Asking twice is harmless. */
static int amx_bits(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)))
        return 0;
#ifdef SYS_arch_prctl
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0)
        return (d & (1u << 25) ? DR_CPU_AMX_INT8 : 0) | (d & (1u << 22) ? DR_CPU_AMX_BF16 : 0);
#endif
    return 0;
}

/* The vector features of the CPU (no AMX, no cap). */
static int vector_bits(void) {
    __builtin_cpu_init();
    return (__builtin_cpu_supports("avx2") ? DR_CPU_AVX2 : 0) | (__builtin_cpu_supports("fma") ? DR_CPU_FMA : 0) |
           (__builtin_cpu_supports("avx512f") ? DR_CPU_AVX512F : 0) |
           (__builtin_cpu_supports("avx512bw") ? DR_CPU_AVX512BW : 0) |
           (__builtin_cpu_supports("avx512vnni") ? DR_CPU_AVX512VNNI : 0) |
           (__builtin_cpu_supports("avx512bf16") ? DR_CPU_AVX512BF16 : 0);
}

static int detect(void) {
    const char *cap = getenv("DYNREFER_CPU_ISA");
    int f = vector_bits();
    if (cap && !strcmp(cap, "default"))
        return 0;
    if (cap && !strcmp(cap, "avx2"))
        return f & (DR_CPU_AVX2 | DR_CPU_FMA);
    if (!cap || !strcmp(cap, "amx"))
        f |= amx_bits(); /* any other cap: no AMX */
    return f;
}

/* A static object: ldtilecfg reads memory the compiler does not see it read. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tiles = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile"))) void dr_amx_tiles_load(void) { _tile_loadconfig(&amx_tiles); }

__attribute__((target("amx-tile"))) void dr_amx_tiles_release(void) { _tile_release(); }
#else
static int vector_bits(void) { return 0; }
static int detect(void) { return 0; }
void dr_amx_tiles_load(void) {}
void dr_amx_tiles_release(void) {}
#endif

int dr_cpu_features(void) {
    static int features = -1;
    int f = __atomic_load_n(&features, __ATOMIC_RELAXED);
    if (f < 0) {
        f = detect();
        __atomic_store_n(&features, f, __ATOMIC_RELAXED);
    }
    return f;
}

int dr_cpu_vector_features(void) {
    static int features = -1;
    int f = __atomic_load_n(&features, __ATOMIC_RELAXED);
    if (f < 0) {
        f = vector_bits();
        __atomic_store_n(&features, f, __ATOMIC_RELAXED);
    }
    return f;
}

int dr_cpu_level(void) {
    const int f = dr_cpu_features();
    const int v512 = DR_CPU_AVX512BW | DR_CPU_AVX512VNNI;
    if ((f & v512) != v512)
        return f & DR_CPU_AVX2 ? DR_CPU_LEVEL_AVX2 : DR_CPU_PORTABLE;
    return f & DR_CPU_AMX_INT8 ? DR_CPU_LEVEL_AMX : DR_CPU_LEVEL_AVX512;
}

const char *dr_cpu_level_name(void) {
    static const char *names[] = {"portable", "avx2", "avx512", "amx"};
    return names[dr_cpu_level()];
}
