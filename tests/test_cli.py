"""The `dynrefer` command: the main job end to end (quick), describe / train / eval on its outputs, flops, bench,
and the errors a user sees for bad input."""
import glob
import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the model needs transformers (pip install dynrefer[train])")

from dynrefer.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quick", "--epochs", "1"]) == 0
    return out


def test_demo_writes_table_and_bundle(demo_out, capsys):
    table = (demo_out / "table7.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| ") and "view scheme" not in l]
    assert len(rows) == 6  # crop, RoI-Align, fixed 2, stochastic x (none, image, task)
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        cider, amap, acc = (float(c) for c in cells[3:6])
        assert cider >= 0 and 0 <= amap <= 100 and 0 <= acc <= 100
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
    lines = [l for l in out.splitlines() if l.startswith("[")]
    assert sum("category=" in l and "caption=" in l for l in lines) == 2
    assert os.path.isfile(stem + "_0.png") and os.path.isfile(stem + "_1.png")
    # deterministic under the seed
    main(["describe", img, "--box", "10,10,80,90", "--checkpoint", str(demo_out / "model.pt"), "--out", stem])
    again = capsys.readouterr().out.splitlines()[0]
    assert again == lines[0]


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
    assert "791" in out or "792" in out  # ≈ 792 G MACs for 3 views of EVA ViT-g at 224 (DESIGN §8)
    assert main(["bench", "--regions", "2", "--views", "2", "--channels", "16", "--repeats", "1"]) == 0
    assert "agrees with torchvision" in capsys.readouterr().out
    assert main(["info"]) == 0
