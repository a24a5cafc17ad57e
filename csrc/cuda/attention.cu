/* attention.cu — fused scaled-dot-product attention on CUDA (F.scaled_dot_product_attention semantics).
 *
 * CUDA-core kernels, float32 accumulation for float16/bfloat16 (no tensor cores yet). Each thread runs a
 * per-row body from dr_attention.h that the CPU tests also run (dr_attention_*_elementwise_cpu), so the GPU's
 * indexing and arithmetic are covered without a GPU:
 *   forward   one thread per query row: online softmax over the keys, O and LSE;
 *   backward  one thread per query row for dQ, one thread per key row for dK and dV (a gather over the
 *             queries, no atomics: deterministic, bitwise repeatable).
 * Keys and values are read through the L1/L2 caches shared by the threads of a head (blocks cover consecutive
 * rows of one head). No host synchronisation, no allocation. Complexity as the CPU kernels.
 * float16 and bfloat16 on compute capability 8.0 and later go to the tensor-core kernels (attention_tc.cu)
 * instead; float32 and float64 always run here.
 */
#include "dr_attention_tile.h"
#include "runtime.cuh"

#define DR_ATTN_KERNELS(SFX)                                                                                       \
    __global__ void attn_fwd_##SFX(dr_attn_args a, int64_t rows) {                                                 \
        DR_GRID_STRIDE(i, rows)                                                                                    \
            dr_attn_fwd_row_##SFX(&a, i);                                                                          \
    }                                                                                                              \
    __global__ void attn_dq_##SFX(dr_attn_args a, int64_t rows) {                                                  \
        DR_GRID_STRIDE(i, rows)                                                                                    \
            dr_attn_dq_row_##SFX(&a, i);                                                                           \
    }                                                                                                              \
    __global__ void attn_dkv_##SFX(dr_attn_args a, int64_t rows) {                                                 \
        DR_GRID_STRIDE(i, rows)                                                                                    \
            dr_attn_dkv_row_##SFX(&a, i);                                                                          \
    }

DR_ATTN_KERNELS(f32)
DR_ATTN_KERNELS(f64)
DR_ATTN_KERNELS(f16)
DR_ATTN_KERNELS(bf16)

static dr_status check_cuda(const dr_tensor *const *ts, int n) {
    for (int i = 0; i < n; i++) {
        if (!ts[i])
            continue;
        if (ts[i]->device != DR_CUDA)
            return dr_set_error(DR_EINVAL, "attention: CUDA launcher called with tensors not on a CUDA device");
        if (ts[i]->device_id != ts[0]->device_id)
            return dr_set_error(DR_EINVAL, "attention: tensors are on different CUDA devices");
    }
    return DR_OK;
}

/* Forward on `stream`: o and lse. */
extern "C" dr_status dr_attention_forward_cuda(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                               const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                               const dr_attention_params *p, void *stream) {
    const dr_tensor *ts[6] = {q, k, v, mask, o, lse};
    dr_attn_args a;
    dr_status st = check_cuda(ts, 6);
    if (st == DR_OK)
        st = dr_attention_make_args(q, k, v, mask, o, lse, NULL, NULL, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    const int64_t rows = a.B * a.H * a.Lq;
    if (rows == 0)
        return DR_OK;
    dr_device_guard guard(q->device_id);
    if (dr_attention_tc_supported(&a, q->device_id))
        return dr_attention_tc_forward_launch(&a, stream);
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 128;
    DR_LAUNCH_BY_DTYPE(a.dtype, attn_fwd, dr_blocks(rows, threads), threads, s, a, rows);
    return dr_cuda_check(cudaGetLastError(), "attention forward");
}

/* Backward on `stream`: dq, dk, dv (deterministic). */
extern "C" dr_status dr_attention_backward_cuda(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                                const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                                const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                                const dr_attention_params *p, void *stream) {
    const dr_tensor *ts[10] = {q, k, v, mask, o, lse, dout, dq, dk, dv};
    dr_attn_args a;
    dr_status st = check_cuda(ts, 10);
    if (st == DR_OK)
        st = dr_attention_make_args(q, k, v, mask, o, lse, dout, dq, dk, dv, p, &a);
    if (st != DR_OK)
        return st;
    dr_device_guard guard(q->device_id);
    if (dr_attention_tc_supported(&a, q->device_id))
        return dr_attention_tc_backward_launch(&a, stream);
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = 128;
    const int64_t qrows = a.B * a.H * a.Lq, krows = a.B * a.Hk * a.Lk; /* dk, dv: one thread per key/value row */
    if (qrows > 0)
        DR_LAUNCH_BY_DTYPE(a.dtype, attn_dq, dr_blocks(qrows, threads), threads, s, a, qrows);
    if (krows > 0)
        DR_LAUNCH_BY_DTYPE(a.dtype, attn_dkv, dr_blocks(krows, threads), threads, s, a, krows);
    return dr_cuda_check(cudaGetLastError(), "attention backward");
}
