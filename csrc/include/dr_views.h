/* dr_views.h — nested views of referred regions (DESIGN §7.2–7.4): what the three view ops share — images, crops
 * and resampling. The ops' APIs are dr_crop_resize.h, dr_phash.h and dr_select_views.h.
 *
 * The per-element math is `static inline DR_HD` (dr_resample_math.inc here, dr_crop_resize_math.inc and
 * dr_phash_math.inc in the ops' headers) so the CPU loops (csrc/core) and the CUDA kernels (csrc/cuda) run the same
 * arithmetic.
 *
 * Geometry. A view box (x1, y1, x2, y2) in image pixels becomes an integer crop: each coordinate is clipped to the
 * image ([0, W] / [0, H]) and truncated, and the crop is the pixel slice [y1:y2, x1:x2]. An empty crop (zero width
 * or height after that: a degenerate or outside box) is widened to one pixel at the clamped position, so every view
 * is defined; non-finite coordinates are refused before the kernels run.
 *
 * Resampling, per axis, as a list of contiguous taps (start, n, weights) per output coordinate:
 *   DR_RS_PIL   Pillow's Image.resize (antialiased filters: support scaled by the downscale factor, weights
 *               normalised, then 22-bit fixed point; uint8 rounding after each pass; the pass order Pillow
 *               picks, see dr_pil_vertical_first).
 *   DR_RS_AA    torch.nn.functional.interpolate(antialias=True) in floating point: the same taps, no rounding.
 *   DR_RS_PLAIN torch.nn.functional.interpolate(antialias=False, align_corners=False): bilinear (2 taps) or
 *               bicubic with a = -0.75 (4 taps, borders clamped — merged here into contiguous taps).
 *   DR_RS_CV    OpenCV INTER_LINEAR on float32 (what the official pHash uses).
 */
#ifndef DR_VIEWS_H
#define DR_VIEWS_H

#include "dr_check.h"
#include "dr_math.h"
#include "dynrefer.h"

#define DR_VIEWS_MAX_IMAGES 32 /* images per kernel call (the Python layer splits larger batches) */

typedef struct {
    const uint8_t *data; /* HWC uint8 RGB (alpha or more channels ignored: channels 0..2 are read) */
    int64_t h, w;
    int64_t sh, sw, sc; /* strides in elements */
} dr_image_ref;

typedef struct {
    int64_t x0, y0, w, h; /* an integer crop inside the image, w, h >= 1 */
} dr_crop;

enum { DR_FILTER_BILINEAR = 0, DR_FILTER_BICUBIC = 1, DR_FILTER_LANCZOS = 2 };
enum { DR_RS_PIL = 0, DR_RS_AA = 1, DR_RS_PLAIN = 2, DR_RS_CV = 3 };

#define DR_PIL_PRECISION_BITS 22 /* Pillow's 32 - 8 - 2 */

/* Pass order of Pillow's resize: `order` 0 is the adaptive rule of current Pillow (vertical pass first when the
 * height shrinks by more than twice as many pixels as the width), 1 is horizontal first always (older Pillow). */
enum { DR_PIL_ORDER_ADAPTIVE = 0, DR_PIL_ORDER_HORIZONTAL = 1 };

#include "dr_resample_math.inc"

/* Check image `name` of a view op (H x W x C uint8, channels last, C >= 3, H, W >= 1) and describe it in *r (host
 * code of the argument builders). A 2-D (grayscale) image, a channel-first C x H x W one (first dimension 1, 3 or 4
 * and last dimension above 4) and other shapes are refused with the shape given and the layout expected. O(1). */
