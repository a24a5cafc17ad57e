/* dcnv4.c — DCNv4 deformable aggregation, forward and backward, on the CPU (DCNv4 semantics, docs/DESIGN.md §7.5).
 *
 * Complexity: forward O(N * Ho * Wo * G * K * D), backward the same plus O(N * H * W * C) to clear grad_value.
 * Threads: forward over output rows (n, ho), backward over (image, group); both deterministic. The fast loops need
 * unit channel stride in value (and grad_value); other layouts run the per-element bodies instead (same results,
 * slower).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dr_dcnv4.h"
#include "dynrefer.h"

typedef struct {
    const dr_dcn_args *a;
    atomic_int failed; /* a task could not allocate its scratch rows */
} dcn_ctx;

#define DR_INSTANTIATE "dcnv4_cpu.inc"
#include "dr_instantiate.h"

typedef void (*dcn_task)(void *, int64_t, int64_t);

static dcn_task pick(dr_dtype dt, dcn_task f32, dcn_task f64, dcn_task f16, dcn_task bf16) {
    return dt == DR_FLOAT32 ? f32 : dt == DR_FLOAT64 ? f64 : dt == DR_FLOAT16 ? f16 : bf16;
}

#define DCN_PICK(dt, NAME) pick(dt, NAME##_f32, NAME##_f64, NAME##_f16, NAME##_bf16)

static dr_status prepare(const dr_tensor *value, const dr_tensor *om, const dr_tensor *out, const dr_tensor *grad,
                         const dr_tensor *gom, const dr_dcnv4_params *p, dr_dcn_args *a) {
    dr_status st = dr_dcnv4_make_args(value, om, out, grad, gom, p, a);
    if (st != DR_OK)
        return st;
    if (value->device != DR_CPU)
        return dr_set_error(DR_EINVAL, "dcnv4: CPU kernel called with tensors on another device");
    return DR_OK;
}

static dr_status run(int64_t n, int64_t grain, dcn_task fn, const dr_dcn_args *a) {
    dcn_ctx cx;
    cx.a = a;
    atomic_init(&cx.failed, 0);
    dr_parallel_for(n, grain, fn, &cx);
    if (atomic_load(&cx.failed))
        return dr_set_error(DR_ENOMEM, "dcnv4: out of memory for scratch rows");
    return DR_OK;
}

