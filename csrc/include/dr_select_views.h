/* dr_select_views.h — select_views: per region, the n candidate views whose hashes differ most from the tight
 * view's, weighted by the candidates' enlargement coefficients (paper Eq. 1), picked greedily. */
#ifndef DR_SELECT_VIEWS_H
#define DR_SELECT_VIEWS_H

#include "dr_check.h"
#include "dr_math.h"
#include "dynrefer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Check select_views' arguments (host code): this is where they are validated, before either kernel runs.
 * hashes [R, 1+C] uint64 (tight view first), coeffs [C] float64, out [R, n_sel] int64 with n_sel <= C, all on one
 * device. The coefficients' values (finite, > 0) are data: the CPU kernel checks them. O(1). */
dr_status dr_select_views_make_args(const dr_tensor *hashes, const dr_tensor *coeffs, const dr_tensor *out);

/* The kernels, on arguments dr_select_views_make_args accepted: out [R, n_sel] receives candidate indices. */
dr_status dr_select_views_cpu(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out);
dr_status dr_select_views_cuda(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out, void *stream);

#ifdef __cplusplus
}
#endif

/* Paper Eq. 1 for one region: score_i = hamming(h0, h_i) / t_i; pick the best n_sel candidates greedily, ties to the
 * smaller index (the candidates are in increasing t), never the same candidate twice. idx receives candidate
 * indices. */
DR_HD static inline void dr_select_region(uint64_t h0, const uint64_t *hc, int64_t hc_stride, const double *t,
                                          int64_t nc, int64_t n_sel, int64_t *idx, int64_t idx_stride) {
    for (int64_t s = 0; s < n_sel; s++) {
        int64_t best = -1;
        double best_score = 0.0;
        for (int64_t i = 0; i < nc; i++) {
            int taken = 0;
            for (int64_t q = 0; q < s; q++)
                taken |= idx[q * idx_stride] == i;
            if (taken)
                continue;
            double sc = (double)dr_popcount64(h0 ^ hc[i * hc_stride]) / t[i];
            if (best < 0 || sc > best_score) {
                best = i;
                best_score = sc;
            }
        }
        idx[s * idx_stride] = best;
    }
}

#endif
