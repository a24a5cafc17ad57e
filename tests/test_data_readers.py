"""Annotation readers: the real OVAD file, hand-made official-format files (VG / RefCOCOg / COCO style, polygon
and RLE segmentations, tag indices and names), gzip, and malformed files naming the file, record and field."""

import gzip
import json
import os

import numpy as np
import pytest

from dynrefer.data import AnnotationError, decode_rle, load_annotations, segmentation_to_box, write_json
from dynrefer.data.readers import read_json

from conftest import rle_encode


def _official(tmp_path, anns, images=None, name="ann.json", **top):
    images = images if images is not None else [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 80}]
    data = {"dataset": {"image_root": "imgs"}, "images": images, "annotations": anns, **top}
    p = tmp_path / name
    write_json(str(p), data)
    return str(p)


def _ann(i, box=(10, 20, 30, 40), **kw):
    x1, y1, x2, y2 = box
    a = {"id": i, "image_id": 1, "segmentation": [[x1, y1, x1, y2, x2, y2, x2, y1]], "caption": f"region {i}"}
    a.update(kw)
    return a


def test_real_ovad(shared_data):
    path = os.path.join(shared_data, "ovad", "ovad2000.json.gz")
    ann = load_annotations(path)
    assert len(ann) == 14300 and len(ann.images) == 2000 and len(ann.attributes) == 117
    assert len(ann.categories) == 80
    raw = json.load(gzip.open(path))
    # spot-check records against the raw JSON, box converted from xywh
    for k in (0, 1234, 14299):
        r, a = ann[k], raw["annotations"][k]
        x, y, w, h = a["bbox"]
        assert r.id == a["id"] and r.image_id == a["image_id"]
        assert r.box == pytest.approx((x, y, x + w, y + h))
        np.testing.assert_array_equal(r.att_vec, a["att_vec"])
        cat = next(c for c in raw["categories"] if c["id"] == a["category_id"])
        assert r.category == cat["name"] and ann.categories[r.category_index]["id"] == a["category_id"]
        im = next(i for i in raw["images"] if i["id"] == a["image_id"])
        assert r.image_size == (im["width"], im["height"]) and r.image_path.endswith(im["file_name"])
    labels, ids = ann.attribute_labels()
    assert labels.shape == (14300, 117) and labels.dtype == np.int8
    assert {int(v) for v in np.unique(labels)} == {-1, 0, 1}
    assert sum(a["freq_set"] == "head" for a in ann.attributes) > 0
    # the eval package accepts it: uninformative scores give the paper's Chance row
    from dynrefer.eval import evaluate, ovad_ground_truth
    r = evaluate("ovad", np.full(labels.shape, 0.5), ovad_ground_truth(ann))
    assert r["all"] == pytest.approx(8.68, abs=0.01) and r["head"] == pytest.approx(36.0, abs=0.1)


def test_polygon_box_tags_and_root(tmp_path, monkeypatch):
    vocab = ["dog", "red", "ball", "grass"]
    anns = [_ann(1, (10.5, 20, 30, 40.25), extra_info={"parser_result": {"tag_set1": [0, 1], "tag_set2": [2]}}),
            _ann(2, (1, 2, 3, 4), extra_info={"parser_result": {"tag_set1": ["ball"], "tag_set2": ["grass", "dog"]}})]
    p = _official(tmp_path, anns)
    ann = load_annotations(p, tags=vocab)
    r1, r2 = ann
    assert r1.box == (10.5, 20.0, 30.0, 40.25) and r1.caption == "region 1"
    assert r1.tag_set1 == (0, 1) and r1.tag_set2 == (2,) and r1.tags == (0, 1, 2)
    assert r2.tag_set1 == (2,) and r2.tag_set2 == (0, 3)
    assert ann.tag_names(r2) == (["ball"], ["dog", "grass"])
    assert r1.image_path == os.path.join(str(tmp_path), "imgs", "1.jpg")
    # explicit image root wins; absolute roots are kept
    assert load_annotations(p, image_root="/data/x", tags=vocab)[0].image_path == "/data/x/1.jpg"
    # an official-style root relative to the working directory is found there when it is not beside the file
    wd = tmp_path / "wd"
    (wd / "data" / "vg" / "images").mkdir(parents=True)
    monkeypatch.chdir(wd)
    r = load_annotations(p, image_root="data/vg/images/", tags=vocab)[0]
    assert r.image_path == os.path.join(str(wd), "data", "vg", "images", "1.jpg")
    with pytest.raises(TypeError, match="tags must be"):
        load_annotations(p, tags=5)
    # tag names without a vocabulary are an error naming the record
    with pytest.raises(AnnotationError, match=r"annotation #1 \(id 2\).*tag_set1.*vocabulary"):
        load_annotations(p)
    # the file's dataset.tag_list is found relative to the file
    (tmp_path / "tags.txt").write_text("\n".join(vocab))
    p2 = _official(tmp_path, anns, name="b.json.gz")
    d = read_json(p2)
    d["dataset"]["tag_list"] = "tags.txt"
    write_json(p2, d)
    assert load_annotations(p2).tag_vocab == vocab


