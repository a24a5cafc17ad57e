/* binding.h — what every op's binding file (bind_*.c) shares: converting tensor arguments (one table per call,
 * absent optional ones allowed) and lists of images, the CUDA launcher lookup and device choice, and mapping a
 * kernel's status to an exception. A binding parses scalars, converts objects, lets the op's argument builder
 * (dr_<op>_make_args, or the kernel that calls it) validate, launches and maps the status; it checks nothing itself
 * beyond what a conversion needs. */
#ifndef DR_PY_BINDING_H
#define DR_PY_BINDING_H

#include "cuda_api.h"
#include "dr_views.h"
#include "tensor.h"

/* The CUDA launcher `name` exported by dynrefer._C_cuda, or NULL with a RuntimeError saying why (module not
 * built, or the launcher missing from it). Bindings get it through dr_run_where and assign it to a pointer typed by
 * the launcher's prototype in its op's header, `__typeof__(dr_x_cuda) *fn = ...`, so that calls are checked against
 * that prototype (and a launcher whose definition drifts from it does not compile: the .cu files include the same
 * header). */
void *dr_cuda_fn(const char *name);
/* The loaded CUDA table, or NULL (raise=1: with a RuntimeError). */
const dr_cuda_api *dr_cuda_table(int raise);

/* One tensor argument of a binding: the Python object, its name in messages, whether the kernel writes into it,
 * and whether None stands for "not given". */
typedef struct {
    PyObject *obj;
    const char *name;
    int writable, optional;
} dr_argspec;

/* Convert the n arguments of spec into t[0..n), in order (an optional one given as None stays empty: dr_opt gives
 * NULL). 0, or -1 with the conversion's exception and nothing held. */
int dr_pyargs_from(const dr_argspec *spec, int n, long long stream, dr_pyarg *t);
void dr_pyargs_release(dr_pyarg *t, int n);
/* The descriptor of a converted argument, or NULL for an optional one not given. */
static inline const dr_tensor *dr_opt(dr_pyarg *a) { return a->keep ? &a->t : NULL; }

/* A list or tuple of images converted to descriptors (t[n], contiguous, for the ops' argument builders) and room
 * for the builders' descriptions of them (refs[n]). */
typedef struct {
    Py_ssize_t n;
    dr_pyarg *args;
    dr_tensor *t;
    dr_image_ref *refs;
} dr_image_list;

/* images must be a list or tuple (TypeError otherwise); each item is converted as "images[i]". Their checks (at
 * least one, uint8 H x W x C, one device) are the ops' argument builders'. 0, or -1 with an exception. */
int dr_image_list_from(PyObject *seq, const char *op, long long stream, dr_image_list *l);
void dr_image_list_release(dr_image_list *l);

/* Where a call runs: the CUDA launcher `name` (*fn set, for a pointer typed `__typeof__(dr_x_cuda) *`) when the given
 * tensors of t[0..n) (optional ones not given are skipped) are all CUDA tensors, else the CPU kernel; mixed devices
 * go to the CPU kernel, whose argument builder rejects them with a message naming both devices. DR_RUN_ERROR with a
 * RuntimeError when the launcher is missing. */
enum { DR_RUN_ERROR = -1, DR_RUN_CPU = 0, DR_RUN_CUDA = 1 };
int dr_run_where(const dr_pyarg *t, int n, const char *name, void **fn);
/* Raise the exception of a failed kernel on t's device (the CUDA module's message for CUDA tensors). */
PyObject *dr_raise_kernel(dr_status st, const dr_tensor *t);
/* Raise the exception of an argument builder (dr_<op>_make_args run by the binding, in this module) that failed. */
PyObject *dr_raise_args(dr_status st);
/* The end of a binding: None when st is DR_OK, else NULL with the exception of the failed kernel on t's device. */
PyObject *dr_kernel_result(dr_status st, const dr_tensor *t);
/* st = call, with the GIL released around it. */
#define DR_NOGIL(st, call)                                                                                         \
    do {                                                                                                           \
        Py_BEGIN_ALLOW_THREADS (st) = (call);                                                                      \
        Py_END_ALLOW_THREADS                                                                                       \
    } while (0)
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
