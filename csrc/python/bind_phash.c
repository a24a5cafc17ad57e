/* bind_phash.c — Python binding of phash. */
#include "binding.h"

#include <string.h>

#include "dr_phash.h"
#include "views_args.h"

static PyObject *py_phash(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"images", "boxes", "hashes", "method", "image_index", "pil_order", "stream", "impl",
                             "thumbnails", "check_only", "hash_size", "highfreq_factor", NULL};
    PyObject *oim, *ob, *oh, *ometh, *oidx = Py_None, *othumb = Py_None, *oorder = NULL, *ohs = NULL, *ohf = NULL;
    long long hash_size = 8, highfreq = 4;
    long long method, pil_order = DR_PIL_ORDER_ADAPTIVE, stream = 0;
    const char *impl = "fast";
    int check_only = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OOLsOpOO:phash", kwlist, &oim, &ob, &oh, &ometh, &oidx, &oorder,
                                     &stream, &impl, &othumb, &check_only, &ohs, &ohf))
        return NULL;
    const char *op = "phash";
    if (dr_int_arg(ometh, op, "method", &method) < 0 || (oorder && dr_int_arg(oorder, op, "pil_order", &pil_order) < 0) ||
        (ohs && dr_int_arg(ohs, op, "hash_size", &hash_size) < 0) ||
        (ohf && dr_int_arg(ohf, op, "highfreq_factor", &highfreq) < 0))
        return NULL;
    if (pil_order != DR_PIL_ORDER_ADAPTIVE && pil_order != DR_PIL_ORDER_HORIZONTAL) {
        PyErr_Format(PyExc_ValueError, "phash: unknown pil_order %lld", pil_order);
        return NULL;
    }
    int elementwise = dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    if (method != DR_PHASH_DYNREFER && method != DR_PHASH_IMAGEHASH) {
        PyErr_Format(PyExc_ValueError, "%s: unknown method %lld", op, method);
        return NULL;
    }
    if (method == DR_PHASH_DYNREFER && (hash_size != 8 || highfreq != 4)) {
        PyErr_Format(PyExc_ValueError, "%s: the official (dynrefer) hash is 8 x 8: hash_size and highfreq_factor are "
                     "imagehash's (method='imagehash')", op);
        return NULL;
    }
    if (hash_size < 2) {
        PyErr_Format(PyExc_ValueError, "%s: hash_size must be >= 2 (imagehash: Hash size must be greater than or equal "
                     "to 2), got %lld", op, hash_size);
        return NULL;
    }
    if (highfreq < 1) {
        PyErr_Format(PyExc_ValueError, "%s: highfreq_factor must be >= 1 (the resize side hash_size * highfreq_factor "
                     "must be > 0; Pillow: height and width must be > 0), got %lld", op, highfreq);
        return NULL;
    }
    if (hash_size > DR_PHASH_IH_MAX_RES || highfreq > DR_PHASH_IH_MAX_RES / hash_size) {
        PyErr_Format(PyExc_ValueError, "%s: hash_size * highfreq_factor (the resize side) must be at most %d, got %lld * "
                     "%lld", op, DR_PHASH_IH_MAX_RES, hash_size, highfreq);
        return NULL;
    }
    const int64_t res = hash_size * highfreq, words = (hash_size * hash_size + 63) / 64;
    image_list im;
    dr_pyarg b, idx, h, th;
    memset(&b, 0, sizeof b);
    memset(&idx, 0, sizeof idx);
    memset(&h, 0, sizeof h);
    memset(&th, 0, sizeof th);
    PyObject *ret = NULL;
    if (dr_images_from(oim, op, stream, &im) < 0)
        return NULL;
    int has_idx = oidx != Py_None, has_th = othumb != Py_None;
    if (dr_pyarg_from(ob, "boxes", 0, stream, &b) < 0 || (has_idx && dr_pyarg_from(oidx, "image_index", 0, stream, &idx) < 0) ||
        dr_pyarg_from(oh, "hashes", 1, stream, &h) < 0)
        goto done;
    if (dr_check_boxes(op, &im, &b, "boxes", &idx, has_idx) < 0)
        goto done;
    if (dr_expect_ndim(&h, op, "hashes", words == 1 ? 1 : 2) < 0 || dr_expect_dtype(&h, op, "hashes", DR_UINT64) < 0 ||
        dr_same_device(&im.args[0], "images", &h, "hashes", op) < 0)
        goto done;
    if (h.t.shape[0] != b.t.shape[0] || (words > 1 && h.t.shape[1] != words)) {
        PyErr_Format(PyExc_ValueError, "%s: hashes must have shape [%lld] (or [%lld, %lld] uint64 words for hashes "
                     "wider than 64 bits), got %d-D with %lld entries", op, (long long)b.t.shape[0],
                     (long long)b.t.shape[0], (long long)words, h.t.ndim, (long long)h.t.shape[0]);
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
        if (th.t.shape[0] != b.t.shape[0] || th.t.shape[1] != res || th.t.shape[2] != res ||
            !dr_is_contiguous(&th.t)) {
            PyErr_Format(PyExc_ValueError, "%s: thumbnails must be a contiguous [%lld, %lld, %lld] array", op,
                         (long long)b.t.shape[0], (long long)res, (long long)res);
            goto done;
        }
    }
    dr_phash_params pp = {(int)method, (int)pil_order, hash_size, highfreq};
    dr_status st;
    if (check_only) { /* descriptors without data (meta tensors): the checks above only */
        ret = Py_NewRef(Py_None);
        goto done;
    }
    if (im.args[0].t.device == DR_CUDA) {
        __typeof__(dr_phash_cuda) *fn = dr_cuda_fn("dr_phash_cuda");
        if (!fn)
            goto done;
        Py_BEGIN_ALLOW_THREADS st = fn(im.refs, im.n, &b.t, has_idx ? &idx.t : NULL, &h.t, &pp, (void *)(intptr_t)stream);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS st = dr_phash_cpu(im.refs, im.n, &b.t, has_idx ? &idx.t : NULL, &h.t, &pp, elementwise, has_th ? &th.t : NULL);
        Py_END_ALLOW_THREADS
    }
    if (st != DR_OK) {
        dr_raise_kernel(st, &h.t);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    dr_images_release(&im);
    dr_pyarg_release(&b);
    dr_pyarg_release(&idx);
    dr_pyarg_release(&th);
    dr_pyarg_release(&h);
    return ret;
}

PyMethodDef dr_phash_methods[] = {
    {"phash", (PyCFunction)(void (*)(void))py_phash, METH_VARARGS | METH_KEYWORDS,
     "phash(images, boxes, hashes, method, image_index=None, pil_order=0, stream=0, impl='fast', thumbnails=None, check_only=False, hash_size=8, highfreq_factor=4): fill hashes [V] (uint64; [V, W] words for hashes "
     "wider than 64 bits), and thumbnails [V, R, R] (uint8, R = hash_size * highfreq_factor; imagehash on the CPU) when given."},
    {NULL, NULL, 0, NULL}};
