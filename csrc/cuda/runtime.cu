/* runtime.cu — CUDA runtime queries. */
#include "runtime.cuh"

/* Number of usable CUDA devices; 0 when there is no driver or device (never an error). */
extern "C" int dr_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return 0;
    }
    return n;
}
