/* dr_phash.h — phash: a 64-bit perceptual hash of each view, by the official DynRefer function (OpenCV gray,
 * 224 × 224 bilinear resize, 2-D DCT, mean threshold) or by imagehash's phash (Pillow luma, LANCZOS 32 × 32, DCT,
 * median threshold). The per-view math the CPU and CUDA kernels share is dr_phash_math.inc. */
#ifndef DR_PHASH_H
#define DR_PHASH_H

#include "dr_views.h"

enum { DR_PHASH_DYNREFER = 0, DR_PHASH_IMAGEHASH = 1 };

#define DR_PHASH_DYN_RES 224 /* the official function resizes each view to 224 × 224 */
#define DR_PHASH_IH_RES 32   /* imagehash: hash_size 8 × highfreq_factor 4 */

#ifdef __cplusplus
extern "C" {
#endif

/* hashes [V] uint64; thumbs: NULL, or (imagehash only) uint8 [V, 32, 32] contiguous for the resized luma views. */
dr_status dr_phash_cpu(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                       const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order, int elementwise,
                       dr_tensor *thumbs);
dr_status dr_phash_cuda(const dr_image_ref *images, int64_t n_images, const dr_tensor *boxes,
                        const dr_tensor *image_index, dr_tensor *hashes, int method, int pil_order, void *stream);

#ifdef __cplusplus
}
#endif

#include "dr_phash_math.inc"

#endif
