"""Every import inside the package points down the layers of docs/DESIGN.md §2:

    kernels and bindings (dynrefer._C, dynrefer._C_cuda, the package root)
      ← ops ← views / nn ← model ← data / eval / train ← app ← cli / lavis

A module may import its own package and any lower floor; packages on the same floor (data, eval, train; views, nn)
do not import one another; and no module imports another package's private (underscore) names. The walk reads the
source (imports inside functions included), so it also covers the lazily imported modules.
"""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "dynrefer"

FLOORS = {
    "": 0, "_C": 0, "_C_cuda": 0,
    "ops": 1,
    "views": 2, "nn": 2,
    "model": 3,
    "data": 4, "eval": 4, "train": 4,
    "app": 5,
    "cli": 6, "lavis": 6, "__main__": 6,
}


def _modules(root):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _unit(module):
    """The layer unit of a dotted module name: the first component below ``dynrefer``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module, path):
    """(line, imported module, imported names) for every import of a dynrefer module in ``path``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "dynrefer":
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dynrefer":
                yield node.lineno, target, [a.name for a in node.names]


def _violations(root=PKG):
    out = []
    for module, path in _modules(root):
        src = _unit(module)
        if src not in FLOORS:
            out.append(f"{module}: not assigned to a layer (add it to FLOORS in tests/test_layers.py)")
            continue
        for line, target, names in _imports(module, path):
            dst = _unit(target)
            # "from dynrefer import ops" names a unit, not the root
            units = [n for n in names if n in FLOORS and n != ""] if dst == "" else []
            for unit in units or [dst]:
                if unit not in FLOORS:
                    out.append(f"{path.name}:{line}: {module} imports {target}, which has no layer")
                elif unit != src and FLOORS[unit] >= FLOORS[src] and not (src == "" and unit in ("_C", "_C_cuda")):
                    out.append(f"{path.relative_to(root.parent)}:{line}: {module} (floor {FLOORS[src]}) imports "
                               f"{target if not units else 'dynrefer.' + unit} (floor {FLOORS[unit]})")
            if dst != src and dst not in ("", "_C", "_C_cuda"):
                private = [n for n in names if n.startswith("_")]
                if private:
                    out.append(f"{path.relative_to(root.parent)}:{line}: {module} imports private {private} "
                               f"from {target}")
    return out


def test_every_import_points_down():
    bad = _violations()
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


@pytest.mark.parametrize("source,expect", [
    ("from dynrefer.app.bundle import save_bundle\n", "imports dynrefer.app.bundle"),   # up
    ("def f():\n    from dynrefer.eval import evaluate\n", "imports dynrefer.eval"),   # sideways, lazily
    ("from dynrefer.views import _hidden\n", "imports private"),
])
def test_the_walk_catches_what_it_should(tmp_path, source, expect):
    """The check itself can fail: a data module importing upwards, sideways or a private name is reported."""
    pkg = tmp_path / "dynrefer"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "bad.py").write_text(source)
    bad = _violations(pkg)
    assert any(expect in b for b in bad), bad
