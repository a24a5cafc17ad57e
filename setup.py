"""Build of dynrefer's extensions with plain setuptools.

dynrefer._C       the CPU kernels (csrc/core, C11) and the Python bindings (csrc/python); always built.
dynrefer._C_cuda  the CUDA kernels (csrc/cuda) behind a launcher table; built when nvcc is found.

Environment:
  DYNREFER_CUDA=0          never build the CUDA module (=1: fail if nvcc is missing)
  DYNREFER_CUDA_ARCHS      compute capabilities, e.g. "80;90" (default); PTX is embedded for the last one
  CUDA_HOME / CUDA_PATH    where CUDA lives (default: from nvcc on PATH, else /usr/local/cuda)
  DYNREFER_SANITIZE=1      build with -fsanitize=address,undefined (for the sanitizer test run)
  DYNREFER_WERROR=1        treat C and CUDA warnings as errors (CI): -Werror for the C compiler, -Werror
                           all-warnings for nvcc and -Wall,-Wextra,-Werror for its host compiler
"""
import os
import shutil
import subprocess
import sys
from glob import glob

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def rel(*parts):
    return os.path.join(*parts)


def env_flag(name):
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    return v.strip().lower() not in ("0", "false", "no", "off")


def find_cuda():
    """(nvcc, CUDA home) or (None, None). The home is the first candidate holding include/cuda_runtime.h."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    if not nvcc or not os.path.exists(nvcc):
        nvcc = shutil.which("nvcc")
    if not nvcc:
        return None, None
    candidates = [home, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for cand in candidates:
        if cand and os.path.exists(os.path.join(cand, "include", "cuda_runtime.h")):
            return nvcc, cand
    return nvcc, None


SANITIZE = env_flag("DYNREFER_SANITIZE")
WERROR = env_flag("DYNREFER_WERROR")

# -ffp-contract=off: no fused multiply-adds where the source has a multiply and an add (they change the bits of
# the ops that reproduce a peer's float arithmetic, e.g. imagehash's DCT); GCC's ISO C default, clang's is "on"
c_flags = ["-std=c11", "-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-fvisibility=hidden", "-D_GNU_SOURCE"]
link_flags = []
if WERROR:
    c_flags.append("-Werror")
if SANITIZE:
    c_flags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    link_flags += ["-fsanitize=address,undefined"]

include_dirs = [rel("csrc", "include"), rel("csrc", "core"), rel("csrc", "python"), np.get_include()]
core_sources = sorted(glob(rel("csrc", "core", "*.c")))
# every binding file except the CUDA module's own
binding_sources = sorted(s for s in glob(rel("csrc", "python", "*.c")) if not s.endswith("cuda_module.c"))

ext_modules = [
    Extension(
        "dynrefer._C",
        sources=core_sources + binding_sources,
        include_dirs=include_dirs,
        extra_compile_args=c_flags,
        extra_link_args=link_flags,
        libraries=["pthread", "m"],
        depends=glob(rel("csrc", "include", "*")) + glob(rel("csrc", "core", "*.inc")) + glob(rel("csrc", "python", "*.h")),
    )
]

cuda_pref = env_flag("DYNREFER_CUDA")
NVCC, CUDA_HOME = find_cuda()
if cuda_pref is True and not NVCC:
    sys.exit("DYNREFER_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
if cuda_pref is not False and NVCC and not SANITIZE:
    lib_dirs = [d for d in (os.path.join(CUDA_HOME or "", "lib64"), os.path.join(CUDA_HOME or "", "lib")) if os.path.isdir(d)]
    ext_modules.append(
        Extension(
            "dynrefer._C_cuda",
            sources=[rel("csrc", "python", "cuda_module.c"), rel("csrc", "core", "status.c")]
            + sorted(glob(rel("csrc", "cuda", "*.cu"))),
            include_dirs=include_dirs + ([os.path.join(CUDA_HOME, "include")] if CUDA_HOME else []),
            extra_compile_args=c_flags,
            library_dirs=lib_dirs,
            libraries=["cudart_static", "dl", "rt", "pthread", "stdc++"],
            depends=glob(rel("csrc", "include", "*")) + glob(rel("csrc", "cuda", "*.cuh")),
        )
    )


class BuildExt(build_ext):
    """build_ext that compiles .cu sources with nvcc and links them into the extension."""

    def build_extension(self, ext):
        cu = [s for s in ext.sources if s.endswith(".cu")]
        if cu:
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            archs = [a.strip() for a in os.environ.get("DYNREFER_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
            gencode = []
            for a in archs:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
            objdir = os.path.join(self.build_temp, "cuda")
            os.makedirs(objdir, exist_ok=True)
            objs = []
            for src in cu:
                obj = os.path.join(objdir, os.path.basename(src) + ".o")
                host_flags = "-fPIC,-fvisibility=hidden" + (",-Wall,-Wextra,-Werror" if WERROR else "")
                cmd = [NVCC, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", host_flags,
                       "--expt-relaxed-constexpr", "-lineinfo"] + gencode
                if WERROR:  # nvcc's own warnings (device code, ptxas) are errors too
                    cmd += ["-Werror", "all-warnings"]
                cmd += [f"-I{d}" for d in ext.include_dirs]
                if os.path.basename(src) == "phash.cu":  # imagehash's DCT in scipy's arithmetic: no fused multiply-adds
                    cmd.append("--fmad=false")
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                objs.append(obj)
            ext.extra_objects = list(ext.extra_objects or []) + objs
        super().build_extension(ext)


setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
