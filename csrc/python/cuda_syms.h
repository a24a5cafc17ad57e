/* cuda_syms.h — every CUDA launcher dynrefer._C_cuda exports, one line per launcher. Bindings find them by name
 * with dr_run_where(..., "<name>", ...). Each op includes the header that declares its launchers here. */
#ifndef DR_CUDA_SYMS_H
#define DR_CUDA_SYMS_H

#include "dynrefer.h"
#include "dr_crop_resize.h"
#include "dr_phash.h"
#include "dr_select_views.h"
#include "dr_dcnv4.h"
#include "dr_attention.h"

#define DR_CUDA_SYMS                                                                                               \
    DR_CUDA_SYM(dr_roi_align_forward_cuda)                                                                         \
    DR_CUDA_SYM(dr_roi_align_backward_cuda)                                                                        \
    DR_CUDA_SYM(dr_roi_align_take_error_cuda)                                                                      \
    DR_CUDA_SYM(dr_crop_resize_cuda)                                                                               \
    DR_CUDA_SYM(dr_phash_cuda)                                                                                     \
    DR_CUDA_SYM(dr_select_views_cuda)                                                                              \
    DR_CUDA_SYM(dr_dcnv4_forward_cuda)                                                                             \
    DR_CUDA_SYM(dr_dcnv4_backward_cuda)                                                                            \
    DR_CUDA_SYM(dr_attention_forward_cuda)                                                                         \
    DR_CUDA_SYM(dr_attention_backward_cuda)

#endif
