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

/* 1 if the first n converted tensors are all on CUDA (then the CUDA launcher runs; mixed devices go to the CPU
 * kernel, whose argument builder names them). */
static int all_cuda(const dr_pyarg *t, int n) {
    for (int i = 0; i < n; i++)
        if (t[i].t.device != DR_CUDA)
            return 0;
    return 1;
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
    dr_pyarg t[6];
    memset(t, 0, sizeof t);
    PyObject *src[6] = {oq, ok, ov, oo, ol, om};
    const char *names[6] = {"q", "k", "v", "out", "lse", "attn_mask"};
    const int writable[6] = {0, 0, 0, 1, 1, 0};
    PyObject *ret = NULL;
    const int nt = om == Py_None ? 5 : 6;
    for (int i = 0; i < nt; i++)
        if (dr_pyarg_from(src[i], names[i], writable[i], stream, &t[i]) < 0)
            goto done;
    const dr_tensor *mt = nt == 6 ? &t[5].t : NULL;
    dr_status st;
    if (all_cuda(t, nt)) {
        __typeof__(dr_attention_forward_cuda) *fn = dr_cuda_fn("dr_attention_forward_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &p, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st =
            isa == -1 ? dr_attention_forward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &p)
                      : dr_attention_forward_cpu_isa(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &p, isa);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &t[0].t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 6; i++)
        if (t[i].keep)
            dr_pyarg_release(&t[i]);
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
    dr_pyarg t[10];
    memset(t, 0, sizeof t);
    const char *names[10] = {"q", "k", "v", "out", "lse", "grad_out", "grad_q", "grad_k", "grad_v", "attn_mask"};
    const int writable[10] = {0, 0, 0, 0, 0, 0, 1, 1, 1, 0};
    PyObject *ret = NULL;
    const int nt = o[9] == Py_None ? 9 : 10;
    for (int i = 0; i < nt; i++)
        if (dr_pyarg_from(o[i], names[i], writable[i], stream, &t[i]) < 0)
            goto done;
    const dr_tensor *mt = nt == 10 ? &t[9].t : NULL;
    dr_status st;
    if (all_cuda(t, nt)) {
        __typeof__(dr_attention_backward_cuda) *fn = dr_cuda_fn("dr_attention_backward_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t, &t[4].t, &t[5].t, &t[6].t, &t[7].t,
                                       &t[8].t, &p, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = isa == -1 ? dr_attention_backward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, mt,
                                                                                      &t[3].t, &t[4].t, &t[5].t,
                                                                                      &t[6].t, &t[7].t, &t[8].t, &p)
                                              : dr_attention_backward_cpu_isa(&t[0].t, &t[1].t, &t[2].t, mt, &t[3].t,
                                                                              &t[4].t, &t[5].t, &t[6].t, &t[7].t,
                                                                              &t[8].t, &p, isa);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &t[0].t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 10; i++)
        if (t[i].keep)
            dr_pyarg_release(&t[i]);
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
