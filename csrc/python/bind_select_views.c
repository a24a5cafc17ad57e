/* bind_select_views.c — Python binding of select_views. dr_select_views_make_args validates the arguments (the CPU
 * kernel the coefficients' values); this function converts them, launches the kernel of their device and maps the
 * status to an exception. */
#include "binding.h"

#include "dr_select_views.h"

enum { A_HASHES, A_COEFFS, A_OUT, A_N };

static PyObject *launch(dr_pyarg *t, long long stream) {
    const dr_tensor *h = &t[A_HASHES].t, *c = &t[A_COEFFS].t;
    dr_tensor *o = &t[A_OUT].t;
    void *cuda_fn;
    const int where = dr_run_where(t, A_N, "dr_select_views_cuda", &cuda_fn);
    __typeof__(dr_select_views_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(h, c, o, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, dr_select_views_cpu(h, c, o));
    return where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, o);
}

static PyObject *py_select_views(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"hashes", "coeffs", "out", "stream", NULL};
    PyObject *oh, *oc, *oo;
    long long stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|L:select_views", kwlist, &oh, &oc, &oo, &stream))
        return NULL;
    const dr_argspec spec[A_N] = {{oh, "hashes", 0, 0}, {oc, "coeffs", 0, 0}, {oo, "out", 1, 0}};
    dr_pyarg t[A_N];
    if (dr_pyargs_from(spec, A_N, stream, t) < 0)
        return NULL;
    dr_status st = dr_select_views_make_args(&t[A_HASHES].t, &t[A_COEFFS].t, &t[A_OUT].t);
    PyObject *ret = st != DR_OK ? dr_raise_args(st) : launch(t, stream);
    dr_pyargs_release(t, A_N);
    return ret;
}

PyMethodDef dr_select_views_methods[] = {
    {"select_views", (PyCFunction)(void (*)(void))py_select_views, METH_VARARGS | METH_KEYWORDS,
     "select_views(hashes, coeffs, out, stream=0): greedy image-prior selection into out [R, n] (int64)."},
    {NULL, NULL, 0, NULL}};
