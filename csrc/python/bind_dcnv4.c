/* bind_dcnv4.c — Python bindings of the DCNv4 deformable aggregation (CPU kernels and CUDA launchers). The
 * kernels' argument builder validates the arguments; these functions convert them and map the status to an
 * exception. */
#include "binding.h"

#include <string.h>

#include "dr_dcnv4.h"

/* The kernel parameters from the parsed integers (the kernels' argument builder checks them). */
static void dcn_params(const long long v[10], double offset_scale, int remove_center, dr_dcnv4_params *p) {
    p->kernel_h = v[0], p->kernel_w = v[1], p->stride_h = v[2], p->stride_w = v[3];
    p->pad_h = v[4], p->pad_w = v[5], p->dilation_h = v[6], p->dilation_w = v[7];
    p->group = v[8], p->group_channels = v[9];
    p->offset_scale = offset_scale;
    p->remove_center = remove_center;
}

#define DCN_PARAM_KW                                                                                               \
    "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w", "group",         \
        "group_channels", "offset_scale", "remove_center"

static PyObject *py_dcnv4_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"value", "offset_mask", "output", DCN_PARAM_KW, "stream", "impl", NULL};
    PyObject *ov, *oo, *oout;
    long long v[10], stream = 0;
    double scale;
    int remove_center;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLLLLLLLLLLdp|Ls:dcnv4_forward", kwlist, &ov, &oo, &oout, &v[0],
                                     &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &scale,
                                     &remove_center, &stream, &impl))
        return NULL;
    dr_dcnv4_params p;
    dcn_params(v, scale, remove_center, &p);
    /* impl: "fast", "elementwise" (the per-element bodies) or "tiled" (the tiled CUDA forward's block schedule) */
    int tiled = strcmp(impl, "tiled") == 0;
    int elementwise = tiled ? 0 : dr_parse_impl(impl);
    if (elementwise < 0) {
        PyErr_Format(PyExc_ValueError, "impl must be 'fast', 'elementwise' or 'tiled', got '%s'", impl);
        return NULL;
    }
    const dr_argspec spec[3] = {{ov, "value", 0, 0}, {oo, "offset_mask", 0, 0}, {oout, "output", 1, 0}};
    dr_pyarg t[3];
    if (dr_pyargs_from(spec, 3, stream, t) < 0)
        return NULL;
    void *cuda_fn;
    const int where = dr_run_where(t, 3, "dr_dcnv4_forward_cuda", &cuda_fn);
    __typeof__(dr_dcnv4_forward_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(&t[0].t, &t[1].t, &t[2].t, &p, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, tiled         ? dr_dcnv4_forward_tiled_cpu(&t[0].t, &t[1].t, &t[2].t, &p)
                     : elementwise ? dr_dcnv4_forward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, &p)
                                   : dr_dcnv4_forward_cpu(&t[0].t, &t[1].t, &t[2].t, &p));
    PyObject *ret = where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, &t[0].t);
    dr_pyargs_release(t, 3);
    return ret;
}

static PyObject *py_dcnv4_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"value",        "offset_mask", "grad_output", "grad_value", "grad_offset_mask",
                             DCN_PARAM_KW,   "deterministic", "stream",    "impl",       NULL};
    PyObject *ov, *oo, *og, *ogv, *ogo;
    long long v[10], stream = 0;
    double scale;
    int remove_center, deterministic = 0;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOLLLLLLLLLLdp|pLs:dcnv4_backward", kwlist, &ov, &oo, &og, &ogv,
                                     &ogo, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9],
                                     &scale, &remove_center, &deterministic, &stream, &impl))
        return NULL;
    dr_dcnv4_params p;
    dcn_params(v, scale, remove_center, &p);
    /* impl "tiled": the CUDA default (atomic) mode with the tiled value scatter, run on the CPU */
    int tiled = strcmp(impl, "tiled") == 0;
    int elementwise = tiled ? 0 : dr_parse_impl(impl);
    if (elementwise < 0) {
        PyErr_Format(PyExc_ValueError, "impl must be 'fast', 'elementwise' or 'tiled', got '%s'", impl);
        return NULL;
    }
    const dr_argspec spec[5] = {{ov, "value", 0, 0}, {oo, "offset_mask", 0, 0}, {og, "grad_output", 0, 0},
                                {ogv, "grad_value", 1, 0}, {ogo, "grad_offset_mask", 1, 0}};
    dr_pyarg t[5];
    if (dr_pyargs_from(spec, 5, stream, t) < 0)
        return NULL;
    void *cuda_fn;
    const int where = dr_run_where(t, 5, "dr_dcnv4_backward_cuda", &cuda_fn);
    __typeof__(dr_dcnv4_backward_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(&t[0].t, &t[1].t, &t[2].t, &t[3].t, &t[4].t, &p, deterministic, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, tiled ? dr_dcnv4_backward_tiled_cpu(&t[0].t, &t[1].t, &t[2].t, &t[3].t, &t[4].t, &p)
                     : elementwise
                         ? dr_dcnv4_backward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, &t[3].t, &t[4].t, &p, deterministic)
                         : dr_dcnv4_backward_cpu(&t[0].t, &t[1].t, &t[2].t, &t[3].t, &t[4].t, &p));
    PyObject *ret = where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, &t[0].t);
    dr_pyargs_release(t, 5);
    return ret;
}

PyMethodDef dr_dcnv4_methods[] = {
    {"dcnv4_forward", (PyCFunction)(void (*)(void))py_dcnv4_forward, METH_VARARGS | METH_KEYWORDS,
     "dcnv4_forward(value, offset_mask, output, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, "
     "dilation_w, group, group_channels, offset_scale, remove_center, stream=0, impl='fast'|'elementwise'|'tiled'): fill output "
     "[N,Ho,Wo,G*D]."},
    {"dcnv4_backward", (PyCFunction)(void (*)(void))py_dcnv4_backward, METH_VARARGS | METH_KEYWORDS,
     "dcnv4_backward(value, offset_mask, grad_output, grad_value, grad_offset_mask, kernel_h, kernel_w, stride_h, "
     "stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels, offset_scale, remove_center, "
     "deterministic=False, stream=0, impl='fast'|'elementwise'|'tiled'): overwrite grad_value [N,H,W,C] and grad_offset_mask "
     "[N,Ho,Wo,P] (float32; float64 for float64 data)."},
    {NULL, NULL, 0, NULL}};
