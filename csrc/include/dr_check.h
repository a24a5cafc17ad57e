/* dr_check.h — argument checks shared by the kernels' argument builders (*_make_args, host code of the CPU and
 * CUDA launchers). Each returns DR_OK, or a status with a thread-local message naming the op and the argument
 * and showing the bad value: DR_ETYPE for a wrong dtype (TypeError in Python), DR_EINVAL otherwise (ValueError).
 * These builders are where arguments are validated; the Python bindings only convert objects and map statuses.
 */
#ifndef DR_CHECK_H
#define DR_CHECK_H

#include <stdio.h>

#include "dynrefer.h"

static inline int dr_dtype_is_float(dr_dtype d) {
    return d == DR_FLOAT32 || d == DR_FLOAT64 || d == DR_FLOAT16 || d == DR_BFLOAT16;
}

/* float64 for float64 data, float32 for the other floating-point types: the type gradients accumulate in. */
static inline dr_dtype dr_accum_dtype(dr_dtype d) { return d == DR_FLOAT64 ? DR_FLOAT64 : DR_FLOAT32; }

static inline dr_status dr_check_float(const char *op, const char *name, const dr_tensor *t) {
    if (dr_dtype_is_float(t->dtype))
        return DR_OK;
    return dr_set_error(DR_ETYPE, "%s: %s must be float16, float32 or float64 (or bfloat16): a floating-point tensor, got %s",
                        op, name, dr_dtype_name(t->dtype));
}

/* dtype `want` exactly, or a DR_ETYPE naming the argument. */
static inline dr_status dr_check_dtype(const char *op, const char *name, const dr_tensor *t, dr_dtype want) {
    if (t->dtype == want)
        return DR_OK;
    return dr_set_error(DR_ETYPE, "%s: %s must be %s, got %s", op, name, dr_dtype_name(want), dr_dtype_name(t->dtype));
}

static inline dr_status dr_check_ndim(const char *op, const char *name, const dr_tensor *t, int nd) {
    if (t->ndim == nd)
        return DR_OK;
    return dr_set_error(DR_EINVAL, "%s: %s must be %d-D, got %d-D", op, name, nd, t->ndim);
}

/* "cpu" or "cuda:<id>", for messages. */
static inline void dr_device_name(const dr_tensor *t, char *buf, size_t n) {
    if (t->device == DR_CUDA)
        snprintf(buf, n, "cuda:%d", t->device_id);
    else
        snprintf(buf, n, "cpu");
}

static inline int dr_tensors_same_device(const dr_tensor *a, const dr_tensor *b) {
    return a->device == b->device && (a->device == DR_CPU || a->device_id == b->device_id);
}

static inline dr_status dr_check_same_device(const char *op, const char *an, const dr_tensor *a, const char *bn,
                                             const dr_tensor *b) {
    if (dr_tensors_same_device(a, b))
        return DR_OK;
    char da[32], db[32];
    dr_device_name(a, da, sizeof da);
    dr_device_name(b, db, sizeof db);
    return dr_set_error(DR_EINVAL, "%s: %s is on %s but %s is on %s; all tensors must be on one device", op, an, da,
                        bn, db);
}

/* "[2, 3, 4]": a tensor's shape, for messages. */
static inline void dr_shape_str(const dr_tensor *t, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (used < n)
        snprintf(buf + used, n - used, "]");
}

/* "nan", "inf" or "-inf" for a non-finite double (whatever sign a NaN carries), for messages. */
static inline const char *dr_nonfinite_name(double v) { return v != v ? "nan" : v > 0 ? "inf" : "-inf"; }

#endif /* DR_CHECK_H */
