/* dr_attention_tile.h — the tile-level math of the tensor-core (mma.sync.m16n8k16) flash attention, shared by the
 * CUDA kernels (csrc/cuda/attention_tc.cu) and their CPU emulation (csrc/core/attn_tc_emulate.c), which runs the
 * same block schedule with the same tiles on 32 emulated lanes (DESIGN §4, "one math, two launchers").
 *
 * Inputs are float16 or bfloat16 (16-bit storage, `bf` selects which), accumulation is float32. What lives here:
 *   * the plan: tile sizes and grids of the three kernels (forward, dK/dV, dQ) from the shapes alone;
 *   * the m16n8k16 fragment maps (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"):
 *     g = lane / 4 (groupID), t = lane % 4 (threadID_in_group),
 *       A 16x16 (row-major), 4 registers a0..a3 of two halves (element 2r in the low half, 2r+1 in the high):
 *         element e = 0..7: row g + 8 * ((e / 2) % 2), col 2t + e % 2 + 8 * (e / 4);
 *       B 16x8 (col-major), 2 registers: element e = 0..3: row (k) 2t + e % 2 + 8 * (e / 2), col (n) g;
 *       C/D 16x8 float32, 4 values: element e = 0..3: row g + 8 * (e / 2), col 2t + e % 2;
 *   * the per-lane steps: cooperative global -> shared copies (zero padding to the tile, strides of any layout,
 *     nothing padded in global memory), fragment loads from shared memory, the score fix-up (scale, mask read
 *     through its broadcast strides, causal, bounds), the online-softmax update, C -> A re-packing of P and dS
 *     (rounded to the 16-bit type exactly as the MMA takes them), dS = P (dP - delta), the stores;
 *   * the exact float32 arithmetic every one of those performs, so the emulation's results differ from the
 *     GPU's only inside the MMA, whose internal summation order the hardware does not document.
 * Cross-lane steps (the quad reductions of the row max and sum, the MMA itself) are the launchers' own: shuffles
 * and inline PTX on the GPU, loops over the 32 emulated lanes on the CPU.
 *
 * Semantics are those of dr_attention.h (F.scaled_dot_product_attention): masked keys are -inf scores that still
 * enter P V with weight 0, a NaN score makes its row NaN, a row with every key masked gives O = 0, lse = -inf and
 * zero gradients. Every key tile is visited (also with causal masks: a non-finite value in a key a row cannot see
 * still reaches it as 0 x NaN, as in PyTorch's math), so the causal mask costs the full Lk.
 */
#ifndef DR_ATTENTION_TILE_H
#define DR_ATTENTION_TILE_H

#include "dr_attention.h"

#if defined(__CUDA_ARCH__) /* device compilation only: host compilers do not know the pragma */
#define DR_TC_UNROLL _Pragma("unroll")
#else
#define DR_TC_UNROLL
#endif

#define DR_TC_PAD 8      /* halves added to every shared-memory row (bank spread) */
#define DR_TC_BQB 32     /* queries per tile in the dK/dV kernel's loop */
#define DR_TC_BKQ 32     /* keys per tile in the dQ kernel's loop */
#define DR_TC_MAX_NT 16  /* n-tiles of 8 columns per output chunk (chunk of at most 128 columns) */
#define DR_TC_MAX_NKT 8  /* n-tiles of 8 keys per forward key tile (at most 64 keys) */

