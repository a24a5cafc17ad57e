/* crop_resize.cu — crop_resize on CUDA, around the per-element body of dr_crop_resize.h that the CPU tests also run
 * (impl="elementwise"): one thread per output element, and one per view for the referred box. No allocation, no
 * host sync. */
#include "dr_crop_resize.h"
#include "views.cuh"

struct dr_crop_out {
    void *data;
    int dtype;
    int64_t s[4];
    const void *ref;
    int ref_dtype;
    int64_t rs0, rs1;
    float *ref_out;
    int64_t ros0, ros1;
};

__global__ void crop_resize_kernel(dr_image_table tab, dr_view_io io, dr_crop_out o, dr_crop_resize_params p,
                                   int64_t total) {
    const int64_t S = p.size;
    DR_GRID_STRIDE(i, total) {
        int64_t x = i % S, y = (i / S) % S, c = (i / (S * S)) % 3, v = i / (S * S * 3);
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue;
        double b[4];
        view_box(io, v, b);
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        dr_axis ax = dr_axis_make(p.kind, p.filter, cr.w, S), ay = dr_axis_make(p.kind, p.filter, cr.h, S);
        int vf = dr_pil_vertical_first(cr.w, cr.h, S, S, p.pil_order);
        float val = p.kind == DR_RS_PIL
                        ? dr_normalize_u8(dr_pil_resize_px(im, &cr, &ax, &ay, y, x, (int)c, 0, vf), p.mean[c], p.std[c])
                        : dr_normalize_f(dr_float_resize_px(im, &cr, &ax, &ay, y, x, (int)c), p.mean[c], p.std[c]);
        dr_views_store(o.data, o.dtype, v * o.s[0] + c * o.s[1] + y * o.s[2] + x * o.s[3], val);
    }
}

__global__ void ref_box_kernel(dr_image_table tab, dr_view_io io, dr_crop_out o, dr_crop_resize_params p, int64_t nv) {
    DR_GRID_STRIDE(v, nv) {
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue;
        double b[4], rb[4];
        view_box(io, v, b);
        for (int k = 0; k < 4; k++) {
            int64_t off = v * o.rs0 + k * o.rs1;
            rb[k] = dr_load_real(o.ref, o.ref_dtype, off);
        }
        dr_crop cr = dr_crop_of_box(b[0], b[1], b[2], b[3], im->w, im->h);
        float r[4];
        dr_ref_box(&cr, rb, im->w, im->h, p.size, p.kind == DR_RS_PIL, r);
        for (int k = 0; k < 4; k++)
            o.ref_out[v * o.ros0 + k * o.ros1] = r[k];
    }
}

extern "C" dr_status dr_crop_resize_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                                         const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                                         dr_tensor *ref_out, const dr_crop_resize_params *p, void *stream) {
    dr_device_guard guard(out->device_id);
    int64_t nv = boxes->shape[0];
    if (nv == 0)
        return DR_OK;
    dr_view_io io = make_io(boxes, image_index);
    dr_crop_out o;
    o.data = out->data;
    o.dtype = out->dtype;
    for (int k = 0; k < 4; k++)
        o.s[k] = out->strides[k];
    o.ref = ref_boxes ? ref_boxes->data : NULL;
    o.ref_dtype = ref_boxes ? ref_boxes->dtype : DR_FLOAT32;
    o.rs0 = ref_boxes ? ref_boxes->strides[0] : 0;
    o.rs1 = ref_boxes ? ref_boxes->strides[1] : 0;
    o.ref_out = ref_out ? (float *)ref_out->data : NULL;
    o.ros0 = ref_out ? ref_out->strides[0] : 0;
    o.ros1 = ref_out ? ref_out->strides[1] : 0;
    cudaStream_t s = (cudaStream_t)stream;
    int64_t total = nv * 3 * p->size * p->size;
    dr_crop_resize_params pp = *p;
    return for_image_chunks(images, n_images, [&](const dr_image_table &tab) {
        crop_resize_kernel<<<dr_blocks(total, 256), 256, 0, s>>>(tab, io, o, pp, total);
        if (ref_boxes)
            ref_box_kernel<<<dr_blocks(nv, 128), 128, 0, s>>>(tab, io, o, pp, nv);
    });
}
