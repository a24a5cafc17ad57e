/* dr_attention.h — fused scaled-dot-product attention: the C API and the per-row bodies shared by the CPU and
 * CUDA launchers (torch.nn.functional.scaled_dot_product_attention semantics, DESIGN §7.6).
 *
 * Shapes (strides in elements, any layout): q [B,H,Lq,D], k [B,Hk,Lk,D], v [B,Hk,Lk,Dv], o [B,H,Lq,Dv],
 * with Hk = H, or Hk a divisor of H (grouped-query attention: query head h reads key/value head h / (H / Hk), and
 * dk, dv [B,Hk,...] sum over each group's query heads in a fixed order); D, Dv in [1, DR_ATTN_MAX_D];
 * lse [B,H,Lq] (float32; float64 for float64 data), mask (optional) broadcast to [B,H,Lq,Lk] through its strides
 * (stride 0 on broadcast dimensions — never materialised): bool (True = attend) or additive float.
 * s_ij = scale * q_i . k_j + mask_ij (-inf where a bool mask is False or, with causal, where j > i: top-left
 * aligned). o_i = sum_j softmax_j(s_i) v_j, lse_i = log sum_j exp(s_ij). A row whose keys are all masked gives
 * o_i = 0, lse_i = -inf and zero gradients, never NaN (as PyTorch >= 2.5; older math backends gave NaN).
 * Non-finite values follow PyTorch's arithmetic: masks are added to the scores (a NaN or +inf score stays NaN under
 * a bool or causal mask), a NaN score makes its row's softmax NaN (lse_i NaN), and masked keys still enter
 * P V, dP = dO V^T and the gradient products with weight 0, so 0 x NaN = NaN reaches the same outputs as PyTorch's.
 *
 * Backward (recomputes P from lse, keeps no Lq x Lk matrix): with D_i = dO_i . O_i, p_ij = exp(s_ij - lse_i),
 * dp_ij = dO_i . v_j, ds_ij = p_ij (dp_ij - D_i):  dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,
 * dv_j = sum_i p_ij dO_i. Gradients are written in the data's dtype.
 *
 * The dr_attn_*_row_<sfx> bodies below are what one CUDA thread computes (one query row for the forward and for
 * dq, one key row for dk/dv); dr_attention_*_elementwise_cpu runs the same bodies over every row on the CPU.
 */
#ifndef DR_ATTENTION_H
#define DR_ATTENTION_H

#include "dr_check.h"
#include "dr_math.h"
#include "dynrefer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DR_ATTN_MAX_D 256 /* largest head dim (q/k and v) */

typedef struct {
    double scale; /* finite; the op layer passes 1/sqrt(D) by default */
    int causal;   /* top-left aligned causal mask (key j visible to query i iff j <= i) */
} dr_attention_params;

/* Forward: fill o and lse. mask may be NULL. O(B*H*Lq*Lk*(D+Dv)). Deterministic. */
dr_status dr_attention_forward_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                   const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                   const dr_attention_params *p);
/* Backward: fill dq, dk, dv (data dtype) from q, k, v, o, lse, dout. O(B*H*Lq*Lk*(2D+2Dv)). Deterministic. */
dr_status dr_attention_backward_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                    const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                    const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                    const dr_attention_params *p);
/* The same with a chosen CPU instruction set (DR_ATTN_ISA_*); DR_EUNSUPPORTED where the CPU lacks it. */
enum { DR_ATTN_ISA_AUTO = 0, DR_ATTN_ISA_PORTABLE = 1, DR_ATTN_ISA_AVX2 = 2, DR_ATTN_ISA_AVX512 = 3 };
dr_status dr_attention_forward_cpu_isa(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                       const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                       const dr_attention_params *p, int isa);
dr_status dr_attention_backward_cpu_isa(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                        const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                        const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                        const dr_attention_params *p, int isa);
/* The CUDA kernels' per-row bodies run over every row on the CPU (for tests). */
dr_status dr_attention_forward_elementwise_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                               const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                               const dr_attention_params *p);
dr_status dr_attention_backward_elementwise_cpu(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                                const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                                const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                                const dr_attention_params *p);
/* CUDA launchers (csrc/cuda/attention.cu), on `stream`; same contracts. */
dr_status dr_attention_forward_cuda(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                    const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                    const dr_attention_params *p, void *stream);
dr_status dr_attention_backward_cuda(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                     const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                     const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                     const dr_attention_params *p, void *stream);

#ifdef __cplusplus
}
#endif

