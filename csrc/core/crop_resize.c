/* crop_resize.c — CPU kernels of crop_resize (math in dr_crop_resize.h, resampling in resample.c).
 *
 * The fast path works per view (one task per view on the thread pool): the resampling taps of each axis are
 * computed once per view, the horizontal pass runs over the source rows the vertical pass needs, and nothing the
 * size of a crop is materialised beyond one pass buffer of S columns. The `elementwise` path evaluates the
 * per-element body the CUDA kernel runs, for every output, so tests exercise the GPU arithmetic on the CPU.
 */
#include <math.h>

#include "dr_crop_resize.h"
#include "resample.inc"

/* ---- arguments --------------------------------------------------------------------------------------- */

static dr_status check_params(const dr_crop_resize_params *p) {
    const char *op = "crop_resize";
    if (p->kind != DR_RS_PIL && p->kind != DR_RS_AA && p->kind != DR_RS_PLAIN)
        return dr_set_error(DR_EINVAL, "%s: unknown resampling kind %lld", op, (long long)p->kind);
    if (p->filter != DR_FILTER_BILINEAR && p->filter != DR_FILTER_BICUBIC)
        return dr_set_error(DR_EINVAL, "%s: unknown filter %lld", op, (long long)p->filter);
    if (p->size < 1 || p->size > 16384)
        return dr_set_error(DR_EINVAL, "%s: size must be in [1, 16384], got %lld", op, (long long)p->size);
    if (p->pil_order != DR_PIL_ORDER_ADAPTIVE && p->pil_order != DR_PIL_ORDER_HORIZONTAL)
        return dr_set_error(DR_EINVAL, "%s: unknown pil_order %lld", op, (long long)p->pil_order);
    for (int k = 0; k < 3; k++) {
        if (!isfinite(p->mean[k]))
            return dr_set_error(DR_EINVAL, "%s: mean[%d] must be finite, got %s", op, k,
                                dr_nonfinite_name(p->mean[k]));
        if (!isfinite(p->std[k]) || !(p->std[k] > 0.0f))
            return dr_set_error(DR_EINVAL, "%s: std[%d] must be finite and > 0, got %g", op, k, (double)p->std[k]);
    }
    return DR_OK;
}

dr_status dr_crop_resize_make_args(const dr_tensor *images, int64_t n_images, const dr_tensor *boxes,
                                   const dr_tensor *image_index, const dr_tensor *ref_boxes, const dr_tensor *out,
                                   const dr_tensor *ref_out, const dr_crop_resize_params *p, dr_image_ref *refs) {
    const char *op = "crop_resize";
    dr_status st = check_params(p);
    if (st == DR_OK)
        st = dr_views_images_make(op, images, n_images, refs);
    if (st != DR_OK)
        return st;
    if ((ref_boxes == NULL) != (ref_out == NULL))
        return dr_set_error(DR_EINVAL, "%s: ref_boxes and ref_out go together", op);
    st = dr_views_boxes_check(op, &images[0], n_images, boxes, "boxes", image_index);
    if (st == DR_OK)
        st = dr_check_ndim(op, "out", out, 4);
    if (st == DR_OK)
        st = dr_check_same_device(op, "images", &images[0], "out", out);
    if (st != DR_OK)
        return st;
    if (out->dtype != DR_FLOAT32 && out->dtype != DR_FLOAT16 && out->dtype != DR_BFLOAT16)
        return dr_set_error(DR_ETYPE, "%s: out must be float32, float16 or bfloat16, got %s", op,
                            dr_dtype_name(out->dtype));
    const int64_t nv = boxes->shape[0], S = p->size;
    if (out->shape[0] != nv || out->shape[1] != 3 || out->shape[2] != S || out->shape[3] != S)
        return dr_set_error(DR_EINVAL, "%s: out has shape [%lld, %lld, %lld, %lld], expected [%lld, 3, %lld, %lld]",
                            op, (long long)out->shape[0], (long long)out->shape[1], (long long)out->shape[2],
                            (long long)out->shape[3], (long long)nv, (long long)S, (long long)S);
    if (!ref_boxes)
        return DR_OK;
    st = dr_check_ndim(op, "ref_boxes", ref_boxes, 2);
    if (st == DR_OK)
        st = dr_check_ndim(op, "ref_out", ref_out, 2);
    if (st == DR_OK)
        st = dr_check_dtype(op, "ref_out", ref_out, DR_FLOAT32);
    if (st != DR_OK)
        return st;
    if (ref_boxes->dtype != DR_FLOAT32 && ref_boxes->dtype != DR_FLOAT64)
        return dr_set_error(DR_ETYPE, "%s: ref_boxes must be float32 or float64, got %s", op,
                            dr_dtype_name(ref_boxes->dtype));
    if (ref_boxes->shape[1] != 4)
        return dr_set_error(DR_EINVAL, "%s: ref_boxes must have shape [V, 4], got [%lld, %lld]", op,
                            (long long)ref_boxes->shape[0], (long long)ref_boxes->shape[1]);
    if (ref_boxes->shape[0] != nv)
        return dr_set_error(DR_EINVAL, "%s: ref_boxes has %lld rows for %lld boxes", op,
                            (long long)ref_boxes->shape[0], (long long)nv);
    if (ref_out->shape[0] != nv || ref_out->shape[1] != 4)
        return dr_set_error(DR_EINVAL, "%s: ref_out has shape [%lld, %lld], expected [%lld, 4]", op,
                            (long long)ref_out->shape[0], (long long)ref_out->shape[1], (long long)nv);
    st = dr_check_same_device(op, "images", &images[0], "ref_boxes", ref_boxes);
    if (st == DR_OK)
        st = dr_check_same_device(op, "images", &images[0], "ref_out", ref_out);
    return st;
}

