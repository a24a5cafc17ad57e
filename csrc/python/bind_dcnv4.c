/* bind_dcnv4.c — Python bindings of the DCNv4 deformable aggregation (CPU kernels and CUDA launchers). */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "dr_dcnv4.h"

/* Fill the parameters from parsed integers and check them (ValueError naming the argument). */
static int dcn_params(const long long v[10], double offset_scale, int remove_center, dr_dcnv4_params *p) {
    static const char *names[10] = {"kernel_h", "kernel_w", "stride_h", "stride_w",   "pad_h",
                                    "pad_w",    "dilation_h", "dilation_w", "group", "group_channels"};
    for (int i = 0; i < 10; i++) {
        const long long lo = (i == 4 || i == 5) ? 0 : 1;
        const long long hi = (i == 0 || i == 1) ? 1024 : (i == 6 || i == 7) ? (1LL << 20) : (1LL << 30);
        if (v[i] < lo || v[i] > hi) {
            PyErr_Format(PyExc_ValueError, "dcnv4: %s must be in [%lld, %lld], got %lld", names[i], lo, hi, v[i]);
            return -1;
        }
    }
    if (!isfinite(offset_scale)) {
        PyErr_Format(PyExc_ValueError, "dcnv4: offset_scale must be finite, got %s",
                     isnan(offset_scale) ? "nan" : (offset_scale > 0 ? "inf" : "-inf"));
        return -1;
    }
    p->kernel_h = v[0], p->kernel_w = v[1], p->stride_h = v[2], p->stride_w = v[3];
    p->pad_h = v[4], p->pad_w = v[5], p->dilation_h = v[6], p->dilation_w = v[7];
    p->group = v[8], p->group_channels = v[9];
    p->offset_scale = offset_scale;
    p->remove_center = remove_center;
    if (p->kernel_h * p->kernel_w - (remove_center ? 1 : 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "dcnv4: remove_center with a 1x1 kernel leaves no taps");
        return -1;
    }
    return 0;
}

static void shape_str(const dr_tensor *t, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (used < n)
        snprintf(buf + used, n - used, "]");
}

/* Check value [N,H,W,G*D], offset_mask [N,Ho,Wo,P>=3GK] and the [N,Ho,Wo,C] tensor `o` (output or
 * grad_output). */
