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
    int64_t kind;      /* DR_RS_PIL, DR_RS_AA or DR_RS_PLAIN (64-bit: any integer a caller passes is checked as given) */
    int64_t filter;    /* DR_FILTER_BILINEAR or DR_FILTER_BICUBIC */
    int64_t pil_order; /* DR_PIL_ORDER_* (PIL path) */
    int64_t size;
    float mean[3], std[3];
} dr_crop_resize_params;

/* Check crop_resize's arguments and describe the images in refs[n_images] (host code): this is where crop_resize's
 * arguments are validated, before either kernel runs. images: n_images >= 1 H x W x C uint8 descriptors (C >= 3)
 * on one device; boxes [V,4] float32/float64; image_index [V] int64 or NULL (one image); ref_boxes [V,4]
 * float32/float64 and ref_out [V,4] float32, both or neither; out [V,3,S,S] float32/float16/bfloat16; all on the
 * images' device; p: a known kind, filter and pass order, S in [1, 16384], finite mean, finite std > 0. The index
 * values and box coordinates are data: the CPU kernel checks the indices, the Python layer the coordinates. O(n). */
dr_status dr_crop_resize_make_args(const dr_tensor *images, int64_t n_images, const dr_tensor *boxes,
                                   const dr_tensor *image_index, const dr_tensor *ref_boxes, const dr_tensor *out,
                                   const dr_tensor *ref_out, const dr_crop_resize_params *p, dr_image_ref *refs);

/* The kernels, on arguments dr_crop_resize_make_args accepted (the CPU kernel checks the image indices).
 * images[n_images]; boxes [V,4] float32/float64 view boxes; image_index [V] int64 or NULL (all image 0);
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
