/* binding.c — shared pieces of the op bindings: the CUDA launcher table, the device choice and the views
 * bindings' argument checks. */
#include "binding.h"

#include <stdarg.h>
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

/* ---- validation helpers -------------------------------------------------------------------------------- */

int dr_expect_ndim(const dr_pyarg *a, const char *op, const char *name, int nd) {
    if (a->t.ndim == nd)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s must be %d-D, got %d-D", op, name, nd, a->t.ndim);
    return -1;
}

int dr_same_device(const dr_pyarg *a, const char *an, const dr_pyarg *b, const char *bn, const char *op) {
    if (a->t.device == b->t.device && (a->t.device == DR_CPU || a->t.device_id == b->t.device_id))
        return 0;
    char da[32], db[32];
    dr_device_str(&a->t, da, sizeof da);
    dr_device_str(&b->t, db, sizeof db);
    PyErr_Format(PyExc_ValueError, "%s: %s is on %s but %s is on %s; all tensors must be on one device", op, an, da,
                 bn, db);
    return -1;
}

int dr_all_cuda(int n, ...) {
    va_list ap;
    va_start(ap, n);
    int all = n > 0;
    for (int i = 0; i < n; i++) {
        const dr_pyarg *a = va_arg(ap, const dr_pyarg *);
        if (a->t.device != DR_CUDA)
            all = 0;
    }
    va_end(ap);
    return all;
}

PyObject *dr_raise_kernel(dr_status st, const dr_tensor *t) {
    const dr_cuda_api *api = t->device == DR_CUDA ? dr_cuda_table(0) : NULL;
    if (api)
        return dr_raise_status(st, api->last_error());
    return dr_raise_status(st, dr_last_error());
}

int dr_parse_impl(const char *impl) {
    if (strcmp(impl, "fast") == 0)
        return 0;
    if (strcmp(impl, "elementwise") == 0)
        return 1;
    PyErr_Format(PyExc_ValueError, "impl must be 'fast' or 'elementwise', got '%s'", impl);
    return -1;
}


int dr_expect_dtype(const dr_pyarg *a, const char *op, const char *name, dr_dtype want) {
    if (a->t.dtype == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s: %s must be %s, got %s", op, name, dr_dtype_name(want), dr_dtype_name(a->t.dtype));
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
