"""examples/tour.ipynb runs top to bottom in a fresh kernel of this interpreter (ops on NumPy and torch, nested
views and their plot, a small model describing regions)."""
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tour_notebook_executes(tmp_path, monkeypatch):
    # a kernel spec naming this interpreter, so the kernel sees the same installation as the tests
    spec = tmp_path / "jupyter" / "kernels" / "dynrefer-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dynrefer test", "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(sys.path)}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    nb = nbformat.read(os.path.join(ROOT, "examples", "tour.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="dynrefer-test", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "category" in texts and "caption" in texts
    assert (tmp_path / "tour_views.png").is_file() and (tmp_path / "tour_described_0.png").is_file()
    # the figures are shown in the notebook (plot_views' PIL image; the describe figure read back)
    shown = [c for c in nb.cells if c.cell_type == "code" and any("image/png" in o.get("data", {})
                                                                    for o in c.get("outputs", []))]
    assert len(shown) == 2 and "plot_views(" in shown[0].source and "Image.open(pngs[0])" in shown[1].source
