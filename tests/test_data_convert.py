"""Converters from the raw public layouts (VG region_descriptions + image_data, RefCOCOg refs(umd).p + COCO
instances, COCO instances, OVAD) to the official format, read back through the reader."""

import os
import pickle

import numpy as np
import pytest

from dynrefer.data import load_annotations, write_json
from dynrefer.data.convert import RawFormatError, convert_coco, convert_ovad, convert_refcocog, convert_vg
from dynrefer.data.tags import TagExtractor

VOCAB = ["man", "shirt", "red", "clock", "tower", "dog", "frisbee", "grass", "person", "cat", "umbrella"]


def _vg_raw():
    regions = [
        {"id": 1, "regions": [
            {"region_id": 1382, "width": 82, "height": 139, "image_id": 1,
             "phrase": "the clock is green in colour", "y": 57, "x": 421},
            {"region_id": 1383, "width": 182, "height": 109, "image_id": 1, "phrase": "Man in a red  shirt ",
             "y": 300, "x": 700},                                   # runs past the right edge: clipped
            {"region_id": 1384, "width": 10, "height": 10, "image_id": 1, "phrase": "off image", "y": 700,
             "x": 10},                                              # entirely below the image: dropped
            {"region_id": 1385, "width": 5, "height": 5, "image_id": 1, "phrase": "   ", "y": 5, "x": 5}]},
        {"id": 2, "regions": [
            {"region_id": 2001, "width": 30, "height": 40, "image_id": 2, "phrase": "a dog with a frisbee",
             "y": 10, "x": 20}]},
        {"id": 3, "regions": []},
    ]
    image_data = [{"width": 800, "url": "https://example.invalid/VG_100K_2/1.jpg", "height": 600, "image_id": 1,
                   "coco_id": None, "flickr_id": None},
                  {"width": 640, "url": "x", "height": 480, "id": 2, "coco_id": 5, "flickr_id": 7},
                  {"width": 100, "url": "x", "height": 100, "image_id": 3, "coco_id": None, "flickr_id": None}]
    return regions, image_data


def test_vg(tmp_path):
    regions, image_data = _vg_raw()
    rp, ip = tmp_path / "region_descriptions.json", tmp_path / "image_data.json"
    write_json(str(rp), regions)
    write_json(str(ip), image_data)
    d = convert_vg(str(rp), str(ip), image_root="vg/images", tagger=TagExtractor(VOCAB))
    assert d["dataset"]["dropped"] == 2
    out = tmp_path / "vg_train.json.gz"
    write_json(str(out), d)
    ann = load_annotations(str(out), tags=VOCAB)
    assert [r.id for r in ann] == [1382, 1383, 2001]
    assert [im.id for im in ann.images.values()] == [1, 2]                 # image 3 has no region
    assert ann.images[1].file_name == "1.jpg" and (ann.images[1].width, ann.images[1].height) == (800, 600)
    assert ann.images[1].path == os.path.join(str(tmp_path), "vg/images", "1.jpg")
    r0, r1, r2 = ann
    assert r0.box == (421.0, 57.0, 503.0, 196.0) and r0.caption == "the clock is green in colour"
    assert r1.box == (700.0, 300.0, 800.0, 409.0) and r1.caption == "Man in a red shirt"
    assert ann.tag_names(r1) == (["man"], ["shirt", "red"])          # vocabulary order
    assert ann.tag_names(r2) == (["dog"], ["frisbee"])
    # split selection (densecap's split file layout) and lower-casing / max_words
    split = {"train": [1], "val": [], "test": [2]}
    d2 = convert_vg(regions, image_data, split="test", split_file=split, lowercase=True, max_words=4)
    assert [a["id"] for a in d2["annotations"]] == []            # "a dog with a frisbee" has 5 words
    d3 = convert_vg(regions, image_data, split="train", split_file=split, lowercase=True)
    assert [a["caption"] for a in d3["annotations"]] == ["the clock is green in colour", "man in a red shirt"]