/* Forward: output[n, ho, wo, g*D + c] = sum over taps of m * bilinear(value[n, :, :, g*D + c]). */
dr_status dr_dcnv4_forward_cpu(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                               const dr_dcnv4_params *p) {
    dr_dcn_args a;
    dr_status st = prepare(value, offset_mask, output, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    if (a.N == 0)
        return DR_OK;
    dr_hint_output_memory(output);
    if (a.v_s[3] != 1)
        return run(a.N * a.Ho * a.Wo * a.G * a.D, 256, DCN_PICK(value->dtype, dcn_fwd_elem_task), &a);
    return run(a.N * a.Ho, 1, DCN_PICK(value->dtype, dcn_fwd_task), &a);
}

/* Backward: grad_value and grad_offset_mask (float32, float64 for float64 data) overwritten; deterministic. */
dr_status dr_dcnv4_backward_cpu(const dr_tensor *value, const dr_tensor *offset_mask, const dr_tensor *grad_output,
                                dr_tensor *grad_value, dr_tensor *grad_offset_mask, const dr_dcnv4_params *p) {
    dr_dcn_args a;
    dr_status st = prepare(value, offset_mask, grad_value, grad_output, grad_offset_mask, p, &a);
    if (st != DR_OK)
        return st;
    if (a.N == 0)
        return DR_OK;
    dr_hint_output_memory(grad_value);
    if (a.v_s[3] != 1 || a.out_s[3] != 1) {
        st = run(a.N * a.Ho * a.Wo * a.G * a.K, 64, DCN_PICK(value->dtype, dcn_bwd_om_elem_task), &a);
        if (st == DR_OK)
            st = run(a.N * a.G * a.D, 1, DCN_PICK(value->dtype, dcn_bwd_plane_elem_task), &a);
        return st;
    }
    return run(a.N * a.G, 1, DCN_PICK(value->dtype, dcn_bwd_task), &a);
}

dr_status dr_dcnv4_forward_elementwise_cpu(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                                           const dr_dcnv4_params *p) {
    dr_dcn_args a;
    dr_status st = prepare(value, offset_mask, output, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    return run(a.N * a.Ho * a.Wo * a.G * a.D, 256, DCN_PICK(value->dtype, dcn_fwd_elem_task), &a);
}

dr_status dr_dcnv4_forward_tiled_cpu(const dr_tensor *value, const dr_tensor *offset_mask, dr_tensor *output,
                                     const dr_dcnv4_params *p) {
    dr_dcn_args a;
    dr_status st = prepare(value, offset_mask, output, NULL, NULL, p, &a);
    if (st != DR_OK)
        return st;
    const int64_t pairs = a.N * a.Ho * a.Wo * a.G;
    if (pairs == 0 || a.D == 0)
        return DR_OK;
    a.tile_pix = dr_dcn_tile_pix(&a);
    if (a.tile_pix == 0) /* the launcher's per-element kernel */
        return run(pairs * a.D, 256, DCN_PICK(value->dtype, dcn_fwd_elem_task), &a);
    return run((pairs + a.tile_pix - 1) / a.tile_pix, 1, DCN_PICK(value->dtype, dcn_fwd_tiled_task), &a);
}

dr_status dr_dcnv4_backward_elementwise_cpu(const dr_tensor *value, const dr_tensor *offset_mask,
                                            const dr_tensor *grad_output, dr_tensor *grad_value,
                                            dr_tensor *grad_offset_mask, const dr_dcnv4_params *p,
                                            int deterministic) {
    dr_dcn_args a;
    dr_status st = prepare(value, offset_mask, grad_value, grad_output, grad_offset_mask, p, &a);
    if (st != DR_OK)
        return st;
    st = run(a.N * a.Ho * a.Wo * a.G * a.K, 64, DCN_PICK(value->dtype, dcn_bwd_om_elem_task), &a);
    if (st != DR_OK)
        return st;
    if (deterministic)
        return run(a.N * a.G * a.D, 1, DCN_PICK(value->dtype, dcn_bwd_plane_elem_task), &a);
    switch (value->dtype) {
    case DR_FLOAT32:
        dcn_bwd_scatter_serial_f32(&a);
        break;
    case DR_FLOAT64:
        dcn_bwd_scatter_serial_f64(&a);
        break;
    case DR_FLOAT16:
        dcn_bwd_scatter_serial_f16(&a);
        break;
    default:
        dcn_bwd_scatter_serial_bf16(&a);
        break;
    }
    return DR_OK;
}

dr_status dr_dcnv4_backward_tiled_cpu(const dr_tensor *value, const dr_tensor *offset_mask,
                                      const dr_tensor *grad_output, dr_tensor *grad_value,
                                      dr_tensor *grad_offset_mask, const dr_dcnv4_params *p) {
    dr_dcn_args a;
    dr_status st = prepare(value, offset_mask, grad_value, grad_output, grad_offset_mask, p, &a);
    if (st != DR_OK)
        return st;
    a.tile_pix = dr_dcn_tile_pix(&a);
    if (a.tile_pix == 0 || a.N * a.Ho * a.Wo * a.G == 0) /* the launcher's per-element kernels */
        return dr_dcnv4_backward_elementwise_cpu(value, offset_mask, grad_output, grad_value, grad_offset_mask, p, 0);
    const int64_t pairs = a.N * a.Ho * a.Wo * a.G;
    st = run((pairs + a.tile_pix - 1) / a.tile_pix, 1, DCN_PICK(value->dtype, dcn_bwd_om_tiled_task), &a);
    if (st != DR_OK)
        return st;
    switch (value->dtype) {
    case DR_FLOAT32:
        dcn_bwd_scatter_tiled_serial_f32(&a);
        break;
    case DR_FLOAT64:
        dcn_bwd_scatter_tiled_serial_f64(&a);
        break;
    case DR_FLOAT16:
        dcn_bwd_scatter_tiled_serial_f16(&a);
        break;
    default:
        dcn_bwd_scatter_tiled_serial_bf16(&a);
        break;
    }
    return DR_OK;
}
