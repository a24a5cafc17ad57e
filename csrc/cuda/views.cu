/* views.cu — the nested-views kernels on CUDA, around the per-element bodies of dr_views.h that the CPU tests also
 * run (impl="elementwise"). crop_resize: one thread per output element. phash: one block per view (columns or
 * pixels per thread, then 64 coefficient threads, then the threshold). select_views: one thread per region.
 * Images reach the kernels as a by-value table of up to DR_VIEWS_MAX_IMAGES descriptors; larger batches are
 * launched in chunks of images, each launch handling the views of its chunk. No allocation, no host sync. */
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

/* The image of view v if it is in this launch's chunk, else NULL. */
__device__ static inline const dr_image_ref *view_image(const dr_image_table &tab, const dr_view_io &io, int64_t v) {
    int64_t i = io.index ? io.index[v * io.is0] : 0;
    if (i < tab.base || i >= tab.base + tab.count)
        return NULL;
    return &tab.im[i - tab.base];
}

static dr_view_io make_io(const dr_tensor *boxes, const dr_tensor *index) {
    dr_view_io io;
    io.boxes = boxes->data;
    io.boxes_dtype = boxes->dtype;
    io.bs0 = boxes->strides[0];
    io.bs1 = boxes->strides[1];
    io.index = index ? (const int64_t *)index->data : NULL;
    io.is0 = index ? index->strides[0] : 0;
    return io;
}

/* ---- crop_resize ------------------------------------------------------------------------------------- */

struct dr_crop_out {
    void *data;
    int dtype;
    int64_t s[4];
    const void *ref;
    int ref_dtype;
    int64_t rs0, rs1;
    float *ref_out;
    int64_t ros0, ros1;
};

__global__ void crop_resize_kernel(dr_image_table tab, dr_view_io io, dr_crop_out o, dr_crop_resize_params p,
                                   int64_t total) {
    const int64_t S = p.size;
    DR_GRID_STRIDE(i, total) {
        int64_t x = i % S, y = (i / S) % S, c = (i / (S * S)) % 3, v = i / (S * S * 3);
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue;
        double b[4];
        view_box(io, v, b);
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        dr_axis ax = dr_axis_make(p.kind, p.filter, cr.w, S), ay = dr_axis_make(p.kind, p.filter, cr.h, S);
        int vf = dr_pil_vertical_first(cr.w, cr.h, S, S, p.pil_order);
        float val = p.kind == DR_RS_PIL
                        ? dr_normalize_u8(dr_pil_resize_px(im, &cr, &ax, &ay, y, x, (int)c, 0, vf), p.mean[c], p.std[c])
                        : dr_normalize_f(dr_float_resize_px(im, &cr, &ax, &ay, y, x, (int)c), p.mean[c], p.std[c]);
        dr_views_store(o.data, o.dtype, v * o.s[0] + c * o.s[1] + y * o.s[2] + x * o.s[3], val);
    }
}

__global__ void ref_box_kernel(dr_image_table tab, dr_view_io io, dr_crop_out o, dr_crop_resize_params p, int64_t nv) {
    DR_GRID_STRIDE(v, nv) {
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue;
        double b[4], rb[4];
        view_box(io, v, b);
        for (int k = 0; k < 4; k++) {
            int64_t off = v * o.rs0 + k * o.rs1;
            rb[k] = dr_load_real(o.ref, o.ref_dtype, off);
        }
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        float r[4];
        dr_ref_box(&cr, rb, im->w, im->h, p.size, p.kind == DR_RS_PIL, r);
        for (int k = 0; k < 4; k++)
            o.ref_out[v * o.ros0 + k * o.ros1] = r[k];
    }
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

extern "C" dr_status dr_crop_resize_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                                         const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                                         dr_tensor *ref_out, const dr_crop_resize_params *p, void *stream) {
    dr_device_guard guard(out->device_id);
    int64_t nv = boxes->shape[0];
    if (nv == 0)
        return DR_OK;
    dr_view_io io = make_io(boxes, image_index);
    dr_crop_out o;
    o.data = out->data;
    o.dtype = out->dtype;
    for (int k = 0; k < 4; k++)
        o.s[k] = out->strides[k];
    o.ref = ref_boxes ? ref_boxes->data : NULL;
    o.ref_dtype = ref_boxes ? ref_boxes->dtype : DR_FLOAT32;
    o.rs0 = ref_boxes ? ref_boxes->strides[0] : 0;
    o.rs1 = ref_boxes ? ref_boxes->strides[1] : 0;
    o.ref_out = ref_out ? (float *)ref_out->data : NULL;
    o.ros0 = ref_out ? ref_out->strides[0] : 0;
    o.ros1 = ref_out ? ref_out->strides[1] : 0;
    cudaStream_t s = (cudaStream_t)stream;
    int64_t total = nv * 3 * p->size * p->size;
    dr_crop_resize_params pp = *p;
    return for_image_chunks(images, n_images, [&](const dr_image_table &tab) {
        crop_resize_kernel<<<dr_blocks(total, 256), 256, 0, s>>>(tab, io, o, pp, total);
        if (ref_boxes)
            ref_box_kernel<<<dr_blocks(nv, 128), 128, 0, s>>>(tab, io, o, pp, nv);
    });
}

