/* cuda_api.h — what dynrefer._C_cuda exports (as the capsule "dynrefer._C_cuda._api") and dynrefer._C loads the
 * first time it sees a CUDA tensor. Keeping CUDA in a sibling module means `import dynrefer` never needs a GPU, a
 * driver or CUDA libraries.
 *
 * Launchers are exported by name: each op's binding looks its launchers up by name with dr_run_where (binding.h) into
 * pointers typed by the prototypes declared in the op's header. Adding an op adds lines to the symbol list in cuda_syms.h
 * only. */
#ifndef DR_CUDA_API_H
#define DR_CUDA_API_H

#include "dynrefer.h"

#define DR_CUDA_API_VERSION 2

typedef void (*dr_generic_fn)(void);

typedef struct {
    const char *name;
    dr_generic_fn fn;
} dr_cuda_sym;

typedef struct {
    int version;
    int (*device_count)(void);
    const char *(*last_error)(void); /* message of the last failure in the CUDA module, on this thread */
    const dr_cuda_sym *syms;         /* terminated by {NULL, NULL} */
} dr_cuda_api;

#endif