static int dcn_check(dr_pyarg *value, dr_pyarg *om, dr_pyarg *o, const char *oname, const dr_dcnv4_params *p) {
    const char *op = "dcnv4";
    if (dr_expect_float(value, op, "value") || dr_expect_float(om, op, "offset_mask") || dr_expect_float(o, op, oname))
        return -1;
    if (dr_expect_ndim(value, op, "value", 4) || dr_expect_ndim(om, op, "offset_mask", 4) ||
        dr_expect_ndim(o, op, oname, 4))
        return -1;
    if (dr_same_device(value, "value", om, "offset_mask", op) || dr_same_device(value, "value", o, oname, op))
        return -1;
    if (om->t.dtype != value->t.dtype) {
        PyErr_Format(PyExc_TypeError, "dcnv4: offset_mask must have value's dtype %s, got %s",
                     dr_dtype_name(value->t.dtype), dr_dtype_name(om->t.dtype));
        return -1;
    }
    if (o->t.dtype != value->t.dtype) {
        PyErr_Format(PyExc_TypeError, "dcnv4: %s must have value's dtype %s, got %s", oname,
                     dr_dtype_name(value->t.dtype), dr_dtype_name(o->t.dtype));
        return -1;
    }
    const int64_t C = value->t.shape[3];
    if (C != p->group * p->group_channels) {
        PyErr_Format(PyExc_ValueError,
                     "dcnv4: value has %lld channels but group * group_channels = %lld * %lld = %lld", (long long)C,
                     (long long)p->group, (long long)p->group_channels, (long long)(p->group * p->group_channels));
        return -1;
    }
    const int64_t H = value->t.shape[1], W = value->t.shape[2];
    const int64_t Ho = dr_dcnv4_out_size(H, p->kernel_h, p->stride_h, p->pad_h, p->dilation_h);
    const int64_t Wo = dr_dcnv4_out_size(W, p->kernel_w, p->stride_w, p->pad_w, p->dilation_w);
    if (Ho < 1 || Wo < 1) {
        PyErr_Format(PyExc_ValueError,
                     "dcnv4: the %lldx%lld kernel (dilation %lldx%lld) does not fit the %lldx%lld value padded by "
                     "%lldx%lld",
                     (long long)p->kernel_h, (long long)p->kernel_w, (long long)p->dilation_h,
                     (long long)p->dilation_w, (long long)H, (long long)W, (long long)p->pad_h, (long long)p->pad_w);
        return -1;
    }
    const int64_t K = p->kernel_h * p->kernel_w - (p->remove_center ? 1 : 0);
    char got[96];
    const int64_t *s = om->t.shape;
    if (s[0] != value->t.shape[0] || s[1] != Ho || s[2] != Wo || s[3] < 3 * p->group * K) {
        shape_str(&om->t, got, sizeof got);
        PyErr_Format(PyExc_ValueError,
                     "dcnv4: offset_mask must have shape [%lld, %lld, %lld, P] with P >= 3 * group * K = %lld "
                     "(K = %lld taps), got %s",
                     (long long)value->t.shape[0], (long long)Ho, (long long)Wo, (long long)(3 * p->group * K),
                     (long long)K, got);
        return -1;
    }
    s = o->t.shape;
    if (s[0] != value->t.shape[0] || s[1] != Ho || s[2] != Wo || s[3] != C) {
        shape_str(&o->t, got, sizeof got);
        PyErr_Format(PyExc_ValueError, "dcnv4: %s must have shape [%lld, %lld, %lld, %lld], got %s", oname,
                     (long long)value->t.shape[0], (long long)Ho, (long long)Wo, (long long)C, got);
        return -1;
    }
    return 0;
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
    if (dcn_params(v, scale, remove_center, &p) < 0)
        return NULL;
    int elementwise = dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    dr_pyarg val, om, out;
    PyObject *ret = NULL;
    memset(&om, 0, sizeof om);
    memset(&out, 0, sizeof out);
    if (dr_pyarg_from(ov, "value", 0, stream, &val) < 0)
        return NULL;
    if (dr_pyarg_from(oo, "offset_mask", 0, stream, &om) < 0 || dr_pyarg_from(oout, "output", 1, stream, &out) < 0)
        goto done;
    if (dcn_check(&val, &om, &out, "output", &p) < 0)
        goto done;
    dr_status st;
    if (val.t.device == DR_CUDA) {
        __typeof__(dr_dcnv4_forward_cuda) *fn = dr_cuda_fn("dr_dcnv4_forward_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&val.t, &om.t, &out.t, &p, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = elementwise ? dr_dcnv4_forward_elementwise_cpu(&val.t, &om.t, &out.t, &p)
                                                : dr_dcnv4_forward_cpu(&val.t, &om.t, &out.t, &p);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &val.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&val);
    dr_pyarg_release(&om);
    dr_pyarg_release(&out);
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
    if (dcn_params(v, scale, remove_center, &p) < 0)
        return NULL;
    int elementwise = dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    dr_pyarg val, om, go, gv, gom;
    PyObject *ret = NULL;
    memset(&om, 0, sizeof om);
    memset(&go, 0, sizeof go);
    memset(&gv, 0, sizeof gv);
    memset(&gom, 0, sizeof gom);
    if (dr_pyarg_from(ov, "value", 0, stream, &val) < 0)
        return NULL;
    if (dr_pyarg_from(oo, "offset_mask", 0, stream, &om) < 0 || dr_pyarg_from(og, "grad_output", 0, stream, &go) < 0 ||
        dr_pyarg_from(ogv, "grad_value", 1, stream, &gv) < 0 ||
        dr_pyarg_from(ogo, "grad_offset_mask", 1, stream, &gom) < 0)
        goto done;
    if (dcn_check(&val, &om, &go, "grad_output", &p) < 0)
        goto done;
    if (dr_same_device(&val, "value", &gv, "grad_value", "dcnv4") ||
        dr_same_device(&val, "value", &gom, "grad_offset_mask", "dcnv4"))
        goto done;
    dr_dtype want = val.t.dtype == DR_FLOAT64 ? DR_FLOAT64 : DR_FLOAT32;
    if (gv.t.dtype != want || gom.t.dtype != want) {
        PyErr_Format(PyExc_TypeError, "dcnv4_backward: grad_value and grad_offset_mask must be %s for %s data, got %s "
                                      "and %s",
                     dr_dtype_name(want), dr_dtype_name(val.t.dtype), dr_dtype_name(gv.t.dtype),
                     dr_dtype_name(gom.t.dtype));
        goto done;
    }
    if (dr_expect_ndim(&gv, "dcnv4_backward", "grad_value", 4) ||
        dr_expect_ndim(&gom, "dcnv4_backward", "grad_offset_mask", 4))
        goto done;
    for (int d = 0; d < 4; d++)
        if (gv.t.shape[d] != val.t.shape[d] || gom.t.shape[d] != om.t.shape[d]) {
            PyErr_SetString(PyExc_ValueError,
                            "dcnv4_backward: grad_value and grad_offset_mask must have the shapes of value and "
                            "offset_mask");
            goto done;
        }
    dr_status st;
    if (val.t.device == DR_CUDA) {
        __typeof__(dr_dcnv4_backward_cuda) *fn = dr_cuda_fn("dr_dcnv4_backward_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&val.t, &om.t, &go.t, &gv.t, &gom.t, &p, deterministic, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st =
            elementwise ? dr_dcnv4_backward_elementwise_cpu(&val.t, &om.t, &go.t, &gv.t, &gom.t, &p, deterministic)
                        : dr_dcnv4_backward_cpu(&val.t, &om.t, &go.t, &gv.t, &gom.t, &p);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &val.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&val);
    dr_pyarg_release(&om);
    dr_pyarg_release(&go);
    dr_pyarg_release(&gv);
    dr_pyarg_release(&gom);
    return ret;
}

PyMethodDef dr_dcnv4_methods[] = {
    {"dcnv4_forward", (PyCFunction)(void (*)(void))py_dcnv4_forward, METH_VARARGS | METH_KEYWORDS,
     "dcnv4_forward(value, offset_mask, output, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, "
     "dilation_w, group, group_channels, offset_scale, remove_center, stream=0, impl='fast'): fill output "
     "[N,Ho,Wo,G*D]."},
    {"dcnv4_backward", (PyCFunction)(void (*)(void))py_dcnv4_backward, METH_VARARGS | METH_KEYWORDS,
     "dcnv4_backward(value, offset_mask, grad_output, grad_value, grad_offset_mask, kernel_h, kernel_w, stride_h, "
     "stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels, offset_scale, remove_center, "
     "deterministic=False, stream=0, impl='fast'): overwrite grad_value [N,H,W,C] and grad_offset_mask "
     "[N,Ho,Wo,P] (float32; float64 for float64 data)."},
    {NULL, NULL, 0, NULL}};
