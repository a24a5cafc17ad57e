/* dcnv4.cu — DCNv4 deformable aggregation on CUDA. The kernels run bodies from dr_dcnv4.h that the CPU tests also
 * run (dr_dcnv4_forward_tiled_cpu, dr_dcnv4_*_elementwise_cpu), so the GPU's indexing and arithmetic are covered
 * without a GPU.
 * Forward (dcn_fwd_tiled): one block per run of tile_pix (pixel, group) pairs; the block first computes every tap's
 * location, bilinear corners and weights and reads its modulation weight into a shared-memory table (once per pair,
 * not once per channel as a thread per output would), then one thread per output (channel fastest: a warp reads
 * contiguous channels of each corner). Pairs whose K taps exceed the table run the per-element kernel.
 * Backward: the offset/weight gradients (sums over the group's channels) by the forward's tiles, one warp per
 * table entry with its lanes over consecutive channels and their sums added by a fixed shuffle tree
 * (dcn_bwd_om_tiled; one thread per (pixel, group, tap) where the taps do not fit the table), and for the value gradient either the forward's tiles (taps in the table) with one thread per grad_output element
 * adding with atomics (default; the order of the adds varies from run to run) or, in
 * deterministic mode, one thread per (image, channel) map adding in a fixed order. No host synchronisation, no
 * allocation. */
#include "runtime.cuh"
#define DR_ATOMIC_ADD(p, v) dr_atomic_add((p), (v))
#include "dr_dcnv4.h"

#define DR_DCN_KERNELS(SFX, RT)                                                                                    \
    __global__ void dcn_fwd_##SFX(dr_dcn_args a, int64_t total) {                                                  \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_dcnv4_fwd_elem_##SFX(&a, i);                                                                        \
    }                                                                                                              \
    __global__ void dcn_bwd_om_##SFX(dr_dcn_args a, int64_t total) {                                               \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_dcnv4_bwd_om_elem_##SFX(&a, i);                                                                     \
    }                                                                                                              \
    __global__ void dcn_bwd_scatter_##SFX(dr_dcn_args a, int64_t total) {                                          \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_dcnv4_bwd_value_scatter_elem_##SFX(&a, i);                                                          \
    }                                                                                                              \
    __global__ void dcn_bwd_plane_##SFX(dr_dcn_args a, int64_t total) {                                            \
        DR_GRID_STRIDE(i, total)                                                                                   \
            dr_dcnv4_bwd_value_plane_elem_##SFX(&a, i);                                                            \
    }                                                                                                              \
    __global__ void dcn_zero_##SFX(dr_dcn_args a, int64_t total) {                                                 \
        const int64_t C = a.G * a.D;                                                                               \
        DR_GRID_STRIDE(i, total) {                                                                                 \
            const int64_t c = i % C, x = (i / C) % a.W, y = (i / (C * a.W)) % a.H, n = i / (C * a.W * a.H);        \
            ((RT *)a.out)[n * a.out_s[0] + y * a.out_s[1] + x * a.out_s[2] + c * a.out_s[3]] = 0;                  \
        }                                                                                                          \
    }

DR_DCN_KERNELS(f32, float)
DR_DCN_KERNELS(f64, double)
DR_DCN_KERNELS(f16, float)
DR_DCN_KERNELS(bf16, float)

/* The tiled kernels' block loop: blocks [blockIdx.x, nblk) in steps of gridDim.x, each the pixels [q0, q0 + npg)
 * whose taps every thread of the block fills into the shared table (dr_dcn_tile_fill, see dr_dcnv4_body.inc),
 * then BODY (which reads tab, q0 and npg). */
#define DR_DCN_TILE_LOOP(SFX, BODY)                                                                                \
    for (int64_t blk = blockIdx.x; blk < nblk; blk += gridDim.x) {                                                 \
        const int64_t q0 = blk * a.tile_pix;                                                                       \
        const int64_t npg = pairs - q0 < a.tile_pix ? pairs - q0 : a.tile_pix;                                     \
        for (int64_t i = threadIdx.x; i < npg * a.K; i += blockDim.x)                                              \
            dr_dcn_tile_fill_##SFX(&a, q0, tab, i);                                                                \
        __syncthreads();                                                                                           \
        BODY                                                                                                       \
        __syncthreads();                                                                                           \
    }

