"""``dynrefer.eval.evaluate``: one entry point per task, clear errors for bad predictions, paper-style report."""

import os
import sys

import numpy as np
import pytest

from dynrefer.eval import PredictionError, evaluate, format_report
from dynrefer.eval.ovad import OvadAnnotations

OVAD_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ovad", "ovad2000.json.gz")


def _ovad_small():
    labels = np.array([[1, 0, -1], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=np.int8)
    attrs = [{"name": f"t:a{j}", "freq_set": f} for j, f in enumerate(("head", "medium", "tail"))]
    return OvadAnnotations(labels=labels, attributes=attrs, annotation_ids=np.array([10, 11, 12, 13]),
                           image_ids=np.array([1, 1, 2, 2]), category_ids=np.ones(4, int), boxes=np.zeros((4, 4)))


def test_ovad_dict_and_array_predictions_agree():
    ann = _ovad_small()
    rng = np.random.default_rng(0)
    arr = rng.random((4, 3))
    by_id = {int(i): arr[k] for k, i in enumerate(ann.annotation_ids)}
    shuffled = dict(reversed(list(by_id.items())))
    r1, r2 = evaluate("ovad", arr, ann), evaluate("ovad", shuffled, ann)
    assert r1["all"] == r2["all"] and set(r1) >= {"all", "head", "medium", "tail", "per_attribute"}


def test_ovad_bad_predictions():
    ann = _ovad_small()
    good = {int(i): np.full(3, 0.5) for i in ann.annotation_ids}
    with pytest.raises(PredictionError, match=r"no prediction for 1 box\(s\): 13"):
        evaluate("ovad", {k: v for k, v in good.items() if k != 13}, ann)
    with pytest.raises(PredictionError, match="not in the annotations"):
        evaluate("ovad", {**good, 99: np.zeros(3)}, ann)
    with pytest.raises(PredictionError, match="NaN or Inf .*box 12"):
        evaluate("ovad", {**good, 12: np.array([0.1, np.nan, 0.2])}, ann)
    with pytest.raises(PredictionError, match="expected 3 scores"):
        evaluate("ovad", {**good, 11: np.zeros(4)}, ann)
    with pytest.raises(PredictionError, match=r"shape \(4, 3\)"):
        evaluate("ovad", np.zeros((3, 3)), ann)
    with pytest.raises(PredictionError, match="numeric"):
        evaluate("ovad", np.array([["a"] * 3] * 4), ann)


@pytest.mark.skipif(not os.path.isfile(OVAD_PATH), reason=f"OVAD annotations not found at {OVAD_PATH}")
def test_ovad_from_path_chance():
    r = evaluate("ovad", np.full((14300, 117), 0.3), OVAD_PATH)
    assert round(r["head"], 1) == 36.0


def test_coco_task():
    ann = {"ids": [5, 6, 7], "labels": [0, 1, 2], "image_ids": [1, 1, 2],
           "boxes": [[0, 0, 10, 10], [20, 20, 5, 5], [0, 0, 3, 3]]}
    r = evaluate("coco", {5: np.eye(80)[0], 6: np.eye(80)[1], 7: np.eye(80)[5]}, ann)
    assert r["acc"] == pytest.approx(200 / 3)
    assert r["map"] == pytest.approx(100 * 2 / 3)   # class 2 has GT but no detection: AP 0
    with pytest.raises(PredictionError, match="no prediction"):
        evaluate("coco", {5: np.eye(80)[0]}, ann)
    with pytest.raises(PredictionError, match="expected 80 scores"):
        evaluate("coco", {5: np.eye(80)[0], 6: np.eye(80)[1], 7: np.ones(81)}, ann)


def test_densecap_task():
    ann = {"a": {"boxes": [[0, 0, 10, 10]], "captions": ["a red car"]},
           "b": {"boxes": [[0, 0, 5, 5]], "captions": ["a dog"]}}
    pred = {"a": {"boxes": [[0, 0, 10, 10]], "scores": [0.9], "captions": ["a red car"]},
            "b": {"boxes": [], "scores": [], "captions": []}}
    r = evaluate("densecap", pred, ann, meteor=lambda c, refs: [1.0] * len(c))
    # one TP over 2 GT: recall .5 at precision 1 -> 51 of 100 recall thresholds
    assert r["map"] == pytest.approx(51.0) and r["detmap"] == pytest.approx(51.0)
    with pytest.raises(PredictionError, match="no prediction for 1 image"):
        evaluate("densecap", {"a": pred["a"]}, ann, meteor=lambda c, refs: [1.0] * len(c))
    with pytest.raises(PredictionError, match="lacks 'scores'"):
        evaluate("densecap", {**pred, "b": {"boxes": [], "captions": []}}, ann, captions=False)


def test_caption_task_errors_before_any_java():
    with pytest.raises(PredictionError, match="no prediction for 1 id"):
        evaluate("caption", {1: "a dog"}, {1: ["a dog"], 2: ["a cat"]})
    with pytest.raises(PredictionError, match="must be a dict"):
        evaluate("caption", ["a dog"], {1: ["a dog"]})
    with pytest.raises(ValueError, match="unknown task"):
        evaluate("vqa", {}, {})


def test_report_has_the_paper_tables():
    results = {"refcocog": {"METEOR": 17.1, "CIDEr": 115.7}, "vg": {"METEOR": 21.2, "CIDEr": 190.5},
               "vg1.2": {"map": 47.6}, "ovad": {"all": 29.2, "head": 50.1, "medium": 33.2, "tail": 12.5},
               "coco": {"map": 91.8, "acc": 93.6}}
    text = format_report(results, rows={"Chance": {"ovad": {"all": 8.6, "head": 36.0, "medium": 7.3, "tail": 0.6}}})
    for title in ("Table 1", "Table 2", "Table 3", "Table 4"):
        assert title in text
    assert "| Method   | RefCOCOg METEOR | RefCOCOg CIDEr | VG METEOR | VG CIDEr |" in text
    lines = text.splitlines()
    t2 = lines.index("Table 2: dense captioning (mAP)")
    assert [c.strip() for c in lines[t2 + 1].strip("|").split("|")] == ["Method", "VG V1.0", "VG V1.2", "VG-COCO"]
    assert [c.strip() for c in lines[t2 + 3].strip("|").split("|")] == ["DynRefer", "-", "47.6", "-"]
    t3 = lines.index("Table 3: OVAD box-oracle attribute detection (mAP)")
    assert [c.strip() for c in lines[t3 + 3].strip("|").split("|")] == ["Chance", "8.6", "36.0", "7.3", "0.6"]
    assert "Chance" not in text.split("Table 3")[0]   # a method appears only where it has values
    assert format_report({"coco": {"acc": 50.0}}).startswith("Table 4")


def test_eval_does_not_import_torch():
    import subprocess

    code = "import sys, dynrefer.eval; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
