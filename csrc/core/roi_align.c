/* roi_align.c — RoI-Align forward and backward on the CPU (torchvision.ops.roi_align semantics, docs/DESIGN.md §7.1).
 *
 * Complexity: forward O(K * C * ph * pw * samples), backward the same plus O(N * C * H * W) to clear grad_input.
 * Threads: forward over (RoI, channel block), backward over (image, channel block); deterministic.
 */
#include <pthread.h>
#include <string.h>

#include "dr_roi_align.h"
#include "dynrefer.h"

#define DR_TAPCAP 256   /* bilinear taps (4 per sample) gathered per pass over a channel block */
#define DR_CBLK_MAX 512 /* channels per task */
#define DR_ALLTAPS 8192 /* taps of a whole RoI kept for reuse across its channels */
#define DR_BINCAP 1024  /* bins of a RoI for the whole-RoI tap path */
#define DR_ROWBUF 8192  /* accumulators of a row of bins (channels-last) */
#define DR_PLANAR_CBLK 16 /* channels per task for planar (NCHW) data: their planes stay in cache */

/* A parallel loop's context: the kernel arguments and the channel blocking. */
typedef struct {
    const dr_roi_args *a;
    int64_t cblk, ncb;
} roi_ctx;

#define DR_INSTANTIATE "roi_align_cpu.inc"
#include "dr_instantiate.h"

/* Every batch index must name an image: rois[k, 0] in (-1, N) truncates to [0, N). O(K). */
static dr_status check_batch_indices(const dr_roi_args *a) {
    for (int64_t k = 0; k < a->K; k++) {
        double b = dr_load_real(a->rois, a->rois_dtype, k * a->roi_s[0]);
        if (!(b > -1.0 && b < (double)a->N))
            return dr_set_error(DR_EINVAL, "roi_align: rois[%lld, 0] = %g is not a batch index in [0, %lld)",
                                (long long)k, b, (long long)a->N);
    }
    return DR_OK;
}

/* Split C into blocks so that there are enough tasks for the pool: at least 4 per thread when possible. */
static void choose_blocks(int64_t outer, int64_t C, int64_t maxblk, int64_t *cblk, int64_t *ncb) {
    int64_t want = 4 * (int64_t)dr_get_num_threads();
    int64_t nb = outer >= want ? 1 : (want + outer - 1) / (outer > 0 ? outer : 1);
    if (nb > C)
        nb = C > 0 ? C : 1;
    int64_t b = (C + nb - 1) / nb;
    if (b > maxblk)
        b = maxblk;
    if (b < 1)
        b = 1;
    *cblk = b;
    *ncb = (C + b - 1) / b;
}

static dr_status prepare(const dr_tensor *feat, const dr_tensor *rois, const dr_tensor *pooled,
                         const dr_roi_align_params *p, int backward, dr_roi_args *a) {
    dr_status st = dr_roi_align_make_args(feat, rois, pooled, p, backward, a);
    if (st != DR_OK)
        return st;
    if (feat->device != DR_CPU)
        return dr_set_error(DR_EINVAL, "roi_align: CPU kernel called with tensors on another device");
    return check_batch_indices(a);
}

#define DR_DISPATCH(dtype, NAME, ...)                                                                              \
    switch (dtype) {                                                                                               \
    case DR_FLOAT32:                                                                                               \
        NAME##_f32(__VA_ARGS__);                                                                                   \
        break;                                                                                                     \
    case DR_FLOAT64:                                                                                               \
        NAME##_f64(__VA_ARGS__);                                                                                   \
        break;                                                                                                     \
    case DR_FLOAT16:                                                                                               \
        NAME##_f16(__VA_ARGS__);                                                                                   \
        break;                                                                                                     \
    default:                                                                                                       \
        NAME##_bf16(__VA_ARGS__);                                                                                  \
        break;                                                                                                     \
    }

