/* views.cuh — what the nested-views CUDA kernels (crop_resize.cu, phash.cu) share: images reach the kernels as a
 * by-value table of up to DR_VIEWS_MAX_IMAGES descriptors; larger batches are launched in chunks of images, each
 * launch handling the views of its chunk. */
#ifndef DR_VIEWS_CUH
#define DR_VIEWS_CUH

#include "dr_views.h"
#include "runtime.cuh"

struct dr_image_table {
    dr_image_ref im[DR_VIEWS_MAX_IMAGES];
    int64_t base, count;
};

struct dr_view_io {
    const void *boxes;
    int boxes_dtype;
    int64_t bs0, bs1;
    const int64_t *index; /* NULL: all views on image 0 */
    int64_t is0;
};

__device__ static inline void view_box(const dr_view_io &io, int64_t v, double b[4]) {
    for (int k = 0; k < 4; k++) {
        int64_t off = v * io.bs0 + k * io.bs1;
        b[k] = dr_load_real(io.boxes, io.boxes_dtype, off);
    }
}

/* The crop of view v's box on its image im. */
__device__ static inline dr_crop view_crop(const dr_view_io &io, int64_t v, const dr_image_ref *im) {
    double b[4];
    view_box(io, v, b);
    return dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
}

/* The image of view v if it is in this launch's chunk, else NULL. */
__device__ static inline const dr_image_ref *view_image(const dr_image_table &tab, const dr_view_io &io, int64_t v) {
    int64_t i = io.index ? io.index[v * io.is0] : 0;
    if (i < tab.base || i >= tab.base + tab.count)
        return NULL;
    return &tab.im[i - tab.base];
}

static inline dr_view_io make_io(const dr_tensor *boxes, const dr_tensor *index) {
    dr_view_io io;
    io.boxes = boxes->data;
    io.boxes_dtype = boxes->dtype;
    io.bs0 = boxes->strides[0];
    io.bs1 = boxes->strides[1];
    io.index = index ? (const int64_t *)index->data : NULL;
    io.is0 = index ? index->strides[0] : 0;
    return io;
}

/* Run `launch(table)` once per chunk of DR_VIEWS_MAX_IMAGES images. */
template <typename F> static dr_status for_image_chunks(const dr_image_ref *images, int64_t n_images, F launch) {
    for (int64_t base = 0; base < n_images; base += DR_VIEWS_MAX_IMAGES) {
        dr_image_table tab;
        tab.base = base;
        tab.count = n_images - base < DR_VIEWS_MAX_IMAGES ? n_images - base : DR_VIEWS_MAX_IMAGES;
        for (int64_t k = 0; k < tab.count; k++)
            tab.im[k] = images[base + k];
        launch(tab);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess)
            return dr_cuda_check(err, "views kernel launch");
    }
    return DR_OK;
}

#endif
