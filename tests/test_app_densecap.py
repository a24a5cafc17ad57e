"""Dense captioning from predicted boxes: the detection-file reader, the ranking rules, captioning every box with a
model (a scripted stand-in and the tiny DynRefer), the ground-truth-box setting, and `dynrefer eval` end to end.

METEOR needs Java and takes seconds to start, so the mAP here uses an explicit, deterministic stand-in scorer
(exact match after lower-casing: 1, else 0); the real METEOR is the evaluator's own tests' business."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from dynrefer.data import DetectionError, load_annotations, load_detections
from dynrefer.eval import PredictionError, densecap_map
from dynrefer.app.densecap import caption_boxes, densecap_predictions, evaluate_densecap, predictions_to_json
from dynrefer.eval.densecap import RANK_RULES, rank_scores

SIZES = {1: (80, 60), 2: (100, 50), 3: (64, 64)}          # image id -> (width, height)
GT = {  # image id -> [(x, y, w, h), caption]
    1: [((5, 5, 30, 20), "a red car"), ((40, 10, 30, 40), "a white dog")],
    2: [((10, 10, 40, 30), "the green tree")],
    3: [((0, 0, 32, 32), "the blue sky")],
}


def exact_meteor(candidates, references):
    """Deterministic stand-in for METEOR: 1 when the caption equals a reference (case-insensitive), else 0."""
    return [float(c.lower() in [r.lower() for r in refs]) for c, refs in zip(candidates, references)]


@pytest.fixture
def ann_file(tmp_path):
    images, anns = [], []
    rng = np.random.default_rng(0)
    for iid, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{iid}.png")
        images.append({"id": iid, "file_name": f"{iid}.png", "width": w, "height": h})
        for k, (bb, cap) in enumerate(GT[iid]):
            anns.append({"id": 100 * iid + k, "image_id": iid, "bbox": list(bb), "caption": cap})
    p = tmp_path / "val_caption.json"
    p.write_text(json.dumps({"images": images, "annotations": anns}))
    return p


@pytest.fixture
def ann(ann_file):
    return load_annotations(ann_file)


def grit_records():
    """GRiT's vg_instances_results.json layout: flat per-box records, bbox x,y,w,h; image 3 has no detection."""
    return [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 30, 20], "score": 0.9, "object_descriptions": "a red car",
         "logit": [0.1]},
        {"image_id": 1, "category_id": 1, "bbox": [40, 10, 30, 40], "score": 0.4, "object_descriptions": "dog"},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.7, "object_descriptions": "tree"},
        {"image_id": 2, "category_id": 1, "bbox": [60, 0, 40, 50], "score": 0.8, "object_descriptions": "wall"},
    ]


# ---- reader ---------------------------------------------------------------------------------------------------

def test_reads_grit_records(ann, tmp_path):
    p = tmp_path / "vg_instances_results.json"
    p.write_text(json.dumps(grit_records()))
    d = load_detections(p, ann)
    assert d.layout == "per-box" and len(d) == 3 and d.num_boxes == 4
    np.testing.assert_allclose(d.boxes[1], [[5, 5, 35, 25], [40, 10, 70, 50]])   # x,y,w,h -> x1,y1,x2,y2
    np.testing.assert_allclose(d.scores[2], [0.7, 0.8])
    assert d.descriptions[1] == ["a red car", "dog"]
    assert d.boxes[3].shape == (0, 4) and d.images_without_detections == [3]      # kept, not dropped


def test_grit_720_frame_and_string_ids(ann):
    recs = grit_records()
    for r in recs:                       # GRiT's VG evaluator scales boxes by 720 / max(h, w); ids as strings
        s = 720.0 / max(SIZES[r["image_id"]])
        r["bbox"] = [v * s for v in r["bbox"]]
        r["image_id"] = str(r["image_id"])
    d = load_detections(recs, ann, frame="longest720")
    np.testing.assert_allclose(d.boxes[2], [[10, 10, 50, 40], [60, 0, 100, 50]], atol=1e-9)
    with pytest.raises(DetectionError, match="longest720"):       # the same file read in the image frame
        load_detections(recs, ann)


def test_reads_per_image_entries(ann):
    data = {"results": [
        {"file_name": "2.png", "boxes": [[10, 10, 50, 40]], "scores": [0.5], "captions": ["tree"]},
        {"image_id": 1, "boxes": [], "scores": []},
    ]}
    d = load_detections(data, ann)
    assert d.layout == "per-image"
    np.testing.assert_allclose(d.boxes[2], [[10, 10, 50, 40]])
    assert d.descriptions[2] == ["tree"] and d.descriptions[1] is None
    assert sorted(d.images_without_detections) == [1, 3]
    d = load_detections([{"image_id": 2, "boxes": [[10, 10, 40, 30]], "scores": [1]}], ann, box_format="xywh")
    np.testing.assert_allclose(d.boxes[2], [[10, 10, 50, 40]])


