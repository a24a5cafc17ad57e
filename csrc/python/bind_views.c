/* bind_views.c — Python bindings of the nested-views kernels: crop_resize, phash, select_views. */
#include "binding.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dr_views.h"

typedef dr_status (*crop_cuda_fn)(const dr_image_ref *, int64_t, const dr_tensor *, const dr_tensor *,
                                  const dr_tensor *, dr_tensor *, dr_tensor *, const dr_crop_resize_params *, void *);
typedef dr_status (*phash_cuda_fn)(const dr_image_ref *, int64_t, const dr_tensor *, const dr_tensor *, dr_tensor *,
                                   int, int, void *);
typedef dr_status (*select_cuda_fn)(const dr_tensor *, const dr_tensor *, dr_tensor *, void *);

/* A list of images converted to descriptors. */
typedef struct {
    Py_ssize_t n;
    dr_pyarg *args;
    dr_image_ref *refs;
} image_list;

static void images_release(image_list *l) {
    for (Py_ssize_t i = 0; i < l->n; i++)
        dr_pyarg_release(&l->args[i]);
    PyMem_Free(l->args);
    PyMem_Free(l->refs);
    l->n = 0;
    l->args = NULL;
    l->refs = NULL;
}

static int images_from(PyObject *seq, const char *op, long long stream, image_list *l) {
    memset(l, 0, sizeof *l);
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s: images must be a list of HxWx3 uint8 images, got %s", op,
                     Py_TYPE(seq)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "%s: images is empty", op);
        return -1;
    }
    l->args = (dr_pyarg *)PyMem_Calloc((size_t)n, sizeof(dr_pyarg));
    l->refs = (dr_image_ref *)PyMem_Calloc((size_t)n, sizeof(dr_image_ref));
    if (!l->args || !l->refs) {
        PyMem_Free(l->args);
        PyMem_Free(l->refs);
        l->args = NULL;
        l->refs = NULL;
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        char name[48];
        snprintf(name, sizeof name, "images[%zd]", i);
        if (dr_pyarg_from(o, name, 0, stream, &l->args[i]) < 0) {
            images_release(l);
            return -1;
        }
        l->n = i + 1;
        const dr_tensor *t = &l->args[i].t;
        if (t->dtype != DR_UINT8) {
            PyErr_Format(PyExc_TypeError, "%s: %s must be uint8, got %s", op, name, dr_dtype_name(t->dtype));
            images_release(l);
            return -1;
        }
        if (t->ndim != 3 || t->shape[2] < 3 || t->shape[0] < 1 || t->shape[1] < 1) {
            PyErr_Format(PyExc_ValueError, "%s: %s must be a non-empty H x W x C image with C >= 3 (RGB), got %d-D "
                         "shape [%lld, %lld, %lld]", op, name, t->ndim, (long long)t->shape[0],
                         (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)(t->ndim > 2 ? t->shape[2] : 0));
            images_release(l);
            return -1;
        }
        if (i > 0 && dr_same_device(&l->args[0], "images[0]", &l->args[i], name, op) < 0) {
            images_release(l);
            return -1;
        }
        dr_image_ref *r = &l->refs[i];
        r->data = (const uint8_t *)t->data;
        r->h = t->shape[0];
        r->w = t->shape[1];
        r->sh = t->strides[0];
        r->sw = t->strides[1];
        r->sc = t->strides[2];
    }
    return 0;
}