/* Tiles and grids of one call. Forward: block = `fwd_warps` warps of 16 query rows each, key tiles of `bk`;
 * grid (q tiles, B*H, Dv chunks). dQ: `dq_warps` warps of 16 query rows, key tiles of DR_TC_BKQ; grid
 * (q tiles, B*H, D chunks). dK/dV: `kv_warps` key groups of 16 key rows times `kv_slices` query slices (a warp
 * each; slices > 1 only for Lk <= 32, the tag decoder's few keys and many queries, where a block alone owns
 * its keys: slice s takes query tiles s, s + slices, ..., and the slices' dK/dV are summed in slice order through
 * shared memory at the end, deterministic), query tiles of DR_TC_BQB over every query
 * head of the key/value head's group in order; grid (key tiles, B*Hk, max(D, Dv) chunks). An output chunk is `dc`
 * columns (64 or 128): a block accumulates one chunk of O, dQ or dK/dV in registers and recomputes the scores
 * (and dP) over the full head dims from shared memory, so no register array grows with the head dim. */
typedef struct {
    int bf;                 /* 1: bfloat16, 0: float16 */
    int dc;                 /* output chunk columns: 64 (both head dims <= 64) or 128 */
    int dkw, dvw;           /* shared-memory widths of q/k and v rows: D, Dv rounded up to a multiple of dc */
    int dk16, dv16;         /* D, Dv rounded up to 16: the k-steps of the score and dP products */
    int stride_k, stride_v; /* shared row strides in halves: dkw + DR_TC_PAD, dvw + DR_TC_PAD */
    int fwd_warps, bk;      /* forward: warps per block (2 for Lq <= 32, else 4), keys per tile (32 or 64) */
    int dq_warps, kv_warps; /* dQ warps per block (as fwd_warps), dK/dV key groups (2 for Lk <= 32, else 4) */
    int kv_slices;          /* dK/dV query slices: min(4, query tiles) for Lk <= 32, else 1 */
    int nchunk_o, nchunk_q, nchunk_kv;
    int64_t fwd_blocks, dq_blocks, kv_blocks; /* x extent of each grid */
} dr_tc_plan;

static inline int dr_tc_round(int64_t x, int m) { return (int)((x + m - 1) / m * m); }

/* The plan of attention args `a` (data float16/bfloat16). O(1), the same on both launchers. */
static inline void dr_tc_make_plan(const dr_attn_args *a, dr_tc_plan *p) {
    p->bf = a->dtype == DR_BFLOAT16;
    p->dc = (a->D <= 64 && a->Dv <= 64) ? 64 : 128;
    p->dkw = dr_tc_round(a->D, p->dc), p->dvw = dr_tc_round(a->Dv, p->dc);
    p->dk16 = dr_tc_round(a->D, 16), p->dv16 = dr_tc_round(a->Dv, 16);
    p->stride_k = p->dkw + DR_TC_PAD, p->stride_v = p->dvw + DR_TC_PAD;
    p->fwd_warps = a->Lq <= 32 ? 2 : 4;
    p->bk = a->Lk <= 32 ? 32 : 64;
    p->dq_warps = p->fwd_warps;
    p->kv_warps = a->Lk <= 32 ? 2 : 4;
    {
        const int64_t qt = (a->Lq + DR_TC_BQB - 1) / DR_TC_BQB;
        p->kv_slices = a->Lk > 32 ? 1 : qt >= 4 ? 4 : qt < 1 ? 1 : (int)qt;
    }
    p->nchunk_o = p->dvw / p->dc, p->nchunk_q = p->dkw / p->dc;
    p->nchunk_kv = p->nchunk_o > p->nchunk_q ? p->nchunk_o : p->nchunk_q;
    p->fwd_blocks = (a->Lq + 16 * p->fwd_warps - 1) / (16 * p->fwd_warps);
    p->dq_blocks = (a->Lq + 16 * p->dq_warps - 1) / (16 * p->dq_warps);
    p->kv_blocks = (a->Lk + 16 * p->kv_warps - 1) / (16 * p->kv_warps);
}