@pytest.mark.parametrize("data, entry, field, msg", [
    ([{"image_id": 9, "bbox": [0, 0, 1, 1], "score": 0.5}], 0, "image_id", "not an image"),
    ([{"image_id": 1, "bbox": [0, 0, 1], "score": 0.5}], 0, "bbox", "4 numbers"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, {"image_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}],
     1, "bbox", "negative width"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1.5}], 0, "score", "in [0, 1]"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}], 0, "score", "finite"),
    ([{"image_id": 1, "bbox": [0, float("inf"), 1, 1], "score": 0.5}], 0, "bbox", "finite"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": "high"}], 0, "score", "a number"),
    ([{"image_id": 1, "bbox": [70, 0, 30, 10], "score": 0.5}], 0, "bbox", "outside the 80x60 image"),
    ([{"bbox": [0, 0, 1, 1], "score": 0.5}], 0, "image_id", "missing"),
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, {"image_id": 1, "boxes": [], "scores": []}],
     1, "boxes", "mixes"),
    ([{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [0.5]}, {"file_name": "1.png", "boxes": [], "scores": []}],
     1, "image_id", "already listed in entry #0"),
    ([{"image_id": 2, "boxes": [[5, 5, 2, 9]], "scores": [0.5]}], 0, "boxes[0]", "x2 < x1"),
    ([{"image_id": 2, "boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.1]}], 0, "scores", "2 scores for 1 boxes"),
    ([{"file_name": "nope.png", "boxes": [], "scores": []}], 0, "file_name", "not an image"),
    ([{"image_id": 2, "boxes": [[0, 0, 1, 1]], "scores": [0.5], "descriptions": ["a", "b"]}], 0, "descriptions",
     "1 strings"),
])
def test_reader_errors_name_file_entry_and_field(ann, tmp_path, data, entry, field, msg):
    p = tmp_path / "det.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DetectionError) as e:
        load_detections(p, ann)
    text = str(e.value)
    assert str(p) in text and f"entry #{entry}" in text and f"field {field!r}" in text and msg in text, text


def test_reader_file_errors(ann, tmp_path):
    with pytest.raises(FileNotFoundError, match="detection file not found"):
        load_detections(tmp_path / "missing.json", ann)
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DetectionError, match="invalid JSON"):
        load_detections(tmp_path / "bad.json", ann)
    with pytest.raises(DetectionError, match="expected a JSON list"):
        load_detections({"boxes": []}, ann)
    with pytest.raises(ValueError, match="frame"):
        load_detections([], ann, frame="pixels")


# ---- ranking ----------------------------------------------------------------------------------------------------

def test_rank_rules():
    d, c = np.array([0.9, 0.4, 0.25]), np.array([0.5, 1.0, 0.64])
    np.testing.assert_allclose(rank_scores(d, c, "detector"), d)          # the official rule (predicted boxes)
    np.testing.assert_allclose(rank_scores(d, c, "caption"), c)
    np.testing.assert_allclose(rank_scores(None, c, "caption"), c)       # ground-truth boxes
    np.testing.assert_allclose(rank_scores(d, c, "product"), d * c)
    np.testing.assert_allclose(rank_scores(d, c, "geometric"), [math.sqrt(0.45), math.sqrt(0.4), 0.4])
    assert set(RANK_RULES) == {"detector", "caption", "product", "geometric"}
    with pytest.raises(ValueError, match="needs detector scores"):
        rank_scores(None, c, "detector")
    with pytest.raises(ValueError, match="unknown rank rule"):
        rank_scores(d, c, "mean")
    with pytest.raises(ValueError, match="3 detector scores but 2"):
        rank_scores(d, c[:2], "product")


# ---- captioning every box: a scripted model -----------------------------------------------------------------------

