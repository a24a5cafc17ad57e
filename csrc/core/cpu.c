/* cpu.c — CPU features the kernels choose their code by, decided once per process. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>

#include "dynrefer.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

/* AMX needs the CPU (CPUID leaf 7: EDX bit 24 AMX-TILE, 22 AMX-BF16, 25 AMX-INT8) and Linux's grant of the tile
 * data state to this process (arch_prctl ARCH_REQ_XCOMP_PERM; refused e.g. where a thread's signal stack is too
 * small for the larger signal frame); DYNREFER_CPU_ISA set to anything but "amx" turns it off (tests compare the
 * other paths). Asking twice is harmless; the answer is cached. */
static int amx_bits(void) {
    static int bits = -1;
    int b = __atomic_load_n(&bits, __ATOMIC_RELAXED);
    if (b >= 0)
        return b;
    unsigned a, bx, c, d;
    const char *cap = getenv("DYNREFER_CPU_ISA");
    b = 0;
    if ((!cap || !strcmp(cap, "amx")) && __get_cpuid_count(7, 0, &a, &bx, &c, &d) && (d & (1u << 24))) {
#ifdef SYS_arch_prctl
        if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0)
            b = (d & (1u << 25) ? DR_CPU_AMX_INT8 : 0) | (d & (1u << 22) ? DR_CPU_AMX_BF16 : 0);
#endif
    }
    __atomic_store_n(&bits, b, __ATOMIC_RELAXED);
    return b;
}

int dr_cpu_amx(void) { return amx_bits(); }
#else
int dr_cpu_amx(void) { return 0; }
#endif