/* boxes [V,4] float32/float64 on the images' device; optional image_index [V] int64 and ref_boxes [V,4]. */
static int check_boxes(const char *op, const image_list *im, dr_pyarg *boxes, const char *bname, dr_pyarg *index,
                       int has_index) {
    if (dr_expect_ndim(boxes, op, bname, 2) < 0)
        return -1;
    if (boxes->t.dtype != DR_FLOAT32 && boxes->t.dtype != DR_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be float32 or float64, got %s", op, bname,
                     dr_dtype_name(boxes->t.dtype));
        return -1;
    }
    if (boxes->t.shape[1] != 4) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have shape [V, 4], got [%lld, %lld]", op, bname,
                     (long long)boxes->t.shape[0], (long long)boxes->t.shape[1]);
        return -1;
    }
    if (dr_same_device(&im->args[0], "images", boxes, bname, op) < 0)
        return -1;
    if (has_index) {
        if (dr_expect_ndim(index, op, "image_index", 1) < 0 || dr_expect_dtype(index, op, "image_index", DR_INT64) < 0)
            return -1;
        if (index->t.shape[0] != boxes->t.shape[0]) {
            PyErr_Format(PyExc_ValueError, "%s: image_index has %lld entries for %lld boxes", op,
                         (long long)index->t.shape[0], (long long)boxes->t.shape[0]);
            return -1;
        }
        if (dr_same_device(&im->args[0], "images", index, "image_index", op) < 0)
            return -1;
    } else if (im->n != 1) {
        PyErr_Format(PyExc_ValueError, "%s: image_index is required with %zd images", op, im->n);
        return -1;
    }
    return 0;
}

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
                             "image_index", "ref_boxes", "ref_out", "pil_order", "stream", "impl",   NULL};
    PyObject *oim, *ob, *oo, *omean, *ostd, *oidx = Py_None, *orb = Py_None, *oro = Py_None;
    long long size, stream = 0;
    int kind, filter, pil_order = DR_PIL_ORDER_ADAPTIVE;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLiiOO|OOOiLs:crop_resize", kwlist, &oim, &ob, &oo, &size, &kind,
                                     &filter, &omean, &ostd, &oidx, &orb, &oro, &pil_order, &stream, &impl))
        return NULL;
    int elementwise = dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    const char *op = "crop_resize";
    dr_crop_resize_params p;
    memset(&p, 0, sizeof p);
    if (kind != DR_RS_PIL && kind != DR_RS_AA && kind != DR_RS_PLAIN) {
        PyErr_Format(PyExc_ValueError, "%s: unknown resampling kind %d", op, kind);
        return NULL;
    }
    if (filter != DR_FILTER_BILINEAR && filter != DR_FILTER_BICUBIC) {
        PyErr_Format(PyExc_ValueError, "%s: unknown filter %d", op, filter);
        return NULL;
    }
    if (size < 1 || size > 16384) {
        PyErr_Format(PyExc_ValueError, "%s: size must be in [1, 16384], got %lld", op, size);
        return NULL;
    }
    if (pil_order != DR_PIL_ORDER_ADAPTIVE && pil_order != DR_PIL_ORDER_HORIZONTAL) {
        PyErr_Format(PyExc_ValueError, "%s: unknown pil_order %d", op, pil_order);
        return NULL;
    }
    p.kind = kind;
    p.filter = filter;
    p.pil_order = pil_order;
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
    if (images_from(oim, op, stream, &im) < 0)
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
    if (check_boxes(op, &im, &b, "boxes", &idx, has_idx) < 0)
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
    if (im.args[0].t.device == DR_CUDA) {
        crop_cuda_fn fn = (crop_cuda_fn)dr_cuda_fn("dr_crop_resize_cuda");
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
    images_release(&im);
    dr_pyarg_release(&b);
    dr_pyarg_release(&idx);
    dr_pyarg_release(&rb);
    dr_pyarg_release(&ro);
    dr_pyarg_release(&out);
    return ret;
}

