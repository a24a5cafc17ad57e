/* select_views.c — CPU kernel of select_views (the greedy selection in dr_select_views.h). */
#include <stdlib.h>

#include "dr_select_views.h"

dr_status dr_select_views_cpu(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out) {
    int64_t nr = hashes->shape[0], nc = coeffs->shape[0], ns = out->shape[1];
    const uint64_t *h = (const uint64_t *)hashes->data;
    const double *tc = (const double *)coeffs->data;
    double *t = (double *)malloc((size_t)(nc > 0 ? nc : 1) * sizeof(double));
    if (!t)
        return dr_set_error(DR_ENOMEM, "select_views: out of memory");
    for (int64_t i = 0; i < nc; i++)
        t[i] = tc[i * coeffs->strides[0]];
    int64_t *o = (int64_t *)out->data;
    for (int64_t r = 0; r < nr; r++) {
        const uint64_t *row = h + r * hashes->strides[0];
        dr_select_region(row[0], row + hashes->strides[1], hashes->strides[1], t, nc, ns, o + r * out->strides[0],
                         out->strides[1]);
    }
    free(t);
    return DR_OK;
}
