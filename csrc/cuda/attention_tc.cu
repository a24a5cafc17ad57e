/* attention_tc.cu — fused flash attention on tensor cores (mma.sync.aligned.m16n8k16 through inline PTX) for
 * float16 and bfloat16 data on sm_80 and later, float32 accumulation. Forward and a deterministic backward; the
 * tile math, fragment maps, plan and bounds are dr_attention_tile.h's, which csrc/core/attn_tc_emulate.c runs on
 * the CPU with the same schedule (tests/test_attention_tc.py), so the indexing below is checked without a GPU.
 *
 * Forward (grid: query tiles x B*H, Dv chunks): a block of W warps (W = 2 when Lq <= 32, the Q-Former's short
 * queries, else 4) holds 16 query rows per warp in shared memory and walks the keys in tiles of 32 (Lk <= 32, the
 * tag decoder's 32 queries-as-keys) or 64: S = Q K^T on tensor cores (k-steps over the head dim from shared
 * memory), scale, mask (read through its broadcast strides), online softmax with the running max and sum of the
 * lane's two rows (quad shuffles), P re-packed from the accumulators into A fragments, O += P V. A block owns one
 * chunk of dc = 64 or 128 output columns (head dims up to 256 take two chunks, each recomputing S), so no register
 * array depends on the head dim; head dims are padded to the tile in shared memory only.
 * Backward, two kernels, no atomics (deterministic, bitwise repeatable):
 *   dQ    (grid: query tiles x B*H, D chunks): warps own 16 query rows; key tiles of 32; recompute S and
 *         dP = dO V^T, dS = P (dP - delta) with P = exp(S - lse), dQ += dS K;
 *   dK/dV (grid: key tiles x B*Hk, chunks): warps own 16 key rows (transposed products S^T = K Q^T,
 *         dP^T = V dO^T) and loop over every query head of the group and its query tiles of 32 in order:
 *         dV += P^T dO, dK += dS^T Q. With Lk <= 32 (few keys, many queries: a block alone owns the keys) up
 *         to 4 query slices of warps share the query tiles round-robin and their sums are added in slice order
 *         through shared memory at the end (dr_tc_red_*), still without atomics.
 *   delta = dO . O and lse of a query tile are computed into shared memory by the block (the same float32
 *   arithmetic in both kernels). No scratch memory, no host synchronisation, nothing allocated: the outputs only.
 * float32 and float64 data keep the CUDA-core kernels of attention.cu (exact float32 products; no TF32).
 */
#include "dr_attention_tile.h"
#include "runtime.cuh"

