"""The binding layer's own contract: every CUDA launcher a binding looks up is exported by the CUDA module."""
import pathlib
import re

import pytest

import dynrefer._C as C

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _looked_up():
    names = set()
    for f in sorted((ROOT / "csrc" / "python").glob("bind_*.c")):
        names.update(re.findall(r'(?:dr_cuda_fn\(|dr_run_where\([^"]*)"([A-Za-z0-9_]+)"', f.read_text()))
    return names


def test_bindings_look_up_launchers():
    assert {"dr_roi_align_forward_cuda", "dr_crop_resize_cuda", "dr_phash_cuda", "dr_select_views_cuda",
            "dr_dcnv4_backward_cuda", "dr_attention_forward_cuda"} <= _looked_up()


@pytest.mark.skipif(not C.cuda_built(), reason="dynrefer built without CUDA")
def test_every_looked_up_launcher_is_exported():
    exported = set(C.cuda_symbols())
    missing = _looked_up() - exported
    assert not missing, f"bindings look up launchers the CUDA module does not export: {sorted(missing)}"
