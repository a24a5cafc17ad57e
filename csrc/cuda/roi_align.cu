/* roi_align.cu — RoI-Align on CUDA (torchvision semantics, DESIGN §7.1). The kernels run bodies from dr_roi_align.h
 * that the CPU also runs, so the GPU's indexing and arithmetic are tested without a GPU:
 *
 * Forward (roi_fwd_tiled; CPU twin dr_roi_align_forward_tiled_cpu, impl="tiled"): one block per (RoI, channel
 * slice). Thread 0 computes the RoI's geometry, the block fills a shared-memory table with the bilinear taps of
 * every sample row (ph, iy) and column (pw, ix) — indices and weights, computed once per block instead of once per
 * output element — and then the threads compute the block's outputs from the table. NCHW input: consecutive
 * threads take consecutive bins along pw (reads along an image row, contiguous output writes). Channels-last
 * input: consecutive threads take consecutive channels (each tap read by a warp is 32 contiguous values), with at
 * least 32 channels per block. RoIs whose taps exceed the table (DR_ROI_TILE_TAPS entries) compute their taps per
 * element with the same function.
 * Backward: the forward's tiles (geometry and taps in the block's table), one thread per grad_output element with
 * atomic adds into a float32 (float64) grad_input, as torchvision's CUDA kernel adds atomically (the order of the
 * adds, hence the last bits, vary from run to run; CPU emulation: dr_roi_align_backward_tiled_cpu), or, in
 * deterministic mode (torch.use_deterministic_algorithms), one thread per (image, channel) plane adding in a
 * fixed order, bitwise equal to the CPU gather.
 * Bad batch indices: checked on the device, without a host synchronisation (DESIGN §4): such a RoI pools to zeros
 * and the first one is recorded in mapped host memory, taken by dr_roi_align_take_error_cuda.
 * No allocation per call (the record is allocated once per process), no host synchronisation. */
#include <pthread.h>
#include <string.h>

#include "runtime.cuh"
#define DR_ATOMIC_ADD(p, v) dr_atomic_add((p), (v))
#include "dr_roi_align.h"

#define DR_ROI_KERNELS(SFX, RT)                                                                                    \
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

/* The tiled kernels' block loop: blocks [blockIdx.x, nblk) in steps of gridDim.x, each the three steps of
 * dr_roi_tile_* (see dr_roi_align_body.inc): thread 0 plans the block (begin), every thread fills the shared tap
 * table when the block has one (fill), then BODY runs over the block's ne elements (it reads t, tab and ne). */
#define DR_ROI_TILE_LOOP(SFX, BODY)                                                                                \
    for (int64_t blk = blockIdx.x; blk < nblk; blk += gridDim.x) {                                                 \
        if (threadIdx.x == 0)                                                                                      \
            dr_roi_tile_begin_##SFX(&a, blk, &t);                                                                  \
        __syncthreads();                                                                                           \
        if (t.table)                                                                                               \
            for (int64_t i = threadIdx.x; i < t.ny + t.nx; i += blockDim.x)                                        \
                dr_roi_tile_fill_##SFX(&a, &t, tab, i);                                                            \
        __syncthreads();                                                                                           \
        const int64_t ne = (t.c1 - t.c0) * bins;                                                                   \
        BODY                                                                                                       \
        __syncthreads();                                                                                           \
    }

/* The tiled forward: one thread per output element of the block. TAP is the tap type of the compute type. */
#define DR_ROI_TILED_KERNEL(SFX, TAP)                                                                              \
    __global__ void __launch_bounds__(256) roi_fwd_tiled_##SFX(dr_roi_args a, int64_t nblk) {                      \
        __shared__ dr_roi_tile_##SFX t;                                                                            \
        __shared__ TAP tab[DR_ROI_TILE_TAPS];                                                                      \
        const int64_t bins = a.pooled_h * a.pooled_w;                                                              \
        DR_ROI_TILE_LOOP(SFX, for (int64_t e = threadIdx.x; e < ne; e += blockDim.x)                               \
                                  dr_roi_tile_elem_##SFX(&a, &t, tab, e);)                                         \
    }

