/* cuda_module.c — dynrefer._C_cuda: exports the CUDA launchers as a capsule for dynrefer._C. No validation here:
 * dynrefer._C validates every argument before calling through the table. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cuda_api.h"
#include "cuda_syms.h"

#define DR_CUDA_SYM(fn) {#fn, (dr_generic_fn)fn},
static const dr_cuda_sym syms[] = {DR_CUDA_SYMS{NULL, NULL}};
#undef DR_CUDA_SYM

static const dr_cuda_api api = {DR_CUDA_API_VERSION, dr_cuda_device_count, dr_last_error, syms};

static int exec_module(PyObject *m) {
    PyObject *cap = PyCapsule_New((void *)&api, "dynrefer._C_cuda._api", NULL);
    if (!cap)
        return -1;
    if (PyModule_AddObject(m, "_api", cap) < 0) {
        Py_DECREF(cap);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)exec_module}, {0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "dynrefer._C_cuda",
                                    "CUDA launchers of dynrefer (loaded on demand by dynrefer._C).",
                                    0, NULL, slots, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModuleDef_Init(&moddef); }
