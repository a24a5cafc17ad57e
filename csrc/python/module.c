/* module.c — dynrefer._C: module definition, thread and device queries, and the op bindings.
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

#include "cuda_api.h"

/* ---- the CUDA module ----------------------------------------------------------------------------------- */

static const dr_cuda_api *g_cuda = NULL;
static int g_cuda_tried = 0;

/* The CUDA launcher table, or NULL. With raise=1 a missing table sets a RuntimeError saying why. */
static const dr_cuda_api *cuda_api(int raise) {
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

static PyObject *py_cuda_available(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    const dr_cuda_api *api = cuda_api(0);
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
    return PyBool_FromLong(cuda_api(0) != NULL);
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

/* ---- validation helpers -------------------------------------------------------------------------------- */

static int is_float(dr_dtype d) { return d == DR_FLOAT32 || d == DR_FLOAT64 || d == DR_FLOAT16 || d == DR_BFLOAT16; }

static int expect_float(const dr_pyarg *a, const char *op, const char *name) {
    if (is_float(a->t.dtype))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s: %s must be a floating-point tensor (float32, float64, float16, bfloat16), got %s",
                 op, name, dr_dtype_name(a->t.dtype));
    return -1;
}

static int expect_ndim(const dr_pyarg *a, const char *op, const char *name, int nd) {
    if (a->t.ndim == nd)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s must be %d-D, got %d-D", op, name, nd, a->t.ndim);
    return -1;
}

static int same_device(const dr_pyarg *a, const char *an, const dr_pyarg *b, const char *bn, const char *op) {
    if (a->t.device == b->t.device && (a->t.device == DR_CPU || a->t.device_id == b->t.device_id))
        return 0;
    char da[32], db[32];
    dr_device_str(&a->t, da, sizeof da);
    dr_device_str(&b->t, db, sizeof db);
    PyErr_Format(PyExc_ValueError, "%s: %s is on %s but %s is on %s; all tensors must be on one device", op, an, da,
                 bn, db);
    return -1;
}

static PyObject *raise_kernel(dr_status st, const dr_tensor *t) {
    if (t->device == DR_CUDA && g_cuda)
        return dr_raise_status(st, g_cuda->last_error());
    return dr_raise_status(st, dr_last_error());
}

/* impl="fast" → 0, impl="elementwise" (the CUDA kernels' per-element bodies, run on the CPU) → 1, else -1 with a
 * ValueError. */
static int parse_impl(const char *impl) {
    if (strcmp(impl, "fast") == 0)
        return 0;
    if (strcmp(impl, "elementwise") == 0)
        return 1;
    PyErr_Format(PyExc_ValueError, "impl must be 'fast' or 'elementwise', got '%s'", impl);
    return -1;
}

/* ---- RoI-Align ----------------------------------------------------------------------------------------- */

/* Shared argument handling of the forward and backward bindings: feat is [N,C,H,W], pooled is [K,C,ph,pw]. */
static int roi_align_check(const char *op, dr_pyarg *feat, const char *fname, dr_pyarg *rois, dr_pyarg *pooled,
                           const char *pname, const dr_roi_align_params *p) {
    if (expect_float(feat, op, fname) || expect_float(rois, op, "rois") || expect_float(pooled, op, pname))
        return -1;
    if (expect_ndim(feat, op, fname, 4) || expect_ndim(rois, op, "rois", 2) || expect_ndim(pooled, op, pname, 4))
        return -1;
    if (same_device(feat, fname, rois, "rois", op) || same_device(feat, fname, pooled, pname, op))
        return -1;
    if (rois->t.shape[1] != 5) {
        PyErr_Format(PyExc_ValueError, "%s: rois must have shape [K, 5], got [%lld, %lld]", op,
                     (long long)rois->t.shape[0], (long long)rois->t.shape[1]);
        return -1;
    }
    if (!isfinite(p->spatial_scale)) {
        /* PyErr_Format has no float conversions */
        PyErr_Format(PyExc_ValueError, "%s: spatial_scale must be finite, got %s", op,
                     isnan(p->spatial_scale) ? "nan" : (p->spatial_scale > 0 ? "inf" : "-inf"));
        return -1;
    }
    if (p->pooled_h <= 0 || p->pooled_w <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: output_size must be positive, got (%lld, %lld)", op,
                     (long long)p->pooled_h, (long long)p->pooled_w);
        return -1;
    }
    const int64_t *fs = feat->t.shape, *ps = pooled->t.shape;
    if (ps[0] != rois->t.shape[0] || ps[1] != fs[1] || ps[2] != p->pooled_h || ps[3] != p->pooled_w) {
        PyErr_Format(PyExc_ValueError, "%s: %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                     op, pname, (long long)ps[0], (long long)ps[1], (long long)ps[2], (long long)ps[3],
                     (long long)rois->t.shape[0], (long long)fs[1], (long long)p->pooled_h, (long long)p->pooled_w);
        return -1;
    }
    return 0;
}