def test_vg_sizes_from_image_files(tmp_path):
    from PIL import Image
    regions, _ = _vg_raw()
    (tmp_path / "img").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "img" / "2.jpg")
    d = convert_vg(regions[1:2], image_root=str(tmp_path / "img"))
    assert d["images"] == [{"id": 2, "file_name": "2.jpg", "width": 50, "height": 40}]
    assert d["annotations"][0]["bbox"] == [20.0, 10.0, 30.0, 30.0]         # clipped to the 40-px height
    with pytest.raises(RawFormatError, match=r"image #0 \(id 1\): no size known"):
        convert_vg(regions[:1])


def test_vg_bad_input():
    regions, image_data = _vg_raw()
    regions[0]["regions"][1]["width"] = "wide"
    with pytest.raises(RawFormatError, match=r"<region_descriptions>: image #0 \(id 1\), region #1 .*'width'"):
        convert_vg(regions, image_data)
    regions, image_data = _vg_raw()
    regions[1]["regions"][0]["region_id"] = 1382
    with pytest.raises(RawFormatError, match="duplicate region id 1382"):
        convert_vg(regions, image_data)
    image_data[0]["width"] = 0
    with pytest.raises(RawFormatError, match=r"<image_data>: image #0 \(id 1\)"):
        convert_vg(_vg_raw()[0], image_data)
    with pytest.raises(RawFormatError, match="expected a list"):
        convert_vg({"regions": []}, image_data)


def _instances():
    return {
        "info": {}, "licenses": [],
        "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 480},
                   {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480}],
        "annotations": [
            {"id": 1719310, "image_id": 581857, "category_id": 1, "bbox": [103.93, 299.99, 134.22, 177.42],
             "area": 13000.0, "iscrowd": 0, "segmentation": [[103.93, 299.99, 238.15, 299.99, 238.15, 477.41]]},
            {"id": 42, "image_id": 9, "category_id": 18, "bbox": [1, 2, 30, 40], "area": 1200, "iscrowd": 0,
             "segmentation": [[1, 2, 31, 2, 31, 42]]},
            {"id": 43, "image_id": 9, "category_id": 18, "bbox": [0, 0, 640, 480], "area": 100, "iscrowd": 1,
             "segmentation": {"size": [480, 640], "counts": [0, 307200]}}],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"},
                       {"supercategory": "animal", "id": 18, "name": "dog"}],
    }


def _refs():
    return [
        {"image_id": 581857, "split": "train", "sentences": [
            {"tokens": ["the", "lady", "with", "the", "blue", "shirt"], "raw": "THE LADY WITH THE BLUE SHIRT",
             "sent_id": 0, "sent": "the lady with the blue shirt"},
            {"tokens": ["lady", "in", "red"], "raw": "lady in red", "sent_id": 1, "sent": "lady in red"}],
         "file_name": "COCO_train2014_000000581857_16.jpg", "category_id": 1, "ann_id": 1719310,
         "sent_ids": [0, 1], "ref_id": 0},
        {"image_id": 9, "split": "val", "sentences": [
            {"tokens": ["a", "dog"], "raw": "a dog", "sent_id": 2, "sent": "a dog"}],
         "file_name": "COCO_train2014_000000000009_42.jpg", "category_id": 18, "ann_id": 42, "sent_ids": [2],
         "ref_id": 1},
    ]