def test_degenerate_polygon_widened_like_official(tmp_path):
    # a one-pixel-thin or zero-width polygon is widened to one pixel: x1 = x2 - 1 when x2 > 0, else x2 = x1 + 1
    assert segmentation_to_box([[5, 5, 5, 9, 5, 9, 5, 5]], 100, 100) == (4.0, 5.0, 5.0, 9.0)
    assert segmentation_to_box([[0, 3, 0, 3.5]], 100, 100) == (0.0, 2.5, 1.0, 3.5)
    assert segmentation_to_box([[2, 3, 7, 9], [1, 4, 8, 5]], 100, 100) == (1.0, 3.0, 8.0, 9.0)


def _rle_string(counts):
    # COCO's compressed form (written from its description: deltas after the 2nd count, 5-bit groups + 48)
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def test_rle_decode_and_box(rng):
    mask = np.zeros((13, 17), np.uint8)
    mask[3:9, 5:12] = 1
    mask[10, 2] = 1
    counts = rle_encode(mask)
    np.testing.assert_array_equal(decode_rle({"size": [13, 17], "counts": counts}), mask)
    s = _rle_string(counts)
    np.testing.assert_array_equal(decode_rle({"size": [13, 17], "counts": s}), mask)
    np.testing.assert_array_equal(decode_rle({"size": [13, 17], "counts": s.encode()}), mask)
    # official RLE box: first/last non-empty column and row, the last inclusive
    assert segmentation_to_box({"size": [13, 17], "counts": s}, 17, 13) == (2.0, 3.0, 11.0, 10.0)
    for _ in range(5):
        m = (rng.random((rng.integers(1, 30), rng.integers(1, 30))) > 0.6).astype(np.uint8)
        c = rle_encode(m)
        np.testing.assert_array_equal(decode_rle({"size": list(m.shape), "counts": _rle_string(c)}), m)
    with pytest.raises(ValueError, match="cover"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})


def test_pycocotools_rle_agrees(rng):
    mu = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    for _ in range(5):
        m = np.asfortranarray((rng.random((rng.integers(1, 40), rng.integers(1, 40))) > 0.5).astype(np.uint8))
        enc = mu.encode(m)
        np.testing.assert_array_equal(decode_rle(enc), m)
        np.testing.assert_array_equal(decode_rle({"size": enc["size"], "counts": enc["counts"].decode()}), m)


