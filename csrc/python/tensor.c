/* tensor.c — NumPy arrays and DLPack capsules (legacy "dltensor" and versioned "dltensor_versioned") viewed as
 * dr_tensor descriptors, zero-copy. The capsule is borrowed, not consumed: it stays alive (and keeps the producer's
 * tensor alive) until dr_pyarg_release, and its own destructor returns it to the producer. */
#define PY_ARRAY_UNIQUE_SYMBOL dynrefer_ARRAY_API
#define NO_IMPORT_ARRAY
#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#include "tensor.h"

#include <numpy/arrayobject.h>
#include <stdio.h>
#include <string.h>

/* ---- DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html) ---- */
typedef struct {
    int32_t device_type;
    int32_t device_id;
} dlp_device;
typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} dlp_dtype;
typedef struct {
    void *data;
    dlp_device device;
    int32_t ndim;
    dlp_dtype dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} dlp_tensor;
typedef struct dlp_managed {
    dlp_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct dlp_managed *self);
} dlp_managed;
typedef struct {
    uint32_t major, minor;
} dlp_version;
typedef struct dlp_managed_v {
    dlp_version version;
    void *manager_ctx;
    void (*deleter)(struct dlp_managed_v *self);
    uint64_t flags;
    dlp_tensor dl_tensor;
} dlp_managed_v;
enum { DLP_CPU = 1, DLP_CUDA = 2, DLP_CUDA_HOST = 3, DLP_CUDA_MANAGED = 13 };
enum { DLP_INT = 0, DLP_UINT = 1, DLP_FLOAT = 2, DLP_BFLOAT = 4, DLP_BOOL = 6 };
#define DLP_FLAG_READ_ONLY 1ull

void dr_device_str(const dr_tensor *t, char *buf, size_t n) {
    if (t->device == DR_CUDA)
        snprintf(buf, n, "cuda:%d", t->device_id);
    else
        snprintf(buf, n, "cpu");
}

PyObject *dr_raise_status(dr_status st, const char *msg) {
    PyObject *exc = PyExc_RuntimeError;
    switch (st) {
    case DR_EINVAL:
        exc = PyExc_ValueError;
        break;
    case DR_ENOMEM:
        exc = PyExc_MemoryError;
        break;
    case DR_EUNSUPPORTED:
    case DR_ETYPE:
        exc = PyExc_TypeError;
        break;
    default:
        break;
    }
    PyErr_SetString(exc, msg && msg[0] ? msg : "dynrefer kernel failed");
    return NULL;
}

void dr_pyarg_release(dr_pyarg *a) { Py_CLEAR(a->keep); }

