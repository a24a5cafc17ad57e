"""The synthetic benchmark: deterministic by seed, readable by the readers (all three annotation files agree),
captions and attributes consistent with the drawn pixels, and its ground truth accepted by dynrefer.eval."""

import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from dynrefer.data import load_annotations, load_tag_vocab
from dynrefer.data.synthetic import ATTRIBUTES, COLORS, SHAPES, TAGS, generate, render_scene

SPLITS = {"train": 4, "val": 3, "test": 3}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    m = generate(str(d), seed=7, splits=SPLITS)
    return str(d), m


def _all_files(root):
    out = []
    for dp, _, fns in os.walk(root):
        out += [os.path.relpath(os.path.join(dp, f), root) for f in fns]
    return sorted(out)


def test_deterministic_by_seed(bench, tmp_path):
    d, m = bench
    d2 = tmp_path / "again"
    m2 = generate(str(d2), seed=7, splits=SPLITS)
    assert m2 == m
    files = _all_files(d)
    assert files == _all_files(str(d2))
    _, mismatch, errors = filecmp.cmpfiles(d, str(d2), files, shallow=False)
    assert mismatch == [] and errors == []
    # another seed draws other scenes; a split's images do not depend on the other splits' sizes
    d3 = tmp_path / "other"
    generate(str(d3), seed=8, splits=SPLITS)
    assert not filecmp.cmp(os.path.join(d, "images", "train_00000.png"),
                           os.path.join(d3, "images", "train_00000.png"), shallow=False)
    d4 = tmp_path / "fewer"
    generate(str(d4), seed=7, splits={"train": 2, "val": 3, "test": 0})
    assert filecmp.cmp(os.path.join(d, "images", "val_00001.png"), os.path.join(d4, "images", "val_00001.png"),
                       shallow=False)


def test_round_trip_through_readers(bench):
    d, m = bench
    vocab = load_tag_vocab(os.path.join(d, "tags.txt"))
    assert vocab == list(TAGS)
    assert json.load(open(os.path.join(d, "classes.json"))) == list(SHAPES)
    assert json.load(open(os.path.join(d, "attributes.json"))) == ATTRIBUTES
    total = 0
    for split, n_img in SPLITS.items():
        files = m["files"][split]
        cap = load_annotations(os.path.join(d, files["caption"]))          # tag list found via dataset.tag_list
        cat = load_annotations(os.path.join(d, files["category"]))
        att = load_annotations(os.path.join(d, files["attribute"]))
        assert len(cap.images) == n_img and len(cap) >= 3 * n_img
        assert [r.id for r in cap] == [r.id for r in cat] == [r.id for r in att]
        assert [r.box for r in cap] == [r.box for r in cat] == [r.box for r in att]
        total += len(cap)
        for rc, rk, ra in zip(cap, cat, att):
            assert os.path.isfile(rc.image_path)
            s1, s2 = cap.tag_names(rc)
            words = rc.caption.split()
            # the caption is "a <object words> <relation> a <colour> <shape>": set 1 = object, set 2 = neighbour
            assert rk.category in s1 and rk.category == SHAPES[rk.category_index]
            assert set(s1) <= set(words) and set(s2) <= set(words) and len(s2) == 2
            assert rk.category_id == rk.category_index + 1
            labels = {ATTRIBUTES[j]["name"] for j in np.flatnonzero(ra.att_vec == 1)}
            color = next(n.split(":")[1] for n in labels | {"color:?"} if n.startswith("color:"))
            assert color == "?" or color in s1
            assert ra.att_vec.shape == (len(ATTRIBUTES),) and set(np.unique(ra.att_vec)) <= {-1, 0, 1}
            for typ in ("color", "pattern", "size"):
                vals = ra.att_vec[[a["id"] for a in ATTRIBUTES if a["type"] == typ]]
                assert (vals == -1).all() or (vals == 1).sum() == 1
    assert total == m["regions"]


