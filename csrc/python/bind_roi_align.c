/* bind_roi_align.c — Python bindings of RoI-Align (CPU kernels and CUDA launchers). The kernels' argument
 * builder validates the arguments; these functions convert them and map the status to an exception. */
#include "binding.h"

#include <string.h>

/* ---- RoI-Align ----------------------------------------------------------------------------------------- */

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
    dr_status st;
    if (dr_all_cuda(3, &in, &ro, &out)) {
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
    dr_status st;
    if (dr_all_cuda(3, &go, &ro, &gi)) {
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
