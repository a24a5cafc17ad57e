/* views_args.h — the argument checks the nested-views bindings (bind_crop_resize.c, bind_phash.c) share: the list
 * of images and the view boxes. */
#ifndef DR_PY_VIEWS_ARGS_H
#define DR_PY_VIEWS_ARGS_H

#include "binding.h"
#include "dr_views.h"

/* A list of images converted to descriptors. */
typedef struct {
    Py_ssize_t n;
    dr_pyarg *args;
    dr_image_ref *refs;
} image_list;

/* images: a list or tuple of H x W x C (C >= 3) uint8 tensors on one device; -1 with an exception otherwise. */
int dr_images_from(PyObject *seq, const char *op, long long stream, image_list *l);
void dr_images_release(image_list *l);
/* boxes [V,4] float32/float64 on the images' device; optional image_index [V] int64 and ref_boxes [V,4]. */
int dr_check_boxes(const char *op, const image_list *im, dr_pyarg *boxes, const char *bname, dr_pyarg *index,
                   int has_index);

#endif
