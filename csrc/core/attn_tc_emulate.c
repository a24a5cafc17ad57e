/* attn_tc_emulate.c — the tensor-core attention kernels (csrc/cuda/attention_tc.cu) run on the CPU, for tests.
 *
 * Same plan (dr_tc_make_plan), same grids, blocks, warps and tile loops as the kernels, same shared-memory layouts
 * (one buffer per block, filled by the shared dr_tc_fill for every thread of the block), same per-lane steps from
 * dr_attention_tile.h. A warp is 32 lanes whose registers are arrays indexed by lane; a step the kernel runs on
 * every lane runs here in a loop over the lanes; the quad reductions (__shfl_xor_sync 1 then 2) combine the
 * lanes' values in the same order; mma.m16n8k16 gathers the A, B and C fragments of the 32 lanes through the
 * fragment maps into 16x16, 16x8 and 16x8 matrices, multiplies (16-bit operands widened exactly, products exact
 * in float32, the 16-term sum formed in double and rounded once) and scatters D back. The real MMA sums in an
 * undocumented order with float32 intermediate precision, so results may differ from the GPU's in the last bits
 * of the accumulators, never in which elements are read or written.
 *
 * Between two __syncthreads the warps of a block touch disjoint registers and only read shared memory, so running
 * them one after another is equivalent to running them concurrently. Single-threaded: O(the kernels' work).
 */
#include <stdlib.h>

#include "dr_attention_tile.h"

/* D = A B + C on the fragments of 32 lanes. */
static void emu_mma(float *c[32], const uint32_t a[32][4], const uint32_t b[32][2], int bf) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; lane++) {
        for (int e = 0; e < 8; e++)
            A[dr_tc_a_row(lane, e)][dr_tc_a_col(lane, e)] = dr_tc_h2f((uint16_t)(a[lane][e / 2] >> (16 * (e & 1))), bf);
        for (int e = 0; e < 4; e++)
            B[dr_tc_b_row(lane, e)][dr_tc_b_col(lane, e)] = dr_tc_h2f((uint16_t)(b[lane][e / 2] >> (16 * (e & 1))), bf);
        for (int e = 0; e < 4; e++)
            C[dr_tc_c_row(lane, e)][dr_tc_c_col(lane, e)] = c[lane][e];
    }
    for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) {
            const int r = dr_tc_c_row(lane, e), n = dr_tc_c_col(lane, e);
            double s = 0;
            for (int k = 0; k < 16; k++)
                s += (double)(A[r][k] * B[k][n]); /* exact: 16-bit products fit float32 */
            c[lane][e] = (float)((double)C[r][n] + s);
        }
}

/* The warp's C[lane][n] (n < nt) += A Bᵀ over k < kend: A the 16 rows of As from m0, B the 8·nt rows of Bs
 * (both row-major, k along the row): the S = Q Kᵀ and dP = dO Vᵀ steps. c: [32][cn][4] fragments. */
static void emu_mma_abt(const uint16_t *As, int sa, int m0, const uint16_t *Bs, int sb, int kend, int nt, float *c,
                        int cn, int bf) {
    uint32_t fa[32][4], fb[32][2];
    float *cp[32];
    for (int ks = 0; ks < kend; ks += 16) {
        for (int lane = 0; lane < 32; lane++)
            dr_tc_load_a(As, sa, m0, ks, lane, fa[lane]);
        for (int n = 0; n < nt; n++) {
            for (int lane = 0; lane < 32; lane++) {
                dr_tc_load_b_nk(Bs, sb, ks, 8 * n, lane, fb[lane]);
                cp[lane] = c + ((size_t)lane * cn + n) * 4;
            }
            emu_mma(cp, fa, fb, bf);
        }
    }
}

/* The warp's C[lane][n] (n < nt) += P B over the kk-th 16 columns of P: P's fragments (p: [32][pn][4], the
 * accumulators of an earlier MMA) become A, B is rows 16 kk.. of Bs from column col0: the P V, dS K, Pᵀ dO and
 * dSᵀ Q steps. */
