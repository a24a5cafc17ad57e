/* bind_roi_align.c — Python bindings of RoI-Align (CPU kernels and CUDA launchers). */
#include "binding.h"

#include <math.h>
#include <string.h>

/* ---- RoI-Align ----------------------------------------------------------------------------------------- */

/* Shared argument handling of the forward and backward bindings: feat is [N,C,H,W], pooled is [K,C,ph,pw]. */
static int roi_align_check(const char *op, dr_pyarg *feat, const char *fname, dr_pyarg *rois, dr_pyarg *pooled,
                           const char *pname, const dr_roi_align_params *p) {
    if (dr_expect_float(feat, op, fname) || dr_expect_float(rois, op, "rois") || dr_expect_float(pooled, op, pname))
        return -1;
    if (dr_expect_ndim(feat, op, fname, 4) || dr_expect_ndim(rois, op, "rois", 2) || dr_expect_ndim(pooled, op, pname, 4))
        return -1;
    if (dr_same_device(feat, fname, rois, "rois", op) || dr_same_device(feat, fname, pooled, pname, op))
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
    int elementwise = dr_parse_impl(impl);
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
        __typeof__(dr_roi_align_forward_cuda) *fn = dr_cuda_fn("dr_roi_align_forward_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&in.t, &ro.t, &out.t, &p, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = elementwise ? dr_roi_align_forward_elementwise_cpu(&in.t, &ro.t, &out.t, &p)
                                                : dr_roi_align_forward_cpu(&in.t, &ro.t, &out.t, &p);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &in.t);
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
    int elementwise = dr_parse_impl(impl);
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
        __typeof__(dr_roi_align_backward_cuda) *fn = dr_cuda_fn("dr_roi_align_backward_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&go.t, &ro.t, &gi.t, &p, deterministic, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = elementwise
                                        ? dr_roi_align_backward_elementwise_cpu(&go.t, &ro.t, &gi.t, &p, deterministic)
                                        : dr_roi_align_backward_cpu(&go.t, &ro.t, &gi.t, &p);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &go.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&go);
    dr_pyarg_release(&ro);
    dr_pyarg_release(&gi);
    return ret;
}

PyMethodDef dr_roi_align_methods[] = {
    {"roi_align_forward", (PyCFunction)(void (*)(void))py_roi_align_forward, METH_VARARGS | METH_KEYWORDS,
     "roi_align_forward(input, rois, output, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, "
     "stream=0, impl='fast'): fill output [K,C,ph,pw]."},
    {"roi_align_backward", (PyCFunction)(void (*)(void))py_roi_align_backward, METH_VARARGS | METH_KEYWORDS,
     "roi_align_backward(grad_output, rois, grad_input, spatial_scale, pooled_height, pooled_width, sampling_ratio, "
     "aligned, deterministic=False, stream=0, impl='fast'): overwrite grad_input [N,C,H,W]."},
    {NULL, NULL, 0, NULL}};