/* ---- phash ------------------------------------------------------------------------------------------- */

#define PHASH_THREADS 256

__global__ void __launch_bounds__(PHASH_THREADS) phash_kernel(dr_image_table tab, dr_view_io io, uint64_t *hashes,
                                                              int64_t hs0, int method, int pil_order, int64_t nv) {
    __shared__ double cols[DR_PHASH_DYN_RES * 8];
    __shared__ uint8_t px[DR_PHASH_IH_RES * DR_PHASH_IH_RES];
    __shared__ double coef[64];
    for (int64_t v = blockIdx.x; v < nv; v += gridDim.x) {
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue; /* uniform across the block */
        double b[4];
        view_box(io, v, b);
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        if (method == DR_PHASH_DYNREFER) {
            for (int64_t x = threadIdx.x; x < DR_PHASH_DYN_RES; x += blockDim.x)
                dr_phash_dyn_column(im, &cr, x, cols + x * 8);
        } else {
            dr_axis ax = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, cr.w, DR_PHASH_IH_RES);
            dr_axis ay = dr_axis_make(DR_RS_PIL, DR_FILTER_LANCZOS, cr.h, DR_PHASH_IH_RES);
            int vf = dr_pil_vertical_first(cr.w, cr.h, DR_PHASH_IH_RES, DR_PHASH_IH_RES, pil_order);
            for (int k = threadIdx.x; k < DR_PHASH_IH_RES * DR_PHASH_IH_RES; k += blockDim.x)
                px[k] = dr_pil_resize_px(im, &cr, &ax, &ay, k / DR_PHASH_IH_RES, k % DR_PHASH_IH_RES, 0, 1, vf);
        }
        __syncthreads();
        if (threadIdx.x < 64)
            coef[threadIdx.x] = method == DR_PHASH_DYNREFER ? dr_phash_dyn_coef(cols, threadIdx.x / 8, threadIdx.x % 8)
                                                            : dr_imagehash_coef(px, threadIdx.x / 8, threadIdx.x % 8);
        __syncthreads();
        if (threadIdx.x == 0)
            hashes[v * hs0] = dr_phash_bits(coef, method);
        __syncthreads();
    }
}

extern "C" dr_status dr_phash_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                                   const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order,
                                   void *stream) {
    dr_device_guard guard(hashes->device_id);
    int64_t nv = boxes->shape[0];
    if (nv == 0)
        return DR_OK;
    dr_view_io io = make_io(boxes, image_index);
    cudaStream_t s = (cudaStream_t)stream;
    unsigned blocks = (unsigned)(nv < 65535 ? nv : 65535);
    return for_image_chunks(images, n_images, [&](const dr_image_table &tab) {
        phash_kernel<<<blocks, PHASH_THREADS, 0, s>>>(tab, io, (uint64_t *)hashes->data, hashes->strides[0], method, pil_order,
                                                     nv);
    });
}

/* ---- select_views ------------------------------------------------------------------------------------ */

__global__ void select_kernel(const uint64_t *h, int64_t hs0, int64_t hs1, const double *t, int64_t nc,
                              int64_t *out, int64_t os0, int64_t os1, int64_t ns, int64_t nr) {
    DR_GRID_STRIDE(r, nr) {
        const uint64_t *row = h + r * hs0;
        dr_select_region(row[0], row + hs1, hs1, t, nc, ns, out + r * os0, os1);
    }
}

extern "C" dr_status dr_select_views_cuda(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out,
                                          void *stream) {
    dr_device_guard guard(out->device_id);
    int64_t nr = hashes->shape[0];
    if (nr == 0 || out->shape[1] == 0)
        return DR_OK;
    select_kernel<<<dr_blocks(nr, 128), 128, 0, (cudaStream_t)stream>>>(
        (const uint64_t *)hashes->data, hashes->strides[0], hashes->strides[1], (const double *)coeffs->data,
        coeffs->shape[0], (int64_t *)out->data, out->strides[0], out->strides[1], out->shape[1], nr);
    return dr_cuda_check(cudaGetLastError(), "select_views");
}