/* Everything an attention kernel needs, by value (it is a CUDA kernel argument). */
typedef struct {
    const void *q, *k, *v, *mask, *o, *dout, *lse_in;
    void *out, *lse, *dq, *dk, *dv;
    int dtype, mask_dtype; /* mask_dtype < 0: no mask */
    int causal;
    int64_t B, H, Lq, Lk, D, Dv;
    int64_t Hk, G; /* key/value heads and query heads per key/value head (H = Hk G; G > 1: grouped-query) */
    int64_t q_s[4], k_s[4], v_s[4], o_s[4], m_s[4], do_s[4], dq_s[4], dk_s[4], dv_s[4], lse_s[3];
    double scale;
} dr_attn_args;

/* Mask term of score (i, j) for batch-head (b, h), as double: 0 (attend), -inf (masked) or the additive value. */
DR_HD static inline double dr_attn_mask_term(const dr_attn_args *a, int64_t b, int64_t h, int64_t i, int64_t j) {
    if (a->causal && j > i)
        return -INFINITY;
    if (a->mask_dtype < 0)
        return 0.0;
    int64_t off = b * a->m_s[0] + h * a->m_s[1] + i * a->m_s[2] + j * a->m_s[3];
    switch (a->mask_dtype) {
    case DR_BOOL:
    case DR_UINT8:
        return ((const uint8_t *)a->mask)[off] ? 0.0 : -INFINITY;
    case DR_FLOAT32:
        return (double)((const float *)a->mask)[off];
    case DR_FLOAT64:
        return ((const double *)a->mask)[off];
    case DR_FLOAT16:
        return (double)dr_f16_to_f32(((const uint16_t *)a->mask)[off]);
    case DR_BFLOAT16:
        return (double)dr_bf16_to_f32(((const uint16_t *)a->mask)[off]);
    default:
        return 0.0;
    }
}

DR_HD static inline float dr_attn_exp_f(float x) { return expf(x); }
DR_HD static inline double dr_attn_exp_d(double x) { return exp(x); }
DR_HD static inline float dr_attn_log_f(float x) { return logf(x); }
DR_HD static inline double dr_attn_log_d(double x) { return log(x); }

#define DR_INSTANTIATE "dr_attention_body.inc"
#include "dr_instantiate.h"

/* Check that t is nd-D with shape `want` ("attention: out has shape [...], expected [...]"). */
static inline dr_status dr_attn_check_shape(const char *name, const dr_tensor *t, int nd, const int64_t *want) {
    dr_status st = dr_check_ndim("attention", name, t, nd);
    if (st != DR_OK)
        return st;
    for (int i = 0; i < nd; i++)
        if (t->shape[i] != want[i]) {
            dr_tensor w = *t;
            for (int d = 0; d < nd; d++)
                w.shape[d] = want[d];
            char got[160], exp[160];
            dr_shape_str(t, got, sizeof got);
            dr_shape_str(&w, exp, sizeof exp);
            return dr_set_error(DR_EINVAL, "attention: %s has shape %s, expected %s", name, got, exp);
        }
    return DR_OK;
}

/* Check the descriptors and parameters and fill dr_attn_args (host code shared by every launcher): this is where
 * attention's arguments are validated. Backward when dq != NULL. O(1). */