static PyObject *py_phash(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"images", "boxes", "hashes", "method", "image_index", "pil_order", "stream", "impl",
                             "thumbnails", NULL};
    PyObject *oim, *ob, *oh, *oidx = Py_None, *othumb = Py_None;
    int method, pil_order = DR_PIL_ORDER_ADAPTIVE;
    long long stream = 0;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOi|OiLsO:phash", kwlist, &oim, &ob, &oh, &method, &oidx, &pil_order,
                                     &stream, &impl, &othumb))
        return NULL;
    if (pil_order != DR_PIL_ORDER_ADAPTIVE && pil_order != DR_PIL_ORDER_HORIZONTAL) {
        PyErr_Format(PyExc_ValueError, "phash: unknown pil_order %d", pil_order);
        return NULL;
    }
    int elementwise = dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    const char *op = "phash";
    if (method != DR_PHASH_DYNREFER && method != DR_PHASH_IMAGEHASH) {
        PyErr_Format(PyExc_ValueError, "%s: unknown method %d", op, method);
        return NULL;
    }
    image_list im;
    dr_pyarg b, idx, h, th;
    memset(&b, 0, sizeof b);
    memset(&idx, 0, sizeof idx);
    memset(&h, 0, sizeof h);
    memset(&th, 0, sizeof th);
    PyObject *ret = NULL;
    if (images_from(oim, op, stream, &im) < 0)
        return NULL;
    int has_idx = oidx != Py_None, has_th = othumb != Py_None;
    if (dr_pyarg_from(ob, "boxes", 0, stream, &b) < 0 || (has_idx && dr_pyarg_from(oidx, "image_index", 0, stream, &idx) < 0) ||
        dr_pyarg_from(oh, "hashes", 1, stream, &h) < 0)
        goto done;
    if (check_boxes(op, &im, &b, "boxes", &idx, has_idx) < 0)
        goto done;
    if (dr_expect_ndim(&h, op, "hashes", 1) < 0 || dr_expect_dtype(&h, op, "hashes", DR_UINT64) < 0 ||
        dr_same_device(&im.args[0], "images", &h, "hashes", op) < 0)
        goto done;
    if (h.t.shape[0] != b.t.shape[0]) {
        PyErr_Format(PyExc_ValueError, "%s: hashes has %lld entries for %lld boxes", op, (long long)h.t.shape[0],
                     (long long)b.t.shape[0]);
        goto done;
    }
    if (has_th) { /* the resized luma views imagehash hashes: [V, 32, 32] uint8, contiguous, CPU */
        if (dr_pyarg_from(othumb, "thumbnails", 1, stream, &th) < 0)
            goto done;
        if (method != DR_PHASH_IMAGEHASH || im.args[0].t.device != DR_CPU) {
            PyErr_Format(PyExc_ValueError, "%s: thumbnails are only available for method imagehash on the CPU", op);
            goto done;
        }
        if (dr_expect_ndim(&th, op, "thumbnails", 3) < 0 || dr_expect_dtype(&th, op, "thumbnails", DR_UINT8) < 0)
            goto done;
        if (th.t.shape[0] != b.t.shape[0] || th.t.shape[1] != DR_PHASH_IH_RES || th.t.shape[2] != DR_PHASH_IH_RES ||
            th.t.strides[2] != 1 || th.t.strides[1] != DR_PHASH_IH_RES ||
            th.t.strides[0] != DR_PHASH_IH_RES * DR_PHASH_IH_RES) {
            PyErr_Format(PyExc_ValueError, "%s: thumbnails must be a contiguous [%lld, 32, 32] array", op,
                         (long long)b.t.shape[0]);
            goto done;
        }
    }
    dr_status st;
    if (im.args[0].t.device == DR_CUDA) {
        phash_cuda_fn fn = (phash_cuda_fn)dr_cuda_fn("dr_phash_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(im.refs, im.n, &b.t, has_idx ? &idx.t : NULL, &h.t, method, pil_order,
                                       (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = dr_phash_cpu(im.refs, im.n, &b.t, has_idx ? &idx.t : NULL, &h.t, method, pil_order,
                                                 elementwise, has_th ? &th.t : NULL);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &h.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    images_release(&im);
    dr_pyarg_release(&b);
    dr_pyarg_release(&idx);
    dr_pyarg_release(&th);
    dr_pyarg_release(&h);
    return ret;
}

static PyObject *py_select_views(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"hashes", "coeffs", "out", "stream", NULL};
    PyObject *oh, *oc, *oo;
    long long stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|L:select_views", kwlist, &oh, &oc, &oo, &stream))
        return NULL;
    const char *op = "select_views";
    dr_pyarg h, c, o;
    memset(&c, 0, sizeof c);
    memset(&o, 0, sizeof o);
    PyObject *ret = NULL;
    if (dr_pyarg_from(oh, "hashes", 0, stream, &h) < 0)
        return NULL;
    if (dr_pyarg_from(oc, "coeffs", 0, stream, &c) < 0 || dr_pyarg_from(oo, "out", 1, stream, &o) < 0)
        goto done;
    if (dr_expect_ndim(&h, op, "hashes", 2) < 0 || dr_expect_dtype(&h, op, "hashes", DR_UINT64) < 0 ||
        dr_expect_ndim(&c, op, "coeffs", 1) < 0 || dr_expect_dtype(&c, op, "coeffs", DR_FLOAT64) < 0 ||
        dr_expect_ndim(&o, op, "out", 2) < 0 || dr_expect_dtype(&o, op, "out", DR_INT64) < 0)
        goto done;
    if (dr_same_device(&h, "hashes", &c, "coeffs", op) < 0 || dr_same_device(&h, "hashes", &o, "out", op) < 0)
        goto done;
    int64_t nr = h.t.shape[0], nc = c.t.shape[0];
    if (h.t.shape[1] != nc + 1) {
        PyErr_Format(PyExc_ValueError, "%s: hashes must have shape [R, 1 + %lld] (tight view, then one per candidate), "
                     "got [%lld, %lld]", op, (long long)nc, (long long)nr, (long long)h.t.shape[1]);
        goto done;
    }
    if (o.t.shape[0] != nr || o.t.shape[1] > nc) {
        PyErr_Format(PyExc_ValueError, "%s: out must have shape [%lld, n] with n <= %lld candidates, got [%lld, %lld]", op,
                     (long long)nr, (long long)nc, (long long)o.t.shape[0], (long long)o.t.shape[1]);
        goto done;
    }
    dr_status st;
    if (h.t.device == DR_CUDA) {
        select_cuda_fn fn = (select_cuda_fn)dr_cuda_fn("dr_select_views_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(&h.t, &c.t, &o.t, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        for (int64_t i = 0; i < nc; i++) {
            double t = ((const double *)c.t.data)[i * c.t.strides[0]];
            if (!(t > 0.0) || !isfinite(t)) {
                PyErr_Format(PyExc_ValueError, "%s: coeffs[%lld] must be finite and > 0", op, (long long)i);
                goto done;
            }
        }
        Py_BEGIN_ALLOW_THREADS st = dr_select_views_cpu(&h.t, &c.t, &o.t);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &o.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_pyarg_release(&h);
    dr_pyarg_release(&c);
    dr_pyarg_release(&o);
    return ret;
}

static PyObject *py_views_cpu_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(dr_views_cpu_isa());
}

PyMethodDef dr_views_methods[] = {
    {"crop_resize", (PyCFunction)(void (*)(void))py_crop_resize, METH_VARARGS | METH_KEYWORDS,
     "crop_resize(images, boxes, out, size, kind, filter, mean, std, image_index=None, ref_boxes=None, ref_out=None, "
     "pil_order=0, stream=0, impl='fast'): fill out [V,3,S,S] with the normalised views."},
    {"phash", (PyCFunction)(void (*)(void))py_phash, METH_VARARGS | METH_KEYWORDS,
     "phash(images, boxes, hashes, method, image_index=None, pil_order=0, stream=0, impl='fast', thumbnails=None): fill hashes [V] (uint64), and thumbnails [V, 32, 32] (uint8; imagehash on the CPU) when given."},
    {"select_views", (PyCFunction)(void (*)(void))py_select_views, METH_VARARGS | METH_KEYWORDS,
     "select_views(hashes, coeffs, out, stream=0): greedy image-prior selection into out [R, n] (int64)."},
    {"views_cpu_isa", py_views_cpu_isa, METH_NOARGS,
     "views_cpu_isa() -> 'amx' | 'avx512' | 'avx2' | 'portable': the instruction set of the views' CPU kernels."},
    {NULL, NULL, 0, NULL}};
