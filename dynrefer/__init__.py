"""dynrefer: DynRefer region-level vision-language modelling on a pure-C/CUDA kernel core.

Importing the package is cheap: the compiled extension (``dynrefer._C``) is loaded on first use, and
PyTorch is never imported unless a PyTorch-facing module is used.
"""

from __future__ import annotations

import types

__version__ = "0.1.0"

__all__ = ["__version__", "cuda_available", "set_num_threads", "get_num_threads", "build_info"]

# subpackages reachable as attributes after ``import dynrefer`` (``dynrefer.ops.roi_align``), imported on first use:
# the package import itself stays free of torch and of the compiled extension
_SUBPACKAGES = ("ops", "views", "nn", "model", "data", "eval", "train", "app", "lavis")


def __getattr__(name: str) -> types.ModuleType:
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"dynrefer.{name}")
    raise AttributeError(f"module 'dynrefer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES))


def _ext() -> types.ModuleType:
    from dynrefer import _C

    return _C


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads the kernels use (default: the CPUs in this process's affinity mask)."""
    _ext().set_num_threads(n)


def get_num_threads() -> int:
    """Number of CPU threads the kernels use."""
    return _ext().get_num_threads()


def cuda_available() -> bool:
    """True when the CUDA kernels were built and a CUDA device can be used from this process."""
    return bool(_ext().cuda_available())


def build_info() -> dict:
    """Facts a bug report needs about this build and machine: the versions of Python, NumPy and (when installed)
    PyTorch, torchvision and transformers, the CPU, the kernels' instruction set and threads, whether the CUDA
    kernels were built and can run, PyTorch's CUDA and GPU, and the CUDA launchers dynrefer exports."""
    import importlib.metadata as md
    import platform
    import sys

    import numpy as np

    c = _ext()
    info = {"dynrefer": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu": _cpu_name(), "numpy": np.__version__}
    for pkg in ("torch", "torchvision", "transformers"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    info.update({"threads": c.get_num_threads(), "cpu_isa": c.views_cpu_isa(), "cuda_built": bool(c.cuda_built()),
                 "cuda_available": bool(c.cuda_available()), "cuda_launchers": list(c.cuda_symbols())})
    info["torch_cuda"] = info["gpu"] = None
    if info["torch"] is not None and "torch" in sys.modules:   # only asked of a torch that is already loaded
        torch = sys.modules["torch"]
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