def test_refcocog(tmp_path):
    rp = tmp_path / "refs(umd).p"
    with open(rp, "wb") as f:
        pickle.dump(_refs(), f)
    ip = tmp_path / "instances.json"
    write_json(str(ip), _instances())
    d = convert_refcocog(str(rp), str(ip), tagger=TagExtractor(VOCAB + ["lady", "blue"]))
    out = tmp_path / "refcocog.json"
    write_json(str(out), d)
    ann = load_annotations(str(out), tags=VOCAB + ["lady", "blue"])
    assert [r.id for r in ann] == [0, 1, 2]
    assert [r.caption for r in ann] == ["the lady with the blue shirt", "lady in red", "a dog"]
    assert ann[0].box == pytest.approx((103.93, 299.99, 238.15, 477.41))
    assert ann[0].box == ann[1].box and ann[0].category == "person" and ann[2].category == "dog"
    assert ann[0].extra["refcoco_result"] == {"ref_id": 0, "ann_id": 1719310, "sent_id": 0, "split": "train"}
    assert ann.tag_names(ann[0]) == (["lady"], ["shirt", "blue"])    # vocabulary order
    gts, key_of = ann.caption_references()
    assert gts == {0: ["the lady with the blue shirt", "lady in red"], 2: ["a dog"]}
    # one split
    dv = convert_refcocog(_refs(), _instances(), split="val")
    assert [a["caption"] for a in dv["annotations"]] == ["a dog"] and [i["id"] for i in dv["images"]] == [9]
    # errors name the ref and the field
    bad = _refs()
    bad[1]["ann_id"] = 777
    with pytest.raises(RawFormatError, match=r"ref #1 \(ref_id 1\): field 'ann_id': 777"):
        convert_refcocog(bad, _instances())
    bad = _refs()
    bad[0]["image_id"] = 9
    with pytest.raises(RawFormatError, match=r"ref #0 .*'image_id'"):
        convert_refcocog(bad, _instances())
    (tmp_path / "bad.p").write_bytes(b"not a pickle")
    with pytest.raises(RawFormatError, match="not a refs pickle"):
        convert_refcocog(str(tmp_path / "bad.p"), _instances())


def test_coco(tmp_path):
    d = convert_coco(_instances())
    assert [a["id"] for a in d["annotations"]] == [1719310, 42] and d["dataset"]["dropped"] == 1
    out = tmp_path / "coco.json"
    write_json(str(out), d)
    ann = load_annotations(str(out))
    assert [r.category for r in ann] == ["person", "dog"] and [r.category_index for r in ann] == [0, 1]
    assert [r.caption for r in ann] == ["person", "dog"]
    assert ann[1].box == (1.0, 2.0, 31.0, 42.0)
    gt = ann.coco_ground_truth()
    from dynrefer.eval import evaluate
    scores = np.eye(2)[gt["labels"]]
    r = evaluate("coco", scores, gt, num_classes=2)
    assert r["acc"] == pytest.approx(100.0)
    d = convert_coco(_instances(), include_crowd=True)
    assert len(d["annotations"]) == 3 and d["annotations"][2]["iscrowd"] == 1
    bad = _instances()
    bad["annotations"][1]["category_id"] = 99
    with pytest.raises(RawFormatError, match="annotation id 42: field 'category_id'"):
        convert_coco(bad)
    bad = _instances()
    bad["annotations"][0]["bbox"] = [1, 2, 3]
    with pytest.raises(RawFormatError, match=r"annotation #0 \(id 1719310\): field 'bbox'"):
        convert_coco(bad)


def test_ovad_hand_made(tmp_path):
    raw = _instances()
    raw["attributes"] = [{"id": 0, "name": "color:red", "type": "color", "parent_type": "color",
                          "is_has_att": "is", "freq_set": "head"},
                         {"id": 1, "name": "material:wooden/wood", "type": "material", "parent_type": "material",
                          "is_has_att": "is", "freq_set": "tail"}]
    for a, v in zip(raw["annotations"], ([1, 0], [0, -1], [-1, 1])):
        a["att_vec"] = v
    d = convert_ovad(raw)
    out = tmp_path / "ovad.json.gz"
    write_json(str(out), d)
    ann = load_annotations(str(out))
    assert len(ann) == 3 and len(ann.attributes) == 2
    np.testing.assert_array_equal(ann.attribute_labels()[0], [[1, 0], [0, -1], [-1, 1]])
    assert d["annotations"][0]["extra_info"]["ovad_result"]["att_vec"] == [1, 0]
    from dynrefer.eval import load_ovad
    lo = load_ovad(str(out))                       # the eval package's own loader reads the converted file
    np.testing.assert_array_equal(lo.labels, [[1, 0], [0, -1], [-1, 1]])
    raw["annotations"][2]["att_vec"] = [1]
    with pytest.raises(RawFormatError, match=r"annotation #2 \(id 43\): field 'att_vec'"):
        convert_ovad(raw)


