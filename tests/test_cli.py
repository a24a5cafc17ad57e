"""The `dynrefer` command: the main job end to end (quick), describe / train / eval on its outputs, flops, bench,
and the errors a user sees for bad input."""
import glob
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the model needs transformers (pip install dynrefer[train])")

from dynrefer.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quick", "--epochs", "1", "--seeds", "2", "--jobs", "2"]) == 0
    return out


def test_demo_writes_table_and_bundle(demo_out, capsys):
    table = (demo_out / "table7.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and "view scheme" not in l]
    assert len(rows) == 6  # crop, RoI-Align, fixed 2, stochastic x (none, image, task)
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        (cider, s_c), (amap, s_a), (acc, s_acc) = (map(float, c.split(" ± ")) for c in cells[3:6])  # mean ± sd
        assert cider >= 0 and 0 <= amap <= 100 and 0 <= acc <= 100 and min(s_c, s_a, s_acc) >= 0
    assert "Differences larger than twice their standard error" in table
    assert (demo_out / "model.pt").is_file()
    manifest = json.loads((demo_out / "data" / "synthetic.json").read_text())
    assert manifest["splits"] == {"train": 16, "val": 6}


def test_describe_on_the_demo_model(demo_out, tmp_path, capsys):
    img = sorted(glob.glob(str(demo_out / "data" / "images" / "val_*.png")))[0]
    stem = str(tmp_path / "desc")
    rc = main(["describe", img, "--box", "10,10,80,90", "--box", "50,40,120,150", "--checkpoint",
               str(demo_out / "model.pt"), "--out", stem])
    assert rc == 0
    out = capsys.readouterr().out
    blocks = out.split("\n[")
    heads = [l for l in out.splitlines() if l.startswith("[") and " box " in l]
    assert len(heads) == 2 and all("(views t = " in h for h in heads)
    for label in ("category ", "attributes ", "tags ", "caption "):
        assert sum(f"    {label}" in b for b in blocks) == 2, label
    assert all(len(l) <= 160 for l in out.splitlines())        # a short block a person reads, no 600-char lines
    assert os.path.isfile(stem + "_0.png") and os.path.isfile(stem + "_1.png")
    # deterministic under the seed
    main(["describe", img, "--box", "10,10,80,90", "--checkpoint", str(demo_out / "model.pt"), "--out", stem])
    again = capsys.readouterr().out.splitlines()
    assert again[:5] == out.splitlines()[:5]


def test_describe_figure_of_a_photo(demo_out, tmp_path, shared_data, capsys):
    """`dynrefer describe` on a real photo: the figure's layout (no blank band, the region over the tight view's
    frame, clipped to the image) and the answers it prints, scores included."""
    from PIL import Image
    from test_plot_views import _check_layout

    photo = sorted(glob.glob(os.path.join(shared_data, "images", "*.jpg")))[0]
    with Image.open(photo) as im:
        w, h = im.size
    box = [0.5 * w, 0.2 * h, w + 30.0, 0.7 * h]      # reaches past the right edge
    stem = str(tmp_path / "photo")
    assert main(["describe", photo, "--box", ",".join(f"{v:.1f}" for v in box), "--checkpoint",
                 str(demo_out / "model.pt"), "--out", stem]) == 0
    out = capsys.readouterr().out
    assert "clipped to" in out
    coeffs = [float(t) for t in out.split("(views t = ")[1].split(")")[0].split(", ")]
    with Image.open(stem + "_0.png") as fig:
        a, sw = _check_layout(fig.convert("RGB"), w, h, box, coeffs)
    assert a.shape[1] > sw + 3 * 64


def test_train_and_eval_commands(demo_out, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  preset: tiny\n  num_views: 2\n  views:\n    prior: stochastic\n"
                   f"datasets:\n  root: {demo_out / 'data'}\n"
                   f"run:\n  output_dir: {tmp_path / 'run'}\n  max_epoch: 1\n  batch_size_train: 16\n  seed: 0\n")
    assert main(["train", str(cfg)]) == 0
    bundle = tmp_path / "run" / "model.pt"
    assert bundle.is_file()
    capsys.readouterr()
    assert main(["eval", str(cfg), "--checkpoint", str(bundle), "--prior", "none"]) == 0
    out = capsys.readouterr().out
    assert "CIDEr" in out and "attribute mAP" in out and "accuracy" in out


def test_user_errors(tmp_path, capsys):
    assert main(["describe", str(tmp_path / "nope.png"), "--box", "0,0,5,5"]) == 2
    assert "image not found" in capsys.readouterr().err
    from PIL import Image

    p = tmp_path / "img.png"
    Image.new("RGB", (40, 30)).save(p)
    for bad, msg in [("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("5,5,2,9", "x2 > x1"),
                     ("100,100,120,120", "outside"), ("nan,0,4,4", "finite")]:
        assert main(["describe", str(p), "--box", bad]) == 2
        assert msg in capsys.readouterr().err
    assert main(["describe", str(p), "--box", "1,1,9,9", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no model bundle" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    import torch

    torch.save({"x": 1}, junk)
    assert main(["describe", str(p), "--box", "1,1,9,9", "--checkpoint", str(junk)]) == 2
    assert "not a dynrefer model bundle" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  preset: tiny\ndatasets:\n  root: /nonexistent\nrun:\n  max_epoch: 1\n")
    assert main(["train", str(cfg)]) == 2
    assert "lacks" in capsys.readouterr().err


def test_flops_and_bench(capsys):
    assert main(["flops", "official", "--views", "3"]) == 0
    out = capsys.readouterr().out
    assert "791" in out or "792" in out  # ≈ 792 G MACs for 3 views of EVA ViT-g at 224 (docs/DESIGN.md §8)
    assert main(["bench", "--regions", "2", "--views", "2", "--channels", "16", "--repeats", "1"]) == 0
    assert "agrees with torchvision" in capsys.readouterr().out
    assert main(["info"]) == 0


def test_examples_run(demo_out, tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ops_in_training_loop.py"])
    runpy.run_path(os.path.join(root, "ops_in_training_loop.py"), run_name="__main__")
    assert "step 29" in capsys.readouterr().out
    img = sorted(glob.glob(str(demo_out / "data" / "images" / "val_*.png")))[0]
    monkeypatch.setattr(sys, "argv", ["describe_your_image.py", img, "5,5,60,60", "--checkpoint",
                                      str(demo_out / "model.pt")])
    runpy.run_path(os.path.join(root, "describe_your_image.py"), run_name="__main__")
    assert (tmp_path / "region_0.png").is_file()
    # your own annotations: COCO-style boxes with captions
    from PIL import Image

    os.makedirs(tmp_path / "imgs")
    images, anns = [], []
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).integers(0, 255, (80, 100, 3))).astype(np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 80})
        anns.append({"id": 10 + i, "image_id": i + 1, "bbox": [10, 10, 40, 30], "caption": f"a noisy patch number {i}"})
    (tmp_path / "mine.json").write_text(json.dumps({"images": images, "annotations": anns}))
    monkeypatch.setattr(sys, "argv", ["train_on_your_annotations.py", str(tmp_path / "mine.json"),
                                      str(tmp_path / "imgs"), str(tmp_path / "mine"), "--epochs", "1"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(root, "train_on_your_annotations.py"), run_name="__main__")
    assert e.value.code == 0
    assert (tmp_path / "mine" / "run" / "model.pt").is_file()


def test_demo_table_statistics():
    """mean ± sample standard deviation per row; a difference is listed only beyond twice its standard error."""
    from dynrefer.app.demo import SCHEMES, summarize

    results = {}
    for k, (name, train, evals) in enumerate(SCHEMES):
        for s in (0, 1, 2):
            big = name == "stochastic 3 views"
            results[(name, s)] = {"views": 1, **{p: {"CIDEr": (80.0 if big else 50.0) + s, "attr_mAP": 30.0 + 3 * s,
                                                     "acc": 20.0} for p, _ in evals}}
    rows, findings = summarize(results, [0, 1, 2])
    assert rows[0][3:] == ["51.0 ± 1.0", "33.0 ± 3.0", "20.0 ± 0.0"]
    assert any(f.startswith("CIDEr: stochastic 3 views") for f in findings)
    assert not any(f.startswith("attribute mAP") or f.startswith("accuracy") for f in findings)