static void emu_mma_pb(const float *pf, int pn, int kk, const uint16_t *Bs, int sb, int col0, int nt, float *c, int cn,
                       int bf) {
    uint32_t fa[32][4], fb[32][2];
    float *cp[32];
    for (int lane = 0; lane < 32; lane++)
        dr_tc_c_to_a(pf + ((size_t)lane * pn + 2 * kk) * 4, pf + ((size_t)lane * pn + 2 * kk + 1) * 4, bf, fa[lane]);
    for (int n = 0; n < nt; n++) {
        for (int lane = 0; lane < 32; lane++) {
            dr_tc_load_b_kn(Bs, sb, 16 * kk, col0 + 8 * n, lane, fb[lane]);
            cp[lane] = c + ((size_t)lane * cn + n) * 4;
        }
        emu_mma(cp, fa, fb, bf);
    }
}

/* The butterfly reductions of the 4 lanes of a quad: x = op(x, shfl_xor(x, 1)); x = op(x, shfl_xor(x, 2)). */
static void emu_quad_max(float x[32]) {
    for (int mask = 1; mask <= 2; mask <<= 1) {
        float y[32];
        for (int lane = 0; lane < 32; lane++)
            y[lane] = dr_tc_max(x[lane], x[lane ^ mask]);
        memcpy(x, y, sizeof y);
    }
}
static void emu_quad_sum(float x[32]) {
    for (int mask = 1; mask <= 2; mask <<= 1) {
        float y[32];
        for (int lane = 0; lane < 32; lane++)
            y[lane] = x[lane] + x[lane ^ mask];
        memcpy(x, y, sizeof y);
    }
}

#define Q16(a, ptr, s, b, h) ((const uint16_t *)(ptr) + (b) * (s)[0] + (h) * (s)[1])

/* ---- forward ------------------------------------------------------------------------------------------------ */

typedef struct {
    float o[32][DR_TC_MAX_NT][4];
    float m[32][2], l[32][2];
} emu_fwd_warp;

static void emu_fwd_block(const dr_attn_args *a, const dr_tc_plan *p, int64_t bx, int64_t bh, int chunk,
                          uint16_t *smem, emu_fwd_warp *ws) {
    const int W = p->fwd_warps, nthr = 32 * W, rows = 16 * W, bf = p->bf, NT = p->dc / 8, NKT = p->bk / 8;
    const int64_t b = bh / a->H, h = bh % a->H, hk = h / a->G, q0 = bx * rows;
    uint16_t *Qs = smem, *Ks = Qs + rows * p->stride_k, *Vs = Ks + p->bk * p->stride_k;
    for (int t = 0; t < nthr; t++)
        dr_tc_fill(Qs, p->stride_k, rows, p->dkw, Q16(a, a->q, a->q_s, b, h), a->q_s[2], a->q_s[3], q0, a->Lq, a->D,
                   t, nthr);
    for (int w = 0; w < W; w++)
        for (int lane = 0; lane < 32; lane++) {
            for (int n = 0; n < NT; n++)
                for (int e = 0; e < 4; e++)
                    ws[w].o[lane][n][e] = 0.0f;
            ws[w].m[lane][0] = ws[w].m[lane][1] = -INFINITY;
            ws[w].l[lane][0] = ws[w].l[lane][1] = 0.0f;
        }
    const int64_t ntiles = dr_tc_ntiles(a->Lk, p->bk);
    for (int64_t kt = 0; kt < ntiles; kt++) {
        const int64_t k0 = kt * p->bk;
        for (int t = 0; t < nthr; t++) {
            dr_tc_fill(Ks, p->stride_k, p->bk, p->dkw, Q16(a, a->k, a->k_s, b, hk), a->k_s[2], a->k_s[3], k0, a->Lk,
                       a->D, t, nthr);
            dr_tc_fill(Vs, p->stride_v, p->bk, p->dvw, Q16(a, a->v, a->v_s, b, hk), a->v_s[2], a->v_s[3], k0, a->Lk,
                       a->Dv, t, nthr);
        }
        for (int w = 0; w < W; w++) {
            emu_fwd_warp *st = &ws[w];
            const int m0 = 16 * w;
            float s[32][DR_TC_MAX_NKT][4];
            memset(s, 0, sizeof s);
            emu_mma_abt(Qs, p->stride_k, m0, Ks, p->stride_k, p->dk16, NKT, &s[0][0][0], DR_TC_MAX_NKT, bf);
            float mt[32][2], mq[2][32];
            for (int lane = 0; lane < 32; lane++) {
                dr_tc_fwd_scores(a, b, h, q0 + m0, k0, lane, s[lane], NKT, mt[lane]);
                mq[0][lane] = mt[lane][0], mq[1][lane] = mt[lane][1];
            }
            emu_quad_max(mq[0]);
            emu_quad_max(mq[1]);
            for (int lane = 0; lane < 32; lane++) {
                const float mtq[2] = {mq[0][lane], mq[1][lane]};
                dr_tc_fwd_softmax(s[lane], NKT, mtq, st->m[lane], st->l[lane], st->o[lane], NT);
            }
            for (int kk = 0; kk < NKT / 2; kk++)
                emu_mma_pb(&s[0][0][0], DR_TC_MAX_NKT, kk, Vs, p->stride_v, chunk * p->dc, NT, &st->o[0][0][0],
                           DR_TC_MAX_NT, bf);
        }
    }
    for (int w = 0; w < W; w++) {
        emu_fwd_warp *st = &ws[w];
        float l[2][32];
        for (int lane = 0; lane < 32; lane++)
            l[0][lane] = st->l[lane][0], l[1][lane] = st->l[lane][1];
        emu_quad_sum(l[0]);
        emu_quad_sum(l[1]);
        for (int lane = 0; lane < 32; lane++) {
            const float lq[2] = {l[0][lane], l[1][lane]};
            dr_tc_fwd_store(a, b, h, q0 + 16 * w, chunk * p->dc, chunk == 0, lane, st->o[lane], NT, st->m[lane], lq,
                            bf);
        }
    }
}