static int from_numpy(PyArrayObject *arr, const char *name, int writable, dr_pyarg *out) {
    int nd = PyArray_NDIM(arr);
    if (nd > DR_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions are supported, got %d", name, DR_MAX_DIMS, nd);
        return -1;
    }
    dr_dtype dt;
    switch (PyArray_TYPE(arr)) {
    case NPY_FLOAT32:
        dt = DR_FLOAT32;
        break;
    case NPY_FLOAT64:
        dt = DR_FLOAT64;
        break;
    case NPY_FLOAT16:
        dt = DR_FLOAT16;
        break;
    case NPY_UINT8:
        dt = DR_UINT8;
        break;
    case NPY_INT32:
        dt = DR_INT32;
        break;
    case NPY_INT64:
        dt = DR_INT64;
        break;
    case NPY_UINT64:
        dt = DR_UINT64;
        break;
    case NPY_BOOL:
        dt = DR_BOOL;
        break;
    default:
        PyErr_Format(PyExc_TypeError, "%s: unsupported NumPy dtype %S", name, (PyObject *)PyArray_DESCR(arr));
        return -1;
    }
    if (!PyArray_ISNOTSWAPPED(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: array must be aligned and in native byte order", name);
        return -1;
    }
    if (writable && !PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: array is read-only", name);
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->t.data = PyArray_DATA(arr);
    out->t.dtype = dt;
    out->t.device = DR_CPU;
    out->t.ndim = nd;
    npy_intp isz = PyArray_ITEMSIZE(arr);
    for (int i = 0; i < nd; i++) {
        out->t.shape[i] = PyArray_DIM(arr, i);
        npy_intp s = PyArray_STRIDE(arr, i);
        if (s % isz != 0) {
            PyErr_Format(PyExc_ValueError, "%s: stride %zd of dimension %d is not a multiple of the item size", name,
                         (Py_ssize_t)s, i);
            return -1;
        }
        out->t.strides[i] = s / isz;
    }
    Py_INCREF(arr);
    out->keep = (PyObject *)arr;
    return 0;
}

static int from_dltensor(const dlp_tensor *d, const char *name, dr_pyarg *out) {
    if (d->ndim < 0 || d->ndim > DR_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions are supported, got %d", name, DR_MAX_DIMS,
                     (int)d->ndim);
        return -1;
    }
    if (d->dtype.lanes != 1) {
        PyErr_Format(PyExc_TypeError, "%s: vector dtypes (lanes=%d) are not supported", name, (int)d->dtype.lanes);
        return -1;
    }
    int code = d->dtype.code, bits = d->dtype.bits;
    dr_dtype dt;
    if (code == DLP_FLOAT && bits == 32)
        dt = DR_FLOAT32;
    else if (code == DLP_FLOAT && bits == 64)
        dt = DR_FLOAT64;
    else if (code == DLP_FLOAT && bits == 16)
        dt = DR_FLOAT16;
    else if (code == DLP_BFLOAT && bits == 16)
        dt = DR_BFLOAT16;
    else if (code == DLP_UINT && bits == 8)
        dt = DR_UINT8;
    else if (code == DLP_INT && bits == 32)
        dt = DR_INT32;
    else if (code == DLP_INT && bits == 64)
        dt = DR_INT64;
    else if (code == DLP_UINT && bits == 64)
        dt = DR_UINT64;
    else if (code == DLP_BOOL && bits == 8)
        dt = DR_BOOL;
    else {
        PyErr_Format(PyExc_TypeError, "%s: unsupported DLPack dtype (code %d, %d bits)", name, code, bits);
        return -1;
    }
    switch (d->device.device_type) {
    case DLP_CPU:
    case DLP_CUDA_HOST:
        out->t.device = DR_CPU;
        break;
    case DLP_CUDA:
    case DLP_CUDA_MANAGED:
        out->t.device = DR_CUDA;
        break;
    default:
        PyErr_Format(PyExc_ValueError, "%s: unsupported device type %d (only CPU and CUDA)", name,
                     (int)d->device.device_type);
        return -1;
    }
    out->t.device_id = d->device.device_id;
    out->t.data = (char *)d->data + d->byte_offset;
    out->t.dtype = dt;
    out->t.ndim = d->ndim;
    int64_t expect = 1;
    for (int i = d->ndim - 1; i >= 0; i--) {
        out->t.shape[i] = d->shape[i];
        out->t.strides[i] = d->strides ? d->strides[i] : expect;
        expect *= d->shape[i];
    }
    return 0;
}

/* Obtain a capsule from obj.__dlpack__, preferring the versioned protocol. */
static PyObject *get_capsule(PyObject *obj, const char *name, long long stream, int *is_cuda) {
    PyObject *dev = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    if (!dev)
        return NULL;
    long dtype = -1;
    if (PyTuple_Check(dev) && PyTuple_GET_SIZE(dev) >= 1)
        dtype = PyLong_AsLong(PyTuple_GET_ITEM(dev, 0));
    Py_DECREF(dev);
    if (dtype == -1 && PyErr_Occurred())
        return NULL;
    *is_cuda = (dtype == DLP_CUDA || dtype == DLP_CUDA_MANAGED);
    PyObject *meth = PyObject_GetAttrString(obj, "__dlpack__");
    if (!meth)
        return NULL;
    PyObject *args = PyTuple_New(0);
    PyObject *kw = PyDict_New();
    PyObject *cap = NULL;
    if (!args || !kw)
        goto done;
    if (*is_cuda) {
        PyObject *s = PyLong_FromLongLong(stream ? stream : 1); /* 1: the legacy default stream */
        if (!s || PyDict_SetItemString(kw, "stream", s) < 0) {
            Py_XDECREF(s);
            goto done;
        }
        Py_DECREF(s);
    }
    PyObject *ver = Py_BuildValue("(ii)", 1, 0);
    if (!ver || PyDict_SetItemString(kw, "max_version", ver) < 0) {
        Py_XDECREF(ver);
        goto done;
    }
    Py_DECREF(ver);
    cap = PyObject_Call(meth, args, kw);
    if (!cap && PyErr_ExceptionMatches(PyExc_TypeError)) {
        /* a producer from before DLPack 1.0: legacy call */
        PyErr_Clear();
        if (PyDict_DelItemString(kw, "max_version") < 0)
            goto done;
        cap = PyObject_Call(meth, args, kw);
    }
    if (!cap)
        PyErr_Format(PyExc_TypeError, "%s: __dlpack__ failed", name);
done:
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_DECREF(meth);
    return cap;
}

/* (data_ptr, dtype, device, device_id, shape, strides): a descriptor built by dynrefer's own PyTorch layer from
 * the tensor's properties (the tensor stays alive in the caller for the call). It avoids the DLPack round trip,
 * whose producer side in PyTorch queries CUDA even for CPU tensors (which fails in a forked DataLoader worker
 * of a CUDA-initialised parent). */
static int from_descriptor(PyObject *obj, const char *name, dr_pyarg *out) {
    unsigned long long ptr;
    int dtype, device, device_id;
    PyObject *shape, *strides;
    if (!PyArg_ParseTuple(obj, "KiiiO!O!", &ptr, &dtype, &device, &device_id, &PyTuple_Type, &shape, &PyTuple_Type,
                          &strides)) {
        PyErr_Format(PyExc_TypeError, "%s: malformed tensor descriptor", name);
        return -1;
    }
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    if (nd > DR_MAX_DIMS || PyTuple_GET_SIZE(strides) != nd || dtype < 0 || dtype >= DR_NUM_DTYPES ||
        (device != DR_CPU && device != DR_CUDA) || device_id < 0) {
        PyErr_Format(PyExc_ValueError, "%s: invalid tensor descriptor", name);
        return -1;
    }
    out->t.data = (void *)(uintptr_t)ptr;
    out->t.dtype = (dr_dtype)dtype;
    out->t.device = (dr_device)device;
    out->t.device_id = device_id;
    out->t.ndim = (int)nd;
    for (Py_ssize_t i = 0; i < nd; i++) {
        out->t.shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, i));
        out->t.strides[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides, i));
        if (PyErr_Occurred())
            return -1;
        if (out->t.shape[i] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: negative size in tensor descriptor", name);
            return -1;
        }
    }
    Py_INCREF(obj);
    out->keep = obj;
    return 0;
}

