/* dynrefer.h — the C API of the dynrefer kernels.
 *
 * Kernels take tensor descriptors (dr_tensor) for inputs and for outputs the caller has allocated, plus scalar
 * parameters, and return a dr_status. On failure a thread-local message (dr_last_error) says what went wrong.
 * Nothing in this API includes Python, allocates outputs, prints or aborts.
 */
#ifndef DYNREFER_H
#define DYNREFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------------------------------------ */

typedef enum {
    DR_OK = 0,
    DR_EINVAL = 1,       /* bad argument (shape, value, device) */
    DR_ENOMEM = 2,       /* allocation failed */
    DR_ECUDA = 3,        /* CUDA runtime / launch failure */
    DR_EUNSUPPORTED = 4, /* a valid request this build cannot serve (dtype/device combination) */
    DR_ETYPE = 5         /* an argument of the wrong dtype (TypeError in Python) */
} dr_status;

/* Set the thread-local error message (printf-style) and return `st`. */
dr_status dr_set_error(dr_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The message of the last failing call on this thread ("" if none). */
const char *dr_last_error(void);
void dr_clear_error(void);

/* ---- tensors ----------------------------------------------------------------------------------------- */

typedef enum {
    DR_FLOAT32 = 0,
    DR_FLOAT64 = 1,
    DR_FLOAT16 = 2,
    DR_BFLOAT16 = 3,
    DR_UINT8 = 4,
    DR_INT32 = 5,
    DR_INT64 = 6,
    DR_UINT64 = 7,
    DR_BOOL = 8,
    DR_NUM_DTYPES
} dr_dtype;

typedef enum { DR_CPU = 0, DR_CUDA = 1 } dr_device;

#define DR_MAX_DIMS 8

/* A strided view of memory. Strides are in elements (not bytes), may be zero or negative. */
typedef struct {
    void *data;
    dr_dtype dtype;
    dr_device device;
    int device_id;
    int ndim;
    int64_t shape[DR_MAX_DIMS];
    int64_t strides[DR_MAX_DIMS];
} dr_tensor;

size_t dr_dtype_size(dr_dtype dt);
const char *dr_dtype_name(dr_dtype dt);
/* Number of elements; -1 if the product overflows int64. */
int64_t dr_numel(const dr_tensor *t);
/* 1 if the tensor is C-contiguous (dims of size 1 ignored). */
int dr_is_contiguous(const dr_tensor *t);
/* Checked products for sizes: return 0 on overflow. */
int dr_mul_overflow(int64_t a, int64_t b, int64_t *out);

/* Hint that a large CPU output about to be written for the first time should use huge pages (no effect on
 * results). */
void dr_hint_output_memory(const dr_tensor *t);

/* ---- threads ----------------------------------------------------------------------------------------- */

/* Body of a parallel loop: processes tasks [begin, end). */
typedef void (*dr_task_fn)(void *ctx, int64_t begin, int64_t end);

/* Run fn over [0, n) in chunks of at least `grain` tasks on the library's pool. Each task index is processed
 * exactly once; which thread runs it is unspecified, so results must not depend on it. Runs inline when the pool
 * is busy (another caller, nested call) or has one thread. Fork-safe: a forked child starts a fresh pool. */
void dr_parallel_for(int64_t n, int64_t grain, dr_task_fn fn, void *ctx);
void dr_set_num_threads(int n);
int dr_get_num_threads(void);

/* ---- RoI-Align (torchvision semantics) --------------------------------------------------------------- */

typedef struct {
    double spatial_scale;
    int64_t pooled_h, pooled_w;
    int64_t sampling_ratio; /* <= 0: adaptive ceil(roi / pooled) */
    int aligned;
} dr_roi_align_params;

/* input [N,C,H,W] (any strides), rois [K,5] (any float dtype), output [K,C,ph,pw] (any strides). */
dr_status dr_roi_align_forward_cpu(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                   const dr_roi_align_params *p);
/* grad_output [K,C,ph,pw], rois [K,5] → grad_input [N,C,H,W] (overwritten; deterministic). */
dr_status dr_roi_align_backward_cpu(const dr_tensor *grad_output, const dr_tensor *rois, dr_tensor *grad_input,
                                    const dr_roi_align_params *p);
/* The per-element bodies the CUDA kernels run, looped over every index on the CPU (for tests). */
dr_status dr_roi_align_forward_elementwise_cpu(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                               const dr_roi_align_params *p);
dr_status dr_roi_align_backward_elementwise_cpu(const dr_tensor *grad_output, const dr_tensor *rois,
                                                dr_tensor *grad_input, const dr_roi_align_params *p,
                                                int deterministic);

/* A batch index outside [0, N) found by a kernel, kept until the host takes it (DESIGN §4, "Errors found on the
 * device"). Kernels fill it without a host synchronisation: the RoI pools to zeros (its gradient to nothing) and
 * the first such RoI since the last take is recorded here. */
typedef struct {
    uint32_t set;  /* 1 once a kernel has filled the record, 0 when nothing is pending */
    int32_t op;    /* 0: forward, 1: backward */
    int64_t roi;   /* k of the offending rois[k, 0] */
    double value;  /* rois[k, 0] as the kernel read it */
    int64_t n;     /* the batch size N of that call */
} dr_roi_index_error;

/* The tiled forward (the CUDA kernel's block schedule: one block per RoI and channel slice, geometry and taps in
 * the block's table) run block by block on the CPU, for tests. Batch indices are not checked beforehand: a bad one
 * pools to zeros and is recorded for dr_roi_align_take_error_cpu, as on a GPU. tile_taps < 0: the GPU's table
 * size; smaller values force the path for RoIs whose taps do not fit. */
dr_status dr_roi_align_forward_tiled_cpu(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                         const dr_roi_align_params *p, int64_t tile_taps);
/* The CUDA backward's default (atomic) mode, tiled like the forward, its blocks run in order on the CPU (tests);
 * bad batch indices recorded as by the forward. */
dr_status dr_roi_align_backward_tiled_cpu(const dr_tensor *grad_output, const dr_tensor *rois, dr_tensor *grad_input,
                                          const dr_roi_align_params *p, int64_t tile_taps);
/* 1 and *out filled when a tiled CPU call recorded a bad batch index since the last take (the record is then
 * cleared), else 0. */
int dr_roi_align_take_error_cpu(dr_roi_index_error *out);

/* ---- CUDA launchers (csrc/cuda; only in builds with CUDA) ------------------------------------------- */

int dr_cuda_device_count(void);
/* 1 and *out filled when a RoI-Align kernel on `device` recorded a bad batch index since the last take (the record
 * is cleared), 0 when none is pending, -1 on a CUDA error (message set). With `synchronize` the device is
 * synchronised first, so every kernel launched before the call has reported; without, no synchronisation. */
int dr_roi_align_take_error_cuda(int device, int synchronize, dr_roi_index_error *out);
dr_status dr_roi_align_forward_cuda(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                    const dr_roi_align_params *p, void *stream);
dr_status dr_roi_align_backward_cuda(const dr_tensor *grad_output, const dr_tensor *rois, dr_tensor *grad_input,
                                     const dr_roi_align_params *p, int deterministic, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* DYNREFER_H */