static inline dr_status dr_views_image_make(const char *op, const char *name, const dr_tensor *t, dr_image_ref *r) {
    if (t->dtype != DR_UINT8)
        return dr_set_error(DR_ETYPE, "%s: %s must be uint8 (H x W x 3 RGB), got %s", op, name,
                            dr_dtype_name(t->dtype));
    char shp[96];
    dr_shape_str(t, shp, sizeof shp);
    if (t->ndim == 2)
        return dr_set_error(DR_EINVAL, "%s: %s has shape %s (2-D, grayscale): expected H x W x C channels-last RGB "
                            "(C = 3, or 4 with alpha ignored); repeat the channel, e.g. np.stack([g] * 3, -1)", op,
                            name, shp);
    if (t->ndim == 3 && t->shape[2] > 4 && (t->shape[0] == 1 || t->shape[0] == 3 || t->shape[0] == 4))
        return dr_set_error(DR_EINVAL, "%s: %s has shape %s, which looks channel-first (C x H x W): expected H x W x C "
                            "channels-last RGB (C = 3, or 4 with alpha ignored), e.g. image.permute(1, 2, 0)", op,
                            name, shp);
    if (t->ndim != 3 || t->shape[2] < 3)
        return dr_set_error(DR_EINVAL, "%s: %s has shape %s: expected H x W x C channels-last RGB (C = 3, or 4 with "
                            "alpha ignored)", op, name, shp);
    if (t->shape[0] < 1 || t->shape[1] < 1)
        return dr_set_error(DR_EINVAL, "%s: %s is empty: shape %s, expected H x W x C RGB with H, W >= 1", op, name, shp);
    r->data = (const uint8_t *)t->data;
    r->h = t->shape[0];
    r->w = t->shape[1];
    r->sh = t->strides[0];
    r->sw = t->strides[1];
    r->sc = t->strides[2];
    return DR_OK;
}

/* The images of a view op: n >= 1 descriptors, each checked by dr_views_image_make (named "images[i]") and on the
 * device of images[0]; refs[n] receives their descriptions. O(n). */
static inline dr_status dr_views_images_make(const char *op, const dr_tensor *images, int64_t n, dr_image_ref *refs) {
    if (n < 1)
        return dr_set_error(DR_EINVAL, "%s: images is empty", op);
    for (int64_t i = 0; i < n; i++) {
        char name[48];
        snprintf(name, sizeof name, "images[%lld]", (long long)i);
        dr_status st = dr_views_image_make(op, name, &images[i], &refs[i]);
        if (st == DR_OK && i > 0)
            st = dr_check_same_device(op, "images[0]", &images[0], name, &images[i]);
        if (st != DR_OK)
            return st;
    }
    return DR_OK;
}

/* View boxes `bname` [V, 4] float32/float64 on the images' device (`dev`: images[0]), and image_index [V] int64 on
 * that device, or NULL with a single image. Index values are data: the CPU kernels check them. O(1). */
static inline dr_status dr_views_boxes_check(const char *op, const dr_tensor *dev, int64_t n_images,
                                             const dr_tensor *boxes, const char *bname, const dr_tensor *index) {
    dr_status st = dr_check_ndim(op, bname, boxes, 2);
    if (st != DR_OK)
        return st;
    if (boxes->dtype != DR_FLOAT32 && boxes->dtype != DR_FLOAT64)
        return dr_set_error(DR_ETYPE, "%s: %s must be float32 or float64, got %s", op, bname,
                            dr_dtype_name(boxes->dtype));
    if (boxes->shape[1] != 4)
        return dr_set_error(DR_EINVAL, "%s: %s must have shape [V, 4], got [%lld, %lld]", op, bname,
                            (long long)boxes->shape[0], (long long)boxes->shape[1]);
    st = dr_check_same_device(op, "images", dev, bname, boxes);
    if (st != DR_OK)
        return st;
    if (!index) {
        if (n_images != 1)
            return dr_set_error(DR_EINVAL, "%s: image_index is required with %lld images", op, (long long)n_images);
        return DR_OK;
    }
    st = dr_check_ndim(op, "image_index", index, 1);
    if (st != DR_OK)
        return st;
    st = dr_check_dtype(op, "image_index", index, DR_INT64);
    if (st != DR_OK)
        return st;
    if (index->shape[0] != boxes->shape[0])
        return dr_set_error(DR_EINVAL, "%s: image_index has %lld entries for %lld boxes", op,
                            (long long)index->shape[0], (long long)boxes->shape[0]);
    return dr_check_same_device(op, "images", dev, "image_index", index);
}

#endif
