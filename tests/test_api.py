"""The package as a notebook user meets it: subpackages reachable after ``import dynrefer`` without importing
torch, ``--version``, ``info`` with the versions a bug report needs, short reprs."""
import os
import subprocess
import sys

import pytest


def _py(code):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True).stdout


def test_ops_reachable_after_import_dynrefer_without_torch():
    out = _py("import sys, dynrefer; f = dynrefer.ops.roi_align; import numpy as np;"
              "x = np.zeros((1, 1, 4, 4), np.float32); b = np.array([[0, 0, 0, 2, 2]], np.float32);"
              "print(f(x, b, 2).shape, 'torch' in sys.modules, 'ops' in dir(dynrefer))")
    assert out.split() == ["(1,", "1,", "2,", "2)", "False", "True"]
    with pytest.raises(subprocess.CalledProcessError):
        _py("import dynrefer; dynrefer.no_such_thing")


def test_version_and_info(capsys):
    pytest.importorskip("torch")
    from dynrefer import __version__
    from dynrefer.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dynrefer {__version__}"
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("Python", "numpy", "torch", "torchvision", "transformers", "CPU:", "CUDA kernels built",
                 "torch CUDA"):
        assert word in out


def test_config_repr_is_one_short_line():
    pytest.importorskip("torch")
    from dynrefer.model import DynReferConfig

    for preset in ("official", "medium", "tiny"):
        r = repr(DynReferConfig.from_preset(preset))
        assert "\n" not in r and len(r) < 160 and "views" in r


def test_package_text_points_only_inside_the_package():
    """Docstrings, comments and shipped configs do not send a reader to documents that are not installed with the
    package (the repository's docs/ folder)."""
    import re

    import dynrefer

    root = os.path.dirname(dynrefer.__file__)
    pattern = re.compile(r"docs/|DESIGN(\.md| §)|ARCHITECTURE\.md")
    hits = []
    for base, _, files in os.walk(root):
        for name in files:
            if name.endswith((".py", ".yaml", ".yml", ".txt", ".json")):
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as f:
                    hits += [f"{os.path.relpath(path, root)}:{i}" for i, line in enumerate(f, 1) if pattern.search(line)]
    assert hits == []
