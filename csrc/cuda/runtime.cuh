/* runtime.cuh — helpers shared by the CUDA launchers: device guard, error reporting, launch geometry. */
#ifndef DR_RUNTIME_CUH
#define DR_RUNTIME_CUH

#include <cuda_runtime.h>

#include "dynrefer.h"

/* Make `device` current for the launcher's scope and restore the caller's device afterwards. */
struct dr_device_guard {
    int prev;
    bool changed;
    explicit dr_device_guard(int device) : prev(-1), changed(false) {
        if (cudaGetDevice(&prev) == cudaSuccess && prev != device)
            changed = cudaSetDevice(device) == cudaSuccess;
    }
    ~dr_device_guard() {
        if (changed)
            cudaSetDevice(prev);
    }
};

/* Turn a CUDA error into DR_ECUDA with the CUDA error string. */
static inline dr_status dr_cuda_check(cudaError_t err, const char *what) {
    if (err == cudaSuccess)
        return DR_OK;
    return dr_set_error(DR_ECUDA, "%s: CUDA error: %s", what, cudaGetErrorString(err));
}

/* Atomic add on the device for the shared __host__ __device__ bodies (their host twin never runs in a .cu file).
 * Launchers define DR_ATOMIC_ADD(p, v) as dr_atomic_add((p), (v)) before including an op's body header. */
template <typename T> __host__ __device__ inline void dr_atomic_add(T *p, T v) {
#ifdef __CUDA_ARCH__
    atomicAdd(p, v);
#else
    *p += v;
#endif
}

/* for (int64_t i = this thread's first index; i < n; i += the grid's thread count): the grid-stride loop every
 * per-element kernel runs its body in. */
#define DR_GRID_STRIDE(i, n)                                                                                       \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* Launch KERNEL_<sfx><<<blocks, threads, 0, stream>>>(...) for the storage type of `dtype`: the kernels an op
 * defines once per type (suffixes _f32, _f64, _f16, _bf16, as dr_instantiate.h names the bodies). */
#define DR_LAUNCH_BY_DTYPE(dtype, KERNEL, blocks, threads, stream, ...)                                              \
    switch (dtype) {                                                                                               \
    case DR_FLOAT32:                                                                                               \
        KERNEL##_f32<<<blocks, threads, 0, stream>>>(__VA_ARGS__);                                                 \
        break;                                                                                                     \
    case DR_FLOAT64:                                                                                               \
        KERNEL##_f64<<<blocks, threads, 0, stream>>>(__VA_ARGS__);                                                 \
        break;                                                                                                     \
    case DR_FLOAT16:                                                                                               \
        KERNEL##_f16<<<blocks, threads, 0, stream>>>(__VA_ARGS__);                                                 \
        break;                                                                                                     \
    default:                                                                                                       \
        KERNEL##_bf16<<<blocks, threads, 0, stream>>>(__VA_ARGS__);                                                \
        break;                                                                                                     \
    }

/* Blocks for a grid-stride loop over n elements with `threads` per block. */
static inline unsigned dr_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    const int64_t cap = (int64_t)1 << 20;
    return (unsigned)(b < 1 ? 1 : (b > cap ? cap : b));
}

#endif
