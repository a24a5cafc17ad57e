"""Every mistake a user can make on the command line is one line on stderr naming the file, record or field, and
exit status 2 — never a traceback, never a silent success. Table-driven over bad configs, annotations, images,
bundles and boxes, for `dynrefer train / eval / describe` and `python -m dynrefer.data`."""
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from dynrefer.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from dynrefer.app.bundle import read_vocab, save_bundle
    from dynrefer.data.synthetic import generate
    from dynrefer.model import DynReferConfig, build_dynrefer

    d = tmp_path_factory.mktemp("cli_errors")
    data = d / "data"
    generate(str(data), seed=0, splits={"train": 3, "val": 2})
    tags, classes, attributes = read_vocab(str(data))
    texts = ["a red circle", "a blue square"]
    model = build_dynrefer(DynReferConfig.from_preset("tiny"), texts=texts, tag_list=tags, classes=classes,
                           attributes=attributes, seed=0)
    bundle = d / "model.pt"
    save_bundle(model, str(bundle), texts, tags, classes, attributes, {"num_views": 3, "size": 32})
    good = d / "good.yaml"
    good.write_text(f"model: {{preset: tiny}}\ndatasets: {{root: {data}}}\n"
                    f"run: {{output_dir: {d / 'run'}, max_epoch: 1, batch_size_train: 8}}\n")
    img = sorted((data / "images").glob("val_*.png"))[0]
    return {"d": d, "data": data, "bundle": bundle, "good": good, "img": img, "model": model,
            "vocab": (texts, tags, classes, attributes)}


