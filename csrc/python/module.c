/* module.c — dynrefer._C: module definition, thread and device queries; installs the op bindings (bind_*.c).
 *
 * Every entry point converts its arguments to dr_tensor descriptors (tensor.c), validates them once with clear
 * Python exceptions (TypeError: wrong type or dtype; ValueError: shapes, devices, values; RuntimeError: CUDA
 * failures), releases the GIL, and calls the CPU kernel or, for CUDA tensors, the launcher table of
 * dynrefer._C_cuda (loaded on first use). Outputs are allocated by the Python caller and passed in.
 */
#define PY_ARRAY_UNIQUE_SYMBOL dynrefer_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#include "tensor.h"

#include <math.h>
#include <numpy/arrayobject.h>

#include "binding.h"
#include "dr_cpu.h"

static PyObject *py_cuda_available(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    const dr_cuda_api *api = dr_cuda_table(0);
    int n = 0;
    if (api) {
        Py_BEGIN_ALLOW_THREADS n = api->device_count();
        Py_END_ALLOW_THREADS
    }
    return PyBool_FromLong(n > 0);
}

static PyObject *py_cuda_built(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(dr_cuda_table(0) != NULL);
}

static PyObject *py_cuda_symbols(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    const dr_cuda_api *api = dr_cuda_table(0);
    PyObject *out = PyList_New(0);
    if (!out || !api)
        return out;
    for (const dr_cuda_sym *s = api->syms; s->name; s++) {
        PyObject *n = PyUnicode_FromString(s->name);
        if (!n || PyList_Append(out, n) < 0) {
            Py_XDECREF(n);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(n);
    }
    return out;
}

/* ---- threads ------------------------------------------------------------------------------------------- */

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be in [1, 4096], got %ld", n);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS dr_set_num_threads((int)n);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(dr_get_num_threads());
}

/* ---- CPU features ---------------------------------------------------------------------------------------- */

static PyObject *py_views_cpu_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(dr_cpu_level_name());
}

/* ---- module -------------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O, "set_num_threads(n): CPU threads used by the kernels."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"views_cpu_isa", py_views_cpu_isa, METH_NOARGS,
     "views_cpu_isa() -> 'amx' | 'avx512' | 'avx2' | 'portable': the instruction set of the views' CPU kernels."},
    {"cuda_available", py_cuda_available, METH_NOARGS, "True if the CUDA kernels are built and a device is usable."},
    {"cuda_built", py_cuda_built, METH_NOARGS, "True if the CUDA kernels module is present."},
    {"cuda_symbols", py_cuda_symbols, METH_NOARGS, "Names of the CUDA launchers the CUDA module exports ([] if absent)."},
    {NULL, NULL, 0, NULL}};

static int exec_module(PyObject *m) {
    if (_import_array() < 0)
        return -1;
#define DR_BINDING(name)                                                                                           \
    if (PyModule_AddFunctions(m, dr_##name##_methods) < 0)                                                         \
        return -1;
    DR_BINDINGS
#undef DR_BINDING
    return 0;
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)exec_module}, {0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "dynrefer._C", "dynrefer's C kernels (CPU) and bindings.",
                                    0, methods, slots, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&moddef); }
