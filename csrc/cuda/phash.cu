/* phash.cu — phash on CUDA, around the per-view bodies of dr_phash.h that the CPU tests also run
 * (impl="elementwise"): one block per view. The official hash: both axes' taps once per view, columns per
 * thread, then 64 coefficient threads, then the mean threshold. imagehash's (every hash_size and highfreq_factor
 * with a resize side R <= DR_PHASH_IH_GPU_RES): the R × R LANCZOS pixels by dr_ih_tile's steps (both axes' taps
 * once per view, Pillow's first pass once per source line and output, in chunks, all in the DCT buffer; views whose
 * taps do not fit it: the per-pixel body, one pixel per thread), scipy's DCT of one column per thread, then of one
 * of the K kept rows per thread (dr_dct_radix.inc: scipy's own arithmetic, the plan's twiddles computed on the host
 * with the C library's cos and sin, as on the CPU), the median by rank, one hash word per thread. This file is
 * compiled with --fmad=false (setup.py): a fused multiply-add would change the DCT's bits. No allocation, no host
 * sync. */
#include "dr_phash.h"
#include "views.cuh"

#define PHASH_THREADS 256

/* One block per SM named: with the bound on threads alone ptxas kept 128 registers and spilled 40 bytes. */
__global__ void __launch_bounds__(PHASH_THREADS, 1) phash_dyn_kernel(dr_image_table tab, dr_view_io io,
                                                                     uint64_t *hashes, int64_t hs0, int64_t nv) {
    __shared__ double cols[DR_PHASH_DYN_RES * 8];
    __shared__ double coef[64];
    __shared__ double cs[8 * DR_PHASH_DYN_RES]; /* the DCT's cosines, once per block: no cos call in the loops */
    __shared__ dr_phash_dyn_tap taps[2 * DR_PHASH_DYN_RES]; /* the current view's x then y taps */
    for (int64_t k = threadIdx.x; k < 8 * DR_PHASH_DYN_RES; k += blockDim.x)
        dr_phash_dyn_cos(cs, k);
    __syncthreads();
    for (int64_t v = blockIdx.x; v < nv; v += gridDim.x) {
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue; /* uniform across the block */
        dr_crop cr = view_crop(io, v, im);
        for (int64_t e = threadIdx.x; e < 2 * DR_PHASH_DYN_RES; e += blockDim.x)
            dr_phash_dyn_taps(&cr, taps, e);
        __syncthreads();
        for (int64_t x = threadIdx.x; x < DR_PHASH_DYN_RES; x += blockDim.x)
            dr_phash_dyn_column(im, &cr, taps, x, cs, cols + x * 8);
        __syncthreads();
        if (threadIdx.x < 64)
            coef[threadIdx.x] = dr_phash_dyn_coef(cols, cs, threadIdx.x / 8, threadIdx.x % 8);
        __syncthreads();
        if (threadIdx.x == 0)
            hashes[v * hs0] = dr_phash_bits(coef);
        __syncthreads();
    }
}

/* The DCT plan of the resize side, by value (the twiddles of any R <= DR_PHASH_IH_GPU_RES fit: at most 5R). */
struct ih_plan {
    dr_dct_plan p;
    double tw[5 * DR_PHASH_IH_GPU_RES];
};

/* Two blocks per SM (at most 128 registers a thread): with the bound on threads alone ptxas kept 80 registers (three
 * blocks a SM) and spilled 450 to 900 bytes. */