/* Shared memory (bytes) of each kernel's block; the layouts are in the kernels' comments, this is their size. */
static inline size_t dr_tc_smem_fwd(const dr_tc_plan *p) {
    /* Q rows of the block, one key tile of K and of V */
    return 2 * ((size_t)16 * p->fwd_warps * p->stride_k + (size_t)p->bk * p->stride_k + (size_t)p->bk * p->stride_v);
}
static inline size_t dr_tc_smem_dq(const dr_tc_plan *p) {
    /* Q and dO rows of the block, one key tile of K and of V, then lse and delta of the block's rows (float) */
    const size_t rows = (size_t)16 * p->dq_warps;
    return 2 * (rows * p->stride_k + rows * p->stride_v + (size_t)DR_TC_BKQ * (p->stride_k + p->stride_v)) +
           4 * 2 * rows;
}
static inline size_t dr_tc_smem_kv(const dr_tc_plan *p) {
    /* K and V rows of the block, one query tile of Q and of dO per slice, then lse and delta of those rows (float);
     * at the end, with slices, the reduction buffer of dr_tc_red_* over the same memory */
    const size_t rows = (size_t)16 * p->kv_warps, qrows = (size_t)DR_TC_BQB * p->kv_slices;
    const size_t tiles = 2 * (rows * (p->stride_k + p->stride_v) + qrows * (p->stride_k + p->stride_v)) + 4 * 2 * qrows;
    const size_t red = p->kv_slices > 1 ? (size_t)4 * 2 * rows * p->dc : 0;
    return tiles > red ? tiles : red;
}

/* ---- fragment maps ------------------------------------------------------------------------------------------ */

DR_HD static inline int dr_tc_a_row(int lane, int e) { return (lane >> 2) + (((e >> 1) & 1) << 3); }
DR_HD static inline int dr_tc_a_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1) + ((e >> 2) << 3); }
DR_HD static inline int dr_tc_b_row(int lane, int e) { return ((lane & 3) << 1) + (e & 1) + ((e >> 1) << 3); }
DR_HD static inline int dr_tc_b_col(int lane, int e) { return (lane >> 2) + 0 * e; }
DR_HD static inline int dr_tc_c_row(int lane, int e) { return (lane >> 2) + ((e >> 1) << 3); }
DR_HD static inline int dr_tc_c_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1); }

/* ---- 16-bit values ------------------------------------------------------------------------------------------ */

DR_HD static inline float dr_tc_h2f(uint16_t h, int bf) { return bf ? dr_bf16_to_f32(h) : dr_f16_to_f32(h); }
DR_HD static inline uint16_t dr_tc_f2h(float f, int bf) { return bf ? dr_f32_to_bf16(f) : dr_f32_to_f16(f); }
/* Two values rounded to the 16-bit type (nearest even), `lo` in the low half: one register of an A fragment. */
DR_HD static inline uint32_t dr_tc_pack(float lo, float hi, int bf) {
    return (uint32_t)dr_tc_f2h(lo, bf) | ((uint32_t)dr_tc_f2h(hi, bf) << 16);
}

/* ---- cooperative copies global -> shared -------------------------------------------------------------------- */

/* Copy rows [r0, r0 + rows) of a [n, cols] matrix (element (r, c) at src[r * rs + c * cs]) to shared rows of
 * `width` halves (stride `stride`), zero beyond n rows and beyond `cols` columns. Thread `tid` of `nthr` copies
 * elements tid, tid + nthr, ... of the tile in row-major order. */
DR_HD static inline void dr_tc_fill(uint16_t *dst, int stride, int rows, int width, const uint16_t *src, int64_t rs,
                                    int64_t cs, int64_t r0, int64_t n, int64_t cols, int tid, int nthr) {
    for (int e = tid; e < rows * width; e += nthr) {
        const int r = e / width, c = e % width;
        uint16_t x = 0;
        if (r0 + r < n && c < cols)
            x = src[(r0 + r) * rs + c * cs];
        dst[r * stride + c] = x;
    }
}

/* ---- fragment loads from shared memory ---------------------------------------------------------------------- */

