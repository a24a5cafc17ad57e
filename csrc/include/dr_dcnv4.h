/* dr_dcnv4.h — DCNv4 deformable aggregation: the C API, the kernel arguments and the per-element bodies shared
 * by the CPU and CUDA launchers (docs/DESIGN.md §7.5).
 *
 * Layout (DCNv4's): value [N, H, W, G*D] (channels last), offset_mask [N, Ho, Wo, P] where group g owns
 * [g*3K, g*3K + 2K) = K pairs (dx, dy) and [g*3K + 2K, g*3K + 3K) = K modulation weights, K = kh*kw (minus the
 * centre with remove_center) and P >= 3*G*K (DCNv4 pads it to a multiple of 8; the padding is ignored and gets a
 * zero gradient). Taps run kernel-x outer, kernel-y inner. For output (ho, wo) and tap (i, j):
 *   w = (hw - pad_w + wo*stride_w) - hw*offset_scale + (i*dil_w + dx)*offset_scale,  hw = (dil_w*(kw-1)) >> 1
 * (likewise h with j, dy); a sample counts only if -1 < h < H and -1 < w < W; bilinear with floor and zero-valued
 * corners off the map; out[n, ho, wo, g*D + c] = sum_k m_k * bilinear(value[n, :, :, g*D + c], h_k, w_k).
 * Arithmetic in float32 for float32/float16/bfloat16 storage, in float64 for float64.
 */
#ifndef DR_DCNV4_H
#define DR_DCNV4_H

#include "dr_check.h"
#include "dr_math.h"
#include "dynrefer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t group, group_channels;
    double offset_scale;
    int remove_center;
} dr_dcnv4_params;

/* Output spatial size: (H + 2*pad - (dil*(k-1) + 1)) / stride + 1 (may be <= 0: invalid). */
static inline int64_t dr_dcnv4_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
    const int64_t span = in + 2 * pad - (dil * (k - 1) + 1);
    return span < 0 ? 0 : span / stride + 1;
}

/* value [N,H,W,G*D], offset_mask [N,Ho,Wo,P] → output [N,Ho,Wo,G*D] (same dtype as value). Any strides. */
dr_status dr_dcnv4_forward_cpu(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                               const dr_dcnv4_params *p);
/* Gradients of the forward for grad_output [N,Ho,Wo,G*D]: grad_value [N,H,W,G*D] and grad_offset_mask
 * [N,Ho,Wo,P], both float32 (float64 for float64 data), overwritten. Deterministic (a gather by image and group,
 * fixed summation order, no atomics). */
dr_status dr_dcnv4_backward_cpu(const dr_tensor *value, const dr_tensor *offset_mask, const dr_tensor *grad_output,
                                dr_tensor *grad_value, dr_tensor *grad_offset_mask, const dr_dcnv4_params *p);
/* The CUDA kernels' per-element bodies run on the CPU for every index (tests). */
dr_status dr_dcnv4_forward_elementwise_cpu(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                                           const dr_dcnv4_params *p);
/* The tiled CUDA forward's block schedule (one block per run of (pixel, group) pairs, their taps in the block's
 * table), block by block on the CPU (tests). */
dr_status dr_dcnv4_forward_tiled_cpu(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                                     const dr_dcnv4_params *p);
/* The CUDA backward's default (atomic) mode with the tiled value scatter (taps from the block's table), its blocks
 * run in order on the CPU, and the tiled offset/weight gradients (a warp's lanes over channels, their sums added
 * in the shuffle tree's order) (tests). */
dr_status dr_dcnv4_backward_tiled_cpu(const dr_tensor *value, const dr_tensor *offset_mask,
                                      const dr_tensor *grad_output, dr_tensor *grad_value,
                                      dr_tensor *grad_offset_mask, const dr_dcnv4_params *p);
dr_status dr_dcnv4_backward_elementwise_cpu(const dr_tensor *value, const dr_tensor *offset_mask,
                                            const dr_tensor *grad_output, dr_tensor *grad_value,
                                            dr_tensor *grad_offset_mask, const dr_dcnv4_params *p,
                                            int deterministic);