template <int BF> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    if (BF)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* The quad butterflies (lanes 4g..4g+3 hold the same two rows): the emulation's emu_quad_max / emu_quad_sum. */
__device__ __forceinline__ float quad_max(float x) {
    x = dr_tc_max(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return dr_tc_max(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x = x + __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* c[n] (n < N) += A Bᵀ over k < kend: A the warp's 16 rows of As from m0, B the 8 N rows of Bs (both k along the
 * row): the S = Q Kᵀ and dP = dO Vᵀ steps (the emulation's emu_mma_abt). */
template <int BF, int N>
__device__ __forceinline__ void mma_abt(const uint16_t *As, int sa, int m0, const uint16_t *Bs, int sb, int kend,
                                        int lane, float (&c)[N][4]) {
    for (int ks = 0; ks < kend; ks += 16) {
        uint32_t fa[4], fb[2];
        dr_tc_load_a(As, sa, m0, ks, lane, fa);
        DR_TC_UNROLL
        for (int n = 0; n < N; n++) {
            dr_tc_load_b_nk(Bs, sb, ks, 8 * n, lane, fb);
            mma16816<BF>(c[n], fa, fb);
        }
    }
}

/* c[n] (n < N) += P B: P the 16x16 tile whose accumulator fragments are p0, p1 (columns 16 kk..), B rows 16 kk.. of
 * Bs from column col0: the P V, dS K, Pᵀ dO and dSᵀ Q steps (the emulation's emu_mma_pb). */
template <int BF, int N>
__device__ __forceinline__ void mma_pb(const float (&p0)[4], const float (&p1)[4], const uint16_t *Bs, int sb, int kk,
                                       int col0, int lane, float (&c)[N][4]) {
    uint32_t fa[4], fb[2];
    dr_tc_c_to_a(p0, p1, BF, fa);
    DR_TC_UNROLL
    for (int n = 0; n < N; n++) {
        dr_tc_load_b_kn(Bs, sb, 16 * kk, col0 + 8 * n, lane, fb);
        mma16816<BF>(c[n], fa, fb);
    }
}

#define QPTR(ptr, s, b, h) ((const uint16_t *)(ptr) + (b) * (s)[0] + (h) * (s)[1])

/* ---- forward ------------------------------------------------------------------------------------------------ */

/* Shared memory: Q [16 W rows][stride_k], K [bk][stride_k], V [bk][stride_v] (halves). */
template <int BF, int NT, int NKT>
__global__ void __launch_bounds__(128) attn_tc_fwd(const dr_attn_args a, const dr_tc_plan p) {
    extern __shared__ __align__(16) uint16_t smem[];
    const int W = p.fwd_warps, nthr = 32 * W, rows = 16 * W, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int64_t bx = blockIdx.x % p.fwd_blocks, bh = blockIdx.x / p.fwd_blocks;
    const int chunk = blockIdx.z;
    const int64_t b = bh / a.H, h = bh % a.H, hk = h / a.G, q0 = bx * rows;
    const int BK = 8 * NKT;
    uint16_t *Qs = smem, *Ks = Qs + rows * p.stride_k, *Vs = Ks + BK * p.stride_k;
    dr_tc_fill(Qs, p.stride_k, rows, p.dkw, QPTR(a.q, a.q_s, b, h), a.q_s[2], a.q_s[3], q0, a.Lq, a.D, tid, nthr);
    float o[NT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    DR_TC_UNROLL
    for (int n = 0; n < NT; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    const int m0 = 16 * w;
    const int64_t ntiles = dr_tc_ntiles(a.Lk, BK);
    for (int64_t kt = 0; kt < ntiles; kt++) {
        const int64_t k0 = kt * BK;
        __syncthreads(); /* the previous tile's readers are done */
        dr_tc_fill(Ks, p.stride_k, BK, p.dkw, QPTR(a.k, a.k_s, b, hk), a.k_s[2], a.k_s[3], k0, a.Lk, a.D, tid, nthr);
        dr_tc_fill(Vs, p.stride_v, BK, p.dvw, QPTR(a.v, a.v_s, b, hk), a.v_s[2], a.v_s[3], k0, a.Lk, a.Dv, tid, nthr);
        __syncthreads();
        float s[NKT][4];
        DR_TC_UNROLL
        for (int n = 0; n < NKT; n++)
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        mma_abt<BF>(Qs, p.stride_k, m0, Ks, p.stride_k, p.dk16, lane, s);
        float mt[2];
        dr_tc_fwd_scores(&a, b, h, q0 + m0, k0, lane, s, NKT, mt);
        mt[0] = quad_max(mt[0]);
        mt[1] = quad_max(mt[1]);
        dr_tc_fwd_softmax(s, NKT, mt, m, l, o, NT);
        DR_TC_UNROLL
        for (int kk = 0; kk < NKT / 2; kk++)
            mma_pb<BF>(s[2 * kk], s[2 * kk + 1], Vs, p.stride_v, kk, chunk * p.dc, lane, o);
    }
    l[0] = quad_sum(l[0]);
    l[1] = quad_sum(l[1]);
    dr_tc_fwd_store(&a, b, h, q0 + m0, chunk * p.dc, chunk == 0, lane, o, NT, m, l, BF);
}

/* ---- backward: dQ ------------------------------------------------------------------------------------------- */

/* Shared memory: Q [16 W][stride_k], dO [16 W][stride_v], K [32][stride_k], V [32][stride_v] (halves), then lse
 * and delta [16 W] (float). */
template <int BF, int NT> __global__ void __launch_bounds__(128) attn_tc_dq(const dr_attn_args a, const dr_tc_plan p) {
    extern __shared__ __align__(16) uint16_t smem[];
    const int W = p.dq_warps, nthr = 32 * W, rows = 16 * W, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int64_t bx = blockIdx.x % p.dq_blocks, bh = blockIdx.x / p.dq_blocks;
    const int chunk = blockIdx.z;
    const int64_t b = bh / a.H, h = bh % a.H, hk = h / a.G, q0 = bx * rows;
    constexpr int NK = DR_TC_BKQ / 8;
    uint16_t *Qs = smem, *Os = Qs + rows * p.stride_k, *Ks = Os + rows * p.stride_v, *Vs = Ks + DR_TC_BKQ * p.stride_k;
    float *lse_s = (float *)(Vs + DR_TC_BKQ * p.stride_v), *delta_s = lse_s + rows;
    dr_tc_fill(Qs, p.stride_k, rows, p.dkw, QPTR(a.q, a.q_s, b, h), a.q_s[2], a.q_s[3], q0, a.Lq, a.D, tid, nthr);
    dr_tc_fill(Os, p.stride_v, rows, p.dvw, QPTR(a.dout, a.do_s, b, h), a.do_s[2], a.do_s[3], q0, a.Lq, a.Dv, tid,
               nthr);
    if (tid < rows)
        dr_tc_row_stats(&a, b, h, q0 + tid, BF, &lse_s[tid], &delta_s[tid]);
    float acc[NT][4];
    DR_TC_UNROLL
    for (int n = 0; n < NT; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int m0 = 16 * w;
    const int64_t ntiles = dr_tc_ntiles(a.Lk, DR_TC_BKQ);
    for (int64_t kt = 0; kt < ntiles; kt++) {
        const int64_t k0 = kt * DR_TC_BKQ;
        __syncthreads();
        dr_tc_fill(Ks, p.stride_k, DR_TC_BKQ, p.dkw, QPTR(a.k, a.k_s, b, hk), a.k_s[2], a.k_s[3], k0, a.Lk, a.D, tid,
                   nthr);
        dr_tc_fill(Vs, p.stride_v, DR_TC_BKQ, p.dvw, QPTR(a.v, a.v_s, b, hk), a.v_s[2], a.v_s[3], k0, a.Lk, a.Dv,
                   tid, nthr);
        __syncthreads();
        float s[NK][4], dp[NK][4];
        DR_TC_UNROLL
        for (int n = 0; n < NK; n++)
            DR_TC_UNROLL
            for (int e = 0; e < 4; e++)
                s[n][e] = dp[n][e] = 0.0f;
        mma_abt<BF>(Qs, p.stride_k, m0, Ks, p.stride_k, p.dk16, lane, s);
        mma_abt<BF>(Os, p.stride_v, m0, Vs, p.stride_v, p.dv16, lane, dp);
        dr_tc_dq_dscores(&a, b, h, q0, m0, k0, lane, s, dp, NK, lse_s, delta_s);
        DR_TC_UNROLL
        for (int kk = 0; kk < NK / 2; kk++)
            mma_pb<BF>(s[2 * kk], s[2 * kk + 1], Ks, p.stride_k, kk, chunk * p.dc, lane, acc);
    }
    uint16_t *dq = (uint16_t *)a.dq + b * a.dq_s[0] + h * a.dq_s[1];
    const float sc = (float)a.scale;
    DR_TC_UNROLL
    for (int n = 0; n < NT; n++)
        dr_tc_store_c(dq, a.dq_s[2], a.dq_s[3], q0 + m0, a.Lq, chunk * p.dc + 8 * n, a.D, acc[n], sc, sc, lane, BF);
}

/* ---- backward: dK, dV --------------------------------------------------------------------------------------- */

/* Warps: key group kg = w % kv_warps (16 key rows), query slice w / kv_warps. Shared memory: K [16 kv_warps]
 * [stride_k], V [16 kv_warps][stride_v], Q [32 slices][stride_k], dO [32 slices][stride_v] (halves), then lse and
 * delta [32 slices] (float); with slices, the reduction buffer [2][16 kv_warps][dc] (float) over it at the end. */
template <int BF, int NT> __global__ void __launch_bounds__(256) attn_tc_dkv(const dr_attn_args a, const dr_tc_plan p) {
    extern __shared__ __align__(16) uint16_t smem[];
    const int KG = p.kv_warps, QS = p.kv_slices, nthr = 32 * KG * QS, rows = 16 * KG, qrows = DR_TC_BQB * QS;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, sl = w / KG;
    const int64_t bx = blockIdx.x % p.kv_blocks, bhk = blockIdx.x / p.kv_blocks;
    const int chunk = blockIdx.z;
    const int64_t b = bhk / a.Hk, hk = bhk % a.Hk, k0 = bx * rows;
    const bool do_k = chunk < p.nchunk_q, do_v = chunk < p.nchunk_o;
    constexpr int NQ = DR_TC_BQB / 8;
    uint16_t *Ks = smem, *Vs = Ks + rows * p.stride_k, *Qs = Vs + rows * p.stride_v, *Os = Qs + qrows * p.stride_k;
    float *lse_s = (float *)(Os + qrows * p.stride_v), *delta_s = lse_s + qrows;
    const uint16_t *Qw = Qs + sl * DR_TC_BQB * p.stride_k, *Ow = Os + sl * DR_TC_BQB * p.stride_v;
    const float *lse_w = lse_s + sl * DR_TC_BQB, *delta_w = delta_s + sl * DR_TC_BQB;
    dr_tc_fill(Ks, p.stride_k, rows, p.dkw, QPTR(a.k, a.k_s, b, hk), a.k_s[2], a.k_s[3], k0, a.Lk, a.D, tid, nthr);
    dr_tc_fill(Vs, p.stride_v, rows, p.dvw, QPTR(a.v, a.v_s, b, hk), a.v_s[2], a.v_s[3], k0, a.Lk, a.Dv, tid, nthr);
    float gk[NT][4], gv[NT][4];
    DR_TC_UNROLL
    for (int n = 0; n < NT; n++)
        DR_TC_UNROLL
        for (int e = 0; e < 4; e++)
            gk[n][e] = gv[n][e] = 0.0f;
    const int m0 = 16 * (w % KG);
    const int64_t ntiles = dr_tc_ntiles(a.Lq, DR_TC_BQB);
    for (int64_t h = hk * a.G; h < (hk + 1) * a.G; h++)
        for (int64_t qt = 0; qt < ntiles; qt += QS) {
            const int64_t q0 = (qt + sl) * DR_TC_BQB;
            __syncthreads();
            dr_tc_fill(Qs, p.stride_k, qrows, p.dkw, QPTR(a.q, a.q_s, b, h), a.q_s[2], a.q_s[3], qt * DR_TC_BQB, a.Lq,
                       a.D, tid, nthr);
            dr_tc_fill(Os, p.stride_v, qrows, p.dvw, QPTR(a.dout, a.do_s, b, h), a.do_s[2], a.do_s[3],
                       qt * DR_TC_BQB, a.Lq, a.Dv, tid, nthr);
            if (tid < qrows)
                dr_tc_row_stats(&a, b, h, qt * DR_TC_BQB + tid, BF, &lse_s[tid], &delta_s[tid]);
            __syncthreads();
            float s[NQ][4], dp[NQ][4];
            DR_TC_UNROLL
            for (int n = 0; n < NQ; n++)
                DR_TC_UNROLL
                for (int e = 0; e < 4; e++)
                    s[n][e] = dp[n][e] = 0.0f;
            mma_abt<BF>(Ks, p.stride_k, m0, Qw, p.stride_k, p.dk16, lane, s);
            mma_abt<BF>(Vs, p.stride_v, m0, Ow, p.stride_v, p.dv16, lane, dp);
            dr_tc_kv_dscores(&a, b, h, q0, k0 + m0, lane, s, dp, NQ, lse_w, delta_w);
            DR_TC_UNROLL
            for (int kk = 0; kk < NQ / 2; kk++) {
                if (do_v)
                    mma_pb<BF>(s[2 * kk], s[2 * kk + 1], Ow, p.stride_v, kk, chunk * p.dc, lane, gv);
                if (do_k)
                    mma_pb<BF>(dp[2 * kk], dp[2 * kk + 1], Qw, p.stride_k, kk, chunk * p.dc, lane, gk);
            }
        }
    /* the slices' sums into slice 0, in slice order, through shared memory (the tiles are done with) */
    float *red_k = (float *)smem, *red_v = red_k + rows * p.dc;
    for (int t = 1; t < QS; t++) {
        __syncthreads();
        if (sl == t) {
            dr_tc_red_store(red_k, p.dc, m0, lane, gk, NT);
            dr_tc_red_store(red_v, p.dc, m0, lane, gv, NT);
        }
        __syncthreads();
        if (sl == 0) {
            dr_tc_red_add(red_k, p.dc, m0, lane, gk, NT);
            dr_tc_red_add(red_v, p.dc, m0, lane, gv, NT);
        }
    }
    if (sl != 0)
        return;
    uint16_t *dk = (uint16_t *)a.dk + b * a.dk_s[0] + hk * a.dk_s[1];
    uint16_t *dv = (uint16_t *)a.dv + b * a.dv_s[0] + hk * a.dv_s[1];
    const float sc = (float)a.scale;
    DR_TC_UNROLL
    for (int n = 0; n < NT; n++) {
        if (do_k)
            dr_tc_store_c(dk, a.dk_s[2], a.dk_s[3], k0 + m0, a.Lk, chunk * p.dc + 8 * n, a.D, gk[n], sc, sc, lane, BF);
        if (do_v)
            dr_tc_store_c(dv, a.dv_s[2], a.dv_s[3], k0 + m0, a.Lk, chunk * p.dc + 8 * n, a.Dv, gv[n], 1.0f, 1.0f, lane,
                          BF);
    }
}

/* ---- launchers ---------------------------------------------------------------------------------------------- */

/* Raise the kernel's dynamic shared-memory limit when the plan needs more than the default 48 KB, and launch. */
template <typename K>
static dr_status launch(K kernel, int64_t blocks_x, int chunks, int warps, size_t smem, cudaStream_t s,
                        const dr_attn_args &a, const dr_tc_plan &p, const char *what) {
    if (smem > 48 * 1024) {
        cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess)
            return dr_cuda_check(err, what);
    }
    kernel<<<dim3((unsigned)blocks_x, 1, (unsigned)chunks), 32 * warps, smem, s>>>(a, p);
    return dr_cuda_check(cudaGetLastError(), what);
}

extern "C" int dr_attention_tc_supported(const dr_attn_args *a, int device) {
    if (a->dtype != DR_FLOAT16 && a->dtype != DR_BFLOAT16)
        return 0;
    int major = 0, optin = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
        cudaGetLastError(); /* leave no sticky error: the CUDA-core kernels take the call */
        return 0;
    }
    dr_tc_plan p;
    dr_tc_make_plan(a, &p);
    size_t need = dr_tc_smem_fwd(&p);
    if (dr_tc_smem_dq(&p) > need)
        need = dr_tc_smem_dq(&p);
    if (dr_tc_smem_kv(&p) > need)
        need = dr_tc_smem_kv(&p);
    /* a grid's x extent is below 2^31 for every shape whose rows fit in memory; checked anyway */
    const int64_t xmax = ((int64_t)1 << 31) - 1;
    if (p.fwd_blocks * a->B * a->H > xmax || p.kv_blocks * a->B * a->Hk > xmax)
        return 0;
    return major >= 8 && need <= (size_t)optin;
}

extern "C" dr_status dr_attention_tc_forward_launch(const dr_attn_args *a, void *stream) {
    dr_tc_plan p;
    dr_tc_make_plan(a, &p);
    const int64_t bx = p.fwd_blocks * a->B * a->H;
    if (bx == 0)
        return DR_OK;
    cudaStream_t s = (cudaStream_t)stream;
    const size_t sm = dr_tc_smem_fwd(&p);
    const char *what = "attention forward (tensor cores)";
#define FWD(BF, NT, NKT) launch(attn_tc_fwd<BF, NT, NKT>, bx, p.nchunk_o, p.fwd_warps, sm, s, *a, p, what)
    if (p.bf)
        return p.dc == 64 ? (p.bk == 32 ? FWD(1, 8, 4) : FWD(1, 8, 8)) : (p.bk == 32 ? FWD(1, 16, 4) : FWD(1, 16, 8));
    return p.dc == 64 ? (p.bk == 32 ? FWD(0, 8, 4) : FWD(0, 8, 8)) : (p.bk == 32 ? FWD(0, 16, 4) : FWD(0, 16, 8));
#undef FWD
}

extern "C" dr_status dr_attention_tc_backward_launch(const dr_attn_args *a, void *stream) {
    dr_tc_plan p;
    dr_tc_make_plan(a, &p);
    cudaStream_t s = (cudaStream_t)stream;
    const char *what = "attention backward (tensor cores)";
    dr_status st = DR_OK;
    const int64_t qx = p.dq_blocks * a->B * a->H, kx = p.kv_blocks * a->B * a->Hk;
    const size_t smq = dr_tc_smem_dq(&p), smk = dr_tc_smem_kv(&p);
#define DQ(BF, NT) launch(attn_tc_dq<BF, NT>, qx, p.nchunk_q, p.dq_warps, smq, s, *a, p, what)
#define DKV(BF, NT) launch(attn_tc_dkv<BF, NT>, kx, p.nchunk_kv, p.kv_warps * p.kv_slices, smk, s, *a, p, what)
    if (qx > 0)
        st = p.bf ? (p.dc == 64 ? DQ(1, 8) : DQ(1, 16)) : (p.dc == 64 ? DQ(0, 8) : DQ(0, 16));
    if (st == DR_OK && kx > 0)
        st = p.bf ? (p.dc == 64 ? DKV(1, 8) : DKV(1, 16)) : (p.dc == 64 ? DKV(0, 8) : DKV(0, 16));
#undef DQ
#undef DKV
    return st;
}