/* Two consecutive halves (s 4-byte aligned: even offsets, even strides), the first in the low half. */
DR_HD static inline uint32_t dr_tc_ld2(const uint16_t *s) {
#ifdef __CUDA_ARCH__
    return *(const uint32_t *)s;
#else
    return (uint32_t)s[0] | ((uint32_t)s[1] << 16);
#endif
}

/* A fragment of the 16x16 block at (m0, k0) of a row-major matrix in shared memory (element (m, k) at
 * s[m * stride + k]). */
DR_HD static inline void dr_tc_load_a(const uint16_t *s, int stride, int m0, int k0, int lane, uint32_t a[4]) {
    DR_TC_UNROLL
    for (int r = 0; r < 4; r++)
        a[r] = dr_tc_ld2(s + (m0 + dr_tc_a_row(lane, 2 * r)) * stride + k0 + dr_tc_a_col(lane, 2 * r));
}
/* B fragment of the 16x8 block at (k0, n0) of a matrix stored n-major (element (k, n) at s[n * stride + k]). */
DR_HD static inline void dr_tc_load_b_nk(const uint16_t *s, int stride, int k0, int n0, int lane, uint32_t b[2]) {
    DR_TC_UNROLL
    for (int r = 0; r < 2; r++)
        b[r] = dr_tc_ld2(s + (n0 + dr_tc_b_col(lane, 2 * r)) * stride + k0 + dr_tc_b_row(lane, 2 * r));
}
/* B fragment of the 16x8 block at (k0, n0) of a matrix stored k-major (element (k, n) at s[k * stride + n]). */
DR_HD static inline void dr_tc_load_b_kn(const uint16_t *s, int stride, int k0, int n0, int lane, uint32_t b[2]) {
    DR_TC_UNROLL
    for (int r = 0; r < 2; r++) {
        const int k = k0 + dr_tc_b_row(lane, 2 * r), n = n0 + dr_tc_b_col(lane, 2 * r);
        b[r] = (uint32_t)s[k * stride + n] | ((uint32_t)s[(k + 1) * stride + n] << 16);
    }
}

/* A fragment of the 16x16 block made of C tiles c0 (columns 0-7) and c1 (columns 8-15): the accumulator layout of
 * two adjacent n-tiles is the A layout of one k-step, so P and dS feed the next MMA without shared memory. */
DR_HD static inline void dr_tc_c_to_a(const float c0[4], const float c1[4], int bf, uint32_t a[4]) {
    a[0] = dr_tc_pack(c0[0], c0[1], bf);
    a[1] = dr_tc_pack(c0[2], c0[3], bf);
    a[2] = dr_tc_pack(c1[0], c1[1], bf);
    a[3] = dr_tc_pack(c1[2], c1[3], bf);
}

/* ---- scores, softmax, gradients ----------------------------------------------------------------------------- */

/* Score of query i, key j of (b, h) from the raw dot product: dot * scale + mask term; -inf outside the matrix
 * (padding of the last tiles), where the mask is never read. */
DR_HD static inline float dr_tc_score(const dr_attn_args *a, int64_t b, int64_t h, int64_t i, int64_t j, float dot) {
    if (i >= a->Lq || j >= a->Lk)
        return -INFINITY;
    return dot * (float)a->scale + (float)dr_attn_mask_term(a, b, h, i, j);
}

/* Larger of two values, NaN winning (a row with a NaN score has a NaN max, hence NaN weights, as in PyTorch). */
DR_HD static inline float dr_tc_max(float x, float y) { return x > y || x != x ? x : y; }

/* Online-softmax step of one row: running max m (updated), tile max mt; returns the factor exp(m_old - m_new)
 * that rescales the running sum and the output accumulator (1 while every score so far is -inf). */
DR_HD static inline float dr_tc_rescale(float *m, float mt) {
    const float mn = dr_tc_max(*m, mt);
    const float corr = mn == -INFINITY ? 1.0f : expf(*m - mn);
    *m = mn;
    return corr;
}

