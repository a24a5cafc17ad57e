/* bind_attention.c — Python bindings of fused scaled-dot-product attention (CPU kernels and CUDA launchers). */
#include "binding.h"

#include <math.h>
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

static int expect_shape(const dr_pyarg *t, const char *name, int nd, const int64_t *want) {
    if (t->t.ndim != nd) {
        PyErr_Format(PyExc_ValueError, "attention: %s must be %d-D, got %d-D", name, nd, t->t.ndim);
        return -1;
    }
    for (int i = 0; i < nd; i++)
        if (t->t.shape[i] != want[i]) {
            if (nd == 4)
                PyErr_Format(PyExc_ValueError, "attention: %s has shape [%lld, %lld, %lld, %lld], expected [%lld, "
                                               "%lld, %lld, %lld]",
                             name, (long long)t->t.shape[0], (long long)t->t.shape[1], (long long)t->t.shape[2],
                             (long long)t->t.shape[3], (long long)want[0], (long long)want[1], (long long)want[2],
                             (long long)want[3]);
            else
                PyErr_Format(PyExc_ValueError, "attention: %s has shape [%lld, %lld, %lld], expected [%lld, %lld, "
                                               "%lld]",
                             name, (long long)t->t.shape[0], (long long)t->t.shape[1], (long long)t->t.shape[2],
                             (long long)want[0], (long long)want[1], (long long)want[2]);
            return -1;
        }
    return 0;
}

/* Checks shared by forward and backward. args[0..2] = q, k, v; then out, lse; then (backward) dout, dq, dk, dv.
 * mask may be NULL. */
static int attention_check(dr_pyarg *const *args, const char *const *names, int n, const dr_pyarg *mask,
                           const dr_attention_params *p) {
    const dr_pyarg *q = args[0], *k = args[1], *v = args[2];
    for (int i = 0; i < n; i++) {
        if (dr_expect_float(args[i], "attention", names[i]) || dr_same_device(q, "q", args[i], names[i], "attention"))
            return -1;
        if (i == 4)
            continue;
        if (args[i]->t.dtype != q->t.dtype) {
            PyErr_Format(PyExc_TypeError, "attention: %s must have q's dtype %s, got %s", names[i],
                         dr_dtype_name(q->t.dtype), dr_dtype_name(args[i]->t.dtype));
            return -1;
        }
    }
    if (dr_expect_ndim(q, "attention", "q", 4) || dr_expect_ndim(k, "attention", "k", 4) ||
        dr_expect_ndim(v, "attention", "v", 4))
        return -1;
    const int64_t B = q->t.shape[0], H = q->t.shape[1], Lq = q->t.shape[2], D = q->t.shape[3];
    const int64_t Lk = k->t.shape[2], Dv = v->t.shape[3];
    const int64_t ks[4] = {B, H, Lk, D}, vs[4] = {B, H, Lk, Dv}, os[4] = {B, H, Lq, Dv}, ls[3] = {B, H, Lq};
    const int64_t qs[4] = {B, H, Lq, D};
    if (expect_shape(k, "k", 4, ks) || expect_shape(v, "v", 4, vs) || expect_shape(args[3], names[3], 4, os) ||
        expect_shape(args[4], "lse", 3, ls))
        return -1;
    if (n > 5 && (expect_shape(args[5], names[5], 4, os) || expect_shape(args[6], names[6], 4, qs) ||
                  expect_shape(args[7], names[7], 4, ks) || expect_shape(args[8], names[8], 4, vs)))
        return -1;
    if (D < 1 || Dv < 1 || D > DR_ATTN_MAX_D || Dv > DR_ATTN_MAX_D) {
        PyErr_Format(PyExc_ValueError, "attention: head dims must be in [1, %d], got q/k %lld and v %lld",
                     DR_ATTN_MAX_D, (long long)D, (long long)Dv);
        return -1;
    }
    dr_dtype lse_dt = q->t.dtype == DR_FLOAT64 ? DR_FLOAT64 : DR_FLOAT32;
    if (dr_expect_dtype(args[4], "attention", "lse", lse_dt))
        return -1;
    if (mask) {
        const int64_t ms[4] = {B, H, Lq, Lk};
        if (mask->t.dtype != DR_BOOL && !dr_is_float(mask->t.dtype)) {
            PyErr_Format(PyExc_TypeError, "attention: attn_mask must be bool or floating point, got %s",
                         dr_dtype_name(mask->t.dtype));
            return -1;
        }
        if (dr_same_device(q, "q", mask, "attn_mask", "attention") || expect_shape(mask, "attn_mask", 4, ms))
            return -1;
        if (p->causal) {
            PyErr_SetString(PyExc_ValueError, "attention: is_causal and an explicit attn_mask are exclusive");
            return -1;
        }
    }
    if (!isfinite(p->scale)) {
        PyErr_SetString(PyExc_ValueError, "attention: scale must be finite");
        return -1;
    }
    return 0;
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
    dr_pyarg *ptr[5] = {&t[0], &t[1], &t[2], &t[3], &t[4]};
    const dr_pyarg *mask = nt == 6 ? &t[5] : NULL;
    if (attention_check(ptr, names, 5, mask, &p) < 0)
        goto done;
    const dr_tensor *mt = mask ? &mask->t : NULL;
    dr_status st;
    if (t[0].t.device == DR_CUDA) {
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
    dr_pyarg *ptr[9];
    for (int i = 0; i < 9; i++)
        ptr[i] = &t[i];
    const dr_pyarg *mask = nt == 10 ? &t[9] : NULL;
    if (attention_check(ptr, names, 9, mask, &p) < 0)
        goto done;
    const dr_tensor *mt = mask ? &mask->t : NULL;
    dr_status st;
    if (t[0].t.device == DR_CUDA) {
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
