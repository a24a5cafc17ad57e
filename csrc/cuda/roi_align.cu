/* roi_align.cu — RoI-Align on CUDA. Every thread runs the per-element body from dr_roi_align.h that the CPU tests
 * also run (dr_roi_align_*_elementwise_cpu), so the GPU's indexing and arithmetic are covered without a GPU.
 * Forward: one thread per output element. Backward: one thread per grad_output element with atomic adds into a
 * float32 (float64) grad_input, or, in deterministic mode, one thread per (image, channel) plane that adds in a
 * fixed order. Complexity as the CPU kernel; no host synchronisation, no allocation. */
#include "runtime.cuh"
#define DR_ATOMIC_ADD(p, v) dr_atomic_add((p), (v))
#include "dr_roi_align.h"

#define DR_ROI_KERNELS(SFX, RT)                                                                                    \
    __global__ void roi_fwd_##SFX(dr_roi_args a, int64_t total) {                                                  \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_roi_align_fwd_elem_##SFX(&a, i);                                                                    \
    }                                                                                                              \
    __global__ void roi_bwd_scatter_##SFX(dr_roi_args a, int64_t total) {                                          \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_roi_align_bwd_scatter_elem_##SFX(&a, i);                                                            \
    }                                                                                                              \
    __global__ void roi_bwd_plane_##SFX(dr_roi_args a, int64_t total) {                                            \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_roi_align_bwd_plane_elem_##SFX(&a, i);                                                              \
    }                                                                                                              \
    __global__ void roi_zero_##SFX(dr_roi_args a, int64_t total) {                                                 \
        DR_GRID_STRIDE(i, total) {                                                                                 \
            int64_t n, c, y, x;                                                                                    \
            if (a.out_s[1] == 1) { /* channels-last: channel fastest, coalesced */                                \
                c = i % a.C, x = (i / a.C) % a.W, y = (i / (a.C * a.W)) % a.H, n = i / (a.C * a.W * a.H);          \
            } else {                                                                                               \
                x = i % a.W, y = (i / a.W) % a.H, c = (i / (a.W * a.H)) % a.C, n = i / (a.W * a.H * a.C);          \
            }                                                                                                      \
            ((RT *)a.output)[n * a.out_s[0] + c * a.out_s[1] + y * a.out_s[2] + x * a.out_s[3]] = 0;              \
        }                                                                                                          \
    }

DR_ROI_KERNELS(f32, float)
DR_ROI_KERNELS(f64, double)
DR_ROI_KERNELS(f16, float)
DR_ROI_KERNELS(bf16, float)

static dr_status check_cuda_tensors(const dr_tensor *a, const dr_tensor *b, const dr_tensor *c) {
    if (a->device != DR_CUDA || b->device != DR_CUDA || c->device != DR_CUDA)
        return dr_set_error(DR_EINVAL, "roi_align: CUDA launcher called with tensors not on a CUDA device");
    if (a->device_id != b->device_id || a->device_id != c->device_id)
        return dr_set_error(DR_EINVAL, "roi_align: tensors are on different CUDA devices");
    return DR_OK;
}

/* Forward on `stream`: output[k, c] = RoI-Align of input[rois[k, 0], c]. Batch indices outside [0, N) pool to
 * zeros here (the Python layer rejects them beforehand). */
extern "C" dr_status dr_roi_align_forward_cuda(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                               const dr_roi_align_params *p, void *stream) {
    dr_roi_args a;
    dr_status st = check_cuda_tensors(input, rois, output);
    if (st == DR_OK)
        st = dr_roi_align_make_args(input, rois, output, p, 0, &a);
    if (st != DR_OK)
        return st;
    if (output->dtype != input->dtype)
        return dr_set_error(DR_EINVAL, "roi_align: output dtype must equal input dtype");
    const int64_t total = a.K * a.C * a.pooled_h * a.pooled_w;
    if (total == 0)
        return DR_OK;
    dr_device_guard guard(input->device_id);
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 256;
    DR_LAUNCH_BY_DTYPE(input->dtype, roi_fwd, dr_blocks(total, threads), threads, s, a, total);
    return dr_cuda_check(cudaGetLastError(), "roi_align forward");
}

/* Backward on `stream`: grad_input (float32, float64 for float64 gradients) is overwritten. */
extern "C" dr_status dr_roi_align_backward_cuda(const dr_tensor *grad_output, const dr_tensor *rois,
                                                dr_tensor *grad_input, const dr_roi_align_params *p,
                                                int deterministic, void *stream) {
    dr_roi_args a;
    dr_status st = check_cuda_tensors(grad_output, rois, grad_input);
    if (st == DR_OK)
        st = dr_roi_align_make_args(grad_input, rois, grad_output, p, 1, &a);
    if (st != DR_OK)
        return st;
    dr_dtype want = grad_output->dtype == DR_FLOAT64 ? DR_FLOAT64 : DR_FLOAT32;
    if (grad_input->dtype != want)
        return dr_set_error(DR_EINVAL, "roi_align: grad_input must be %s", dr_dtype_name(want));
    const int64_t planes = a.N * a.C, nin = planes * a.H * a.W;
    if (nin == 0)
        return DR_OK;
    dr_device_guard guard(grad_output->device_id);
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 256;
    if (deterministic) {
        DR_LAUNCH_BY_DTYPE(grad_output->dtype, roi_bwd_plane, dr_blocks(planes, 128), 128, s, a, planes);
    } else {
        DR_LAUNCH_BY_DTYPE(grad_output->dtype, roi_zero, dr_blocks(nin, threads), threads, s, a, nin);
        const int64_t total = a.K * a.C * a.pooled_h * a.pooled_w;
        if (total > 0)
            DR_LAUNCH_BY_DTYPE(grad_output->dtype, roi_bwd_scatter, dr_blocks(total, threads), threads, s, a, total);
    }
    return dr_cuda_check(cudaGetLastError(), "roi_align backward");
}