def test_pixels_match_annotations(rng):
    for _ in range(3):
        img, objs = render_scene(rng, 256, 240)
        assert img.shape == (240, 256, 3) and img.dtype == np.uint8 and len(objs) >= 1
        for o in objs:
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 240
            crop = img[y1:y2, x1:x2].reshape(-1, 3).astype(int)
            rgb = np.array(COLORS[o.color][0])
            frac = np.mean(np.all(crop == rgb, axis=1))
            assert frac > 0.15, (o, frac)                  # the object's colour fills a good part of its box
            # the box is tight: each border row/column touches the object
            sub = np.all(img[y1:y2, x1:x2] == rgb, axis=2) | np.all(
                np.abs(img[y1:y2, x1:x2].astype(int) - (rgb * 0.35 if rgb.mean() > 110 else 245)) < 1, axis=2)
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()


def test_eval_accepts_ground_truth(bench):
    from dynrefer.eval import evaluate, ovad_ground_truth
    d, m = bench
    files = m["files"]["test"]
    cap = load_annotations(os.path.join(d, files["caption"]))
    gts, key_of = cap.caption_references()
    perfect = {k: v[0] for k, v in gts.items()}
    r = evaluate("caption", perfect, gts, tokenize=False, metrics=("BLEU", "CIDEr"))
    assert r["BLEU-1"] == pytest.approx(100.0) and r["CIDEr"] > 100.0
    wrong = {k: "a green hexagon" for k in gts}
    assert evaluate("caption", wrong, gts, tokenize=False, metrics=("CIDEr",))["CIDEr"] < r["CIDEr"]

    dc = cap.densecap_ground_truth()
    preds = {img: {"boxes": g["boxes"], "scores": np.ones(len(g["boxes"])), "captions": list(g["captions"])}
             for img, g in dc.items()}
    exact = lambda c, refs: [1.0 if x in rs else 0.0 for x, rs in zip(c, refs)]  # noqa: E731
    r = evaluate("densecap", preds, dc, meteor=exact)
    assert r["map"] == pytest.approx(100.0) and r["detmap"] == pytest.approx(100.0)

    att = load_annotations(os.path.join(d, files["attribute"]))
    gt = ovad_ground_truth(att)
    r = evaluate("ovad", gt.labels.clip(0, 1).astype(float), gt)
    assert r["all"] == pytest.approx(100.0)
    r = evaluate("ovad", np.full(gt.labels.shape, 0.5), gt)
    assert 0 < r["all"] < 100
    from dynrefer.eval import load_ovad
    lo = load_ovad(os.path.join(d, files["attribute"]))              # the eval loader reads the file directly
    np.testing.assert_array_equal(lo.labels, gt.labels)

    cat = load_annotations(os.path.join(d, files["category"]))
    g = cat.coco_ground_truth()
    scores = np.eye(len(SHAPES))[g["labels"]]
    r = evaluate("coco", scores, g, num_classes=len(SHAPES))
    assert r["acc"] == pytest.approx(100.0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="splits"):
        generate(str(tmp_path), splits={"train": -1})
    with pytest.raises(ValueError, match="size_range"):
        generate(str(tmp_path), size_range=(10, 20))
    with pytest.raises(ValueError, match="num_objects"):
        generate(str(tmp_path), num_objects=(0, 2))
    with pytest.raises(ValueError, match="unlabelled_rate"):
        generate(str(tmp_path), unlabelled_rate=1.0)


def test_images_are_rgb_png(bench):
    d, _ = bench
    with Image.open(os.path.join(d, "images", "train_00000.png")) as im:
        assert im.mode == "RGB" and 224 <= im.width <= 320 and 224 <= im.height <= 320


def test_small_canvases(tmp_path):
    # objects larger than a small canvas are shrunk to fit instead of failing
    from dynrefer.data.synthetic import generate

    m = generate(str(tmp_path), seed=0, splits={"train": 3}, size_range=(64, 96))
    assert m["regions"] >= 1
