"""Every CUDA source compiles for sm_80 and sm_90 with warnings as errors, and no kernel spills registers or uses
more static shared memory than a block may have (48 KB; larger tiles are dynamic shared memory, checked by their
launchers against the device's opt-in limit). Reads ptxas's resource report (``nvcc -cubin -Xptxas -v``).

No GPU needed, only nvcc (skipped without it). Results are cached under the temp dir by a hash of the compiler,
the flags, the source and every header it can include, so only changed files are compiled again; the files that
are compiled run in parallel.
"""
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from glob import glob

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("80", "90")
STATIC_SMEM_LIMIT = 48 * 1024
# Kernels allowed to spill, by source, with the architectures where they may: {"file.cu": {"kernel": ("80", "90")}}.
# Empty: no kernel may spill. An entry must still spill where listed (remove it once fixed).
KNOWN_SPILLS = {}
# Per-source nvcc flags of the build (setup.py), so the check sees the code that ships.
EXTRA_FLAGS = {"phash.cu": ["--fmad=false"]}


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = os.path.join(home, "bin", "nvcc") if home else None
    if cand and os.path.exists(cand):
        return cand
    return shutil.which("nvcc")


NVCC = _nvcc()
SOURCES = sorted(glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")


def _flags(arch, src=""):
    inc = [f"-I{os.path.join(ROOT, 'csrc', d)}" for d in ("include", "core", "cuda")]
    return ["-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Werror", "all-warnings",
            "-Xptxas", "-v"] + EXTRA_FLAGS.get(os.path.basename(src), []) + inc


def _key(src, arch):
    h = hashlib.sha256()
    h.update(subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout.encode())
    h.update(" ".join(_flags(arch, src)).encode())
    deps = [src] + sorted(glob(os.path.join(ROOT, "csrc", "include", "*")) + glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")))
    for path in deps:
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    return h.hexdigest()[:32]


def _compile(src, arch):
    """(returncode, ptxas/nvcc output), from the cache when this source and its headers were compiled before."""
    cache = os.path.join(tempfile.gettempdir(), "dynrefer-cuda-build")
    os.makedirs(cache, exist_ok=True)
    entry = os.path.join(cache, f"{os.path.basename(src)}.sm{arch}.{_key(src, arch)}.log")
    if os.path.exists(entry):
        with open(entry) as f:
            return 0, f.read()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "k.cubin")
        r = subprocess.run([NVCC, src, "-o", out] + _flags(arch, src), capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode == 0:  # only successes are cached; a failure is compiled (and reported) again next time
        with open(entry + ".tmp", "w") as f:
            f.write(log)
        os.replace(entry + ".tmp", entry)
    return r.returncode, log


@pytest.fixture(scope="module")
def reports():
    jobs = [(s, a) for s in SOURCES for a in ARCHS]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        results = list(ex.map(lambda j: _compile(*j), jobs))
    return dict(zip(jobs, results))


def parse_ptxas(log):
    """[{name, regs, spill_st, spill_ld, smem}] from ptxas -v output: one record per function named by a
    "Compiling entry function" or a "Function properties for" line (device functions with their own frame, such
    as the libdevice slow paths, included); the lines after a name belong to it."""
    kernels, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m:
            cur = kernels.setdefault(m.group(1), {"name": m.group(1), "regs": 0, "spill_st": 0, "spill_ld": 0,
                                                  "smem": 0})
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["spill_st"], cur["spill_ld"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
    return list(kernels.values())


def test_parse_ptxas_report():
    log = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 50000 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_80'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, 356 bytes cmem[0]
ptxas info    : Function properties for __internal_trig_reduction_slowpathd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    ks = parse_ptxas(log)
    assert [k["name"] for k in ks] == ["_Z3fooPf", "_Z3barv", "__internal_trig_reduction_slowpathd"]
    assert (ks[0]["regs"], ks[0]["spill_st"], ks[0]["spill_ld"], ks[0]["smem"]) == (40, 4, 12, 50000)
    assert (ks[1]["regs"], ks[1]["spill_st"], ks[1]["smem"]) == (8, 0, 0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=os.path.basename)
def test_compiles_without_spills(reports, src, arch):
    rc, log = reports[(src, arch)]
    assert rc == 0, f"{os.path.basename(src)} does not compile for sm_{arch} with warnings as errors:\n{log[-4000:]}"
    kernels = parse_ptxas(log)
    if "__global__" in open(src).read():
        assert kernels, f"no ptxas resource report for {os.path.basename(src)}:\n{log[-2000:]}"
    big = [k for k in kernels if k["smem"] > STATIC_SMEM_LIMIT]
    assert not big, f"sm_{arch}: static shared memory over 48 KB: {big}"
    known = {n for n, archs in KNOWN_SPILLS.get(os.path.basename(src), {}).items() if arch in archs}
    spills = [k for k in kernels if k["spill_st"] or k["spill_ld"]]
    new = [k for k in spills if not any(n in k["name"] for n in known)]
    assert not new, f"sm_{arch}: register spills: {new}"
    gone = {n for n in known if not any(n in k["name"] for k in spills)}
    assert not gone, f"sm_{arch}: {sorted(gone)} no longer spill: remove them from KNOWN_SPILLS"