/* The tiled forward: one thread per output element of the block. TAP is the tap type of the compute type. */
#define DR_DCN_TILED_KERNEL(SFX, TAP)                                                                              \
    __global__ void __launch_bounds__(256) dcn_fwd_tiled_##SFX(dr_dcn_args a, int64_t pairs, int64_t nblk) {       \
        __shared__ TAP tab[DR_DCN_TILE_TAPS];                                                                      \
        DR_DCN_TILE_LOOP(SFX, for (int64_t e = threadIdx.x; e < npg * a.D; e += blockDim.x)                        \
                                  dr_dcn_tile_elem_##SFX(&a, q0, tab, e);)                                         \
    }

/* The tiled value scatter of the backward's default mode: the forward's table, then one thread per grad_output
 * element adding into its taps' corners with atomics. */
#define DR_DCN_SCATTER_TILED_KERNEL(SFX, TAP)                                                                      \
    __global__ void __launch_bounds__(256) dcn_bwd_scatter_tiled_##SFX(dr_dcn_args a, int64_t pairs, int64_t nblk) { \
        __shared__ TAP tab[DR_DCN_TILE_TAPS];                                                                      \
        DR_DCN_TILE_LOOP(SFX, for (int64_t e = threadIdx.x; e < npg * a.D; e += blockDim.x)                        \
                                  dr_dcn_tile_scatter_##SFX(&a, q0, tab, e);)                                      \
    }

DR_DCN_SCATTER_TILED_KERNEL(f32, dr_dcn_tap_f)
DR_DCN_SCATTER_TILED_KERNEL(f64, dr_dcn_tap_d)
DR_DCN_SCATTER_TILED_KERNEL(f16, dr_dcn_tap_f)
DR_DCN_SCATTER_TILED_KERNEL(bf16, dr_dcn_tap_f)

/* The tiled offset/weight gradients: the forward's table, then warp w of the block takes entries w, w + warps, ...
 * (the loop is uniform across a warp, so every lane is in each shuffle); lane l sums channels l, l + 32, ...
 * (dr_dcn_tile_om_lane) and the shuffle tree adds lane l + s into lane l for s = 16, ..., 1, the order the CPU
 * emulation runs (dcn_bwd_om_tiled_task). RT is the compute type. */
#define DR_DCN_OM_TILED_KERNEL(SFX, TAP, RT)                                                                       \
    __global__ void __launch_bounds__(256) dcn_bwd_om_tiled_##SFX(dr_dcn_args a, int64_t pairs, int64_t nblk) {    \
        __shared__ TAP tab[DR_DCN_TILE_TAPS];                                                                      \
        const int lane = (int)(threadIdx.x % DR_DCN_WARP);                                                         \
        const int64_t warp = threadIdx.x / DR_DCN_WARP, nwarp = blockDim.x / DR_DCN_WARP;                          \
        DR_DCN_TILE_LOOP(SFX, for (int64_t t = warp; t < npg * a.K; t += nwarp) {                                  \
            RT s[3];                                                                                               \
            dr_dcn_tile_om_lane_##SFX(&a, q0, tab, t, lane, s);                                                    \
            _Pragma("unroll") for (int off = DR_DCN_WARP / 2; off > 0; off >>= 1) {                                \
                s[0] += __shfl_down_sync(0xffffffffu, s[0], off);                                                  \
                s[1] += __shfl_down_sync(0xffffffffu, s[1], off);                                                  \
                s[2] += __shfl_down_sync(0xffffffffu, s[2], off);                                                  \
            }                                                                                                      \
            if (lane == 0)                                                                                         \
                dr_dcn_tile_om_store_##SFX(&a, q0, tab, t, s);                                                     \
        })                                                                                                         \
    }

DR_DCN_OM_TILED_KERNEL(f32, dr_dcn_tap_f, float)
DR_DCN_OM_TILED_KERNEL(f64, dr_dcn_tap_d, double)
DR_DCN_OM_TILED_KERNEL(f16, dr_dcn_tap_f, float)
DR_DCN_OM_TILED_KERNEL(bf16, dr_dcn_tap_f, float)

DR_DCN_TILED_KERNEL(f32, dr_dcn_tap_f)
DR_DCN_TILED_KERNEL(f64, dr_dcn_tap_d)
DR_DCN_TILED_KERNEL(f16, dr_dcn_tap_f)
DR_DCN_TILED_KERNEL(bf16, dr_dcn_tap_f)