/* ---- the CPU kernels --------------------------------------------------------------------------------- */

static void store_out(dr_tensor *out, int64_t v, int c, int64_t y, int64_t x, float val) {
    dr_views_store(out->data, out->dtype,
                   v * out->strides[0] + c * out->strides[1] + y * out->strides[2] + x * out->strides[3], val);
}

typedef struct {
    const dr_image_ref *images;
    const dr_tensor *boxes, *index, *ref_boxes;
    dr_tensor *out, *ref_out;
    const dr_crop_resize_params *p;
    int failed; /* allocation failure in a task */
} crop_ctx;

static dr_crop view_crop(const crop_ctx *c, int64_t v, const dr_image_ref **im) {
    double b[4];
    load_box(c->boxes, v, b);
    *im = &c->images[image_of(c->index, v)];
    return dr_crop_of_box(b[0], b[1], b[2], b[3], (*im)->w, (*im)->h);
}

static void write_ref(const crop_ctx *c, int64_t v, const dr_crop *cr, const dr_image_ref *im) {
    if (!c->ref_boxes)
        return;
    double rb[4];
    float o[4];
    load_box(c->ref_boxes, v, rb);
    dr_ref_box(cr, rb, im->w, im->h, c->p->size, c->p->kind == DR_RS_PIL, o);
    for (int k = 0; k < 4; k++)
        ((float *)c->ref_out->data)[v * c->ref_out->strides[0] + k * c->ref_out->strides[1]] = o[k];
}

/* dst[x] = normalised channel value of packed pixels src[x * 3] (the same float operations as dr_normalize_u8,
 * vectorised). */
DR_SIMD_CLONES
static void normalize_row_u8(const uint8_t *src, int64_t n, float mean, float std, float *dst) {
    for (int64_t x = 0; x < n; x++) {
        float v = (float)src[x * 3] * (float)(1.0 / 255.0);
        dst[x] = (v - mean) / std;
    }
}

/* Pillow path of one view: the two passes on the image in place, then the normalisation. */
static int crop_resize_pil_view(crop_ctx *c, int64_t v, const dr_image_ref *im, const dr_crop *cr, const dr_taps *tx,
                                const dr_taps *ty, dr_scratch *sc) {
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    uint8_t *o8 = (uint8_t *)dr_scratch_get(sc, 4, (size_t)(S * S * 3));
    if (!o8)
        return -1;
    int vf = dr_pil_vertical_first(cr->w, cr->h, S, S, (int)p->pil_order);
    if (dr_pil_resize_crop(im, cr, tx, ty, S, S, vf, o8, sc) < 0)
        return -1;
    dr_tensor *out = c->out;
    if (out->dtype == DR_FLOAT32 && out->strides[3] == 1) {
        for (int ch = 0; ch < 3; ch++)
            for (int64_t y = 0; y < S; y++)
                normalize_row_u8(o8 + y * S * 3 + ch, S, p->mean[ch], p->std[ch],
                                 (float *)out->data + v * out->strides[0] + ch * out->strides[1] + y * out->strides[2]);
    } else { /* other dtypes or strides: a 256-entry table per channel, then a converting store */
        float lut[3][256];
        for (int ch = 0; ch < 3; ch++)
            for (int k = 0; k < 256; k++)
                lut[ch][k] = dr_normalize_u8((uint8_t)k, p->mean[ch], p->std[ch]);
        for (int ch = 0; ch < 3; ch++)
            for (int64_t y = 0; y < S; y++)
                for (int64_t x = 0; x < S; x++)
                    store_out(out, v, ch, y, x, lut[ch][o8[(y * S + x) * 3 + ch]]);
    }
    return 0;
}