/* Weight of a score under running max m: exp(s - m), 0 while the row has no live key. */
DR_HD static inline float dr_tc_weight(float s, float m) { return m == -INFINITY ? 0.0f : expf(s - m); }

/* 1 / l for the output (0 for a row whose keys are all masked) and the row's log-sum-exp. */
DR_HD static inline float dr_tc_inv_sum(float l) { return l > 0 ? 1.0f / l : 0.0f; }
DR_HD static inline float dr_tc_lse(float m, float l) { return l > 0 ? m + logf(l) : l == 0 ? -INFINITY : NAN; }

/* Probability of a score in the backward: exp(s - lse), 0 for a row whose keys are all masked (lse = -inf). */
DR_HD static inline float dr_tc_prob(float s, float lse) { return lse == -INFINITY ? 0.0f : expf(s - lse); }

/* dS = P (dP - delta); exactly 0 with one key (Lk = 1: the softmax is constant, whatever the rounding of dP, a
 * tensor-core sum, and delta, a sequential one), as the CPU kernels give. */
DR_HD static inline float dr_tc_dscore(const dr_attn_args *a, float p, float dp, float delta) {
    return a->Lk == 1 ? 0.0f : p * (dp - delta);
}

/* lse and delta = dO . O (float32, in order of the columns) of query row i of (b, h); lse = -inf and delta = 0
 * past the last row, so padded rows give zero weights. */
DR_HD static inline void dr_tc_row_stats(const dr_attn_args *a, int64_t b, int64_t h, int64_t i, int bf, float *lse,
                                         float *delta) {
    if (i >= a->Lq) {
        *lse = -INFINITY, *delta = 0.0f;
        return;
    }
    *lse = ((const float *)a->lse_in)[b * a->lse_s[0] + h * a->lse_s[1] + i * a->lse_s[2]];
    const uint16_t *o = (const uint16_t *)a->o + b * a->o_s[0] + h * a->o_s[1] + i * a->o_s[2];
    const uint16_t *g = (const uint16_t *)a->dout + b * a->do_s[0] + h * a->do_s[1] + i * a->do_s[2];
    float s = 0.0f;
    for (int64_t d = 0; d < a->Dv; d++)
        s += dr_tc_h2f(o[d * a->o_s[3]], bf) * dr_tc_h2f(g[d * a->do_s[3]], bf);
    *delta = s;
}

/* Store accumulator tile `c` (rows m0.., columns n0..) times `mul` into a [rows, cols] output through its strides
 * (element (r, c) at dst[r * rs + c * cs]), skipping rows >= n and columns >= cols. */
DR_HD static inline void dr_tc_store_c(uint16_t *dst, int64_t rs, int64_t cs, int64_t m0, int64_t n, int n0,
                                       int64_t cols, const float c[4], float mul_lo, float mul_hi, int lane, int bf) {
    DR_TC_UNROLL
    for (int e = 0; e < 4; e++) {
        const int64_t r = m0 + dr_tc_c_row(lane, e), col = n0 + dr_tc_c_col(lane, e);
        if (r < n && col < cols)
            dst[r * rs + col * cs] = dr_tc_f2h(c[e] * (e < 2 ? mul_lo : mul_hi), bf);
    }
}

/* ---- per-lane tile steps (the kernels and the emulation call these between their MMAs and quad reductions) -- */

/* Tiles of t covering n rows: the trip count of every tile loop. */
DR_HD static inline int64_t dr_tc_ntiles(int64_t n, int t) { return (n + t - 1) / t; }

/* Forward, after S = Q K^T of one key tile: the lane's nkt score tiles (rows r0 + c_row, keys k0 + 8 n + c_col)
 * fixed up in place (scale, mask, bounds) and the lane's maxima of its two rows in mt (quad-reduced next). */
