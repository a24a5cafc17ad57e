/* crop_resize.cu — crop_resize on CUDA. crop_resize_tiled runs the block schedule of dr_crop_resize_tiled.inc that
 * the CPU tests also run (impl="tiled"): one block per (view, band of 8 output rows), the view's geometry and its
 * columns' resampling taps computed once per block into shared memory, Pillow's first pass computed once per row
 * into a shared buffer, then one thread per output (x fastest: contiguous writes). Views too large for the tables
 * fall back, inside the same kernel, to the per-element bodies (impl="elementwise"). One thread per view writes the
 * referred box. No allocation, no host sync. */
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

__global__ void __launch_bounds__(256) crop_resize_tiled(dr_image_table tab, dr_view_io io, dr_crop_out o,
                                                          dr_crop_resize_params p, int64_t nblk) {
    __shared__ dr_crop_tile t;
    __shared__ int64_t view;
    __shared__ int32_t xs[DR_CROP_TILE_SPANS], xn[DR_CROP_TILE_SPANS];
    __shared__ dr_crop_w w[DR_CROP_TILE_TAPS];
    __shared__ uint8_t pass[DR_CROP_TILE_PASS];
    const int64_t S = p.size;
    for (int64_t blk = blockIdx.x; blk < nblk; blk += gridDim.x) {
        if (threadIdx.x == 0)
            dr_crop_tile_begin(tab.im, tab.base, tab.count, io.boxes, io.boxes_dtype, io.bs0, io.bs1, io.index, io.is0,
                               &p, blk, &view, &t);
        __syncthreads();
        if (t.ok) { /* uniform across the block */
            if (t.table)
                for (int64_t x = threadIdx.x; x < S; x += blockDim.x)
                    dr_crop_tile_fill_x(&p, &t, xs, xn, w, x);
            dr_crop_w *wy = w + S * t.tx;
            for (int64_t y = t.y0; y < t.y1; y++) {
                __syncthreads(); /* the table is filled; the previous row's outputs are done with wy and pass */
                if (t.table) {
                    if (threadIdx.x == 0)
                        dr_crop_tile_row(&p, &t, wy, y);
                    __syncthreads();
                    const int64_t np = dr_crop_tile_pass_count(&p, &t);
                    for (int64_t e = threadIdx.x; e < np; e += blockDim.x)
                        dr_crop_tile_pass(&p, &t, xs, xn, w, wy, pass, e);
                    __syncthreads();
                }
                for (int64_t e = threadIdx.x; e < 3 * S; e += blockDim.x)
                    dr_crop_tile_elem(&p, &t, xs, xn, w, wy, pass, o.data, o.dtype, o.s, view, y, e);
            }
        }
        __syncthreads(); /* before thread 0 starts the next block's geometry */
    }
}

__global__ void ref_box_kernel(dr_image_table tab, dr_view_io io, dr_crop_out o, dr_crop_resize_params p, int64_t nv) {
    DR_GRID_STRIDE(v, nv) {
        const dr_image_ref *im = view_image(tab, io, v);
        if (!im)
            continue;
        double rb[4];
        for (int k = 0; k < 4; k++) {
            int64_t off = v * o.rs0 + k * o.rs1;
            rb[k] = dr_load_real(o.ref, o.ref_dtype, off);
        }
        dr_crop cr = view_crop(io, v, im);
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
    const int64_t nblk = nv * ((p->size + DR_CROP_TILE_ROWS - 1) / DR_CROP_TILE_ROWS);
    const unsigned grid = (unsigned)(nblk < ((int64_t)1 << 20) ? nblk : ((int64_t)1 << 20));
    dr_crop_resize_params pp = *p;
    return for_image_chunks(images, n_images, [&](const dr_image_table &tab) {
        crop_resize_tiled<<<grid, 256, 0, s>>>(tab, io, o, pp, nblk);
        if (ref_boxes)
            ref_box_kernel<<<dr_blocks(nv, 128), 128, 0, s>>>(tab, io, o, pp, nv);
    });
}