/* The tiled backward's default (atomic) mode: the forward's steps 1 and 2, then one thread per grad_output element
 * of the block scattering with atomics. */
#define DR_ROI_SCATTER_TILED_KERNEL(SFX, TAP)                                                                      \
    __global__ void __launch_bounds__(256) roi_bwd_scatter_tiled_##SFX(dr_roi_args a, int64_t nblk) {              \
        __shared__ dr_roi_tile_##SFX t;                                                                            \
        __shared__ TAP tab[DR_ROI_TILE_TAPS];                                                                      \
        const int64_t bins = a.pooled_h * a.pooled_w;                                                              \
        DR_ROI_TILE_LOOP(SFX, if (t.table) for (int64_t e = threadIdx.x; e < ne; e += blockDim.x)                  \
                                  dr_roi_tile_scatter_as_##SFX(&a, &t, tab, e, 1);                                 \
                              else for (int64_t e = threadIdx.x; e < ne; e += blockDim.x)                          \
                                  dr_roi_tile_scatter_as_##SFX(&a, &t, tab, e, 0);)                                \
    }

DR_ROI_SCATTER_TILED_KERNEL(f32, dr_roi_tap_f)
DR_ROI_SCATTER_TILED_KERNEL(f64, dr_roi_tap_d)
DR_ROI_SCATTER_TILED_KERNEL(f16, dr_roi_tap_f)
DR_ROI_SCATTER_TILED_KERNEL(bf16, dr_roi_tap_f)

DR_ROI_TILED_KERNEL(f32, dr_roi_tap_f)
DR_ROI_TILED_KERNEL(f64, dr_roi_tap_d)
DR_ROI_TILED_KERNEL(f16, dr_roi_tap_f)
DR_ROI_TILED_KERNEL(bf16, dr_roi_tap_f)

/* ---- bad batch indices: one record per device in mapped (host-visible) pinned memory ------------------------
 * Kernels elect one reporter through the election word dr_roi_err_claim (a __device__ variable: one per device)
 * and it fills the device's record (dr_roi_report_bad_index). The host reads the record without synchronising
 * (dr_roi_align_take_error_cuda); g_gen[d] is the election word's value after the last take, passed to every
 * launch. The record block is allocated once per process, on the first launch. */
#define DR_ROI_MAX_DEVICES 64

__device__ unsigned int dr_roi_err_claim;

static pthread_mutex_t g_err_mu = PTHREAD_MUTEX_INITIALIZER;
static dr_roi_index_error *g_rec_host;                      /* DR_ROI_MAX_DEVICES records */
static dr_roi_index_error *g_rec_dev[DR_ROI_MAX_DEVICES];   /* their device addresses, per device */
static unsigned int *g_claim_dev[DR_ROI_MAX_DEVICES];       /* dr_roi_err_claim's address on each device */
static unsigned int g_gen[DR_ROI_MAX_DEVICES];

/* Point a launch on `device` (current) at its record. O(1) after the first call per device. */
static dr_status attach_error_record(int device, int op, dr_roi_args *a) {
    if (device < 0 || device >= DR_ROI_MAX_DEVICES)
        return dr_set_error(DR_EUNSUPPORTED, "roi_align: CUDA device %d is beyond the %d devices supported", device,
                            DR_ROI_MAX_DEVICES);
    dr_status st = DR_OK;
    pthread_mutex_lock(&g_err_mu);
    if (!g_rec_host) {
        void *h = NULL;
        cudaError_t e = cudaHostAlloc(&h, DR_ROI_MAX_DEVICES * sizeof(dr_roi_index_error),
                                      cudaHostAllocMapped | cudaHostAllocPortable);
        if (e == cudaSuccess) {
            memset(h, 0, DR_ROI_MAX_DEVICES * sizeof(dr_roi_index_error));
            g_rec_host = (dr_roi_index_error *)h;
        } else {
            st = dr_cuda_check(e, "roi_align: allocating the batch-index error record");
        }
    }
    if (st == DR_OK && !g_rec_dev[device]) {
        void *d = NULL, *c = NULL;
        cudaError_t e = cudaHostGetDevicePointer(&d, g_rec_host + device, 0);
        if (e == cudaSuccess)
            e = cudaGetSymbolAddress(&c, dr_roi_err_claim);
        if (e == cudaSuccess) {
            g_rec_dev[device] = (dr_roi_index_error *)d;
            g_claim_dev[device] = (unsigned int *)c;
        } else {
            st = dr_cuda_check(e, "roi_align: mapping the batch-index error record");
        }
    }
    if (st == DR_OK) {
        a->err = g_rec_dev[device];
        a->err_claim = g_claim_dev[device];
        a->err_gen = g_gen[device];
        a->err_op = op;
    }
    pthread_mutex_unlock(&g_err_mu);
    return st;
}