def test_ovad_real_round_trip(shared_data, tmp_path):
    from dynrefer.data import read_json
    raw = read_json(os.path.join(shared_data, "ovad", "ovad2000.json.gz"))
    assert len(raw["annotations"]) == 14300
    # a slice of the real file (the first 300 images) keeps the test fast; the reader test covers all of it
    keep = {im["id"] for im in raw["images"][:300]}
    raw["images"] = [im for im in raw["images"] if im["id"] in keep]
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] in keep]
    src = tmp_path / "ovad_slice.json"
    write_json(str(src), raw)
    d = convert_ovad(str(src))
    out = tmp_path / "ovad_official.json"          # plain: gzip is covered by the hand-made files
    write_json(str(out), d)
    a, b = load_annotations(str(out)), load_annotations(str(src))
    assert len(a) == len(b) == len(raw["annotations"]) > 1000
    la, lb = a.attribute_labels()[0], b.attribute_labels()[0]
    np.testing.assert_array_equal(la, lb)
    boxes_a = np.array([r.box for r in a])
    boxes_b = np.array([r.box for r in b])
    thin = (boxes_b[:, 2] - boxes_b[:, 0] < 1) | (boxes_b[:, 3] - boxes_b[:, 1] < 1)
    np.testing.assert_allclose(boxes_a[~thin], boxes_b[~thin], rtol=0, atol=1e-9)
    # sub-pixel boxes are widened to one pixel by the polygon rule, as the official pipeline does
    assert np.all(boxes_a[thin, 2:] - boxes_a[thin, :2] >= 1 - 1e-9)
    assert [r.category for r in a] == [r.category for r in b]


def test_command_line(tmp_path, capsys):
    from dynrefer.data.__main__ import main
    regions, image_data = _vg_raw()
    rp, ip = tmp_path / "region_descriptions.json", tmp_path / "image_data.json"
    write_json(str(rp), regions)
    write_json(str(ip), image_data)
    (tmp_path / "tags.txt").write_text("\n".join(VOCAB))
    out = tmp_path / "vg.json.gz"
    assert main(["vg", str(rp), "--image-data", str(ip), "--out", str(out), "--tags", str(tmp_path / "tags.txt")]) == 0
    assert "wrote 3 regions on 2 images" in capsys.readouterr().out
    ann = load_annotations(str(out), tags=VOCAB)
    assert ann.tag_names(ann[2]) == (["dog"], ["frisbee"])
    assert main(["info", str(out)]) == 0
    assert "2 images, 3 regions (3 captioned, 3 tagged)" in capsys.readouterr().out
    assert main(["tags", str(tmp_path / "tags.txt"), "a man on a dog"]) == 0
    assert "tag_set1: man\n  tag_set2: dog" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["vg", str(rp)])                        # --out is required


def _py2_pickle(obj) -> bytes:
    """Serialise dicts/lists/ints/strs/None with the opcodes Python 2 writes (str as byte strings), protocol 2."""
    import struct

    def enc(o):
        if o is None:
            return b"N"
        if isinstance(o, bool):
            return b"\x88" if o else b"\x89"
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, str):
            b = o.encode("utf-8")
            return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e" if o else b"]"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u" if o else b"}"
        raise TypeError(type(o))
    return b"\x80\x02" + enc(obj) + b"."


def test_refcocog_python2_pickle(tmp_path):
    refs = _refs()
    refs[0]["sentences"][1]["sent"] = "lady in the café"
    refs[0]["sentences"][1]["raw"] = "Lady in the café"
    rp = tmp_path / "refs(umd).p"
    rp.write_bytes(_py2_pickle(refs))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(rp.read_bytes())                  # what a plain pickle.load does with it
    d = convert_refcocog(str(rp), _instances())
    assert [a["caption"] for a in d["annotations"]] == ["the lady with the blue shirt", "lady in the café", "a dog"]
