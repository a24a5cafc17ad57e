/* bind_crop_resize.c — Python binding of crop_resize. dr_crop_resize_make_args validates the arguments; this
 * function converts them, launches the kernel of the images' device and maps the status to an exception. */
#include "binding.h"

#include <string.h>

#include "dr_crop_resize.h"

/* mean / std: any sequence of 3 numbers (their values are the argument builder's to check). */
static int parse_floats3(PyObject *o, const char *op, const char *name, float out[3]) {
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
        out[k] = (float)v;
    }
    Py_DECREF(seq);
    return 0;
}

enum { A_BOXES, A_INDEX, A_REF_BOXES, A_REF_OUT, A_OUT, A_N };

/* The kernel of the images' device on validated arguments; None, or NULL with the exception. */
static PyObject *launch(const dr_image_list *im, dr_pyarg *t, const dr_crop_resize_params *p, int elementwise,
                        long long stream) {
    const dr_tensor *b = &t[A_BOXES].t, *idx = dr_opt(&t[A_INDEX]), *rb = dr_opt(&t[A_REF_BOXES]);
    dr_tensor *ro = t[A_REF_OUT].keep ? &t[A_REF_OUT].t : NULL, *out = &t[A_OUT].t;
    void *cuda_fn; /* the argument builder has put every tensor on the images' device */
    const int where = dr_run_where(im->args, 1, "dr_crop_resize_cuda", &cuda_fn);
    __typeof__(dr_crop_resize_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(im->refs, im->n, b, idx, rb, out, ro, p, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, dr_crop_resize_cpu(im->refs, im->n, b, idx, rb, out, ro, p, elementwise));
    return where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, out);
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
    p.kind = kind;
    p.filter = filter;
    p.pil_order = pil_order;
    p.size = size;
    if (parse_floats3(omean, op, "mean", p.mean) < 0 || parse_floats3(ostd, op, "std", p.std) < 0)
        return NULL;
    const dr_argspec spec[A_N] = {{ob, "boxes", 0, 0}, {oidx, "image_index", 0, 1}, {orb, "ref_boxes", 0, 1},
                                  {oro, "ref_out", 1, 1}, {oo, "out", 1, 0}};
    dr_image_list im;
    dr_pyarg t[A_N];
    if (dr_image_list_from(oim, op, stream, &im) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (dr_pyargs_from(spec, A_N, stream, t) == 0) {
        dr_status st = dr_crop_resize_make_args(im.t, im.n, &t[A_BOXES].t, dr_opt(&t[A_INDEX]), dr_opt(&t[A_REF_BOXES]),
                                                &t[A_OUT].t, dr_opt(&t[A_REF_OUT]), &p, im.refs);
        /* check_only: descriptors without data (meta tensors), validated only */
        ret = st != DR_OK ? dr_raise_args(st) : check_only ? Py_NewRef(Py_None) : launch(&im, t, &p, elementwise, stream);
        dr_pyargs_release(t, A_N);
    }
    dr_image_list_release(&im);
    return ret;
}

PyMethodDef dr_crop_resize_methods[] = {
    {"crop_resize", (PyCFunction)(void (*)(void))py_crop_resize, METH_VARARGS | METH_KEYWORDS,
     "crop_resize(images, boxes, out, size, kind, filter, mean, std, image_index=None, ref_boxes=None, ref_out=None, "
     "pil_order=0, stream=0, impl='fast', check_only=False): fill out [V,3,S,S] with the normalised views (check_only: "
     "validate the arguments, run nothing)."},
    {NULL, NULL, 0, NULL}};