static PyObject *py_roi_align_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"input",          "rois",    "output", "spatial_scale", "pooled_height", "pooled_width",
                             "sampling_ratio", "aligned", "stream", "impl",          NULL};
    PyObject *oi, *orr, *oo;
    dr_roi_align_params p;
    long long ph, pw, sr, stream = 0;
    int aligned;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOdLLLp|Ls:roi_align_forward", kwlist, &oi, &orr, &oo,
                                     &p.spatial_scale, &ph, &pw, &sr, &aligned, &stream, &impl))
        return NULL;
    p.pooled_h = ph;
    p.pooled_w = pw;
    p.sampling_ratio = sr;
    p.aligned = aligned;
    int elementwise = parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    dr_pyarg in, ro, out;
    PyObject *ret = NULL;
    memset(&ro, 0, sizeof ro);
    memset(&out, 0, sizeof out);
    if (dr_pyarg_from(oi, "input", 0, stream, &in) < 0)
        return NULL;
    if (dr_pyarg_from(orr, "rois", 0, stream, &ro) < 0 || dr_pyarg_from(oo, "output", 1, stream, &out) < 0)
        goto done;
    if (roi_align_check("roi_align", &in, "input", &ro, &out, "output", &p) < 0)
        goto done;
    if (out.t.dtype != in.t.dtype) {
        PyErr_Format(PyExc_TypeError, "roi_align: output must have the input's dtype %s, got %s",
                     dr_dtype_name(in.t.dtype), dr_dtype_name(out.t.dtype));
        goto done;
    }
    dr_status st;
    if (in.t.device == DR_CUDA) {
        const dr_cuda_api *api = cuda_api(1);
        if (!api)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = api->roi_align_forward(&in.t, &ro.t, &out.t, &p, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = elementwise ? dr_roi_align_forward_elementwise_cpu(&in.t, &ro.t, &out.t, &p)
                                                : dr_roi_align_forward_cpu(&in.t, &ro.t, &out.t, &p);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        raise_kernel(st, &in.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&in);
    dr_pyarg_release(&ro);
    dr_pyarg_release(&out);
    return ret;
}

static PyObject *py_roi_align_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"grad_output",    "rois",    "grad_input",    "spatial_scale", "pooled_height",
                             "pooled_width",   "sampling_ratio", "aligned", "deterministic", "stream",
                             "impl",           NULL};
    PyObject *og, *orr, *oo;
    dr_roi_align_params p;
    long long ph, pw, sr, stream = 0;
    int aligned, deterministic = 0;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOdLLLp|pLs:roi_align_backward", kwlist, &og, &orr, &oo,
                                     &p.spatial_scale, &ph, &pw, &sr, &aligned, &deterministic, &stream, &impl))
        return NULL;
    p.pooled_h = ph;
    p.pooled_w = pw;
    p.sampling_ratio = sr;
    p.aligned = aligned;
    int elementwise = parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    dr_pyarg go, ro, gi;
    PyObject *ret = NULL;
    memset(&ro, 0, sizeof ro);
    memset(&gi, 0, sizeof gi);
    if (dr_pyarg_from(og, "grad_output", 0, stream, &go) < 0)
        return NULL;
    if (dr_pyarg_from(orr, "rois", 0, stream, &ro) < 0 || dr_pyarg_from(oo, "grad_input", 1, stream, &gi) < 0)
        goto done;
    if (roi_align_check("roi_align_backward", &gi, "grad_input", &ro, &go, "grad_output", &p) < 0)
        goto done;
    dr_dtype want = go.t.dtype == DR_FLOAT64 ? DR_FLOAT64 : DR_FLOAT32;
    if (gi.t.dtype != want) {
        PyErr_Format(PyExc_TypeError, "roi_align_backward: grad_input must be %s for %s gradients, got %s",
                     dr_dtype_name(want), dr_dtype_name(go.t.dtype), dr_dtype_name(gi.t.dtype));
        goto done;
    }
    dr_status st;
    if (go.t.device == DR_CUDA) {
        const dr_cuda_api *api = cuda_api(1);
        if (!api)
            goto done;
        Py_BEGIN_ALLOW_THREADS st =
            api->roi_align_backward(&go.t, &ro.t, &gi.t, &p, deterministic, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = elementwise
                                        ? dr_roi_align_backward_elementwise_cpu(&go.t, &ro.t, &gi.t, &p, deterministic)
                                        : dr_roi_align_backward_cpu(&go.t, &ro.t, &gi.t, &p);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        raise_kernel(st, &go.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&go);
    dr_pyarg_release(&ro);
    dr_pyarg_release(&gi);
    return ret;
}

/* ---- module -------------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O, "set_num_threads(n): CPU threads used by the kernels."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"cuda_available", py_cuda_available, METH_NOARGS, "True if the CUDA kernels are built and a device is usable."},
    {"cuda_built", py_cuda_built, METH_NOARGS, "True if the CUDA kernels module is present."},
    {"roi_align_forward", (PyCFunction)(void (*)(void))py_roi_align_forward, METH_VARARGS | METH_KEYWORDS,
     "roi_align_forward(input, rois, output, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, "
     "stream=0, impl='fast'): fill output [K,C,ph,pw]."},
    {"roi_align_backward", (PyCFunction)(void (*)(void))py_roi_align_backward, METH_VARARGS | METH_KEYWORDS,
     "roi_align_backward(grad_output, rois, grad_input, spatial_scale, pooled_height, pooled_width, sampling_ratio, "
     "aligned, deterministic=False, stream=0, impl='fast'): overwrite grad_input [N,C,H,W]."},
    {NULL, NULL, 0, NULL}};

static int exec_module(PyObject *m) {
    (void)m;
    if (_import_array() < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)exec_module}, {0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "dynrefer._C", "dynrefer's C kernels (CPU) and bindings.",
                                    0, methods, slots, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&moddef); }
