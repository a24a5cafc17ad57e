/* dr_roi_align.h — RoI-Align per-element bodies shared by the CPU and CUDA launchers.
 *
 * dr_roi_align_fwd_elem_<sfx>(a, i) computes output element i (logical order k, c, ph, pw) exactly as the CUDA
 * kernel's thread i does; the backward bodies scatter one grad_output element (atomic on CUDA) or gather a
 * whole (n, c) plane in a fixed order (deterministic mode). The CPU runs these same bodies over every index in
 * dr_roi_align_*_elementwise_cpu, so CPU tests cover the GPU's indexing and arithmetic.
 */
#ifndef DR_ROI_ALIGN_H
#define DR_ROI_ALIGN_H

#include "dr_check.h"
#include "dr_math.h"
#include "dynrefer.h"

/* Everything a RoI-Align kernel needs, by value (it is a CUDA kernel argument). Strides are in elements. */
typedef struct {
    const void *input; /* [N, C, H, W], storage dtype of the kernel instance */
    int64_t N, C, H, W;
    int64_t in_s[4];
    const void *rois; /* [K, 5] of rois_dtype */
    int rois_dtype;
    int64_t K;
    int64_t roi_s[2];
    void *output; /* forward: [K, C, ph, pw] storage dtype; backward: grad_input [N,C,H,W] of the real type */
    int64_t out_s[4];
    const void *grad; /* backward: grad_output [K, C, ph, pw] storage dtype */
    int64_t grad_s[4];
    int64_t pooled_h, pooled_w, sampling_ratio;
    int aligned;
    double spatial_scale;
    /* bad batch indices (DESIGN §4): the record a kernel fills (mapped host memory on CUDA), the election word
     * (device memory on CUDA) and the value this launch may move it from; err NULL: nothing is recorded */
    dr_roi_index_error *err;
    unsigned int *err_claim;
    unsigned int err_gen;
    int err_op;
    /* tiled forward: taps the block's table holds, channels per block */
    int64_t tile_taps, tile_channels;
} dr_roi_args;

#ifndef DR_ATOMIC_ADD
#define DR_ATOMIC_ADD(ptr, v) (*(ptr) += (v))
#endif

/* Taps (per-axis bilinear sample entries) a tiled forward block keeps in its table: 16 KiB of shared memory for
 * float compute, 24 KiB for double. */
#define DR_ROI_TILE_TAPS 1024
/* Output elements a tiled forward block aims at (4 per thread of a 256-thread block). */
#define DR_ROI_TILE_ELEMS 1024

/* Compare-and-swap on a 32-bit word: returns the old value (atomicCAS on the device, a sequentially consistent
 * builtin on the host). */