extern "C" int dr_roi_align_take_error_cuda(int device, int synchronize, dr_roi_index_error *out) {
    if (device < 0 || device >= DR_ROI_MAX_DEVICES)
        return 0;
    pthread_mutex_lock(&g_err_mu);
    const int used = g_rec_dev[device] != NULL;
    pthread_mutex_unlock(&g_err_mu);
    if (!used) /* no RoI-Align kernel ever ran on it */
        return 0;
    if (synchronize) {
        dr_device_guard guard(device);
        dr_status st = dr_cuda_check(cudaDeviceSynchronize(), "roi_align: synchronising to read the error record");
        if (st != DR_OK)
            return -1;
    }
    pthread_mutex_lock(&g_err_mu);
    const int r = dr_roi_take_report(g_rec_host + device, &g_gen[device], out);
    pthread_mutex_unlock(&g_err_mu);
    return r;
}

static dr_status check_cuda_tensors(const dr_tensor *a, const dr_tensor *b, const dr_tensor *c) {
    if (a->device != DR_CUDA || b->device != DR_CUDA || c->device != DR_CUDA)
        return dr_set_error(DR_EINVAL, "roi_align: CUDA launcher called with tensors not on a CUDA device");
    if (a->device_id != b->device_id || a->device_id != c->device_id)
        return dr_set_error(DR_EINVAL, "roi_align: tensors are on different CUDA devices");
    return DR_OK;
}

/* Forward on `stream`: output[k, c] = RoI-Align of input[rois[k, 0], c]. Batch indices outside [0, N) pool to
 * zeros and are recorded for dr_roi_align_take_error_cuda. O(K * C * ph * pw * samples) work, K * slices blocks. */
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
    st = attach_error_record(input->device_id, 0, &a);
    if (st != DR_OK)
        return st;
    a.tile_taps = DR_ROI_TILE_TAPS;
    a.tile_channels = dr_roi_tile_channels(a.C, a.pooled_h * a.pooled_w, a.in_s[1] == 1);
    const int64_t nblk = a.K * ((a.C + a.tile_channels - 1) / a.tile_channels);
    const unsigned grid = (unsigned)(nblk < ((int64_t)1 << 20) ? nblk : ((int64_t)1 << 20));
    cudaStream_t s = (cudaStream_t)stream;
    DR_LAUNCH_BY_DTYPE(input->dtype, roi_fwd_tiled, grid, 256, s, a, nblk);
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
    st = attach_error_record(grad_output->device_id, 1, &a);
    if (st != DR_OK)
        return st;
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 256;
    if (deterministic) {
        DR_LAUNCH_BY_DTYPE(grad_output->dtype, roi_bwd_plane, dr_blocks(planes, 128), 128, s, a, planes);
    } else {
        DR_LAUNCH_BY_DTYPE(grad_output->dtype, roi_zero, dr_blocks(nin, threads), threads, s, a, nin);
        a.tile_taps = DR_ROI_TILE_TAPS;
        a.tile_channels = dr_roi_tile_channels(a.C, a.pooled_h * a.pooled_w, a.out_s[1] == 1);
        const int64_t nblk = a.K * ((a.C + a.tile_channels - 1) / a.tile_channels);
        const unsigned grid = (unsigned)(nblk < ((int64_t)1 << 20) ? nblk : ((int64_t)1 << 20));
        if (nblk > 0)
            DR_LAUNCH_BY_DTYPE(grad_output->dtype, roi_bwd_scatter_tiled, grid, 256, s, a, nblk);
    }
    return dr_cuda_check(cudaGetLastError(), "roi_align backward");
}