static void run_by_dtype(dr_dtype dt, int64_t ntasks, void (*f32)(void *, int64_t, int64_t),
                         void (*f64)(void *, int64_t, int64_t), void (*f16)(void *, int64_t, int64_t),
                         void (*bf16)(void *, int64_t, int64_t), void *ctx) {
    dr_task_fn fn = dt == DR_FLOAT32 ? f32 : dt == DR_FLOAT64 ? f64 : dt == DR_FLOAT16 ? f16 : bf16;
    dr_parallel_for(ntasks, 1, fn, ctx);
}

/* Forward: output[k, c, :, :] = RoI-Align of input[rois[k,0], c] over box rois[k,1:5]. */
dr_status dr_roi_align_forward_cpu(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                   const dr_roi_align_params *p) {
    dr_roi_args a;
    dr_status st = prepare(input, rois, output, p, 0, &a);
    if (st != DR_OK)
        return st;
    if (a.K == 0 || a.C == 0)
        return DR_OK;
    dr_hint_output_memory(output);
    roi_ctx cx;
    cx.a = &a;
    if (a.in_s[1] != 1 && a.N * ((a.C + DR_PLANAR_CBLK - 1) / DR_PLANAR_CBLK) >= 2 * dr_get_num_threads()) {
        /* planar input: tasks (image, 16 channels) */
        choose_blocks(a.N, a.C, DR_PLANAR_CBLK, &cx.cblk, &cx.ncb);
        run_by_dtype(input->dtype, a.N * cx.ncb, roi_fwd_img_task_f32, roi_fwd_img_task_f64, roi_fwd_img_task_f16,
                     roi_fwd_img_task_bf16, &cx);
    } else {
        choose_blocks(a.K, a.C, DR_CBLK_MAX, &cx.cblk, &cx.ncb);
        run_by_dtype(input->dtype, a.K * cx.ncb, roi_fwd_task_f32, roi_fwd_task_f64, roi_fwd_task_f16,
                     roi_fwd_task_bf16, &cx);
    }
    return DR_OK;
}

/* Backward: grad_input (float32, or float64 for float64 data) = Σ over RoIs of the bilinear weights times
 * grad_output / count. grad_input is overwritten. */
dr_status dr_roi_align_backward_cpu(const dr_tensor *grad_output, const dr_tensor *rois, dr_tensor *grad_input,
                                    const dr_roi_align_params *p) {
    dr_roi_args a;
    dr_status st = prepare(grad_input, rois, grad_output, p, 1, &a);
    if (st != DR_OK)
        return st;
    if (a.N == 0 || a.C == 0 || a.H == 0 || a.W == 0)
        return DR_OK;
    dr_hint_output_memory(grad_input);
    roi_ctx cx;
    cx.a = &a;
    choose_blocks(a.N, a.C, a.out_s[1] == 1 ? DR_CBLK_MAX : DR_PLANAR_CBLK, &cx.cblk, &cx.ncb);
    run_by_dtype(grad_output->dtype, a.N * cx.ncb, roi_bwd_task_f32, roi_bwd_task_f64, roi_bwd_task_f16,
                 roi_bwd_task_bf16, &cx);
    return DR_OK;
}

dr_status dr_roi_align_forward_elementwise_cpu(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                               const dr_roi_align_params *p) {
    dr_roi_args a;
    dr_status st = prepare(input, rois, output, p, 0, &a);
    if (st != DR_OK)
        return st;
    roi_ctx cx;
    cx.a = &a;
    run_by_dtype(input->dtype, a.K * a.C * a.pooled_h * a.pooled_w, roi_fwd_elem_task_f32, roi_fwd_elem_task_f64,
                 roi_fwd_elem_task_f16, roi_fwd_elem_task_bf16, &cx);
    return DR_OK;
}

