/* bind_phash.c — Python binding of phash. dr_phash_make_args validates the arguments; this function converts them,
 * launches the kernel of the images' device and maps the status to an exception. */
#include "binding.h"

#include <string.h>

#include "dr_phash.h"

enum { A_BOXES, A_INDEX, A_HASHES, A_THUMBS, A_N };

/* The kernel of the images' device on validated arguments; None, or NULL with the exception. */
static PyObject *launch(const dr_image_list *im, dr_pyarg *t, const dr_phash_params *p, int elementwise,
                        long long stream) {
    const dr_tensor *b = &t[A_BOXES].t, *idx = dr_opt(&t[A_INDEX]);
    dr_tensor *h = &t[A_HASHES].t, *th = t[A_THUMBS].keep ? &t[A_THUMBS].t : NULL;
    void *cuda_fn; /* the argument builder has put every tensor on the images' device */
    const int where = dr_run_where(im->args, 1, "dr_phash_cuda", &cuda_fn);
    __typeof__(dr_phash_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(im->refs, im->n, b, idx, h, p, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, dr_phash_cpu(im->refs, im->n, b, idx, h, p, elementwise, th));
    return where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, h);
}

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
    int elementwise = dr_parse_impl(impl);
    if (elementwise < 0)
        return NULL;
    const dr_phash_params p = {method, pil_order, hash_size, highfreq};
    const dr_argspec spec[A_N] = {{ob, "boxes", 0, 0}, {oidx, "image_index", 0, 1}, {oh, "hashes", 1, 0},
                                  {othumb, "thumbnails", 1, 1}};
    dr_image_list im;
    dr_pyarg t[A_N];
    if (dr_image_list_from(oim, op, stream, &im) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (dr_pyargs_from(spec, A_N, stream, t) == 0) {
        dr_status st = dr_phash_make_args(im.t, im.n, &t[A_BOXES].t, dr_opt(&t[A_INDEX]), &t[A_HASHES].t,
                                          dr_opt(&t[A_THUMBS]), &p, im.refs);
        /* check_only: descriptors without data (meta tensors), validated only */
        ret = st != DR_OK ? dr_raise_args(st) : check_only ? Py_NewRef(Py_None) : launch(&im, t, &p, elementwise, stream);
        dr_pyargs_release(t, A_N);
    }
    dr_image_list_release(&im);
    return ret;
}

PyMethodDef dr_phash_methods[] = {
    {"phash", (PyCFunction)(void (*)(void))py_phash, METH_VARARGS | METH_KEYWORDS,
     "phash(images, boxes, hashes, method, image_index=None, pil_order=0, stream=0, impl='fast', thumbnails=None, check_only=False, hash_size=8, highfreq_factor=4): fill hashes [V] (uint64; [V, W] words for hashes "
     "wider than 64 bits), and thumbnails [V, R, R] (uint8, R = hash_size * highfreq_factor; imagehash on the CPU) when given."},
    {NULL, NULL, 0, NULL}};