DR_HD static inline void dr_tc_fwd_scores(const dr_attn_args *a, int64_t b, int64_t h, int64_t r0, int64_t k0,
                                          int lane, float (*s)[4], int nkt, float mt[2]) {
    mt[0] = mt[1] = -INFINITY;
    DR_TC_UNROLL
    for (int n = 0; n < nkt; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++) {
            const float x =
                dr_tc_score(a, b, h, r0 + dr_tc_c_row(lane, e), k0 + 8 * n + dr_tc_c_col(lane, e), s[n][e]);
            s[n][e] = x;
            mt[e >> 1] = dr_tc_max(mt[e >> 1], x);
        }
}

/* Forward, after the quad max mt of the tile: the online-softmax step of the lane's two rows — running max m and
 * (lane-partial) sum l rescaled, scores turned into weights P = exp(s - m) in place (summed into l in tile
 * order), the nt output tiles o rescaled. */
DR_HD static inline void dr_tc_fwd_softmax(float (*s)[4], int nkt, const float mt[2], float m[2], float l[2],
                                           float (*o)[4], int nt) {
    float corr[2];
    DR_TC_UNROLL
    for (int hh = 0; hh < 2; hh++) {
        corr[hh] = dr_tc_rescale(&m[hh], mt[hh]);
        l[hh] *= corr[hh];
    }
    DR_TC_UNROLL
    for (int n = 0; n < nkt; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++) {
            const float pw = dr_tc_weight(s[n][e], m[e >> 1]);
            s[n][e] = pw;
            l[e >> 1] += pw;
        }
    DR_TC_UNROLL
    for (int n = 0; n < nt; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++)
            o[n][e] *= corr[e >> 1];
}

/* Forward, after the quad sum l: the lane's output elements of rows r0 + c_row, columns col0 + 8 n + c_col,
 * divided by the row sums, and (chunk 0, first lane of a quad) the rows' log-sum-exp. */
DR_HD static inline void dr_tc_fwd_store(const dr_attn_args *a, int64_t b, int64_t h, int64_t r0, int col0,
                                         int store_lse, int lane, float (*o)[4], int nt, const float m[2],
                                         const float l[2], int bf) {
    uint16_t *out = (uint16_t *)a->out + b * a->o_s[0] + h * a->o_s[1];
    const float inv0 = dr_tc_inv_sum(l[0]), inv1 = dr_tc_inv_sum(l[1]);
    DR_TC_UNROLL
    for (int n = 0; n < nt; n++)
        dr_tc_store_c(out, a->o_s[2], a->o_s[3], r0, a->Lq, col0 + 8 * n, a->Dv, o[n], inv0, inv1, lane, bf);
    if (store_lse && (lane & 3) == 0) {
        DR_TC_UNROLL
        for (int hh = 0; hh < 2; hh++) {
            const int64_t i = r0 + (lane >> 2) + 8 * hh;
            if (i < a->Lq)
                ((float *)a->lse)[b * a->lse_s[0] + h * a->lse_s[1] + i * a->lse_s[2]] = dr_tc_lse(m[hh], l[hh]);
        }
    }
}

/* dQ, after S = Q K^T and dP = dO V^T of one key tile: dS = P (dP - delta) in s, P = exp(S - lse) of the lane's
 * rows (warp row m0 + c_row of the block's rows from q0; lse and delta of the block's rows in shared memory). */
DR_HD static inline void dr_tc_dq_dscores(const dr_attn_args *a, int64_t b, int64_t h, int64_t q0, int m0,
                                          int64_t k0, int lane, float (*s)[4], float (*dp)[4], int nk, const float *lse_s,
                                          const float *delta_s) {
    DR_TC_UNROLL
    for (int n = 0; n < nk; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++) {
            const int r = m0 + dr_tc_c_row(lane, e);
            const float sc = dr_tc_score(a, b, h, q0 + r, k0 + 8 * n + dr_tc_c_col(lane, e), s[n][e]);
            s[n][e] = dr_tc_dscore(a, dr_tc_prob(sc, lse_s[r]), dp[n][e], delta_s[r]);
        }
}