static dr_status check_tc_args(const dr_tensor *q) {
    if (q->device != DR_CPU)
        return dr_set_error(DR_EINVAL, "attention: the tensor-core emulation runs on CPU tensors");
    if (q->dtype != DR_FLOAT16 && q->dtype != DR_BFLOAT16)
        return dr_set_error(DR_ETYPE, "attention: the tensor-core kernels take float16 or bfloat16, got %s",
                            dr_dtype_name(q->dtype));
    return DR_OK;
}

dr_status dr_attention_tc_forward_emulated(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                           const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                           const dr_attention_params *p) {
    dr_attn_args a;
    dr_status st = dr_attention_make_args(q, k, v, mask, o, lse, NULL, NULL, NULL, NULL, p, &a);
    if (st == DR_OK)
        st = check_tc_args(q);
    if (st != DR_OK)
        return st;
    if (a.B * a.H * a.Lq == 0)
        return DR_OK;
    dr_tc_plan pl;
    dr_tc_make_plan(&a, &pl);
    uint16_t *smem = malloc(dr_tc_smem_fwd(&pl));
    emu_fwd_warp *ws = malloc(sizeof(emu_fwd_warp) * (size_t)pl.fwd_warps);
    if (!smem || !ws) {
        free(smem), free(ws);
        return dr_set_error(DR_ENOMEM, "attention: out of memory");
    }
    for (int c = 0; c < pl.nchunk_o; c++) /* grid (x, y, z) = (query tiles, B*H, chunks) */
        for (int64_t bh = 0; bh < a.B * a.H; bh++)
            for (int64_t bx = 0; bx < pl.fwd_blocks; bx++)
                emu_fwd_block(&a, &pl, bx, bh, c, smem, ws);
    free(smem), free(ws);
    return DR_OK;
}

/* ---- backward: dQ ------------------------------------------------------------------------------------------- */

typedef struct {
    float acc[32][DR_TC_MAX_NT][4];
} emu_acc_warp;