/* CUDA launchers (csrc/cuda/dcnv4.cu; only in builds with CUDA), on `stream`. */
dr_status dr_dcnv4_forward_cuda(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                                const dr_dcnv4_params *p, void *stream);
dr_status dr_dcnv4_backward_cuda(const dr_tensor *value, const dr_tensor *offset_mask, const dr_tensor *grad_output,
                                 dr_tensor *grad_value, dr_tensor *grad_offset_mask, const dr_dcnv4_params *p,
                                 int deterministic, void *stream);

#ifdef __cplusplus
}
#endif

/* Everything a DCNv4 kernel needs, by value (a CUDA kernel argument). Strides in elements, dims in the order
 * [N, H, W, C] / [N, Ho, Wo, P]. */
typedef struct {
    const void *value;
    int64_t N, H, W, G, D;
    int64_t v_s[4];
    const void *om;
    int64_t Ho, Wo, P;
    int64_t om_s[4];
    void *out; /* forward: output [N,Ho,Wo,C] (storage type); backward: grad_value [N,H,W,C] (compute type) */
    int64_t out_s[4];
    const void *grad; /* backward: grad_output [N,Ho,Wo,C] (storage type) */
    int64_t grad_s[4];
    void *grad_om; /* backward: grad_offset_mask [N,Ho,Wo,P] (compute type) */
    int64_t gom_s[4];
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t K; /* taps per group */
    int remove_center;
    double offset_scale;
    int64_t tile_pix; /* tiled forward: (pixel, group) pairs per block (dr_dcn_tile_pix) */
} dr_dcn_args;

/* Tiled forward (dcnv4.cu's dcn_fwd_tiled): sampling entries a block keeps in its table and the outputs it aims
 * at (4 per thread of a 256-thread block). */
#define DR_DCN_TILE_TAPS 1024
#define DR_DCN_TILE_ELEMS 1024

/* (pixel, group) pairs per block of the tiled forward: about DR_DCN_TILE_ELEMS outputs, at most
 * DR_DCN_TILE_TAPS taps; 0 when one pair's K taps do not fit the table or the map needs 64-bit coordinates (the
 * per-element kernel runs then). O(1). */
static inline int64_t dr_dcn_tile_pix(const dr_dcn_args *a) {
    if (a->K > DR_DCN_TILE_TAPS || a->H > INT32_MAX || a->W > INT32_MAX || a->D <= 0)
        return 0;
    int64_t pb = DR_DCN_TILE_ELEMS / a->D;
    if (pb < 1)
        pb = 1;
    if (pb * a->K > DR_DCN_TILE_TAPS)
        pb = DR_DCN_TILE_TAPS / (a->K > 0 ? a->K : 1);
    return pb < 1 ? 1 : pb;
}

/* Kernel coordinates (i along x, j along y) of tap k: x outer, y inner, the centre skipped with remove_center. */
DR_HD static inline void dr_dcn_tap_ij(const dr_dcn_args *a, int64_t k, int64_t *i, int64_t *j) {
    if (a->remove_center && k >= (a->kw / 2) * a->kh + a->kh / 2)
        k++;
    *i = k / a->kh;
    *j = k % a->kh;
}

#ifndef DR_ATOMIC_ADD
#define DR_ATOMIC_ADD(ptr, v) (*(ptr) += (v))
#endif

/* Sampling geometry in float (float32/float16/bfloat16 data) and in double (float64 data). */
#define DR_RT float
#define DR_RS(name) name##_f
#include "dr_dcnv4_math.inc"
#undef DR_RT
#undef DR_RS
#define DR_RT double
#define DR_RS(name) name##_d
#include "dr_dcnv4_math.inc"
#undef DR_RT
#undef DR_RS

#define DR_INSTANTIATE "dr_dcnv4_body.inc"
#include "dr_instantiate.h"

