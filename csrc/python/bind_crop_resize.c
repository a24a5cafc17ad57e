/* bind_crop_resize.c — Python binding of crop_resize. */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "dr_crop_resize.h"
#include "views_args.h"

static int parse_floats3(PyObject *o, const char *op, const char *name, float out[3], int positive) {
    PyObject *seq = PySequence_Fast(o, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 3) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: %s must be 3 numbers (one per RGB channel)", op, name);
        return -1;
    }
    for (int k = 0; k < 3; k++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, k));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (!isfinite(v) || (positive && !(v > 0.0))) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "%s: %s[%d] must be finite%s", op, name, k, positive ? " and > 0" : "");
            return -1;
        }
        out[k] = (float)v;
    }
    Py_DECREF(seq);
    return 0;
}

static PyObject *py_crop_resize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"images",      "boxes",     "out",     "size",      "kind",   "filter", "mean", "std",
                             "image_index", "ref_boxes", "ref_out", "pil_order", "stream", "impl",   "check_only", NULL};
    PyObject *oim, *ob, *oo, *omean, *ostd, *oidx = Py_None, *orb = Py_None, *oro = Py_None;
    PyObject *osize, *okind, *ofilter, *oorder = NULL;
    long long size, kind, filter, pil_order = DR_PIL_ORDER_ADAPTIVE, stream = 0;
    const char *impl = "fast";
    int check_only = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOO|OOOOLsp:crop_resize", kwlist, &oim, &ob, &oo, &osize, &okind,
                                     &ofilter, &omean, &ostd, &oidx, &orb, &oro, &oorder, &stream, &impl, &check_only))
        return NULL;
    const char *op = "crop_resize";
    if (dr_int_arg(osize, op, "size", &size) < 0 || dr_int_arg(okind, op, "kind", &kind) < 0 ||
        dr_int_arg(ofilter, op, "filter", &filter) < 0 || (oorder && dr_int_arg(oorder, op, "pil_order", &pil_order) < 0))
        return NULL;
    /* impl "tiled": the CUDA kernel's block schedule on the CPU (dr_crop_resize_cpu's elementwise = 2) */
    int elementwise = strcmp(impl, "tiled") == 0 ? 2 : dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    dr_crop_resize_params p;
    memset(&p, 0, sizeof p);
    if (kind != DR_RS_PIL && kind != DR_RS_AA && kind != DR_RS_PLAIN) {
        PyErr_Format(PyExc_ValueError, "%s: unknown resampling kind %lld", op, kind);
        return NULL;
    }
    if (filter != DR_FILTER_BILINEAR && filter != DR_FILTER_BICUBIC) {
        PyErr_Format(PyExc_ValueError, "%s: unknown filter %lld", op, filter);
        return NULL;
    }
    if (size < 1 || size > 16384) {
        PyErr_Format(PyExc_ValueError, "%s: size must be in [1, 16384], got %lld", op, size);
        return NULL;
    }
    if (pil_order != DR_PIL_ORDER_ADAPTIVE && pil_order != DR_PIL_ORDER_HORIZONTAL) {
        PyErr_Format(PyExc_ValueError, "%s: unknown pil_order %lld", op, pil_order);
        return NULL;
    }
    p.kind = (int)kind;
    p.filter = (int)filter;
    p.pil_order = (int)pil_order;
    p.size = size;
    if (parse_floats3(omean, op, "mean", p.mean, 0) < 0 || parse_floats3(ostd, op, "std", p.std, 1) < 0)
        return NULL;
    image_list im;
    dr_pyarg b, idx, rb, ro, out;
    memset(&b, 0, sizeof b);
    memset(&idx, 0, sizeof idx);
    memset(&rb, 0, sizeof rb);
    memset(&ro, 0, sizeof ro);
    memset(&out, 0, sizeof out);
    PyObject *ret = NULL;
    if (dr_images_from(oim, op, stream, &im) < 0)
        return NULL;
    int has_idx = oidx != Py_None, has_ref = orb != Py_None;
    if (has_ref != (oro != Py_None)) {
        PyErr_Format(PyExc_ValueError, "%s: ref_boxes and ref_out go together", op);
        goto done;
    }
    if (dr_pyarg_from(ob, "boxes", 0, stream, &b) < 0 || (has_idx && dr_pyarg_from(oidx, "image_index", 0, stream, &idx) < 0) ||
        (has_ref && (dr_pyarg_from(orb, "ref_boxes", 0, stream, &rb) < 0 || dr_pyarg_from(oro, "ref_out", 1, stream, &ro) < 0)) ||
        dr_pyarg_from(oo, "out", 1, stream, &out) < 0)
        goto done;
    if (dr_check_boxes(op, &im, &b, "boxes", &idx, has_idx) < 0)
        goto done;
    int64_t nv = b.t.shape[0];
    if (dr_expect_ndim(&out, op, "out", 4) < 0 || dr_same_device(&im.args[0], "images", &out, "out", op) < 0)
        goto done;
    if (out.t.dtype != DR_FLOAT32 && out.t.dtype != DR_FLOAT16 && out.t.dtype != DR_BFLOAT16) {
        PyErr_Format(PyExc_TypeError, "%s: out must be float32, float16 or bfloat16, got %s", op,
                     dr_dtype_name(out.t.dtype));
        goto done;
    }
    if (out.t.shape[0] != nv || out.t.shape[1] != 3 || out.t.shape[2] != size || out.t.shape[3] != size) {
        PyErr_Format(PyExc_ValueError, "%s: out has shape [%lld, %lld, %lld, %lld], expected [%lld, 3, %lld, %lld]", op,
                     (long long)out.t.shape[0], (long long)out.t.shape[1], (long long)out.t.shape[2],
                     (long long)out.t.shape[3], (long long)nv, size, size);
        goto done;
    }
    if (has_ref) {
        if (dr_expect_ndim(&rb, op, "ref_boxes", 2) < 0 || dr_expect_ndim(&ro, op, "ref_out", 2) < 0 ||
            dr_expect_dtype(&ro, op, "ref_out", DR_FLOAT32) < 0)
            goto done;
        if (rb.t.dtype != DR_FLOAT32 && rb.t.dtype != DR_FLOAT64) {
            PyErr_Format(PyExc_TypeError, "%s: ref_boxes must be float32 or float64, got %s", op, dr_dtype_name(rb.t.dtype));
            goto done;
        }
        if (rb.t.shape[0] != nv || rb.t.shape[1] != 4 || ro.t.shape[0] != nv || ro.t.shape[1] != 4) {
            PyErr_Format(PyExc_ValueError, "%s: ref_boxes and ref_out must have shape [%lld, 4]", op, (long long)nv);
            goto done;
        }
        if (dr_same_device(&im.args[0], "images", &rb, "ref_boxes", op) < 0 ||
            dr_same_device(&im.args[0], "images", &ro, "ref_out", op) < 0)
            goto done;
    }
    dr_status st;
    if (check_only) { /* descriptors without data (meta tensors): the checks above only */
        ret = Py_NewRef(Py_None);
        goto done;
    }
    if (im.args[0].t.device == DR_CUDA) {
        __typeof__(dr_crop_resize_cuda) *fn = dr_cuda_fn("dr_crop_resize_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(im.refs, im.n, &b.t, has_idx ? &idx.t : NULL, has_ref ? &rb.t : NULL, &out.t,
                                       has_ref ? &ro.t : NULL, &p, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = dr_crop_resize_cpu(im.refs, im.n, &b.t, has_idx ? &idx.t : NULL,
                                                       has_ref ? &rb.t : NULL, &out.t, has_ref ? &ro.t : NULL, &p,
                                                       elementwise);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &out.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_images_release(&im);
    dr_pyarg_release(&b);
    dr_pyarg_release(&idx);
    dr_pyarg_release(&rb);
    dr_pyarg_release(&ro);
    dr_pyarg_release(&out);
    return ret;
}

PyMethodDef dr_crop_resize_methods[] = {
    {"crop_resize", (PyCFunction)(void (*)(void))py_crop_resize, METH_VARARGS | METH_KEYWORDS,
     "crop_resize(images, boxes, out, size, kind, filter, mean, std, image_index=None, ref_boxes=None, ref_out=None, "
     "pil_order=0, stream=0, impl='fast', check_only=False): fill out [V,3,S,S] with the normalised views (check_only: "
     "validate the arguments, run nothing)."},
    {NULL, NULL, 0, NULL}};