DR_HD static inline unsigned int dr_roi_cas(unsigned int *p, unsigned int expect, unsigned int want) {
#ifdef __CUDA_ARCH__
    return atomicCAS(p, expect, want);
#else
    __atomic_compare_exchange_n(p, &expect, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expect;
#endif
}

/* Record that RoI k names image b, which is not in [0, N): the first thread to move the election word from
 * err_gen to err_gen + 1 fills the record and then sets its flag (after a system-wide fence on the device, so a
 * host that sees the flag sees the fields); every later report until the host takes the record is dropped. */
DR_HD static inline void dr_roi_report_bad_index(const dr_roi_args *a, int64_t k, double b) {
    if (!a->err || !a->err_claim || dr_roi_cas(a->err_claim, a->err_gen, a->err_gen + 1u) != a->err_gen)
        return;
    a->err->op = a->err_op;
    a->err->roi = k;
    a->err->value = b;
    a->err->n = a->N;
#ifdef __CUDA_ARCH__
    __threadfence_system();
    *(volatile uint32_t *)&a->err->set = 1u;
#else
    __atomic_store_n(&a->err->set, 1u, __ATOMIC_RELEASE);
#endif
}

/* Host side of the record: 1 and *out filled when a report is pending, which is then cleared and *gen advanced to
 * the election word's new value (so later launches, given *gen, can report again); 0 otherwise. The caller
 * serialises takes and launches. O(1). */
static inline int dr_roi_take_report(dr_roi_index_error *rec, unsigned int *gen, dr_roi_index_error *out) {
    if (!__atomic_load_n(&rec->set, __ATOMIC_ACQUIRE))
        return 0;
    *out = *rec;
    out->set = 1u;
    __atomic_store_n(&rec->set, 0u, __ATOMIC_RELEASE);
    *gen += 1u;
    return 1;
}

/* Channels per block of the tiled forward: enough for about DR_ROI_TILE_ELEMS outputs, and at least 32 when the
 * channels are contiguous (channels-last), so a warp reads 32 neighbouring values per tap. O(1). */
static inline int64_t dr_roi_tile_channels(int64_t C, int64_t bins, int channels_last) {
    int64_t cs = (DR_ROI_TILE_ELEMS + bins - 1) / bins;
    if (channels_last && cs < 32)
        cs = 32;
    if (cs > C)
        cs = C;
    return cs < 1 ? 1 : cs;
}

#define DR_INSTANTIATE "dr_roi_align_body.inc"
#include "dr_instantiate.h"

/* Check RoI-Align descriptors and fill dr_roi_args (host code, shared by the CPU and CUDA launchers): this is
 * where RoI-Align's arguments are validated. Forward: feat is input [N,C,H,W], pooled is output [K,C,ph,pw] of
 * input's dtype. Backward: feat is grad_input [N,C,H,W] of the accumulation type (float64 for float64
 * gradients, else float32), pooled is grad_output [K,C,ph,pw]. rois [K,5] of any float dtype. Batch indices are
 * data and are checked by the launchers. O(1). */
static inline dr_status dr_roi_align_make_args(const dr_tensor *feat, const dr_tensor *rois, const dr_tensor *pooled,
                                               const dr_roi_align_params *p, int backward, dr_roi_args *a) {
    const char *op = backward ? "roi_align_backward" : "roi_align";
    const char *fname = backward ? "grad_input" : "input", *pname = backward ? "grad_output" : "output";
    dr_status st = dr_check_float(op, fname, feat);
    if (st == DR_OK)
        st = dr_check_float(op, "rois", rois);
    if (st == DR_OK)
        st = dr_check_float(op, pname, pooled);
    if (st == DR_OK)
        st = dr_check_ndim(op, fname, feat, 4);
    if (st == DR_OK)
        st = dr_check_ndim(op, "rois", rois, 2);
    if (st == DR_OK)
        st = dr_check_ndim(op, pname, pooled, 4);
    if (st == DR_OK)
        st = dr_check_same_device(op, fname, feat, "rois", rois);
    if (st == DR_OK)
        st = dr_check_same_device(op, fname, feat, pname, pooled);
    if (st != DR_OK)
        return st;
    if (rois->shape[1] != 5)
        return dr_set_error(DR_EINVAL, "%s: rois must have shape [K, 5], got [%lld, %lld]", op,
                            (long long)rois->shape[0], (long long)rois->shape[1]);
    if (!(p->spatial_scale - p->spatial_scale == 0))
        return dr_set_error(DR_EINVAL, "%s: spatial_scale must be finite, got %s", op,
                            dr_nonfinite_name(p->spatial_scale));
    if (p->pooled_h <= 0 || p->pooled_w <= 0)
        return dr_set_error(DR_EINVAL, "%s: output_size must be positive, got (%lld, %lld)", op,
                            (long long)p->pooled_h, (long long)p->pooled_w);
    /* sampling_ratio^2 points are read per bin: beyond 2^16 a call would run for days, not return a result */
    if (p->sampling_ratio > ((int64_t)1 << 16))
        return dr_set_error(DR_EINVAL, "%s: sampling_ratio must be at most 65536 (sampling_ratio^2 samples per bin), "
                            "got %lld", op, (long long)p->sampling_ratio);
    const int64_t *fs = feat->shape, *ps = pooled->shape;
    if (ps[0] != rois->shape[0] || ps[1] != fs[1] || ps[2] != p->pooled_h || ps[3] != p->pooled_w)
        return dr_set_error(DR_EINVAL, "%s: %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                            op, pname, (long long)ps[0], (long long)ps[1], (long long)ps[2], (long long)ps[3],
                            (long long)rois->shape[0], (long long)fs[1], (long long)p->pooled_h,
                            (long long)p->pooled_w);
    if (!backward && pooled->dtype != feat->dtype)
        return dr_set_error(DR_ETYPE, "roi_align: output must have the input's dtype %s, got %s",
                            dr_dtype_name(feat->dtype), dr_dtype_name(pooled->dtype));
    if (backward && feat->dtype != dr_accum_dtype(pooled->dtype))
        return dr_set_error(DR_ETYPE, "roi_align_backward: grad_input must be %s for %s gradients, got %s",
                            dr_dtype_name(dr_accum_dtype(pooled->dtype)), dr_dtype_name(pooled->dtype),
                            dr_dtype_name(feat->dtype));
    if (dr_numel(feat) < 0 || dr_numel(pooled) < 0)
        return dr_set_error(DR_EINVAL, "%s: tensor size overflows int64", op);
    memset(a, 0, sizeof *a);
    a->N = feat->shape[0];
    a->C = feat->shape[1];
    a->H = feat->shape[2];
    a->W = feat->shape[3];
    a->K = rois->shape[0];
    a->rois = rois->data;
    a->rois_dtype = rois->dtype;
    a->roi_s[0] = rois->strides[0];
    a->roi_s[1] = rois->strides[1];
    a->pooled_h = p->pooled_h;
    a->pooled_w = p->pooled_w;
    a->sampling_ratio = p->sampling_ratio;
    a->aligned = p->aligned;
    a->spatial_scale = p->spatial_scale;
    for (int i = 0; i < 4; i++) {
        if (backward) {
            a->grad_s[i] = pooled->strides[i];
            a->out_s[i] = feat->strides[i];
        } else {
            a->in_s[i] = feat->strides[i];
            a->out_s[i] = pooled->strides[i];
        }
    }
    if (backward) {
        a->grad = pooled->data;
        a->output = feat->data;
    } else {
        a->input = feat->data;
        a->output = pooled->data;
    }
    return DR_OK;
}

#endif /* DR_ROI_ALIGN_H */
