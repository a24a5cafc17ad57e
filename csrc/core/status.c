/* status.c — thread-local error messages and tensor-descriptor helpers. */
#include <stdarg.h>
#include <stdio.h>

#include "dynrefer.h"

static _Thread_local char dr_errmsg[1024];

/* Record a printf-style message for this thread and return st. O(message length). */
dr_status dr_set_error(dr_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dr_errmsg, sizeof dr_errmsg, fmt, ap);
    va_end(ap);
    return st;
}

const char *dr_last_error(void) { return dr_errmsg; }

void dr_clear_error(void) { dr_errmsg[0] = '\0'; }

size_t dr_dtype_size(dr_dtype dt) {
    switch (dt) {
    case DR_FLOAT32:
    case DR_INT32:
        return 4;
    case DR_FLOAT64:
    case DR_INT64:
    case DR_UINT64:
        return 8;
    case DR_FLOAT16:
    case DR_BFLOAT16:
        return 2;
    case DR_UINT8:
    case DR_BOOL:
        return 1;
    default:
        return 0;
    }
}

const char *dr_dtype_name(dr_dtype dt) {
    static const char *names[] = {"float32", "float64", "float16", "bfloat16", "uint8",
                                  "int32",   "int64",   "uint64",  "bool"};
    return (dt >= 0 && dt < DR_NUM_DTYPES) ? names[dt] : "unknown";
}

int dr_mul_overflow(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0)
        return 0;
    if (__builtin_mul_overflow(a, b, out))
        return 0;
    return 1;
}

int64_t dr_numel(const dr_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        if (!dr_mul_overflow(n, t->shape[i], &n))
            return -1;
    return n;
}

int dr_is_contiguous(const dr_tensor *t) {
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 1)
            continue;
        if (t->strides[i] != expect)
            return 0;
        expect *= t->shape[i];
    }
    return 1;
}