/* Check DCNv4's parameters (each named in the message). O(1). */
static inline dr_status dr_dcnv4_check_params(const dr_dcnv4_params *p) {
    static const char *const names[10] = {"kernel_h", "kernel_w", "stride_h", "stride_w",   "pad_h",
                                          "pad_w",    "dilation_h", "dilation_w", "group", "group_channels"};
    const int64_t v[10] = {p->kernel_h,   p->kernel_w,   p->stride_h, p->stride_w, p->pad_h,
                           p->pad_w,      p->dilation_h, p->dilation_w, p->group, p->group_channels};
    for (int i = 0; i < 10; i++) {
        const int64_t lo = (i == 4 || i == 5) ? 0 : 1;
        const int64_t hi = (i == 0 || i == 1) ? 1024 : (i == 6 || i == 7) ? ((int64_t)1 << 20) : ((int64_t)1 << 30);
        if (v[i] < lo || v[i] > hi)
            return dr_set_error(DR_EINVAL, "dcnv4: %s must be in [%lld, %lld], got %lld", names[i], (long long)lo,
                                (long long)hi, (long long)v[i]);
    }
    if (!(p->offset_scale - p->offset_scale == 0))
        return dr_set_error(DR_EINVAL, "dcnv4: offset_scale must be finite, got %s", dr_nonfinite_name(p->offset_scale));
    if (p->kernel_h * p->kernel_w - (p->remove_center ? 1 : 0) < 1)
        return dr_set_error(DR_EINVAL, "dcnv4: remove_center with a 1x1 kernel leaves no taps");
    return DR_OK;
}

/* Check DCNv4 descriptors and parameters and fill dr_dcn_args (host code shared by the CPU and CUDA launchers):
 * this is where DCNv4's arguments are validated. For the backward, `out` is grad_value, `grad` grad_output and
 * `gom` grad_offset_mask; for the forward `out` is the output and grad/gom are NULL. O(1). */
