/* dr_roi_align.h — RoI-Align per-element bodies shared by the CPU and CUDA launchers.
 *
 * dr_roi_align_fwd_elem_<sfx>(a, i) computes output element i (logical order k, c, ph, pw) exactly as the CUDA
 * kernel's thread i does; the backward bodies scatter one grad_output element (atomic on CUDA) or gather a
 * whole (n, c) plane in a fixed order (deterministic mode). The CPU runs these same bodies over every index in
 * dr_roi_align_*_elementwise_cpu, so CPU tests cover the GPU's indexing and arithmetic.
 */
#ifndef DR_ROI_ALIGN_H
#define DR_ROI_ALIGN_H

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
} dr_roi_args;

#ifndef DR_ATOMIC_ADD
#define DR_ATOMIC_ADD(ptr, v) (*(ptr) += (v))
#endif

#define DR_INSTANTIATE "dr_roi_align_body.inc"
#include "dr_instantiate.h"

/* Check RoI-Align descriptors and fill dr_roi_args (host code, shared by the CPU and CUDA launchers).
 * data: input (forward) or grad_output (backward); out: output (forward) or grad_input (backward).
 * Shapes: data/out as [N,C,H,W] and [K,C,ph,pw] (swapped for backward); rois [K,5]. O(1). */
static inline dr_status dr_roi_align_make_args(const dr_tensor *feat, const dr_tensor *rois, const dr_tensor *pooled,
                                               const dr_roi_align_params *p, int backward, dr_roi_args *a) {
    if (feat->ndim != 4 || pooled->ndim != 4 || rois->ndim != 2)
        return dr_set_error(DR_EINVAL, "roi_align: expected 4-D feature and pooled tensors and 2-D rois");
    if (rois->shape[1] != 5)
        return dr_set_error(DR_EINVAL, "roi_align: rois must have shape [K, 5], got [%lld, %lld]",
                            (long long)rois->shape[0], (long long)rois->shape[1]);
    if (p->pooled_h <= 0 || p->pooled_w <= 0)
        return dr_set_error(DR_EINVAL, "roi_align: output_size must be positive, got (%lld, %lld)",
                            (long long)p->pooled_h, (long long)p->pooled_w);
    if (!(p->spatial_scale - p->spatial_scale == 0))
        return dr_set_error(DR_EINVAL, "roi_align: spatial_scale must be finite");
    if (pooled->shape[0] != rois->shape[0] || pooled->shape[1] != feat->shape[1] || pooled->shape[2] != p->pooled_h ||
        pooled->shape[3] != p->pooled_w)
        return dr_set_error(DR_EINVAL, "roi_align: pooled tensor has shape [%lld, %lld, %lld, %lld], expected [%lld, "
                                       "%lld, %lld, %lld]",
                            (long long)pooled->shape[0], (long long)pooled->shape[1], (long long)pooled->shape[2],
                            (long long)pooled->shape[3], (long long)rois->shape[0], (long long)feat->shape[1],
                            (long long)p->pooled_h, (long long)p->pooled_w);
    if (rois->dtype != DR_FLOAT32 && rois->dtype != DR_FLOAT64 && rois->dtype != DR_FLOAT16 &&
        rois->dtype != DR_BFLOAT16)
        return dr_set_error(DR_EINVAL, "roi_align: rois must be a floating-point tensor, got %s",
                            dr_dtype_name(rois->dtype));
    if (feat->device != rois->device || feat->device != pooled->device)
        return dr_set_error(DR_EINVAL, "roi_align: all tensors must be on the same device");
    if (dr_numel(feat) < 0 || dr_numel(pooled) < 0)
        return dr_set_error(DR_EINVAL, "roi_align: tensor size overflows int64");
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