static void emu_dq_block(const dr_attn_args *a, const dr_tc_plan *p, int64_t bx, int64_t bh, int chunk,
                         uint16_t *smem, emu_acc_warp *ws) {
    const int W = p->dq_warps, nthr = 32 * W, rows = 16 * W, bf = p->bf, NT = p->dc / 8;
    const int64_t b = bh / a->H, h = bh % a->H, hk = h / a->G, q0 = bx * rows;
    uint16_t *Qs = smem, *Os = Qs + rows * p->stride_k, *Ks = Os + rows * p->stride_v,
             *Vs = Ks + DR_TC_BKQ * p->stride_k;
    float *lse_s = (float *)(Vs + DR_TC_BKQ * p->stride_v), *delta_s = lse_s + rows;
    for (int t = 0; t < nthr; t++) {
        dr_tc_fill(Qs, p->stride_k, rows, p->dkw, Q16(a, a->q, a->q_s, b, h), a->q_s[2], a->q_s[3], q0, a->Lq, a->D,
                   t, nthr);
        dr_tc_fill(Os, p->stride_v, rows, p->dvw, Q16(a, a->dout, a->do_s, b, h), a->do_s[2], a->do_s[3], q0, a->Lq,
                   a->Dv, t, nthr);
        if (t < rows)
            dr_tc_row_stats(a, b, h, q0 + t, bf, &lse_s[t], &delta_s[t]);
    }
    for (int w = 0; w < W; w++)
        memset(ws[w].acc, 0, sizeof ws[w].acc);
    const int64_t ntiles = dr_tc_ntiles(a->Lk, DR_TC_BKQ);
    for (int64_t kt = 0; kt < ntiles; kt++) {
        const int64_t k0 = kt * DR_TC_BKQ;
        for (int t = 0; t < nthr; t++) {
            dr_tc_fill(Ks, p->stride_k, DR_TC_BKQ, p->dkw, Q16(a, a->k, a->k_s, b, hk), a->k_s[2], a->k_s[3], k0,
                       a->Lk, a->D, t, nthr);
            dr_tc_fill(Vs, p->stride_v, DR_TC_BKQ, p->dvw, Q16(a, a->v, a->v_s, b, hk), a->v_s[2], a->v_s[3], k0,
                       a->Lk, a->Dv, t, nthr);
        }
        for (int w = 0; w < W; w++) {
            const int m0 = 16 * w;
            enum { N8 = DR_TC_BKQ / 8 };
            float s[32][N8][4], dp[32][N8][4];
            memset(s, 0, sizeof s);
            memset(dp, 0, sizeof dp);
            emu_mma_abt(Qs, p->stride_k, m0, Ks, p->stride_k, p->dk16, N8, &s[0][0][0], N8, bf);
            emu_mma_abt(Os, p->stride_v, m0, Vs, p->stride_v, p->dv16, N8, &dp[0][0][0], N8, bf);
            for (int lane = 0; lane < 32; lane++)
                dr_tc_dq_dscores(a, b, h, q0, m0, k0, lane, s[lane], dp[lane], N8, lse_s, delta_s);
            for (int kk = 0; kk < N8 / 2; kk++)
                emu_mma_pb(&s[0][0][0], N8, kk, Ks, p->stride_k, chunk * p->dc, NT, &ws[w].acc[0][0][0], DR_TC_MAX_NT,
                           bf);
        }
    }
    uint16_t *dq = (uint16_t *)a->dq + b * a->dq_s[0] + h * a->dq_s[1];
    const float sc = (float)a->scale;
    for (int w = 0; w < W; w++)
        for (int lane = 0; lane < 32; lane++)
            for (int n = 0; n < NT; n++)
                dr_tc_store_c(dq, a->dq_s[2], a->dq_s[3], q0 + 16 * w, a->Lq, chunk * p->dc + 8 * n, a->D,
                              ws[w].acc[lane][n], sc, sc, lane, bf);
}

/* ---- backward: dK, dV --------------------------------------------------------------------------------------- */