/* dK/dV, after S^T = K Q^T and dP^T = V dO^T of one query tile (keys kr0 + c_row, queries q0 + 8 n + c_col; lse
 * and delta of the tile's queries in shared memory): P^T in s, dS^T = P^T (dP^T - delta) in dp. */
DR_HD static inline void dr_tc_kv_dscores(const dr_attn_args *a, int64_t b, int64_t h, int64_t q0, int64_t kr0,
                                          int lane, float (*s)[4], float (*dp)[4], int nq, const float *lse_s,
                                          const float *delta_s) {
    DR_TC_UNROLL
    for (int n = 0; n < nq; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++) {
            const int c = 8 * n + dr_tc_c_col(lane, e);
            const float sc = dr_tc_score(a, b, h, q0 + c, kr0 + dr_tc_c_row(lane, e), s[n][e]);
            const float pr = dr_tc_prob(sc, lse_s[c]);
            s[n][e] = pr;
            dp[n][e] = dr_tc_dscore(a, pr, dp[n][e], delta_s[c]);
        }
}

/* The dK/dV slices' reduction: a warp of slice s > 0 stores its nt accumulator tiles (rows m0 + c_row, columns
 * 8 n + c_col of a [16 * key groups][dc] float buffer), the warp of slice 0 with the same key rows adds them, for
 * s = 1, 2, ... in order (a barrier between the two). */
DR_HD static inline void dr_tc_red_store(float *red, int dc, int m0, int lane, float (*acc)[4], int nt) {
    DR_TC_UNROLL
    for (int n = 0; n < nt; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++)
            red[(m0 + dr_tc_c_row(lane, e)) * dc + 8 * n + dr_tc_c_col(lane, e)] = acc[n][e];
}
DR_HD static inline void dr_tc_red_add(const float *red, int dc, int m0, int lane, float (*acc)[4], int nt) {
    DR_TC_UNROLL
    for (int n = 0; n < nt; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++)
            acc[n][e] += red[(m0 + dr_tc_c_row(lane, e)) * dc + 8 * n + dr_tc_c_col(lane, e)];
}

/* ---- the emulation's entry points (csrc/core/attn_tc_emulate.c); float16/bfloat16 CPU tensors ------------- */

#ifdef __cplusplus
extern "C" {
#endif
/* The tensor-core kernels' block schedule and tiles run on the CPU with 32 emulated lanes per warp and an
 * emulated mma.m16n8k16 (16-bit operands, float32 accumulation). Same contracts as dr_attention_forward_cpu and
 * dr_attention_backward_cpu for float16/bfloat16 data. For tests: O(the GPU's work), single-threaded. */
dr_status dr_attention_tc_forward_emulated(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                           const dr_tensor *mask, dr_tensor *o, dr_tensor *lse,
                                           const dr_attention_params *p);
dr_status dr_attention_tc_backward_emulated(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                            const dr_tensor *mask, const dr_tensor *o, const dr_tensor *lse,
                                            const dr_tensor *dout, dr_tensor *dq, dr_tensor *dk, dr_tensor *dv,
                                            const dr_attention_params *p);

/* The CUDA kernels (csrc/cuda/attention_tc.cu), called by the CUDA attention launchers (csrc/cuda/attention.cu)
 * with checked args: 1 if the tensor-core kernels take this call (float16/bfloat16 data on a device of compute
 * capability 8.0 or more whose shared memory holds the plan's tiles), then the launches on `stream`. */
int dr_attention_tc_supported(const dr_attn_args *a, int device);
dr_status dr_attention_tc_forward_launch(const dr_attn_args *a, void *stream);
dr_status dr_attention_tc_backward_launch(const dr_attn_args *a, void *stream);
#ifdef __cplusplus
}
#endif

#endif /* DR_ATTENTION_TILE_H */