static dr_status dcn_check_cuda(const dr_tensor *value) {
    if (value->device != DR_CUDA)
        return dr_set_error(DR_EINVAL, "dcnv4: CUDA launcher called with tensors not on a CUDA device");
    return DR_OK;
}

/* Forward on `stream`: output [N,Ho,Wo,G*D] in value's dtype. */
extern "C" dr_status dr_dcnv4_forward_cuda(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                                           const dr_dcnv4_params *p, void *stream) {
    dr_dcn_args a;
    dr_status st = dcn_check_cuda(value);
    if (st == DR_OK)
        st = dr_dcnv4_make_args(value, offset_mask, output, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    const int64_t total = a.N * a.Ho * a.Wo * a.G * a.D;
    if (total == 0)
        return DR_OK;
    dr_device_guard guard(value->device_id);
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 256;
    a.tile_pix = dr_dcn_tile_pix(&a);
    if (a.tile_pix > 0) {
        const int64_t pairs = a.N * a.Ho * a.Wo * a.G, nblk = (pairs + a.tile_pix - 1) / a.tile_pix;
        const unsigned grid = (unsigned)(nblk < ((int64_t)1 << 20) ? nblk : ((int64_t)1 << 20));
        DR_LAUNCH_BY_DTYPE(value->dtype, dcn_fwd_tiled, grid, threads, s, a, pairs, nblk);
    } else {
        DR_LAUNCH_BY_DTYPE(value->dtype, dcn_fwd, dr_blocks(total, threads), threads, s, a, total);
    }
    return dr_cuda_check(cudaGetLastError(), "dcnv4 forward");
}

/* Backward on `stream`: grad_value and grad_offset_mask (float32; float64 for float64 data) overwritten. */
extern "C" dr_status dr_dcnv4_backward_cuda(const dr_tensor *value, const dr_tensor *offset_mask,
                                            const dr_tensor *grad_output, dr_tensor *grad_value,
                                            dr_tensor *grad_offset_mask, const dr_dcnv4_params *p, int deterministic,
                                            void *stream) {
    dr_dcn_args a;
    dr_status st = dcn_check_cuda(value);
    if (st == DR_OK)
        st = dr_dcnv4_make_args(value, offset_mask, grad_value, grad_output, grad_offset_mask, p, &a);
    if (st != DR_OK)
        return st;
    if (a.N == 0)
        return DR_OK;
    dr_device_guard guard(value->device_id);
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 256;
    const int64_t taps = a.N * a.Ho * a.Wo * a.G * a.K, pairs = a.N * a.Ho * a.Wo * a.G;
    a.tile_pix = dr_dcn_tile_pix(&a);
    if (a.tile_pix > 0 && pairs > 0) {
        const int64_t nblk = (pairs + a.tile_pix - 1) / a.tile_pix;
        const unsigned grid = (unsigned)(nblk < ((int64_t)1 << 20) ? nblk : ((int64_t)1 << 20));
        DR_LAUNCH_BY_DTYPE(value->dtype, dcn_bwd_om_tiled, grid, threads, s, a, pairs, nblk);
    } else if (taps > 0) {
        DR_LAUNCH_BY_DTYPE(value->dtype, dcn_bwd_om, dr_blocks(taps, 128), 128, s, a, taps);
    }
    if (deterministic) {
        const int64_t planes = a.N * a.G * a.D;
        DR_LAUNCH_BY_DTYPE(value->dtype, dcn_bwd_plane, dr_blocks(planes, 128), 128, s, a, planes);
    } else {
        const int64_t nin = a.N * a.H * a.W * a.G * a.D, nout = a.N * a.Ho * a.Wo * a.G * a.D;
        if (nin > 0)
            DR_LAUNCH_BY_DTYPE(value->dtype, dcn_zero, dr_blocks(nin, threads), threads, s, a, nin);
        if (a.tile_pix > 0 && pairs > 0) {
            const int64_t nblk = (pairs + a.tile_pix - 1) / a.tile_pix;
            const unsigned grid = (unsigned)(nblk < ((int64_t)1 << 20) ? nblk : ((int64_t)1 << 20));
            DR_LAUNCH_BY_DTYPE(value->dtype, dcn_bwd_scatter_tiled, grid, threads, s, a, pairs, nblk);
        } else if (nout > 0) {
            DR_LAUNCH_BY_DTYPE(value->dtype, dcn_bwd_scatter, dr_blocks(nout, threads), threads, s, a, nout);
        }
    }
    return dr_cuda_check(cudaGetLastError(), "dcnv4 backward");
}
