/* bind_attention_tc.c — test-only entry points: the tensor-core attention kernels' CPU emulation
 * (dr_attention_tile.h, csrc/core/attn_tc_emulate.c) on float16/bfloat16 CPU tensors. */
#include "binding.h"

#include "dr_attention_tile.h"

static PyObject *py_attention_tc_forward_emulated(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "mask", "out", "lse", "scale", "causal", NULL};
    PyObject *oq, *ok, *ov, *om, *oo, *ol;
    dr_attention_params p;
    int causal;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOdp:attention_tc_forward_emulated", kwlist, &oq, &ok, &ov, &om,
                                     &oo, &ol, &p.scale, &causal))
        return NULL;
    p.causal = causal;
    enum { Q, K, V, OUT, LSE, MASK, N };
    const dr_argspec spec[N] = {{oq, "q", 0, 0},   {ok, "k", 0, 0},     {ov, "v", 0, 0},
                                {oo, "out", 1, 0}, {ol, "lse", 1, 0}, {om, "attn_mask", 0, 1}};
    dr_pyarg t[N];
    if (dr_pyargs_from(spec, N, 0, t) < 0)
        return NULL;
    dr_status st;
    DR_NOGIL(st, dr_attention_tc_forward_emulated(&t[Q].t, &t[K].t, &t[V].t, dr_opt(&t[MASK]), &t[OUT].t,
                                                  &t[LSE].t, &p));
    PyObject *ret = dr_kernel_result(st, &t[Q].t);
    dr_pyargs_release(t, N);
    return ret;
}

static PyObject *py_attention_tc_backward_emulated(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "mask", "out", "lse", "dout", "dq", "dk", "dv", "scale", "causal", NULL};
    enum { Q, K, V, OUT, LSE, DOUT, DQ, DK, DV, MASK, N };
    PyObject *o[N];
    dr_attention_params p;
    int causal;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOdp:attention_tc_backward_emulated", kwlist, &o[Q], &o[K],
                                     &o[V], &o[MASK], &o[OUT], &o[LSE], &o[DOUT], &o[DQ], &o[DK], &o[DV], &p.scale,
                                     &causal))
        return NULL;
    p.causal = causal;
    const dr_argspec spec[N] = {{o[Q], "q", 0, 0},          {o[K], "k", 0, 0},        {o[V], "v", 0, 0},
                                {o[OUT], "out", 0, 0},      {o[LSE], "lse", 0, 0},    {o[DOUT], "grad_out", 0, 0},
                                {o[DQ], "grad_q", 1, 0},    {o[DK], "grad_k", 1, 0},  {o[DV], "grad_v", 1, 0},
                                {o[MASK], "attn_mask", 0, 1}};
    dr_pyarg t[N];
    if (dr_pyargs_from(spec, N, 0, t) < 0)
        return NULL;
    dr_status st;
    DR_NOGIL(st, dr_attention_tc_backward_emulated(&t[Q].t, &t[K].t, &t[V].t, dr_opt(&t[MASK]), &t[OUT].t,
                                                   &t[LSE].t, &t[DOUT].t, &t[DQ].t, &t[DK].t, &t[DV].t, &p));
    PyObject *ret = dr_kernel_result(st, &t[Q].t);
    dr_pyargs_release(t, N);
    return ret;
}

PyMethodDef dr_attention_tc_methods[] = {
    {"attention_tc_forward_emulated", (PyCFunction)(void (*)(void))py_attention_tc_forward_emulated,
     METH_VARARGS | METH_KEYWORDS,
     "attention_tc_forward_emulated(q, k, v, mask, out, lse, scale, causal): the CUDA tensor-core forward's tiles, "
     "warps and mma.m16n8k16 fragments emulated on the CPU (float16/bfloat16 CPU tensors; for tests)."},
    {"attention_tc_backward_emulated", (PyCFunction)(void (*)(void))py_attention_tc_backward_emulated,
     METH_VARARGS | METH_KEYWORDS,
     "attention_tc_backward_emulated(q, k, v, mask, out, lse, dout, dq, dk, dv, scale, causal): the tensor-core "
     "backward (dQ and dK/dV kernels) emulated on the CPU (for tests)."},
    {NULL, NULL, 0, NULL}};
