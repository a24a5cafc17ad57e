/* bind_roi_align.c — Python bindings of RoI-Align (CPU kernels and CUDA launchers). The kernels' argument
 * builder validates the arguments; these functions convert them and map the status to an exception. */
#include "binding.h"

#include <stdio.h>
#include <string.h>

/* ---- RoI-Align ----------------------------------------------------------------------------------------- */

/* Raise the ValueError of a bad batch index a kernel recorded (on `where`, e.g. "cuda:0"). */
static PyObject *raise_index_error(const dr_roi_index_error *e, const char *where) {
    char value[40];
    snprintf(value, sizeof value, "%g", e->value);
    PyErr_Format(PyExc_ValueError,
                 "roi_align: rois[%lld, 0] = %s is not a batch index in [0, %lld) (found on %s by the %s kernel of "
                 "an earlier call, which pooled that RoI to zeros; dynrefer.ops.check_errors() after a call reports "
                 "at once)",
                 (long long)e->roi, value, (long long)e->n, where,
                 e->op ? "backward" : "forward");
    return NULL;
}

/* Raise a bad batch index recorded on CUDA device `device` by an earlier call, without synchronising: 0 when none
 * is pending, -1 with an exception set. */
static int raise_pending_cuda(int device) {
    __typeof__(dr_roi_align_take_error_cuda) *take = dr_cuda_fn("dr_roi_align_take_error_cuda");
    if (!take)
        return -1;
    dr_roi_index_error e;
    int r;
    Py_BEGIN_ALLOW_THREADS r = take(device, 0, &e);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        dr_raise_status(DR_ECUDA, dr_cuda_table(0)->last_error());
        return -1;
    }
    if (r > 0) {
        char where[32];
        snprintf(where, sizeof where, "cuda:%d", device);
        raise_index_error(&e, where);
        return -1;
    }
    return 0;
}

static PyObject *py_roi_align_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"input",     "rois",          "output",    "spatial_scale", "pooled_height",
                             "pooled_width", "sampling_ratio", "aligned", "stream",     "impl",
                             "tile_taps", "raise_pending", NULL};
    PyObject *oi, *orr, *oo;
    dr_roi_align_params p;
    long long ph, pw, sr, stream = 0, tile_taps = -1;
    int aligned, raise_pending = 1;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOdLLLp|LsLp:roi_align_forward", kwlist, &oi, &orr, &oo,
                                     &p.spatial_scale, &ph, &pw, &sr, &aligned, &stream, &impl, &tile_taps,
                                     &raise_pending))
        return NULL;
    p.pooled_h = ph;
    p.pooled_w = pw;
    p.sampling_ratio = sr;
    p.aligned = aligned;
    /* impl: "fast" (CPU loops; the tiled kernel on CUDA), "elementwise" (the per-element bodies), "tiled" (the
     * tiled CUDA block schedule, on the CPU) */
    int tiled = strcmp(impl, "tiled") == 0;
    int elementwise = tiled ? 0 : dr_parse_impl(impl);
    if (elementwise < 0) {
        PyErr_Format(PyExc_ValueError, "impl must be 'fast', 'elementwise' or 'tiled', got '%s'", impl);
        return NULL;
    }
    const dr_argspec spec[3] = {{oi, "input", 0, 0}, {orr, "rois", 0, 0}, {oo, "output", 1, 0}};
    dr_pyarg t[3];
    if (dr_pyargs_from(spec, 3, stream, t) < 0)
        return NULL;
    void *cuda_fn;
    int where = dr_run_where(t, 3, "dr_roi_align_forward_cuda", &cuda_fn);
    if (where == DR_RUN_CUDA && raise_pending && raise_pending_cuda(t[0].t.device_id) < 0)
        where = DR_RUN_ERROR;
    __typeof__(dr_roi_align_forward_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(&t[0].t, &t[1].t, &t[2].t, &p, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, tiled         ? dr_roi_align_forward_tiled_cpu(&t[0].t, &t[1].t, &t[2].t, &p, tile_taps)
                     : elementwise ? dr_roi_align_forward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, &p)
                                   : dr_roi_align_forward_cpu(&t[0].t, &t[1].t, &t[2].t, &p));
    PyObject *ret = where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, &t[0].t);
    dr_pyargs_release(t, 3);
    return ret;
}