static inline dr_status dr_dcnv4_make_args(const dr_tensor *value, const dr_tensor *om, const dr_tensor *out,
                                           const dr_tensor *grad, const dr_tensor *gom, const dr_dcnv4_params *p,
                                           dr_dcn_args *a) {
    const char *op = "dcnv4";
    const dr_tensor *o_like = grad ? grad : out; /* [N, Ho, Wo, C] */
    const char *oname = grad ? "grad_output" : "output";
    dr_status st = dr_dcnv4_check_params(p);
    if (st == DR_OK)
        st = dr_check_float(op, "value", value);
    if (st == DR_OK)
        st = dr_check_float(op, "offset_mask", om);
    if (st == DR_OK)
        st = dr_check_float(op, oname, o_like);
    if (st == DR_OK)
        st = dr_check_ndim(op, "value", value, 4);
    if (st == DR_OK)
        st = dr_check_ndim(op, "offset_mask", om, 4);
    if (st == DR_OK)
        st = dr_check_ndim(op, oname, o_like, 4);
    if (st == DR_OK)
        st = dr_check_same_device(op, "value", value, "offset_mask", om);
    if (st == DR_OK)
        st = dr_check_same_device(op, "value", value, oname, o_like);
    if (st == DR_OK && grad)
        st = dr_check_same_device(op, "value", value, "grad_value", out);
    if (st == DR_OK && grad)
        st = dr_check_same_device(op, "value", value, "grad_offset_mask", gom);
    if (st != DR_OK)
        return st;
    if (om->dtype != value->dtype)
        return dr_set_error(DR_ETYPE, "dcnv4: offset_mask must have value's dtype %s, got %s",
                            dr_dtype_name(value->dtype), dr_dtype_name(om->dtype));
    if (o_like->dtype != value->dtype)
        return dr_set_error(DR_ETYPE, "dcnv4: %s must have value's dtype %s, got %s", oname,
                            dr_dtype_name(value->dtype), dr_dtype_name(o_like->dtype));
    const int64_t K = p->kernel_h * p->kernel_w - (p->remove_center ? 1 : 0);
    const int64_t N = value->shape[0], H = value->shape[1], W = value->shape[2], C = value->shape[3];
    const int64_t gd = p->group * p->group_channels; /* both <= 2^30 (checked above) */
    if (gd != C)
        return dr_set_error(DR_EINVAL, "dcnv4: value has %lld channels but group * group_channels = %lld * %lld = %lld",
                            (long long)C, (long long)p->group, (long long)p->group_channels, (long long)gd);
    const int64_t Ho = dr_dcnv4_out_size(H, p->kernel_h, p->stride_h, p->pad_h, p->dilation_h);
    const int64_t Wo = dr_dcnv4_out_size(W, p->kernel_w, p->stride_w, p->pad_w, p->dilation_w);
    if (Ho < 1 || Wo < 1)
        return dr_set_error(DR_EINVAL,
                            "dcnv4: the %lldx%lld kernel (dilation %lldx%lld) does not fit the %lldx%lld value padded "
                            "by %lldx%lld",
                            (long long)p->kernel_h, (long long)p->kernel_w, (long long)p->dilation_h,
                            (long long)p->dilation_w, (long long)H, (long long)W, (long long)p->pad_h,
                            (long long)p->pad_w);
    char got[160];
    if (om->shape[0] != N || om->shape[1] != Ho || om->shape[2] != Wo || om->shape[3] < 3 * p->group * K) {
        dr_shape_str(om, got, sizeof got);
        return dr_set_error(DR_EINVAL,
                            "dcnv4: offset_mask must have shape [%lld, %lld, %lld, P] with P >= 3 * group * K = %lld "
                            "(K = %lld taps), got %s",
                            (long long)N, (long long)Ho, (long long)Wo, (long long)(3 * p->group * K), (long long)K,
                            got);
    }
    if (o_like->shape[0] != N || o_like->shape[1] != Ho || o_like->shape[2] != Wo || o_like->shape[3] != C) {
        dr_shape_str(o_like, got, sizeof got);
        return dr_set_error(DR_EINVAL, "dcnv4: %s must have shape [%lld, %lld, %lld, %lld], got %s", oname, (long long)N,
                            (long long)Ho, (long long)Wo, (long long)C, got);
    }
    if (grad) {
        const dr_dtype want = dr_accum_dtype(value->dtype);
        if (out->dtype != want || gom->dtype != want)
            return dr_set_error(DR_ETYPE,
                                "dcnv4_backward: grad_value and grad_offset_mask must be %s for %s data, got %s and %s",
                                dr_dtype_name(want), dr_dtype_name(value->dtype), dr_dtype_name(out->dtype),
                                dr_dtype_name(gom->dtype));
        st = dr_check_ndim("dcnv4_backward", "grad_value", out, 4);
        if (st == DR_OK)
            st = dr_check_ndim("dcnv4_backward", "grad_offset_mask", gom, 4);
        if (st != DR_OK)
            return st;
        for (int d = 0; d < 4; d++)
            if (out->shape[d] != value->shape[d] || gom->shape[d] != om->shape[d])
                return dr_set_error(DR_EINVAL, "dcnv4_backward: grad_value and grad_offset_mask must have the shapes "
                                               "of value and offset_mask");
    }
    const dr_tensor *all[5] = {value, om, out, grad, gom};
    for (int i = 0; i < 5; i++)
        if (all[i] && dr_numel(all[i]) < 0)
            return dr_set_error(DR_EINVAL, "dcnv4: tensor size overflows int64");
    memset(a, 0, sizeof *a);
    a->value = value->data;
    a->N = N, a->H = H, a->W = W, a->G = p->group, a->D = p->group_channels;
    a->om = om->data;
    a->Ho = Ho, a->Wo = Wo, a->P = om->shape[3];
    a->out = out->data;
    for (int d = 0; d < 4; d++) {
        a->v_s[d] = value->strides[d];
        a->om_s[d] = om->strides[d];
        a->out_s[d] = out->strides[d];
        if (grad) {
            a->grad_s[d] = grad->strides[d];
            a->gom_s[d] = gom->strides[d];
        }
    }
    if (grad) {
        a->grad = grad->data;
        a->grad_om = gom->data;
    }
    a->kh = p->kernel_h, a->kw = p->kernel_w, a->sh = p->stride_h, a->sw = p->stride_w;
    a->ph = p->pad_h, a->pw = p->pad_w, a->dh = p->dilation_h, a->dw = p->dilation_w;
    a->K = K;
    a->remove_center = p->remove_center;
    a->offset_scale = p->offset_scale;
    return DR_OK;
}

#endif /* DR_DCNV4_H */
