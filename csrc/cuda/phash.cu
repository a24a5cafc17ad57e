/* phash.cu — phash on CUDA, around the per-view bodies of dr_phash.h that the CPU tests also run
 * (impl="elementwise"): one block per view (columns or pixels per thread, then 64 coefficient threads, then the
 * threshold). No allocation, no host sync. */
#include "dr_phash.h"
#include "views.cuh"

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
                                   const dr_tensor *image_index, dr_tensor *hashes, const dr_phash_params *p,
                                   void *stream) {
    if (p->method == DR_PHASH_IMAGEHASH && (p->hash_size != 8 || p->highfreq_factor != 4))
        return dr_set_error(DR_EUNSUPPORTED, "phash: CUDA hashes with hash_size=8, highfreq_factor=4 only, got %lld, "
                            "%lld (use CPU images for other sizes)", (long long)p->hash_size,
                            (long long)p->highfreq_factor);
    const int method = p->method, pil_order = p->pil_order;
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
