/* binding.h — what every op's binding file (bind_*.c) shares: the CUDA launcher lookup and device choice, status
 * to exception mapping, the list of method tables the module installs, and the argument checks the views
 * bindings still use (the other ops are validated by their kernels' argument builders). */
#ifndef DR_PY_BINDING_H
#define DR_PY_BINDING_H

#include "cuda_api.h"
#include "tensor.h"

/* The CUDA launcher `name` exported by dynrefer._C_cuda, or NULL with a RuntimeError saying why (module not
 * built, or the launcher missing from it). Assign it to a pointer typed by the launcher's prototype in its op's
 * header, `__typeof__(dr_x_cuda) *fn = dr_cuda_fn("dr_x_cuda");`, so that calls are checked against that prototype
 * (and a launcher whose definition drifts from it does not compile: the .cu files include the same header). */
void *dr_cuda_fn(const char *name);
/* The loaded CUDA table, or NULL (raise=1: with a RuntimeError). */
const dr_cuda_api *dr_cuda_table(int raise);

int dr_expect_dtype(const dr_pyarg *a, const char *op, const char *name, dr_dtype want);
int dr_expect_ndim(const dr_pyarg *a, const char *op, const char *name, int nd);
int dr_same_device(const dr_pyarg *a, const char *an, const dr_pyarg *b, const char *bn, const char *op);
/* 1 if all n dr_pyarg pointers that follow are CUDA tensors: the call goes to the CUDA launcher. Mixed devices go
 * to the CPU kernel, whose argument builder rejects them with a message naming both devices. */
int dr_all_cuda(int n, ...);
/* Raise the exception of a failed kernel on t's device (the CUDA module's message for CUDA tensors). */
PyObject *dr_raise_kernel(dr_status st, const dr_tensor *t);
/* impl="fast" → 0, impl="elementwise" (the CUDA kernels' per-element bodies, run on the CPU) → 1, else -1 with a
 * ValueError. */
int dr_parse_impl(const char *impl);
/* An integer argument `name` of `op` (a Python int or an object with __index__, not a bool) into *v; -1 with a
 * TypeError or a ValueError naming the argument when it is not an integer or does not fit in 64 bits. Range checks
 * stay with the kernels' argument builders. */
int dr_int_arg(PyObject *o, const char *op, const char *name, long long *v);

/* The method tables of the op bindings; module.c installs each. One line per binding file. */
#define DR_BINDINGS                                                                                                \
    DR_BINDING(roi_align)                                                                                          \
    DR_BINDING(crop_resize)                                                                                        \
    DR_BINDING(phash)                                                                                              \
    DR_BINDING(select_views)                                                                                       \
    DR_BINDING(dcnv4)                                                                                              \
    DR_BINDING(attention)                                                                                          \
    DR_BINDING(attention_tc)

#define DR_BINDING(name) extern PyMethodDef dr_##name##_methods[];
DR_BINDINGS
#undef DR_BINDING

#endif
