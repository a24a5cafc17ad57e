/* select_views.cu — select_views on CUDA: one thread per region runs dr_select_region (dr_select_views.h), as the
 * CPU kernel does. */
#include "dr_select_views.h"
#include "runtime.cuh"

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