class ScriptedModel:
    """``describe`` answers from a table keyed by the box; records the calls (to check chunking)."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def describe(self, image, boxes, prior="image", tasks=("caption",), seed=None, task=None):
        assert tasks == ("caption",) and task == "dense_caption" and image.ndim == 3
        self.calls.append(len(boxes))
        return [dict(zip(("caption", "caption_score"), self.table[tuple(float(v) for v in b)])) for b in boxes]


# box -> (caption, caption score): the dog box is captioned right with a high caption score but a low detector
# score, the wall box wrong with a high detector score, so the ranking rule changes the mAP.
TABLE = {(5.0, 5.0, 35.0, 25.0): ("a red car", 0.5), (40.0, 10.0, 70.0, 50.0): ("a white dog", 0.95),
         (10.0, 10.0, 50.0, 40.0): ("the green tree", 0.3), (60.0, 0.0, 100.0, 50.0): ("a wall", 0.2),
         (0.0, 0.0, 32.0, 32.0): ("the blue sky", 0.6)}


def test_predicted_boxes_rank_by_detector_score_by_default(ann):
    model = ScriptedModel(TABLE)
    loaded = []
    dets = load_detections(grit_records(), ann)
    m, preds = evaluate_densecap(model, ann, dets, meteor=exact_meteor, chunk_size=1,
                                 image_loader=lambda p: (loaded.append(p), np.zeros((4, 4, 3), np.uint8))[1])
    assert model.calls == [1, 1, 1, 1]                         # chunked one box per call
    assert len(loaded) == 2                                    # image 3 has no box: never loaded...
    assert list(preds) == [1, 2, 3] and len(preds[3]["boxes"]) == 0   # ...but kept
    assert m["rank"] == "detector" and m["images_without_boxes"] == 1 and m["gt_regions"] == 4
    np.testing.assert_allclose(preds[2]["scores"], [0.7, 0.8])
    np.testing.assert_allclose(preds[2]["caption_scores"], [0.3, 0.2])
    # the same numbers from the metric directly, image 3 present with no detection (its region is a miss)
    gt = ann.densecap_ground_truth()
    ref = densecap_map([{"image_id": i, "boxes": dets.boxes[i], "scores": dets.scores[i],
                         "captions": [TABLE[tuple(b)][0] for b in dets.boxes[i].tolist()],
                         "gt_boxes": gt[i]["boxes"], "gt_captions": gt[i]["captions"]} for i in (1, 2, 3)],
                       meteor=exact_meteor)
    assert m["map"] == pytest.approx(100 * ref["map"]) and m["detmap"] == pytest.approx(100 * ref["detmap"])
    assert 0 < m["map"] < 100


def test_rank_rule_changes_the_order(ann):
    dets = load_detections(grit_records(), ann)
    by_rule = {r: evaluate_densecap(ScriptedModel(TABLE), ann, dets, rank=r, meteor=exact_meteor,
                                    image_loader=lambda p: np.zeros((4, 4, 3), np.uint8))[0]["map"]
               for r in RANK_RULES}
    # detector order: car .9 (TP), wall .8 (FP), tree .7 (TP), dog .4 (TP); caption order: dog, car, tree, wall
    assert by_rule["caption"] > by_rule["detector"]
    assert len({round(v, 6) for v in by_rule.values()}) >= 2


def test_ground_truth_boxes_rank_by_caption_score(ann):
    model = ScriptedModel(TABLE)
    m, preds = evaluate_densecap(model, ann, None, meteor=exact_meteor,
                                 image_loader=lambda p: np.zeros((4, 4, 3), np.uint8))
    assert m["rank"] == "caption" and m["boxes"] == 4 and m["images_without_boxes"] == 0
    assert preds[1]["det_scores"] is None
    np.testing.assert_allclose(preds[1]["scores"], [0.5, 0.95])
    np.testing.assert_allclose(preds[1]["boxes"], [[5, 5, 35, 25], [40, 10, 70, 50]])
    assert m["map"] == pytest.approx(100.0) and m["detmap"] == pytest.approx(100.0)   # every caption exact
    with pytest.raises(ValueError, match="must be 'caption'"):
        densecap_predictions(model, ann, None, rank="detector")
    js = predictions_to_json(preds, m)
    assert json.loads(json.dumps(js))["results"][0]["det_scores"] is None


def test_detections_must_match_the_annotations(ann):
    dets = load_detections(grit_records(), ann)
    del dets.boxes[3]
    with pytest.raises(PredictionError, match="1 missing"):
        densecap_predictions(ScriptedModel(TABLE), ann, dets)


# ---- the tiny DynRefer and `dynrefer eval` ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch")
    pytest.importorskip("transformers", reason="the model needs transformers (pip install dynrefer[train])")
    from _model_data import build_tiny

    return build_tiny()


def test_tiny_model_captions_detections_in_chunks(ann, tiny):
    from dynrefer.data.dataset import load_image

    dets = load_detections(grit_records(), ann)
    img = load_image(ann.images[1].path)
    caps1, sc1 = caption_boxes(tiny, img, dets.boxes[1], chunk_size=1)
    caps2, sc2 = caption_boxes(tiny, img, dets.boxes[1], chunk_size=8)
    assert caps1 == caps2 and np.allclose(sc1, sc2, atol=1e-5)       # chunking does not change the answers
    assert np.all((sc1 > 0) & (sc1 <= 1))
    m, preds = evaluate_densecap(tiny, ann, dets, meteor=exact_meteor, rank="product")
    assert 0 <= m["map"] <= 100 and 0 <= m["detmap"] <= 100
    np.testing.assert_allclose(preds[2]["scores"], preds[2]["det_scores"] * preds[2]["caption_scores"])


@pytest.fixture
def cli_setup(tiny, ann_file, tmp_path):
    from _model_data import ATTRIBUTES, CAPTIONS, CLASSES, TAGS

    from dynrefer.app.bundle import save_bundle

    bundle = save_bundle(tiny, str(tmp_path / "model.pt"), CAPTIONS, TAGS, CLASSES, ATTRIBUTES,
                         {"num_views": tiny.num_views, "size": tiny.config.vision.image_size})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  preset: tiny\ndatasets:\n  root: {ann_file.parent}\n")
    det = tmp_path / "vg_instances_results.json"
    det.write_text(json.dumps(grit_records()))
    return str(cfg), bundle, str(det)


class StandInMeteor:
    """Replaces dynrefer.eval.meteor.Meteor in the command (no Java): the exact-match stand-in."""

    closed = 0

    def segment_scores(self, hyps, refs):
        return exact_meteor(hyps, refs)

    def close(self):
        StandInMeteor.closed += 1


def test_cli_dense_captioning(cli_setup, tmp_path, monkeypatch, capsys):
    from dynrefer.cli import main
    from dynrefer.eval import meteor as meteor_mod

    cfg, bundle, det = cli_setup
    monkeypatch.setattr(meteor_mod, "Meteor", StandInMeteor)
    out = tmp_path / "preds.json"
    assert main(["eval", cfg, "--checkpoint", bundle, "--detections", det, "--gt-boxes", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = [l for l in text.splitlines() if l.startswith("dense captioning")]
    assert len(lines) == 2 and "predicted boxes" in lines[0] and "ground-truth boxes" in lines[1]
    assert "rank by detector" in lines[0] and "rank by caption" in lines[1]
    assert all("mAP" in l and "detection mAP" in l for l in lines)
    assert "1 without a detection" in text and StandInMeteor.closed == 1
    report = json.loads(out.read_text())
    pred, gtb = report["predicted"], report["ground_truth"]
    assert [r["image_id"] for r in pred["results"]] == [1, 2, 3] and pred["results"][2]["boxes"] == []
    assert pred["results"][1]["det_scores"] == [0.7, 0.8] and pred["results"][1]["scores"] == [0.7, 0.8]
    assert gtb["results"][0]["det_scores"] is None and len(gtb["results"][0]["captions"]) == 2
    assert 0 <= pred["metrics"]["map"] <= 100 and gtb["metrics"]["rank"] == "caption"
    # detection mAP only: no METEOR at all
    assert main(["eval", cfg, "--checkpoint", bundle, "--detections", det, "--no-meteor", "--rank",
                 "geometric"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("dense captioning")][0]
    assert "mAP - (--no-meteor)" in line and "rank by geometric" in line


def test_cli_dense_captioning_errors(cli_setup, tmp_path, monkeypatch, capsys):
    from dynrefer.cli import main
    from dynrefer.eval import JavaUnavailableError
    from dynrefer.eval import meteor as meteor_mod

    cfg, bundle, det = cli_setup
    base = ["eval", cfg, "--checkpoint", bundle]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 7, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    cases = [
        (["--detections", str(bad)], [str(bad), "entry #0", "'image_id'", "not an image"]),
        (["--detections", str(tmp_path / "none.json")], ["detection file not found"]),
        (["--detections", det, "--annotations", str(tmp_path / "no.json")], ["annotation file not found"]),
        (["--gt-boxes", "--rank", "product"], ["needs detector scores"]),
        (["--rank", "detector"], ["--rank", "add --detections FILE and/or --gt-boxes"]),
        (["--gt-boxes", "--det-frame", "longest720"], ["describe a --detections file"]),
    ]
    for extra, msgs in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert all(m in err for m in msgs), (extra, err)

    def no_java():
        raise JavaUnavailableError("no `java` executable was found")

    monkeypatch.setattr(meteor_mod, "Meteor", no_java)
    assert main(base + ["--gt-boxes"]) == 2
    err = capsys.readouterr().err
    assert "needs Java" in err and "--no-meteor" in err