dr_status dr_roi_align_backward_elementwise_cpu(const dr_tensor *grad_output, const dr_tensor *rois,
                                                dr_tensor *grad_input, const dr_roi_align_params *p,
                                                int deterministic) {
    dr_roi_args a;
    dr_status st = prepare(grad_input, rois, grad_output, p, 1, &a);
    if (st != DR_OK)
        return st;
    if (deterministic) {
        roi_ctx cx;
        cx.a = &a;
        run_by_dtype(grad_output->dtype, a.N * a.C, roi_bwd_plane_task_f32, roi_bwd_plane_task_f64,
                     roi_bwd_plane_task_f16, roi_bwd_plane_task_bf16, &cx);
    } else {
        DR_DISPATCH(grad_output->dtype, roi_bwd_scatter_serial, &a);
    }
    return DR_OK;
}

/* The tiled CPU emulation's error record, the CPU twin of a device's (roi_align.cu): election word, record, and
 * the generation the next launch may take the word from; takes and launches are serialised by the mutex. */
static pthread_mutex_t g_tiled_err_mu = PTHREAD_MUTEX_INITIALIZER;
static dr_roi_index_error g_tiled_err;
static unsigned int g_tiled_claim, g_tiled_gen;

/* The tiled schedule's settings of a launch (tap-table size, channels per block) and its error record; op: 0
 * forward, 1 backward; channels_last: the pooled tensor's channel stride is 1. */
static void tiled_setup(dr_roi_args *a, int64_t tile_taps, int channels_last, int op) {
    a->tile_taps = tile_taps < 0 || tile_taps > DR_ROI_TILE_TAPS ? DR_ROI_TILE_TAPS : tile_taps;
    a->tile_channels = dr_roi_tile_channels(a->C, a->pooled_h * a->pooled_w, channels_last);
    pthread_mutex_lock(&g_tiled_err_mu);
    a->err = &g_tiled_err;
    a->err_claim = &g_tiled_claim;
    a->err_gen = g_tiled_gen;
    a->err_op = op;
    pthread_mutex_unlock(&g_tiled_err_mu);
}

dr_status dr_roi_align_forward_tiled_cpu(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                         const dr_roi_align_params *p, int64_t tile_taps) {
    dr_roi_args a;
    dr_status st = dr_roi_align_make_args(input, rois, output, p, 0, &a);
    if (st != DR_OK)
        return st;
    if (input->device != DR_CPU)
        return dr_set_error(DR_EINVAL, "roi_align: CPU kernel called with tensors on another device");
    if (a.K == 0 || a.C == 0)
        return DR_OK;
    tiled_setup(&a, tile_taps, a.in_s[1] == 1, 0);
    roi_ctx cx;
    cx.a = &a;
    const int64_t blocks = a.K * ((a.C + a.tile_channels - 1) / a.tile_channels);
    run_by_dtype(input->dtype, blocks, roi_fwd_tiled_task_f32, roi_fwd_tiled_task_f64, roi_fwd_tiled_task_f16,
                 roi_fwd_tiled_task_bf16, &cx);
    return DR_OK;
}

dr_status dr_roi_align_backward_tiled_cpu(const dr_tensor *grad_output, const dr_tensor *rois, dr_tensor *grad_input,
                                          const dr_roi_align_params *p, int64_t tile_taps) {
    dr_roi_args a;
    dr_status st = dr_roi_align_make_args(grad_input, rois, grad_output, p, 1, &a);
    if (st != DR_OK)
        return st;
    if (grad_input->device != DR_CPU)
        return dr_set_error(DR_EINVAL, "roi_align: CPU kernel called with tensors on another device");
    if (a.C == 0)
        return DR_OK;
    tiled_setup(&a, tile_taps, a.out_s[1] == 1, 1);
    DR_DISPATCH(grad_output->dtype, roi_bwd_tiled_serial, &a);
    return DR_OK;
}

int dr_roi_align_take_error_cpu(dr_roi_index_error *out) {
    pthread_mutex_lock(&g_tiled_err_mu);
    int r = dr_roi_take_report(&g_tiled_err, &g_tiled_gen, out);
    pthread_mutex_unlock(&g_tiled_err_mu);
    return r;
}
