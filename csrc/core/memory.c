/* memory.c — hints about output buffers. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <sys/mman.h>

#include "dynrefer.h"

/* Ask the kernel to back the (not yet touched) memory of a large CPU output with transparent huge pages, so that
 * the first write into it takes one page fault per 2 MiB rather than per 4 KiB (on a freshly allocated 300 MB
 * output the faults otherwise cost more than the kernel itself). Only the 2 MiB-aligned interior of the span is
 * advised; it is a hint: contents, ownership and correctness are unaffected, failures are ignored. O(1). */
void dr_hint_output_memory(const dr_tensor *t) {
#ifdef MADV_HUGEPAGE
    if (t->device != DR_CPU || t->ndim == 0)
        return;
    int64_t span = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0)
            return;
        if (t->strides[i] < 0)
            return;
        span += (t->shape[i] - 1) * t->strides[i];
    }
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = (uintptr_t)t->data, hi = lo + (uintptr_t)span * dr_dtype_size(t->dtype);
    lo = (lo + huge - 1) & ~(huge - 1);
    hi &= ~(huge - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)t;
#endif
}
