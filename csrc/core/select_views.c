/* select_views.c — select_views' argument builder and CPU kernel (the greedy selection in dr_select_views.h). */
#include <math.h>
#include <stdlib.h>

#include "dr_select_views.h"

dr_status dr_select_views_make_args(const dr_tensor *hashes, const dr_tensor *coeffs, const dr_tensor *out) {
    const char *op = "select_views";
    dr_status st = dr_check_ndim(op, "hashes", hashes, 2);
    if (st == DR_OK)
        st = dr_check_dtype(op, "hashes", hashes, DR_UINT64);
    if (st == DR_OK)
        st = dr_check_ndim(op, "coeffs", coeffs, 1);
    if (st == DR_OK)
        st = dr_check_dtype(op, "coeffs", coeffs, DR_FLOAT64);
    if (st == DR_OK)
        st = dr_check_ndim(op, "out", out, 2);
    if (st == DR_OK)
        st = dr_check_dtype(op, "out", out, DR_INT64);
    if (st == DR_OK)
        st = dr_check_same_device(op, "hashes", hashes, "coeffs", coeffs);
    if (st == DR_OK)
        st = dr_check_same_device(op, "hashes", hashes, "out", out);
    if (st != DR_OK)
        return st;
    const long long nr = (long long)hashes->shape[0], nc = (long long)coeffs->shape[0];
    if (hashes->shape[1] != nc + 1)
        return dr_set_error(DR_EINVAL, "%s: hashes must have shape [R, 1 + %lld] (tight view, then one per "
                            "candidate), got [%lld, %lld]", op, nc, nr, (long long)hashes->shape[1]);
    if (out->shape[0] != nr || out->shape[1] > nc)
        return dr_set_error(DR_EINVAL, "%s: out must have shape [%lld, n] with n <= %lld candidates, got [%lld, %lld]",
                            op, nr, nc, (long long)out->shape[0], (long long)out->shape[1]);
    return DR_OK;
}

dr_status dr_select_views_cpu(const dr_tensor *hashes, const dr_tensor *coeffs, dr_tensor *out) {
    int64_t nr = hashes->shape[0], nc = coeffs->shape[0], ns = out->shape[1];
    const uint64_t *h = (const uint64_t *)hashes->data;
    const double *tc = (const double *)coeffs->data;
    for (int64_t i = 0; i < nc; i++) {
        double t = tc[i * coeffs->strides[0]];
        if (!(t > 0.0) || !isfinite(t))
            return dr_set_error(DR_EINVAL, "select_views: coeffs[%lld] = %g must be finite and > 0", (long long)i, t);
    }
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
