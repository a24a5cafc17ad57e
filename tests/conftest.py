"""Shared fixtures: the shared data folder, device lists, fresh random generators."""
import os
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skips the test when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so every test draws its own fresh inputs reproducibly."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


def cuda_devices():
    try:
        import torch
    except ImportError:
        return []
    import dynrefer

    return ["cuda"] if torch.cuda.is_available() and dynrefer.cuda_available() else []


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the tiny models' ops are too small for intra-op threads, which only cost time
    on a busy machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rle_encode(mask):
    """COCO's uncompressed RLE counts of a 2-D 0/1 mask (column-major runs, starting with a run of zeros)."""
    flat = mask.T.reshape(-1)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts
