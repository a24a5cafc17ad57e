/* binding.c — shared pieces of the op bindings: tensor and image-list conversion, the CUDA launcher table, the
 * device choice and the status-to-exception mapping. */
#include "binding.h"

#include <string.h>

/* ---- the CUDA module ----------------------------------------------------------------------------------- */

static const dr_cuda_api *g_cuda = NULL;
static int g_cuda_tried = 0;

/* The CUDA launcher table, or NULL. With raise=1 a missing table sets a RuntimeError saying why. */
const dr_cuda_api *dr_cuda_table(int raise) {
    if (!g_cuda_tried) {
        g_cuda_tried = 1;
        PyObject *m = PyImport_ImportModule("dynrefer._C_cuda");
        if (m) {
            const dr_cuda_api *api = (const dr_cuda_api *)PyCapsule_Import("dynrefer._C_cuda._api", 0);
            if (api && api->version == DR_CUDA_API_VERSION)
                g_cuda = api;
            Py_DECREF(m);
        }
        PyErr_Clear();
    }
    if (!g_cuda && raise)
        PyErr_SetString(PyExc_RuntimeError,
                        "dynrefer was built without CUDA kernels (dynrefer._C_cuda is missing); rebuild with nvcc "
                        "on PATH and DYNREFER_CUDA unset");
    return g_cuda;
}

void *dr_cuda_fn(const char *name) {
    const dr_cuda_api *api = dr_cuda_table(1);
    if (!api)
        return NULL;
    for (const dr_cuda_sym *s = api->syms; s->name; s++)
        if (strcmp(s->name, name) == 0)
            return (void *)s->fn;
    PyErr_Format(PyExc_RuntimeError, "dynrefer._C_cuda has no launcher '%s'; it is older than dynrefer._C, rebuild it",
                 name);
    return NULL;
}

/* ---- conversion ---------------------------------------------------------------------------------------- */

int dr_pyargs_from(const dr_argspec *spec, int n, long long stream, dr_pyarg *t) {
    memset(t, 0, (size_t)n * sizeof *t);
    for (int i = 0; i < n; i++) {
        if (spec[i].optional && spec[i].obj == Py_None)
            continue;
        if (dr_pyarg_from(spec[i].obj, spec[i].name, spec[i].writable, stream, &t[i]) < 0) {
            dr_pyargs_release(t, n);
            return -1;
        }
    }
    return 0;
}

void dr_pyargs_release(dr_pyarg *t, int n) {
    for (int i = 0; i < n; i++)
        dr_pyarg_release(&t[i]);
}

void dr_image_list_release(dr_image_list *l) {
    for (Py_ssize_t i = 0; l->args && i < l->n; i++)
        dr_pyarg_release(&l->args[i]);
    PyMem_Free(l->args);
    PyMem_Free(l->t);
    PyMem_Free(l->refs);
    memset(l, 0, sizeof *l);
}

int dr_image_list_from(PyObject *seq, const char *op, long long stream, dr_image_list *l) {
    memset(l, 0, sizeof *l);
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s: images must be a list of HxWx3 uint8 images, got %s", op,
                     Py_TYPE(seq)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t cap = (size_t)(n > 0 ? n : 1);
    l->args = (dr_pyarg *)PyMem_Calloc(cap, sizeof(dr_pyarg));
    l->t = (dr_tensor *)PyMem_Calloc(cap, sizeof(dr_tensor));
    l->refs = (dr_image_ref *)PyMem_Calloc(cap, sizeof(dr_image_ref));
    if (!l->args || !l->t || !l->refs) {
        dr_image_list_release(l);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char name[48];
        snprintf(name, sizeof name, "images[%zd]", i);
        if (dr_pyarg_from(PySequence_Fast_GET_ITEM(seq, i), name, 0, stream, &l->args[i]) < 0) {
            dr_image_list_release(l);
            return -1;
        }
        l->n = i + 1;
        l->t[i] = l->args[i].t;
    }
    return 0;
}

/* ---- device choice and status ------------------------------------------------------------------------ */

int dr_run_where(const dr_pyarg *t, int n, const char *name, void **fn) {
    int any = 0;
    *fn = NULL;
    for (int i = 0; i < n; i++) {
        if (!t[i].keep)
            continue;
        if (t[i].t.device != DR_CUDA)
            return DR_RUN_CPU;
        any = 1;
    }
    if (!any)
        return DR_RUN_CPU;
    *fn = dr_cuda_fn(name);
    return *fn ? DR_RUN_CUDA : DR_RUN_ERROR;
}

PyObject *dr_raise_kernel(dr_status st, const dr_tensor *t) {
    const dr_cuda_api *api = t->device == DR_CUDA ? dr_cuda_table(0) : NULL;
    if (api)
        return dr_raise_status(st, api->last_error());
    return dr_raise_status(st, dr_last_error());
}

PyObject *dr_raise_args(dr_status st) { return dr_raise_status(st, dr_last_error()); }

PyObject *dr_kernel_result(dr_status st, const dr_tensor *t) {
    if (st != DR_OK)
        return dr_raise_kernel(st, t);
    return Py_NewRef(Py_None);
}

int dr_parse_impl(const char *impl) {
    if (strcmp(impl, "fast") == 0)
        return 0;
    if (strcmp(impl, "elementwise") == 0)
        return 1;
    PyErr_Format(PyExc_ValueError, "impl must be 'fast' or 'elementwise', got '%s'", impl);
    return -1;
}


int dr_int_arg(PyObject *o, const char *op, const char *name, long long *v) {
    if (PyBool_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be an int, got %s", op, name, Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(o);
    if (!i)
        return -1;
    int overflow = 0;
    *v = PyLong_AsLongLongAndOverflow(i, &overflow);
    if (overflow)
        PyErr_Format(PyExc_ValueError, "%s: %s = %S is out of range (it does not fit in 64 bits)", op, name, i);
    Py_DECREF(i);
    return overflow || (*v == -1 && PyErr_Occurred()) ? -1 : 0;
}
