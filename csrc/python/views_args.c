/* views_args.c — argument checks shared by the nested-views bindings. */
#include "views_args.h"

#include <string.h>

void dr_images_release(image_list *l) {
    for (Py_ssize_t i = 0; i < l->n; i++)
        dr_pyarg_release(&l->args[i]);
    PyMem_Free(l->args);
    PyMem_Free(l->refs);
    l->n = 0;
    l->args = NULL;
    l->refs = NULL;
}

int dr_images_from(PyObject *seq, const char *op, long long stream, image_list *l) {
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
            dr_images_release(l);
            return -1;
        }
        l->n = i + 1;
        dr_status st = dr_views_image_make(op, name, &l->args[i].t, &l->refs[i]);
        if (st != DR_OK) {
            dr_raise_status(st, dr_last_error());
            dr_images_release(l);
            return -1;
        }
        if (i > 0 && dr_same_device(&l->args[0], "images[0]", &l->args[i], name, op) < 0) {
            dr_images_release(l);
            return -1;
        }
    }
    return 0;
}

/* boxes [V,4] float32/float64 on the images' device; optional image_index [V] int64 and ref_boxes [V,4]. */
int dr_check_boxes(const char *op, const image_list *im, dr_pyarg *boxes, const char *bname, dr_pyarg *index,
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