static void emu_kv_block(const dr_attn_args *a, const dr_tc_plan *p, int64_t bx, int64_t bhk, int chunk,
                         uint16_t *smem, emu_acc_warp *wk, emu_acc_warp *wv) {
    const int KG = p->kv_warps, QS = p->kv_slices, W = KG * QS, nthr = 32 * W, rows = 16 * KG, bf = p->bf,
              NT = p->dc / 8, qrows = DR_TC_BQB * QS;
    const int64_t b = bhk / a->Hk, hk = bhk % a->Hk, k0 = bx * rows;
    const int do_k = chunk < p->nchunk_q, do_v = chunk < p->nchunk_o;
    uint16_t *Ks = smem, *Vs = Ks + rows * p->stride_k, *Qs = Vs + rows * p->stride_v, *Os = Qs + qrows * p->stride_k;
    float *lse_s = (float *)(Os + qrows * p->stride_v), *delta_s = lse_s + qrows;
    for (int t = 0; t < nthr; t++) {
        dr_tc_fill(Ks, p->stride_k, rows, p->dkw, Q16(a, a->k, a->k_s, b, hk), a->k_s[2], a->k_s[3], k0, a->Lk, a->D,
                   t, nthr);
        dr_tc_fill(Vs, p->stride_v, rows, p->dvw, Q16(a, a->v, a->v_s, b, hk), a->v_s[2], a->v_s[3], k0, a->Lk,
                   a->Dv, t, nthr);
    }
    for (int w = 0; w < W; w++) {
        memset(wk[w].acc, 0, sizeof wk[w].acc);
        memset(wv[w].acc, 0, sizeof wv[w].acc);
    }
    const int64_t ntiles = dr_tc_ntiles(a->Lq, DR_TC_BQB);
    for (int64_t h = hk * a->G; h < (hk + 1) * a->G; h++)
        for (int64_t qt = 0; qt < ntiles; qt += QS) { /* slice s of warp w = kg + KG s takes tile qt + s */
            for (int t = 0; t < nthr; t++) {
                dr_tc_fill(Qs, p->stride_k, qrows, p->dkw, Q16(a, a->q, a->q_s, b, h), a->q_s[2], a->q_s[3],
                           qt * DR_TC_BQB, a->Lq, a->D, t, nthr);
                dr_tc_fill(Os, p->stride_v, qrows, p->dvw, Q16(a, a->dout, a->do_s, b, h), a->do_s[2], a->do_s[3],
                           qt * DR_TC_BQB, a->Lq, a->Dv, t, nthr);
                if (t < qrows)
                    dr_tc_row_stats(a, b, h, qt * DR_TC_BQB + t, bf, &lse_s[t], &delta_s[t]);
            }
            for (int w = 0; w < W; w++) {
                const int m0 = 16 * (w % KG), sl = w / KG;
                const int64_t q0 = (qt + sl) * DR_TC_BQB;
                const uint16_t *Qw = Qs + sl * DR_TC_BQB * p->stride_k, *Ow = Os + sl * DR_TC_BQB * p->stride_v;
                const float *lse_w = lse_s + sl * DR_TC_BQB, *delta_w = delta_s + sl * DR_TC_BQB;
                enum { N8 = DR_TC_BQB / 8 };
                float s[32][N8][4], dp[32][N8][4];
                memset(s, 0, sizeof s);
                memset(dp, 0, sizeof dp);
                emu_mma_abt(Ks, p->stride_k, m0, Qw, p->stride_k, p->dk16, N8, &s[0][0][0], N8, bf);
                emu_mma_abt(Vs, p->stride_v, m0, Ow, p->stride_v, p->dv16, N8, &dp[0][0][0], N8, bf);
                for (int lane = 0; lane < 32; lane++)
                    dr_tc_kv_dscores(a, b, h, q0, k0 + m0, lane, s[lane], dp[lane], N8, lse_w, delta_w);
                for (int kk = 0; kk < N8 / 2; kk++) {
                    if (do_v)
                        emu_mma_pb(&s[0][0][0], N8, kk, Ow, p->stride_v, chunk * p->dc, NT, &wv[w].acc[0][0][0],
                                   DR_TC_MAX_NT, bf);
                    if (do_k)
                        emu_mma_pb(&dp[0][0][0], N8, kk, Qw, p->stride_k, chunk * p->dc, NT, &wk[w].acc[0][0][0],
                                   DR_TC_MAX_NT, bf);
                }
            }
        }
    /* the slices' sums into slice 0, in slice order, through shared memory (the K/V/Q tiles are done with) */
    float *red_k = (float *)smem, *red_v = red_k + rows * p->dc;
    for (int sl = 1; sl < QS; sl++) {
        for (int kg = 0; kg < KG; kg++)
            for (int lane = 0; lane < 32; lane++) {
                dr_tc_red_store(red_k, p->dc, 16 * kg, lane, wk[kg + KG * sl].acc[lane], NT);
                dr_tc_red_store(red_v, p->dc, 16 * kg, lane, wv[kg + KG * sl].acc[lane], NT);
            }
        for (int kg = 0; kg < KG; kg++)
            for (int lane = 0; lane < 32; lane++) {
                dr_tc_red_add(red_k, p->dc, 16 * kg, lane, wk[kg].acc[lane], NT);
                dr_tc_red_add(red_v, p->dc, 16 * kg, lane, wv[kg].acc[lane], NT);
            }
    }
    uint16_t *dk = (uint16_t *)a->dk + b * a->dk_s[0] + hk * a->dk_s[1];
    uint16_t *dv = (uint16_t *)a->dv + b * a->dv_s[0] + hk * a->dv_s[1];
    const float sc = (float)a->scale;
    for (int kg = 0; kg < KG; kg++)
        for (int lane = 0; lane < 32; lane++)
            for (int n = 0; n < NT; n++) {
                if (do_k)
                    dr_tc_store_c(dk, a->dk_s[2], a->dk_s[3], k0 + 16 * kg, a->Lk, chunk * p->dc + 8 * n, a->D,
                                  wk[kg].acc[lane][n], sc, sc, lane, bf);
                if (do_v)
                    dr_tc_store_c(dv, a->dv_s[2], a->dv_s[3], k0 + 16 * kg, a->Lk, chunk * p->dc + 8 * n, a->Dv,
                                  wv[kg].acc[lane][n], 1.0f, 1.0f, lane, bf);
            }
}

