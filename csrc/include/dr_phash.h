/* dr_phash.h — phash: a 64-bit perceptual hash of each view, by the official DynRefer function (OpenCV gray,
 * 224 × 224 bilinear resize, 2-D DCT, mean threshold) or by imagehash's phash (Pillow luma, LANCZOS 32 × 32, DCT,
 * median threshold). The per-view math the CPU and CUDA kernels share is dr_phash_math.inc. */
#ifndef DR_PHASH_H
#define DR_PHASH_H

#include "dr_views.h"

enum { DR_PHASH_DYNREFER = 0, DR_PHASH_IMAGEHASH = 1 };

#define DR_PHASH_DYN_RES 224 /* the official function resizes each view to 224 × 224 */
#define DR_PHASH_IH_RES 32   /* imagehash's default: hash_size 8 × highfreq_factor 4 */
#define DR_PHASH_IH_MAX_RES 4096 /* largest hash_size × highfreq_factor served */

typedef struct {
    int64_t method;    /* DR_PHASH_DYNREFER or DR_PHASH_IMAGEHASH (64-bit: any integer a caller passes is checked) */
    int64_t pil_order; /* DR_PIL_ORDER_* (imagehash) */
    int64_t hash_size, highfreq_factor; /* imagehash: K and R / K (the resize side R = K · highfreq_factor); the
                                         * official function: 8 and 4 */
} dr_phash_params;

#ifdef __cplusplus
extern "C" {
#endif

/* Check phash's arguments and describe the images in refs[n_images] (host code): this is where phash's arguments
 * are validated, before either kernel runs. images: n_images >= 1 H x W x C uint8 descriptors (C >= 3) on one
 * device; boxes [V,4] float32/float64; image_index [V] int64 or NULL (one image); hashes as below; thumbs NULL or as
 * below (imagehash, CPU); p: a known method and pass order, hash_size >= 2, highfreq_factor >= 1, their product at
 * most DR_PHASH_IH_MAX_RES (the official method: 8 and 4). The index values are data: the CPU kernel checks them.
 * O(n). */
dr_status dr_phash_make_args(const dr_tensor *images, int64_t n_images, const dr_tensor *boxes,
                             const dr_tensor *image_index, const dr_tensor *hashes, const dr_tensor *thumbs,
                             const dr_phash_params *p, dr_image_ref *refs);

/* The kernels, on arguments dr_phash_make_args accepted (the CPU kernel checks the image indices).
 * hashes: [V] uint64 when hash_size² <= 64 bits, else [V, W] uint64 words, W = ceil(hash_size² / 64), the most
 * significant first (the bits as one integer, first coefficient the most significant bit); thumbs: NULL, or
 * (imagehash only) uint8 [V, R, R] contiguous for the resized luma views. The CPU kernel serves every hash_size >= 2
 * and highfreq_factor >= 1 with R <= DR_PHASH_IH_MAX_RES (elementwise: 8 and 4), the CUDA launcher 8 and 4. */
dr_status dr_phash_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                       const dr_tensor *image_index, dr_tensor *hashes, const dr_phash_params *p, int elementwise,
                       dr_tensor *thumbs);
dr_status dr_phash_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                        const dr_tensor *image_index, dr_tensor *hashes, const dr_phash_params *p, void *stream);

#ifdef __cplusplus
}
#endif

#include "dr_phash_math.inc"

#endif
