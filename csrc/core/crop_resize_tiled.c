/* crop_resize_tiled.c — the tiled CUDA crop_resize (csrc/cuda/crop_resize.cu) run on the CPU, block by block, with
 * the same image chunks, bands, tables and pass buffers (dr_crop_resize_tiled.inc), so tests check the GPU's
 * schedule and indexing against the per-element bodies and the fast CPU path without a GPU. Test use only: one task
 * per block on the thread pool. */
#include "dr_crop_resize.h"

typedef struct {
    const dr_image_ref *images;
    int64_t base, count;
    const dr_tensor *boxes, *index;
    dr_tensor *out;
    const dr_crop_resize_params *p;
} tiled_ctx;

/* Blocks [begin, end) of one chunk's launch, each as one GPU block runs it. */
static void tiled_task(void *vctx, int64_t begin, int64_t end) {
    const tiled_ctx *c = (const tiled_ctx *)vctx;
    const dr_crop_resize_params *p = c->p;
    const int64_t S = p->size;
    int32_t xs[DR_CROP_TILE_SPANS], xn[DR_CROP_TILE_SPANS];
    dr_crop_w w[DR_CROP_TILE_TAPS];
    uint8_t pass[DR_CROP_TILE_PASS];
    for (int64_t blk = begin; blk < end; blk++) {
        dr_crop_tile t;
        int64_t v;
        dr_crop_tile_begin(c->images + c->base, c->base, c->count, c->boxes->data, c->boxes->dtype,
                           c->boxes->strides[0], c->boxes->strides[1],
                           c->index ? (const int64_t *)c->index->data : NULL, c->index ? c->index->strides[0] : 0, p,
                           blk, &v, &t);
        if (!t.ok)
            continue;
        if (t.table)
            for (int64_t x = 0; x < S; x++)
                dr_crop_tile_fill_x(p, &t, xs, xn, w, x);
        dr_crop_w *wy = w + S * t.tx;
        for (int64_t y = t.y0; y < t.y1; y++) {
            if (t.table) {
                dr_crop_tile_row(p, &t, wy, y);
                const int64_t np = dr_crop_tile_pass_count(p, &t);
                for (int64_t e = 0; e < np; e++)
                    dr_crop_tile_pass(p, &t, xs, xn, w, wy, pass, e);
            }
            for (int64_t e = 0; e < 3 * S; e++)
                dr_crop_tile_elem(p, &t, xs, xn, w, wy, pass, c->out->data, c->out->dtype, c->out->strides, v, y, e);
        }
    }
}

dr_status dr_crop_resize_tiled_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                                   const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                                   dr_tensor *ref_out, const dr_crop_resize_params *p) {
    const int64_t nv = boxes->shape[0], S = p->size;
    for (int64_t v = 0; v < nv; v++) {
        const int64_t i = image_index ? ((const int64_t *)image_index->data)[v * image_index->strides[0]] : 0;
        if (i < 0 || i >= n_images)
            return dr_set_error(DR_EINVAL, "crop_resize: image_index[%lld] = %lld is not an image index in [0, %lld)",
                                (long long)v, (long long)i, (long long)n_images);
    }
    if (nv == 0 || S <= 0)
        return DR_OK;
    const int64_t blocks = nv * ((S + DR_CROP_TILE_ROWS - 1) / DR_CROP_TILE_ROWS);
    for (int64_t base = 0; base < n_images; base += DR_VIEWS_MAX_IMAGES) {
        tiled_ctx c = {images, base, n_images - base < DR_VIEWS_MAX_IMAGES ? n_images - base : DR_VIEWS_MAX_IMAGES,
                       boxes, image_index, out, p};
        dr_parallel_for(blocks, 1, tiled_task, &c);
    }
    for (int64_t v = 0; ref_boxes && v < nv; v++) { /* the referred boxes: one thread per view on the GPU */
        const int64_t i = image_index ? ((const int64_t *)image_index->data)[v * image_index->strides[0]] : 0;
        double b[4], rb[4];
        float r[4];
        for (int k = 0; k < 4; k++) {
            b[k] = dr_load_real(boxes->data, boxes->dtype, v * boxes->strides[0] + k * boxes->strides[1]);
            rb[k] = dr_load_real(ref_boxes->data, ref_boxes->dtype, v * ref_boxes->strides[0] + k * ref_boxes->strides[1]);
        }
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], images[i].w, images[i].h);
        dr_ref_box(&cr, rb, images[i].w, images[i].h, S, p->kind == DR_RS_PIL, r);
        for (int k = 0; k < 4; k++)
            ((float *)ref_out->data)[v * ref_out->strides[0] + k * ref_out->strides[1]] = r[k];
    }
    return DR_OK;
}