dr_status dr_attention_tc_backward_emulated(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                            const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                            const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                            const dr_attention_params *p) {
    dr_attn_args a;
    dr_status st = dr_attention_make_args(q, k, v, mask, o, lse, dout, dq, dk, dv, p, &a);
    if (st == DR_OK)
        st = check_tc_args(q);
    if (st != DR_OK)
        return st;
    dr_tc_plan pl;
    dr_tc_make_plan(&a, &pl);
    size_t sm = dr_tc_smem_dq(&pl) > dr_tc_smem_kv(&pl) ? dr_tc_smem_dq(&pl) : dr_tc_smem_kv(&pl);
    uint16_t *smem = malloc(sm);
    emu_acc_warp *ws = malloc(sizeof(emu_acc_warp) * 16); /* dK/dV: up to 8 warps, two accumulators each */
    if (!smem || !ws) {
        free(smem), free(ws);
        return dr_set_error(DR_ENOMEM, "attention: out of memory");
    }
    if (a.Lq > 0) /* dQ kernel: grid (query tiles, B*H, D chunks) */
        for (int c = 0; c < pl.nchunk_q; c++)
            for (int64_t bh = 0; bh < a.B * a.H; bh++)
                for (int64_t bx = 0; bx < pl.dq_blocks; bx++)
                    emu_dq_block(&a, &pl, bx, bh, c, smem, ws);
    if (a.Lk > 0) /* dK/dV kernel: grid (key tiles, B*Hk, chunks) */
        for (int c = 0; c < pl.nchunk_kv; c++)
            for (int64_t bh = 0; bh < a.B * a.Hk; bh++)
                for (int64_t bx = 0; bx < pl.kv_blocks; bx++)
                    emu_kv_block(&a, &pl, bx, bh, c, smem, ws, ws + 8);
    free(smem), free(ws);
    return DR_OK;
}