static PyObject *py_roi_align_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"grad_output",    "rois",    "grad_input",    "spatial_scale", "pooled_height",
                             "pooled_width",   "sampling_ratio", "aligned", "deterministic", "stream",
                             "impl",           "raise_pending",  "tile_taps",  NULL};
    PyObject *og, *orr, *oo;
    dr_roi_align_params p;
    long long ph, pw, sr, stream = 0, tile_taps = -1;
    int aligned, deterministic = 0, raise_pending = 1;
    const char *impl = "fast";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOdLLLp|pLspL:roi_align_backward", kwlist, &og, &orr, &oo,
                                     &p.spatial_scale, &ph, &pw, &sr, &aligned, &deterministic, &stream, &impl,
                                     &raise_pending, &tile_taps))
        return NULL;
    p.pooled_h = ph;
    p.pooled_w = pw;
    p.sampling_ratio = sr;
    p.aligned = aligned;
    /* impl "tiled": the CUDA default (atomic) mode's tiled schedule, on the CPU */
    int tiled = strcmp(impl, "tiled") == 0;
    int elementwise = tiled ? 0 : dr_parse_impl(impl);
    if (elementwise < 0) {
        PyErr_Format(PyExc_ValueError, "impl must be 'fast', 'elementwise' or 'tiled', got '%s'", impl);
        return NULL;
    }
    const dr_argspec spec[3] = {{og, "grad_output", 0, 0}, {orr, "rois", 0, 0}, {oo, "grad_input", 1, 0}};
    dr_pyarg t[3];
    if (dr_pyargs_from(spec, 3, stream, t) < 0)
        return NULL;
    void *cuda_fn;
    int where = dr_run_where(t, 3, "dr_roi_align_backward_cuda", &cuda_fn);
    if (where == DR_RUN_CUDA && raise_pending && raise_pending_cuda(t[0].t.device_id) < 0)
        where = DR_RUN_ERROR;
    __typeof__(dr_roi_align_backward_cuda) *fn = cuda_fn;
    dr_status st = DR_OK;
    if (where == DR_RUN_CUDA)
        DR_NOGIL(st, fn(&t[0].t, &t[1].t, &t[2].t, &p, deterministic, (void *)(intptr_t)stream));
    else if (where == DR_RUN_CPU)
        DR_NOGIL(st, tiled         ? dr_roi_align_backward_tiled_cpu(&t[0].t, &t[1].t, &t[2].t, &p, tile_taps)
                     : elementwise ? dr_roi_align_backward_elementwise_cpu(&t[0].t, &t[1].t, &t[2].t, &p, deterministic)
                                   : dr_roi_align_backward_cpu(&t[0].t, &t[1].t, &t[2].t, &p));
    PyObject *ret = where == DR_RUN_ERROR ? NULL : dr_kernel_result(st, &t[0].t);
    dr_pyargs_release(t, 3);
    return ret;
}

/* roi_align_take_error(device, device_id=0, synchronize=False): the bad batch index a kernel recorded since the
 * last take, as (roi, value, n, op), or None; device "cpu" reads the tiled CPU emulation's record. */
static PyObject *py_roi_align_take_error(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"device", "device_id", "synchronize", NULL};
    const char *device;
    int device_id = 0, synchronize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|ip:roi_align_take_error", kwlist, &device, &device_id,
                                     &synchronize))
        return NULL;
    dr_roi_index_error e;
    int r;
    if (strcmp(device, "cpu") == 0) {
        r = dr_roi_align_take_error_cpu(&e);
    } else if (strcmp(device, "cuda") == 0) {
        if (device_id < 0)
            return PyErr_Format(PyExc_ValueError, "roi_align_take_error: device_id must be >= 0, got %d", device_id);
        __typeof__(dr_roi_align_take_error_cuda) *take = dr_cuda_fn("dr_roi_align_take_error_cuda");
        if (!take)
            return NULL;
        Py_BEGIN_ALLOW_THREADS r = take(device_id, synchronize, &e);
        Py_END_ALLOW_THREADS
        if (r < 0)
            return dr_raise_status(DR_ECUDA, dr_cuda_table(0)->last_error());
    } else {
        return PyErr_Format(PyExc_ValueError, "roi_align_take_error: device must be 'cpu' or 'cuda', got '%s'", device);
    }
    if (!r)
        Py_RETURN_NONE;
    return Py_BuildValue("(LdLs)", (long long)e.roi, e.value, (long long)e.n, e.op ? "backward" : "forward");
}

PyMethodDef dr_roi_align_methods[] = {
    {"roi_align_take_error", (PyCFunction)(void (*)(void))py_roi_align_take_error, METH_VARARGS | METH_KEYWORDS,
     "roi_align_take_error(device, device_id=0, synchronize=False): (roi, value, n, op) of the bad batch index a "
     "kernel recorded since the last take (then cleared), or None."},
    {"roi_align_forward", (PyCFunction)(void (*)(void))py_roi_align_forward, METH_VARARGS | METH_KEYWORDS,
     "roi_align_forward(input, rois, output, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, "
     "stream=0, impl='fast', tile_taps=-1, raise_pending=True): fill output [K,C,ph,pw]."},
    {"roi_align_backward", (PyCFunction)(void (*)(void))py_roi_align_backward, METH_VARARGS | METH_KEYWORDS,
     "roi_align_backward(grad_output, rois, grad_input, spatial_scale, pooled_height, pooled_width, sampling_ratio, "
     "aligned, deterministic=False, stream=0, impl='fast', raise_pending=True, tile_taps=-1): overwrite grad_input "
     "[N,C,H,W]."},
    {NULL, NULL, 0, NULL}};