static inline dr_status dr_attention_make_args(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                               const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                               const dr_tensor *dout, const dr_tensor *dq, const dr_tensor *dk,
                                               const dr_tensor *dv, const dr_attention_params *p, dr_attn_args *a) {
    const char *op = "attention";
    const dr_tensor *all[9] = {q, k, v, o, lse, dout, dq, dk, dv};
    static const char *const names[9] = {"q", "k", "v", "out", "lse", "grad_out", "grad_q", "grad_k", "grad_v"};
    const int n = dq ? 9 : 5;
    dr_status st;
    for (int i = 0; i < n; i++) {
        st = dr_check_float(op, names[i], all[i]);
        if (st == DR_OK)
            st = dr_check_same_device(op, "q", q, names[i], all[i]);
        if (st != DR_OK)
            return st;
        if (i != 4 && all[i]->dtype != q->dtype)
            return dr_set_error(DR_ETYPE, "attention: %s must have q's dtype %s (q, k, v, out and the gradients share "
                                          "one dtype), got %s",
                                names[i], dr_dtype_name(q->dtype), dr_dtype_name(all[i]->dtype));
    }
    st = dr_check_ndim(op, "q", q, 4);
    if (st == DR_OK)
        st = dr_check_ndim(op, "k", k, 4);
    if (st == DR_OK)
        st = dr_check_ndim(op, "v", v, 4);
    if (st != DR_OK)
        return st;
    const int64_t B = q->shape[0], H = q->shape[1], Lq = q->shape[2], D = q->shape[3];
    const int64_t Hk = k->shape[1], Lk = k->shape[2], Dv = v->shape[3];
    if (k->shape[0] != B || v->shape[0] != B || v->shape[1] != Hk || (Hk < 1 ? H != 0 : H % Hk != 0))
        return dr_set_error(DR_EINVAL, "attention: q, k, v must share their leading (batch, head) dims (k and v may "
                                       "have fewer heads, a divisor of q's: grouped-query), got [%lld, %lld], "
                                       "[%lld, %lld], [%lld, %lld]",
                            (long long)B, (long long)H, (long long)k->shape[0], (long long)k->shape[1],
                            (long long)v->shape[0], (long long)v->shape[1]);
    if (k->shape[3] != D)
        return dr_set_error(DR_EINVAL, "attention: q and k must have the same head dim, got %lld and %lld", (long long)D,
                            (long long)k->shape[3]);
    if (v->shape[2] != Lk)
        return dr_set_error(DR_EINVAL, "attention: k and v must have the same length, got %lld and %lld", (long long)Lk,
                            (long long)v->shape[2]);
    const int64_t qs[4] = {B, H, Lq, D}, ks[4] = {B, Hk, Lk, D}, vs[4] = {B, Hk, Lk, Dv}, os[4] = {B, H, Lq, Dv};
    const int64_t *want[9] = {qs, ks, vs, os, os, os, qs, ks, vs}; /* lse: the first 3 of os */
    for (int i = 3; i < n; i++) {
        st = dr_attn_check_shape(names[i], all[i], i == 4 ? 3 : 4, want[i]);
        if (st != DR_OK)
            return st;
    }
    if (D < 1 || Dv < 1 || D > DR_ATTN_MAX_D || Dv > DR_ATTN_MAX_D)
        return dr_set_error(DR_EINVAL, "attention: head dims must be in [1, %d], got q/k %lld and v %lld", DR_ATTN_MAX_D,
                            (long long)D, (long long)Dv);
    const dr_dtype lse_dt = dr_accum_dtype(q->dtype);
    if (lse->dtype != lse_dt)
        return dr_set_error(DR_ETYPE, "attention: lse must be %s, got %s", dr_dtype_name(lse_dt),
                            dr_dtype_name(lse->dtype));
    if (mask) {
        const int64_t ms[4] = {B, H, Lq, Lk};
        if (mask->dtype != DR_BOOL && !dr_dtype_is_float(mask->dtype))
            return dr_set_error(DR_ETYPE, "attention: attn_mask must be bool or floating point, got %s",
                                dr_dtype_name(mask->dtype));
        st = dr_check_same_device(op, "q", q, "attn_mask", mask);
        if (st == DR_OK)
            st = dr_attn_check_shape("attn_mask", mask, 4, ms);
        if (st != DR_OK)
            return st;
        if (p->causal)
            return dr_set_error(DR_EINVAL, "attention: is_causal and an explicit attn_mask are exclusive");
    }
    if (!(p->scale - p->scale == 0))
        return dr_set_error(DR_EINVAL, "attention: scale must be finite, got %s", dr_nonfinite_name(p->scale));
    for (int i = 0; i < n; i++)
        if (dr_numel(all[i]) < 0)
            return dr_set_error(DR_EINVAL, "attention: tensor size overflows int64");
    memset(a, 0, sizeof *a);
    a->B = B, a->H = H, a->Lq = Lq, a->Lk = Lk, a->D = D, a->Dv = Dv;
    a->Hk = Hk, a->G = Hk > 0 ? H / Hk : 1;
    a->dtype = q->dtype;
    a->causal = p->causal;
    a->scale = p->scale;
    a->q = q->data, a->k = k->data, a->v = v->data;
    for (int i = 0; i < 4; i++) {
        a->q_s[i] = q->strides[i];
        a->k_s[i] = k->strides[i];
        a->v_s[i] = v->strides[i];
        a->o_s[i] = o->strides[i];
    }
    for (int i = 0; i < 3; i++)
        a->lse_s[i] = lse->strides[i];
    a->mask_dtype = -1;
    if (mask) {
        a->mask = mask->data;
        a->mask_dtype = mask->dtype;
        for (int i = 0; i < 4; i++)
            a->m_s[i] = mask->strides[i];
    }
    if (dq) {
        a->o = o->data;
        a->lse_in = lse->data;
        a->dout = dout->data;
        a->dq = dq->data, a->dk = dk->data, a->dv = dv->data;
        for (int i = 0; i < 4; i++) {
            a->do_s[i] = dout->strides[i];
            a->dq_s[i] = dq->strides[i];
            a->dk_s[i] = dk->strides[i];
            a->dv_s[i] = dv->strides[i];
        }
    } else {
        a->out = o->data;
        a->lse = lse->data;
    }
    return DR_OK;
}

#endif /* DR_ATTENTION_H */
