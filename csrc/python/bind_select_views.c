/* bind_select_views.c — Python binding of select_views. */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "dr_select_views.h"

static PyObject *py_select_views(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"hashes", "coeffs", "out", "stream", NULL};
    PyObject *oh, *oc, *oo;
    long long stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|L:select_views", kwlist, &oh, &oc, &oo, &stream))
        return NULL;
    const char *op = "select_views";
    dr_pyarg h, c, o;
    memset(&c, 0, sizeof c);
    memset(&o, 0, sizeof o);
    PyObject *ret = NULL;
    if (dr_pyarg_from(oh, "hashes", 0, stream, &h) < 0)
        return NULL;
    if (dr_pyarg_from(oc, "coeffs", 0, stream, &c) < 0 || dr_pyarg_from(oo, "out", 1, stream, &o) < 0)
        goto done;
    if (dr_expect_ndim(&h, op, "hashes", 2) < 0 || dr_expect_dtype(&h, op, "hashes", DR_UINT64) < 0 ||
        dr_expect_ndim(&c, op, "coeffs", 1) < 0 || dr_expect_dtype(&c, op, "coeffs", DR_FLOAT64) < 0 ||
        dr_expect_ndim(&o, op, "out", 2) < 0 || dr_expect_dtype(&o, op, "out", DR_INT64) < 0)
        goto done;
    if (dr_same_device(&h, "hashes", &c, "coeffs", op) < 0 || dr_same_device(&h, "hashes", &o, "out", op) < 0)
        goto done;
    int64_t nr = h.t.shape[0], nc = c.t.shape[0];
    if (h.t.shape[1] != nc + 1) {
        PyErr_Format(PyExc_ValueError, "%s: hashes must have shape [R, 1 + %lld] (tight view, then one per candidate), "
                     "got [%lld, %lld]", op, (long long)nc, (long long)nr, (long long)h.t.shape[1]);
        goto done;
    }
    if (o.t.shape[0] != nr || o.t.shape[1] > nc) {
        PyErr_Format(PyExc_ValueError, "%s: out must have shape [%lld, n] with n <= %lld candidates, got [%lld, %lld]", op,
                     (long long)nr, (long long)nc, (long long)o.t.shape[0], (long long)o.t.shape[1]);
        goto done;
    }
    dr_status st;
    if (h.t.device == DR_CUDA) {
        __typeof__(dr_select_views_cuda) *fn = dr_cuda_fn("dr_select_views_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&h.t, &c.t, &o.t, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        for (int64_t i = 0; i < nc; i++) {
            double t = ((const double *)c.t.data)[i * c.t.strides[0]];
            if (!(t > 0.0) || !isfinite(t)) {
                PyErr_Format(PyExc_ValueError, "%s: coeffs[%lld] must be finite and > 0", op, (long long)i);
                goto done;
            }
        }
        Py_BEGIN_ALLOW_THREADS st = dr_select_views_cpu(&h.t, &c.t, &o.t);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &o.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&h);
    dr_pyarg_release(&c);
    dr_pyarg_release(&o);
    return ret;
}

PyMethodDef dr_select_views_methods[] = {
    {"select_views", (PyCFunction)(void (*)(void))py_select_views, METH_VARARGS | METH_KEYWORDS,
     "select_views(hashes, coeffs, out, stream=0): greedy image-prior selection into out [R, n] (int64)."},
    {NULL, NULL, 0, NULL}};
