"""dynrefer: DynRefer region-level vision-language modelling on a pure-C/CUDA kernel core.

Importing the package is cheap: the compiled extension (``dynrefer._C``) is loaded on first use, and
PyTorch is never imported unless a PyTorch-facing module is used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "cuda_available", "set_num_threads", "get_num_threads", "build_info"]


def _ext():
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
    """Facts a bug report needs about this build and machine: versions, the CPU kernels' instruction set, CPU
    threads, whether the CUDA kernels were built and can run, and the CUDA launchers they export."""
    import numpy as np

    c = _ext()
    return {"dynrefer": __version__, "numpy": np.__version__, "threads": c.get_num_threads(),
            "cpu_isa": c.views_cpu_isa(), "cuda_built": bool(c.cuda_built()),
            "cuda_available": bool(c.cuda_available()), "cuda_launchers": list(c.cuda_symbols())}
