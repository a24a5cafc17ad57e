/* dr_cpu.h — the CPU features the kernels choose their code by (csrc/core/cpu.c).
 *
 * Detected once per process from CPUID and, for AMX, Linux's grant of the tile data state to the process.
 * DYNREFER_CPU_ISA caps what the kernels may use (tests compare every level): "default" (portable code only),
 * "avx2", "avx512" (no AMX), "amx" or unset (everything the CPU has); any other value turns AMX off only. The answer
 * is a pure function of the machine and the environment, so racing first calls agree.
 */
#ifndef DR_CPU_H
#define DR_CPU_H

#ifdef __cplusplus
extern "C" {
#endif

/* Feature bits (dr_cpu_features). */
enum {
    DR_CPU_AVX2 = 1 << 0,
    DR_CPU_FMA = 1 << 1,
    DR_CPU_AVX512F = 1 << 2,
    DR_CPU_AVX512BW = 1 << 3,
    DR_CPU_AVX512VNNI = 1 << 4,
    DR_CPU_AVX512BF16 = 1 << 5,
    DR_CPU_AMX_INT8 = 1 << 6, /* the tile unit with int8 products, granted to this process */
    DR_CPU_AMX_BF16 = 1 << 7  /* ... with bfloat16 products */
};

/* The DR_CPU_* features the kernels may use (the CPU's, capped by DYNREFER_CPU_ISA). */
int dr_cpu_features(void);

/* The CPU's vector features whatever the cap (no AMX bits): what a kernel forced to an instruction set checks. */
int dr_cpu_vector_features(void);

/* 1 if every feature of `bits` may be used. */
static inline int dr_cpu_has(int bits) { return (dr_cpu_features() & bits) == bits; }

/* Instruction-set levels: AVX2; AVX-512 with BW and VNNI; that and AMX-INT8. */
enum { DR_CPU_PORTABLE = 0, DR_CPU_LEVEL_AVX2 = 1, DR_CPU_LEVEL_AVX512 = 2, DR_CPU_LEVEL_AMX = 3 };

/* The widest level whose features may all be used, and its name: "portable", "avx2", "avx512" or "amx". */
int dr_cpu_level(void);
const char *dr_cpu_level_name(void);

/* The tile configuration every AMX kernel uses (palette 1, the 8 tiles 16 rows x 64 bytes): a thread loads it
 * before its first tile instruction and releases the tiles after its last. Only where dr_cpu_features() has an
 * AMX bit. */
void dr_amx_tiles_load(void);
void dr_amx_tiles_release(void);

#ifdef __cplusplus
}
#endif

#endif