__global__ void __launch_bounds__(PHASH_THREADS, 2) phash_ih_kernel(dr_image_table tab, dr_view_io io, uint64_t *hashes,
                                                                    int64_t hs0, int64_t hs1, ih_plan plan, int64_t K,
                                                                    int pil_order, int64_t nv) {
    __shared__ uint8_t px[DR_PHASH_IH_GPU_RES * DR_PHASH_IH_GPU_RES];
    __shared__ double T[DR_PHASH_IH_GPU_RES * DR_PHASH_IH_GPU_RES]; /* K rows of stride R; before: the pixels' scratch */
    __shared__ ih_plan sp;
    __shared__ double mid[2];
    __shared__ dr_ih_tile t; /* the current view's */
    if (threadIdx.x == 0)
        sp = plan;
    __syncthreads();
    const int64_t R = sp.p.n, L = K * K, W = (L + 63) / 64;
    for (int64_t v = blockIdx.x; v < nv; v += gridDim.x) {
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue; /* uniform across the block */
        dr_crop cr = view_crop(io, v, im);
        if (threadIdx.x == 0)
            dr_ih_tile_begin(&cr, R, pil_order, &t); /* read from shared memory: fewer registers */
        __syncthreads();
        if (t.table) {
            for (int64_t e = threadIdx.x; e < 2 * R + R * R; e += blockDim.x)
                dr_ih_tile_taps(&t, T, e);
            __syncthreads();
            for (int64_t c0 = 0; c0 < t.lines; c0 += t.chunk) {
                const int64_t np = dr_ih_tile_pass_count(&t, c0);
                for (int64_t e = threadIdx.x; e < np; e += blockDim.x)
                    dr_ih_tile_pass(im, &cr, &t, T, c0, e);
                __syncthreads();
                for (int64_t k = threadIdx.x; k < R * R; k += blockDim.x)
                    dr_ih_tile_acc(&t, T, c0, k);
                __syncthreads();
            }
            for (int64_t k = threadIdx.x; k < R * R; k += blockDim.x)
                px[k] = dr_ih_tile_px(&t, T, k);
        } else {
            for (int64_t k = threadIdx.x; k < R * R; k += blockDim.x)
                px[k] = dr_pil_resize_px(im, &cr, &t.ax, &t.ay, k / R, k % R, 0, 1, t.vf);
        }
        __syncthreads();
        for (int64_t j = threadIdx.x; j < R; j += blockDim.x)
            dr_ih_dct_column(px, R, K, j, &sp.p, sp.tw, T);
        __syncthreads();
        for (int64_t u = threadIdx.x; u < K; u += blockDim.x)
            dr_ih_dct_row(T, R, K, u, &sp.p, sp.tw);
        __syncthreads();
        for (int64_t i = threadIdx.x; i < L; i += blockDim.x)
            dr_ih_median_rank(T, R, K, i, mid);
        __syncthreads();
        const double med = dr_ih_median(mid, K);
        for (int64_t w = threadIdx.x; w < W; w += blockDim.x)
            hashes[v * hs0 + w * hs1] = dr_ih_word(T, R, K, med, w);
        __syncthreads();
    }
}

extern "C" dr_status dr_phash_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                                   const dr_tensor *image_index, dr_tensor *hashes, const dr_phash_params *p,
                                   void *stream) {
    const int64_t K = p->hash_size, R = p->hash_size * p->highfreq_factor;
    ih_plan plan;
    if (p->method == DR_PHASH_IMAGEHASH) {
        if (R > DR_PHASH_IH_GPU_RES || dr_dct_plan_init(&plan.p, R) > 5 * DR_PHASH_IH_GPU_RES)
            return dr_set_error(DR_EUNSUPPORTED, "phash: CUDA hashes with hash_size * highfreq_factor <= %d, got "
                                "%lld * %lld (use CPU images for larger sizes)", DR_PHASH_IH_GPU_RES, (long long)K,
                                (long long)p->highfreq_factor);
        dr_dct_plan_twiddles(&plan.p, plan.tw);
    }
    const int method = p->method, pil_order = p->pil_order;
    dr_device_guard guard(hashes->device_id);
    int64_t nv = boxes->shape[0];
    if (nv == 0)
        return DR_OK;
    dr_view_io io = make_io(boxes, image_index);
    cudaStream_t s = (cudaStream_t)stream;
    unsigned blocks = (unsigned)(nv < 65535 ? nv : 65535);
    uint64_t *h = (uint64_t *)hashes->data;
    const int64_t hs0 = hashes->strides[0], hs1 = hashes->ndim > 1 ? hashes->strides[1] : 0;
    return for_image_chunks(images, n_images, [&](const dr_image_table &tab) {
        if (method == DR_PHASH_DYNREFER)
            phash_dyn_kernel<<<blocks, PHASH_THREADS, 0, s>>>(tab, io, h, hs0, nv);
        else
            phash_ih_kernel<<<blocks, PHASH_THREADS, 0, s>>>(tab, io, h, hs0, hs1, plan, K, pil_order, nv);
    });
}
