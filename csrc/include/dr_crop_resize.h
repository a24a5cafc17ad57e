/* dr_crop_resize.h — crop_resize: each view box cropped from its image, resized to S × S and normalised
 * (torchvision's ToImage, ConvertImageDtype, Normalize), with the referred box mapped into the view's frame.
 * Geometry and resampling in dr_views.h; the per-element math the CPU and CUDA kernels share in
 * dr_crop_resize_math.inc. */
#ifndef DR_CROP_RESIZE_H
#define DR_CROP_RESIZE_H

#include "dr_views.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int kind;      /* DR_RS_PIL, DR_RS_AA or DR_RS_PLAIN */
    int filter;    /* DR_FILTER_BILINEAR or DR_FILTER_BICUBIC */
    int pil_order; /* DR_PIL_ORDER_* (PIL path) */
    int64_t size;
    float mean[3], std[3];
} dr_crop_resize_params;

/* images[n_images]; boxes [V,4] float32/float64 view boxes; image_index [V] int64 or NULL (all image 0);
 * ref_boxes [V,4] float32/float64 or NULL; out [V,3,S,S] float32/float16/bfloat16; ref_out [V,4] float32 or NULL. */
dr_status dr_crop_resize_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                             const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                             dr_tensor *ref_out, const dr_crop_resize_params *p, int elementwise);
/* The tiled CUDA kernel's block schedule (dr_crop_resize_tiled.inc) run block by block on the CPU (tests); the
 * referred boxes as dr_crop_resize_cpu writes them. */
dr_status dr_crop_resize_tiled_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                                   const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                                   dr_tensor *ref_out, const dr_crop_resize_params *p);
dr_status dr_crop_resize_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                              const dr_tensor *image_index, const dr_tensor *ref_boxes, dr_tensor *out,
                              dr_tensor *ref_out, const dr_crop_resize_params *p, void *stream);

#ifdef __cplusplus
}
#endif

#include "dr_crop_resize_math.inc"
#include "dr_crop_resize_tiled.inc"

#endif
