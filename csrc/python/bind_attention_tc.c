/* bind_attention_tc.c — test-only entry points: the tensor-core attention kernels' CPU emulation
 * (dr_attention_tile.h, csrc/core/attn_tc_emulate.c) on float16/bfloat16 CPU tensors. */
#include "binding.h"

#include <string.h>

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
    dr_pyarg t[6];
    memset(t, 0, sizeof t);
    PyObject *src[6] = {oq, ok, ov, oo, ol, om};
    const char *names[6] = {"q", "k", "v", "out", "lse", "attn_mask"};
    const int writable[6] = {0, 0, 0, 1, 1, 0};
    PyObject *ret = NULL;
    const int nt = om == Py_None ? 5 : 6;
    for (int i = 0; i < nt; i++)
        if (dr_pyarg_from(src[i], names[i], writable[i], 0, &t[i]) < 0)
            goto done;
    dr_status st;
    Py_BEGIN_ALLOW_THREADS st = dr_attention_tc_forward_emulated(&t[0].t, &t[1].t, &t[2].t, nt == 6 ? &t[5].t : NULL,
                                                                  &t[3].t, &t[4].t, &p);
    Py_END_ALLOW_THREADS
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

static PyObject *py_attention_tc_backward_emulated(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "v", "mask", "out", "lse", "dout", "dq", "dk", "dv", "scale", "causal", NULL};
    PyObject *o[10];
    dr_attention_params p;
    int causal;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOdp:attention_tc_backward_emulated", kwlist, &o[0], &o[1],
                                     &o[2], &o[9], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &p.scale, &causal))
        return NULL;
    p.causal = causal;
    dr_pyarg t[10];
    memset(t, 0, sizeof t);
    const char *names[10] = {"q", "k", "v", "out", "lse", "grad_out", "grad_q", "grad_k", "grad_v", "attn_mask"};
    const int writable[10] = {0, 0, 0, 0, 0, 0, 1, 1, 1, 0};
    PyObject *ret = NULL;
    const int nt = o[9] == Py_None ? 9 : 10;
    for (int i = 0; i < nt; i++)
        if (dr_pyarg_from(o[i], names[i], writable[i], 0, &t[i]) < 0)
            goto done;
    dr_status st;
    Py_BEGIN_ALLOW_THREADS st = dr_attention_tc_backward_emulated(&t[0].t, &t[1].t, &t[2].t,
                                                                   nt == 10 ? &t[9].t : NULL, &t[3].t, &t[4].t,
                                                                   &t[5].t, &t[6].t, &t[7].t, &t[8].t, &p);
    Py_END_ALLOW_THREADS
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
