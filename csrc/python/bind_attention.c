/* bind_attention.c — Python bindings of fused scaled-dot-product attention (CPU kernels and CUDA launchers). The
 * kernels' argument builder validates the arguments; these functions convert them and map the status to an
 * exception. */
#include "binding.h"

#include <string.h>

#include "dr_attention.h"

/* impl → -1 elementwise, DR_ATTN_ISA_* otherwise; -2 with a ValueError. */
static int parse_attn_impl(const char *impl) {
    if (strcmp(impl, "fast") == 0)
        return DR_ATTN_ISA_AUTO;
    if (strcmp(impl, "elementwise") == 0)
        return -1;
    if (strcmp(impl, "portable") == 0)
        return DR_ATTN_ISA_PORTABLE;
    if (strcmp(impl, "avx2") == 0)
        return DR_ATTN_ISA_AVX2;
    if (strcmp(impl, "avx512") == 0)
        return DR_ATTN_ISA_AVX512;
    PyErr_Format(PyExc_ValueError,
                 "attention: impl must be 'fast', 'elementwise', 'portable', 'avx2' or 'avx512', got '%s'", impl);
    return -2;
}

static PyObject *py_attention_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "mask", "out", "lse", "scale", "causal", "stream", "impl", NULL};
    PyObject *oq, *ok, *ov, *om, *oo, *ol;
    dr_attention_params p;
    int causal;
    long long stream = 0;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOdp|Ls:attention_forward", kwlist, &oq, &ok, &ov, &om, &oo,
                                     &ol, &p.scale, &causal, &stream, &impl))
        return NULL;
    p.causal = causal;
    const int isa = parse_attn_impl(impl);
    if (isa == -2)
        return NULL;
    const dr_argspec spec[6] = {{oq, "q", 0, 0},   {ok, "k", 0, 0},   {ov, "v", 0, 0},
                                {oo, "out", 1, 0}, {ol, "lse", 1, 0}, {om, "attn_mask", 0, 1}};
    dr_pyarg t[6];
    if (dr_pyargs_from(spec, 6, stream, t) < 0)
        return NULL;
    const dr_tensor *mt = dr_opt(&t[5]);
    dr_status st = DR_OK;
    void *cuda_fn;
    const int where = dr_run_where(t, 6, "dr_attention_forward_cuda", &cuda_fn);
    __typeof__(dr_attention_forward_cuda) *fn = cuda_fn;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &p, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, isa == -1 ? dr_attention_forward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &p)
                               : dr_attention_forward_cpu_isa(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &p, isa));
    PyObject *ret = where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, &t[0].t);
    dr_pyargs_release(t, 6);
    return ret;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q",  "k",  "v",     "mask",   "out",    "lse",  "dout", "dq",
                             "dk", "dv", "scale", "causal", "stream", "impl", NULL};
    PyObject *o[10];
    dr_attention_params p;
    int causal;
    long long stream = 0;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOdp|Ls:attention_backward", kwlist, &o[0], &o[1], &o[2],
                                     &o[9], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &p.scale, &causal, &stream,
                                     &impl))
        return NULL;
    p.causal = causal;
    const int isa = parse_attn_impl(impl);
    if (isa == -2)
        return NULL;
    const char *names[10] = {"q", "k", "v", "out", "lse", "grad_out", "grad_q", "grad_k", "grad_v", "attn_mask"};
    dr_argspec spec[10];
    for (int i = 0; i < 10; i++) {
        spec[i].obj = o[i];
        spec[i].name = names[i];
        spec[i].writable = i >= 6 && i < 9;
        spec[i].optional = i == 9;
    }
    dr_pyarg t[10];
    if (dr_pyargs_from(spec, 10, stream, t) < 0)
        return NULL;
    const dr_tensor *mt = dr_opt(&t[9]);
    dr_status st = DR_OK;
    void *cuda_fn;
    const int where = dr_run_where(t, 10, "dr_attention_backward_cuda", &cuda_fn);
    __typeof__(dr_attention_backward_cuda) *fn = cuda_fn;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &t[5].t, &t[6].t, &t[7].t, &t[8].t, &p,
                            (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, isa == -1 ? dr_attention_backward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t,
                                                                       &t[5].t, &t[6].t, &t[7].t, &t[8].t, &p)
                               : dr_attention_backward_cpu_isa(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t,
                                                               &t[5].t, &t[6].t, &t[7].t, &t[8].t, &p, isa));
    PyObject *ret = where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, &t[0].t);
    dr_pyargs_release(t, 10);
    return ret;
}

PyMethodDef dr_attention_methods[] = {
    {"attention_forward", (PyCFunction)(void (*)(void))py_attention_forward, METH_VARARGS | METH_KEYWORDS,
     "attention_forward(q, k, v, mask, out, lse, scale, causal, stream=0, impl='fast'): fill out [B,H,Lq,Dv] and "
     "lse [B,H,Lq]. mask: None or a bool/float tensor broadcast (stride 0) to [B,H,Lq,Lk]. impl: 'fast', "
     "'elementwise' (the CUDA bodies on the CPU), 'portable', 'avx2', 'avx512'."},
    {"attention_backward", (PyCFunction)(void (*)(void))py_attention_backward, METH_VARARGS | METH_KEYWORDS,
     "attention_backward(q, k, v, mask, out, lse, dout, dq, dk, dv, scale, causal, stream=0, impl='fast'): fill "
     "dq, dk, dv."},
    {NULL, NULL, 0, NULL}};