static void crop_resize_task(void *vctx, int64_t begin, int64_t end) {
    crop_ctx *c = (crop_ctx *)vctx;
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    const int fixed = p->kind == DR_RS_PIL;
    dr_scratch sc;
    memset(&sc, 0, sizeof sc);
    for (int64_t v = begin; v < end; v++) {
        const dr_image_ref *im;
        dr_crop cr = view_crop(c, v, &im);
        write_ref(c, v, &cr, im);
        dr_axis ax = dr_axis_make(p->kind, p->filter, cr.w, S), ay = dr_axis_make(p->kind, p->filter, cr.h, S);
        dr_taps tx, ty;
        if (dr_taps_make(&tx, &ax, fixed) < 0) {
            c->failed = 1;
            break;
        }
        if (dr_taps_make(&ty, &ay, fixed) < 0) {
            dr_taps_free(&tx);
            c->failed = 1;
            break;
        }
        if (fixed) {
            if (crop_resize_pil_view(c, v, im, &cr, &tx, &ty, &sc) < 0)
                c->failed = 1;
            dr_taps_free(&tx);
            dr_taps_free(&ty);
            continue;
        }
        /* floating point (torch interpolate semantics): horizontal pass over the rows the vertical pass reads */
        int64_t ylo, yhi;
        dr_taps_rows(&ty, S, &ylo, &yhi);
        int64_t rows = yhi - ylo;
        float *buf = (float *)dr_scratch_get(&sc, 5, (size_t)(rows * S * 3) * sizeof(float));
        if (!buf) {
            dr_taps_free(&tx);
            dr_taps_free(&ty);
            c->failed = 1;
            break;
        }
        for (int64_t r = ylo; r < yhi; r++) {
            const uint8_t *src = im->data + (cr.y0 + r) * im->sh + cr.x0 * im->sw;
            for (int64_t x = 0; x < S; x++) {
                const float *w = tx.wf + x * tx.kmax;
                const uint8_t *px = src + tx.start[x] * im->sw;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
                for (int64_t j = 0; j < tx.n[x]; j++, px += im->sw) {
                    a0 += w[j] * (float)px[0];
                    a1 += w[j] * (float)px[im->sc];
                    a2 += w[j] * (float)px[2 * im->sc];
                }
                float *d = buf + ((r - ylo) * S + x) * 3;
                d[0] = a0;
                d[1] = a1;
                d[2] = a2;
            }
        }
        for (int64_t y = 0; y < S; y++) {
            const float *w = ty.wf + y * ty.kmax;
            int64_t s0 = ty.start[y] - ylo;
            for (int64_t x = 0; x < S; x++) {
                float a[3] = {0.0f, 0.0f, 0.0f};
                const float *col = buf + (s0 * S + x) * 3;
                for (int64_t j = 0; j < ty.n[y]; j++, col += S * 3) {
                    a[0] += w[j] * col[0];
                    a[1] += w[j] * col[1];
                    a[2] += w[j] * col[2];
                }
                for (int ch = 0; ch < 3; ch++)
                    store_out(c->out, v, ch, y, x, dr_normalize_f(a[ch], p->mean[ch], p->std[ch]));
            }
        }
        dr_taps_free(&tx);
        dr_taps_free(&ty);
    }
    dr_scratch_free(&sc);
}

/* The CUDA kernel's body for every output element, on the CPU. */
static void crop_resize_elem_task(void *vctx, int64_t begin, int64_t end) {
    crop_ctx *c = (crop_ctx *)vctx;
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    for (int64_t v = begin; v < end; v++) {
        const dr_image_ref *im;
        dr_crop cr = view_crop(c, v, &im);
        write_ref(c, v, &cr, im);
        dr_axis ax = dr_axis_make(p->kind, p->filter, cr.w, S), ay = dr_axis_make(p->kind, p->filter, cr.h, S);
        int vf = dr_pil_vertical_first(cr.w, cr.h, S, S, p->pil_order);
        for (int ch = 0; ch < 3; ch++)
            for (int64_t y = 0; y < S; y++)
                for (int64_t x = 0; x < S; x++) {
                    float val = p->kind == DR_RS_PIL
                                    ? dr_normalize_u8(dr_pil_resize_px(im, &cr, &ax, &ay, y, x, ch, 0, vf), p->mean[ch],
                                                      p->std[ch])
                                    : dr_normalize_f(dr_float_resize_px(im, &cr, &ax, &ay, y, x, ch), p->mean[ch],
                                                     p->std[ch]);
                    store_out(c->out, v, ch, y, x, val);
                }
    }
}

dr_status dr_crop_resize_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                             const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                             dr_tensor *ref_out, const dr_crop_resize_params *p, int elementwise) {
    if (elementwise == 2) /* impl="tiled": the CUDA kernel's block schedule */
        return dr_crop_resize_tiled_cpu(images, n_images, boxes, image_index, ref_boxes, out, ref_out, p);
    int64_t nv = boxes->shape[0];
    dr_status st = check_images(images, n_images, image_index, nv, "crop_resize");
    if (st != DR_OK)
        return st;
    crop_ctx c = {images, boxes, image_index, ref_boxes, out, ref_out, p, 0};
    dr_hint_output_memory(out);
    dr_parallel_for(nv, 1, elementwise ? crop_resize_elem_task : crop_resize_task, &c);
    if (c.failed)
        return dr_set_error(DR_ENOMEM, "crop_resize: out of memory");
    return DR_OK;
}