def _run(capsys, argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.err


def _data_copy(env, name, edit):
    """A copy of the synthetic data folder whose train_caption.json is changed by ``edit(dict)``."""
    dst = env["d"] / name
    if not dst.exists():
        shutil.copytree(env["data"], dst)
        path = dst / "train_caption.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return dst


def _cfg(env, name, text):
    p = env["d"] / name
    p.write_text(text)
    return p


def _png_header_only(path, w, h):
    """A PNG that claims w x h pixels (a decompression bomb's header) with one tiny IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


def _corrupt(src, dst, where=0.5):
    raw = bytearray(src.read_bytes())
    i = int(len(raw) * where)
    for k in range(i, i + 64):
        raw[k] ^= 0x5A
    dst.write_bytes(bytes(raw))
    return dst


def _nan_bundle(env):
    from dynrefer.app.bundle import BUNDLE_FORMAT

    p = env["d"] / "nan.pt"
    b = torch.load(env["bundle"], weights_only=True)
    b.pop("sha256", None)
    k = next(k for k, v in b["model"].items() if v.is_floating_point() and v.numel() > 1)
    b["model"][k] = b["model"][k].clone()
    b["model"][k][0] = float("nan")
    assert b["format"] == BUNDLE_FORMAT
    torch.save(b, p)
    return p


def _cases(env):
    d, data, good, img = env["d"], env["data"], env["good"], env["img"]
    run = f"run: {{output_dir: {d / 'r'}, max_epoch: 1, batch_size_train: 8}}\n"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcde", "bcdef")) + "model: {x: *f}\n"
    return [
        # ---- train: configs
        ("train", [d / "missing.yaml"], "config file not found"),
        ("train", [_cfg(env, "syntax.yaml", "model: [\n")], "invalid YAML"),
        ("train", [_cfg(env, "list.yaml", "- 1\n- 2\n")], "expected a mapping"),
        ("train", [_cfg(env, "bomb.yaml", bomb)], "expands to more than"),
        ("train", [_cfg(env, "self.yaml", "model: &m {a: *m}\n")], "deeper than"),
        ("train", [_cfg(env, "binary.yaml", "")], None),   # replaced below by bytes that are not UTF-8
        ("train", [good, "run.max_epoch=-1"], "run.max_epoch"),
        ("train", [good, "run.no_such_key=1"], "run.no_such_key"),
        ("train", [good, "run.max_epoch"], "section.key=value"),
        ("train", [good, "run.num_workers=1000000"], "run.num_workers"),
        ("train", [_cfg(env, "noroot.yaml", "model: {preset: tiny}\n" + run)], "datasets.root"),
        ("train", [_cfg(env, "emptyroot.yaml", f"datasets: {{root: {d}}}\n" + run)], "lacks"),
        ("train", [good, "model.preset=bogus"], "bogus"),
        ("train", [good, "model.num_views=0"], "num_views"),
        # ---- train: annotations and images
        ("train", [_cfg(env, "badjson.yaml", f"datasets: {{root: {_data_copy(env, 'badjson', lambda doc: None)}}}\n"
                        + run)], None),   # file replaced by broken JSON below
        ("train", [_cfg(env, "escape.yaml", f"datasets: {{root: {_data_copy(env, 'escape', _escape)}}}\n" + run)],
         "outside the image root"),
        ("train", [_cfg(env, "absolute.yaml", f"datasets: {{root: {_data_copy(env, 'absolute', _absolute)}}}\n"
                        + run)], "outside the image root"),
        ("train", [_cfg(env, "allbad.yaml", f"datasets: {{root: {_data_copy(env, 'allbad', _all_bad)}}}\n" + run)],
         "no usable region"),
        ("train", [_cfg(env, "badimg.yaml", f"datasets: {{root: {_data_copy(env, 'badimg', lambda doc: None)}}}\n"
                        + run)], "cannot load image"),
        # ---- eval: bundles and splits
        ("eval", [good, "--checkpoint", d / "none.pt"], "no model bundle"),
        ("eval", [good, "--checkpoint", _corrupt(env["bundle"], d / "flipped.pt", 0.6)], "corrupted"),
        ("eval", [good, "--checkpoint", _truncate(env["bundle"], d / "short.pt")], "not a dynrefer model bundle"),
        ("eval", [good, "--checkpoint", _nan_bundle(env)], "NaN"),
        ("eval", [good, "--checkpoint", env["bundle"], "--split", "nosuch"], "lacks"),
        ("eval", [good, "--checkpoint", env["bundle"], "--detections", d / "nodets.json"], "nodets.json"),
        ("eval", [good, "--checkpoint", env["bundle"], "--gt-boxes", "--annotations", _text(d / "b.json", "{x")],
         "invalid JSON"),
        # ---- describe: images, boxes, bundles
        ("describe", [_text(d / "notimg.png", "hello"), "--box", "0,0,5,5", "--checkpoint", env["bundle"]],
         "cannot read image"),
        ("describe", [d, "--box", "0,0,5,5", "--checkpoint", env["bundle"]], "image not found"),
        ("describe", [_png_header_only(d / "bomb.png", 60000, 60000), "--box", "0,0,5,5", "--checkpoint",
                      env["bundle"]], "pixels"),
        ("describe", [img, "--box", "0,0,1e400,4", "--checkpoint", env["bundle"]], "finite"),
        ("describe", [img, "--box", "0,0,5,5", "--checkpoint", _corrupt(env["bundle"], d / "flip2.pt", 0.8)],
         "corrupted"),
    ]


def _escape(doc):
    doc["images"][0]["file_name"] = "../../../etc/passwd"


def _absolute(doc):
    doc["images"][0]["file_name"] = "/etc/passwd"


def _all_bad(doc):
    for a in doc["annotations"]:
        a["bbox"] = [0, 0, 0, 0]
        a.pop("segmentation", None)


def _truncate(src, dst):
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 3])
    return dst


def _text(path, text):
    path.write_text(text)
    return path


def test_every_user_error_is_one_line_and_exit_2(env, capsys):
    cases = _cases(env)
    (env["d"] / "binary.yaml").write_bytes(b"model: \xff\xfe\n")
    (env["d"] / "badjson" / "train_caption.json").write_text("{not json")
    badimg = env["d"] / "badimg" / "images"
    for p in badimg.glob("train_*.png"):
        p.write_bytes(b"not a png at all")
    failures = []
    for cmd, args, expect in cases:
        rc, err = _run(capsys, [cmd] + args)
        lines = [line for line in err.splitlines() if line.strip()]
        ok = (rc == 2 and len(lines) == 1 and lines[0].startswith(f"dynrefer {cmd}: error:")
              and "Traceback" not in err and (expect is None or expect in lines[0]))
        if not ok:
            failures.append(f"{cmd} {[str(a) for a in args]}: exit {rc}, stderr {err[-400:]!r}")
    assert not failures, "\n".join(failures)


def test_degenerate_records_are_dropped_and_counted(env, capsys, caplog):
    """Boxes outside the image, zero-area boxes and empty captions are dropped with a count, never silently."""
    def edit(doc):
        anns = doc["annotations"]
        for a in anns[:2]:
            a.pop("segmentation", None)
        anns[0]["bbox"] = [-50, -50, 10, 10]          # entirely outside the image
        anns[1]["bbox"] = [5, 5, 0, 7]                # zero area
        anns[2]["caption"] = "   "                    # empty caption
    root = _data_copy(env, "degenerate", edit)
    from dynrefer.data import load_annotations

    with caplog.at_level("WARNING"):
        ann = load_annotations(str(root / "train_caption.json"))
    assert ann.dropped == {"box outside the image": 1, "zero-area box": 1, "empty caption": 1}
    assert "dropped 3" in caplog.text and "train_caption.json" in caplog.text


def test_huge_box_is_clipped_to_the_image(env, capsys, tmp_path):
    rc = main(["describe", str(env["img"]), "--box", "0,0,1e30,1e30", "--checkpoint", str(env["bundle"]),
               "--out", str(tmp_path / "huge")])
    out = capsys.readouterr().out
    assert rc == 0 and "clipped" in out and os.path.isfile(tmp_path / "huge_0.png")


@pytest.mark.parametrize("argv, expect", [
    (["info", "/nonexistent/file.json"], "No such file"),
    (["refcocog", "REFS", "/nonexistent.json", "--out", "OUT"], "refs pickle"),
    (["coco", "/nonexistent/instances.json", "--out", "OUT"], "instances.json"),
    (["tags", "/nonexistent/tags.txt", "a dog"], "tags.txt"),
])
def test_data_command_errors(argv, expect, tmp_path, capsys):
    from dynrefer.data.__main__ import main as data_main

    refs = tmp_path / "refs.p"
    refs.write_bytes(b"\x80\x02c__builtin__\neval\nq\x00.")   # a pickle naming a function: refused, not run
    argv = [str(refs) if a == "REFS" else str(tmp_path / "o.json") if a == "OUT" else a for a in argv]
    rc = data_main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and expect in lines[0] and "Traceback" not in err, err


def test_refs_pickle_that_would_run_code_is_refused(tmp_path):
    import pickle

    from dynrefer.data.convert import RawFormatError, convert_refcocog

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    p = tmp_path / "refs(umd).p"
    p.write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(RawFormatError, match="refused to load"):
        convert_refcocog(str(p), {"images": [], "annotations": [], "categories": []})
    assert not (tmp_path / "ran").exists()