def test_bbox_category_attributes_and_gzip(tmp_path):
    cats = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    attrs = [{"id": 0, "name": "color:red", "freq_set": "head", "type": "color", "is_has_att": "is"},
             {"id": 1, "name": "color:blue", "freq_set": "tail", "type": "color", "is_has_att": "is"}]
    anns = [{"id": 10, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 3, "att_vec": [1, -1]},
            {"id": 11, "image_id": 1, "bbox": [0, 0, 5, 5], "caption": "a cat",
             "extra_info": {"coco_result": {"category": "cat"}, "ovad_result": {"att_vec": [0, 1]}}}]
    p = _official(tmp_path, anns, name="x.json.gz", categories=cats, attrs=attrs)
    with open(p, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    a = load_annotations(p)
    assert a[0].box == (1.0, 2.0, 4.0, 6.0) and a[0].caption is None
    assert (a[0].category, a[0].category_index, a[0].category_id) == ("dog", 1, 3)
    assert (a[1].category, a[1].category_index, a[1].category_id) == ("cat", 0, 7)
    np.testing.assert_array_equal(a[1].att_vec, [0, 1])
    gt = a.coco_ground_truth()
    np.testing.assert_array_equal(gt["labels"], [1, 0])
    np.testing.assert_allclose(gt["boxes"], [[1, 2, 3, 4], [0, 0, 5, 5]])
    # a gzip file named .json is still read (magic bytes decide)
    q = tmp_path / "y.json"
    q.write_bytes(open(p, "rb").read())
    assert len(load_annotations(str(q))) == 2


def test_caption_references_merge_same_box(tmp_path):
    anns = [_ann(1, caption="the man"), _ann(2, caption="a person"), _ann(3, (0, 0, 5, 5), caption="x")]
    a = load_annotations(_official(tmp_path, anns))
    gts, key_of = a.caption_references()
    assert gts == {1: ["the man", "a person"], 3: ["x"]} and key_of == {1: 1, 2: 1, 3: 3}
    gts, _ = a.caption_references(group="record")
    assert len(gts) == 3
    dc = a.densecap_ground_truth()
    assert dc[1]["boxes"].shape == (3, 4) and dc[1]["captions"] == ["the man", "a person", "x"]


BAD = [
    (lambda d: d.pop("images"), r"field 'images' must be a list"),
    (lambda d: d["images"][0].pop("width"), r"image #0 \(id 1\): field 'width'"),
    (lambda d: d["images"][0].update(height=-3), r"image #0 \(id 1\): field 'height'"),
    (lambda d: d["annotations"][1].update(image_id=99), r"annotation #1 \(id 2\): field 'image_id'"),
    (lambda d: d["annotations"][1].update(id=1), r"annotation #1 \(id 1\): field 'id': duplicate"),
    (lambda d: d["annotations"][0].pop("id"), r"annotation #0: field 'id'"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3]]), r"annotation #1 \(id 2\): field 'segmentation'"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, "a", 3, 4]]), r"annotation #1.*'segmentation'"),
    (lambda d: d["annotations"][1].pop("segmentation"), r"annotation #1 \(id 2\): field 'bbox'"),
    (lambda d: (d["annotations"][1].pop("segmentation"), d["annotations"][1].update(bbox=[0, 0, -1, 2])),
     r"annotation #1.*'bbox': negative"),
    (lambda d: (d["annotations"][1].pop("segmentation"), d["annotations"][1].update(bbox=[0, 0, float("nan"), 2])),
     r"annotation #1.*'bbox'"),
    (lambda d: d["annotations"][1].update(caption=5), r"annotation #1 \(id 2\): field 'caption'"),
    (lambda d: d["annotations"][1].update(extra_info={"parser_result": {"tag_set1": [9]}}),
     r"annotation #1.*tag_set1.*outside"),
    (lambda d: d["annotations"][1].update(extra_info={"parser_result": {"tag_set2": [1.5]}}),
     r"annotation #1.*tag_set2"),
    (lambda d: d["annotations"][1].update(category_id=42), r"annotation #1.*'category_id': 42"),
    (lambda d: d["annotations"][1].update(att_vec=[1, 0, 0]), r"annotation #1.*'att_vec': expected 2"),
    (lambda d: d["annotations"][1].update(att_vec=[1, 2]), r"annotation #1.*'att_vec': values"),
    (lambda d: d["annotations"][1].update(extra_info={"coco_result": {"category": "zebra"}}),
     r"annotation #1.*coco_result.category"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_malformed_files_name_file_record_and_field(tmp_path, case):
    mutate, pattern = BAD[case]
    d = {"images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}],
         "annotations": [_ann(1, (1, 1, 5, 5)), _ann(2, (2, 2, 6, 6))],
         "categories": [{"id": 1, "name": "a"}], "attributes": [{"id": 0, "name": "x:y"}, {"id": 1, "name": "x:z"}]}
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match=pattern) as ei:
        load_annotations(str(p), tags=["t0", "t1"])
    assert str(p) in str(ei.value)


def test_not_json_and_missing_file(tmp_path):
    p = tmp_path / "junk.json"
    p.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"junk.json: invalid JSON at line 1"):
        load_annotations(str(p))
    p.write_text("[1, 2]")
    with pytest.raises(AnnotationError, match="top level"):
        load_annotations(str(p))
    p.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(AnnotationError, match="gzip"):
        load_annotations(str(p))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_annotations(str(tmp_path / "nope.json"))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_coord = st.floats(min_value=-50, max_value=500, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, derandomize=True, deadline=None)
@given(st.lists(st.lists(_coord, min_size=1, max_size=8).map(lambda r: r + r[:1] if len(r) % 2 else r),
                min_size=1, max_size=3))
def test_polygon_box_properties(rings):
    w, h = 300, 200
    x1, y1, x2, y2 = segmentation_to_box(rings, w, h)
    pts = np.concatenate([np.asarray(r, float).reshape(-1, 2) for r in rings])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    # the box contains every point and is the tight one unless it had to be widened to one pixel
    assert x1 <= lo[0] and y1 <= lo[1] and x2 >= hi[0] and y2 >= hi[1]
    if hi[0] - lo[0] > 1:
        assert (x1, x2) == (lo[0], hi[0])
    else:
        assert x2 - x1 >= 1 or (hi[0] <= 0 and lo[0] >= w)
    if hi[1] - lo[1] > 1:
        assert (y1, y2) == (lo[1], hi[1])
