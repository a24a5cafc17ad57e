"""Type hints of the public modules.

* ``mypy`` (configured in pyproject.toml's ``[tool.mypy]``: the typed modules, ``disallow_untyped_defs`` on them)
  passes; skipped when mypy is not installed (it is in the ``test`` extra).
* Without mypy: every public function and method of those modules annotates all its parameters and its return, so a
  new unannotated one fails here too.
"""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "dynrefer"

# the modules pyproject.toml's [tool.mypy] checks (folders: every module in them)
TYPED = ["__init__.py", "cli.py", "app", "train", "eval", "data", "model", "nn", "ops/__init__.py", "ops/roi_align.py",
         "ops/dcnv4.py", "ops/attention.py", "ops/views.py", "views.py", "lavis"]
# not typed yet (and excluded there)
NOT_YET = {"ops/_torch_attention.py"}


def _typed_files():
    for entry in TYPED:
        path = PKG / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if f.relative_to(PKG).as_posix() not in NOT_YET:
                yield f


def _public_defs(tree):
    """(qualified name, def node, is_method) of the module's public functions and the methods of its public
    classes: names without a leading underscore, plus dunder methods (``__init__``, ``__call__``, ...) and the
    module's ``__getattr__`` / ``__dir__``. Nested functions are private to their function."""
    def visit(body, prefix, in_class):
        for node in body:
            if isinstance(node, (ast.If, ast.Try)):
                blocks = [node.body, node.orelse] + ([node.finalbody] + [h.body for h in node.handlers]
                                                     if isinstance(node, ast.Try) else [])
                for block in blocks:
                    yield from visit(block, prefix, in_class)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                dunder = node.name.startswith("__") and node.name.endswith("__")
                if dunder or not node.name.startswith("_"):
                    yield prefix + node.name, node, in_class
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                yield from visit(node.body, prefix + node.name + ".", True)

    yield from visit(tree.body, "", False)


def _missing(node, is_method):
    a = node.args
    params = a.posonlyargs + a.args
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if is_method and not static and params:
        params = params[1:]  # self / cls
    params = params + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p is not None]
    out = [p.arg for p in params if p.annotation is None]
    if node.returns is None:
        out.append("return")
    return out


def test_typed_modules_exist():
    files = list(_typed_files())
    assert len(files) > 40
    for entry in TYPED:
        assert (PKG / entry).exists(), entry
    # the same list as the checker's configuration
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for entry in TYPED:
        assert f'"dynrefer/{entry}"' in config, entry
    for entry in NOT_YET:
        assert entry.replace(".", "\\.") in config, entry


def test_public_functions_are_annotated():
    bad = []
    for path in _typed_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name, node, is_method in _public_defs(tree):
            miss = _missing(node, is_method)
            if miss:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}: no annotation for {', '.join(miss)}")
    assert not bad, "unannotated public functions:\n" + "\n".join(bad)


def test_py_typed_marker_is_package_data():
    assert (PKG / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install 'dynrefer[test]' or pip install mypy)")
def test_mypy_passes(request, tmp_path):
    try:
        cache = request.config.cache.mkdir("mypy")   # kept between runs: a warm run takes seconds
    except AttributeError:                            # pytest -p no:cacheprovider
        cache = tmp_path / "mypy_cache"
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(cache), "--no-color-output", "--no-error-summary"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"mypy found type errors:\n{proc.stdout}\n{proc.stderr}"