int dr_pyarg_from(PyObject *obj, const char *name, int writable, long long stream, dr_pyarg *out) {
    memset(out, 0, sizeof *out);
    if (PyArray_Check(obj))
        return from_numpy((PyArrayObject *)obj, name, writable, out);
    if (PyTuple_Check(obj))
        return from_descriptor(obj, name, out);
    if (!PyObject_HasAttrString(obj, "__dlpack__")) {
        PyErr_Format(PyExc_TypeError, "%s: expected a NumPy array or a tensor supporting __dlpack__, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int is_cuda = 0;
    PyObject *cap = get_capsule(obj, name, stream, &is_cuda);
    if (!cap)
        return -1;
    int rc = -1;
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        dlp_managed_v *m = (dlp_managed_v *)PyCapsule_GetPointer(cap, "dltensor_versioned");
        if (!m)
            goto fail;
        if (m->version.major != 1) {
            PyErr_Format(PyExc_TypeError, "%s: unsupported DLPack major version %u", name, m->version.major);
            goto fail;
        }
        if (writable && (m->flags & DLP_FLAG_READ_ONLY)) {
            PyErr_Format(PyExc_ValueError, "%s: tensor is read-only", name);
            goto fail;
        }
        rc = from_dltensor(&m->dl_tensor, name, out);
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
        dlp_managed *m = (dlp_managed *)PyCapsule_GetPointer(cap, "dltensor");
        if (!m)
            goto fail;
        rc = from_dltensor(&m->dl_tensor, name, out);
    } else {
        PyErr_Format(PyExc_TypeError, "%s: __dlpack__ did not return a DLPack capsule (or it was already used)",
                     name);
    }
fail:
    if (rc != 0) {
        Py_DECREF(cap);
        memset(out, 0, sizeof *out);
        return -1;
    }
    out->keep = cap;
    return 0;
}
