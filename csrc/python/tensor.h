/* tensor.h — binding-layer conversion of Python objects (NumPy arrays, __dlpack__ producers) to dr_tensor. */
#ifndef DR_PY_TENSOR_H
#define DR_PY_TENSOR_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "dynrefer.h"

/* A borrowed view of a Python tensor: the descriptor and the object that keeps its memory alive. */
typedef struct {
    dr_tensor t;
    PyObject *keep; /* owned reference (the array, or the DLPack capsule); NULL when empty */
} dr_pyarg;

/* Fill `out` from `obj` without copying. `writable`: the kernel will write into it. `stream`: the CUDA stream the
 * kernel will run on (passed to __dlpack__ so the producer orders its work before ours). Returns 0, or -1 with
 * a Python exception naming `name`. */
int dr_pyarg_from(PyObject *obj, const char *name, int writable, long long stream, dr_pyarg *out);
void dr_pyarg_release(dr_pyarg *a);

/* "cpu" / "cuda:1" for messages. */
void dr_device_str(const dr_tensor *t, char *buf, size_t n);

/* Raise the Python exception matching a failed kernel status and its message; returns NULL. */
PyObject *dr_raise_status(dr_status st, const char *msg);

#endif
