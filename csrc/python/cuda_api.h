/* cuda_api.h — the table of CUDA launchers that dynrefer._C_cuda exports (as the capsule
 * "dynrefer._C_cuda._api") and dynrefer._C loads the first time it sees a CUDA tensor. Keeping CUDA in a sibling
 * module means `import dynrefer` never needs a GPU, a driver or CUDA libraries. */
#ifndef DR_CUDA_API_H
#define DR_CUDA_API_H

#include "dynrefer.h"

#define DR_CUDA_API_VERSION 1

typedef struct {
    int version;
    int (*device_count)(void);
    const char *(*last_error)(void); /* message of the last failure in the CUDA module, on this thread */
    dr_status (*roi_align_forward)(const dr_tensor *input, const dr_tensor *rois, dr_tensor *output,
                                   const dr_roi_align_params *p, void *stream);
    dr_status (*roi_align_backward)(const dr_tensor *grad_output, const dr_tensor *rois, dr_tensor *grad_input,
                                    const dr_roi_align_params *p, int deterministic, void *stream);
} dr_cuda_api;

#endif
