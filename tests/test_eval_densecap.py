"""Dense captioning mAP (densecap protocol) on hand-worked cases, with METEOR scores plugged in (no Java)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynrefer.eval import DenseCapEvaluator, PredictionError, densecap_map
from dynrefer.eval.densecap import box_iou, merge_boxes

# Fixed METEOR score per candidate caption; records check that the right references reach the scorer.
METEOR = {"cap d1": 0.3, "cap d2": 0.28, "cap d3": 0.1, "cap d4": 0.2}


class FakeMeteor:
    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, candidates, references):
        self.calls += list(zip(candidates, references))
        return [self.table[c] for c in candidates]


def hand_case():
    """Two images. Image 1: GT A and A' (IoU 100/110 >= 0.7, merged), B. Image 2: GT C.

    d1 (0.9) on A exactly: IoU with merged A (0,0,10,10.5) = 100/105, METEOR 0.3   -> TP everywhere
    d2 (0.8) on A again: same GT already used                                       -> FP everywhere
    d3 (0.7) half of B: IoU 0.5, METEOR 0.1      -> TP iff t_iou <= 0.5 and t_m < 0.1
    d4 (0.75) shifted C: IoU 50/150 = 1/3, METEOR 0.2 -> TP iff t_iou <= 0.3 and t_m < 0.2
    """
    return [
        {"image_id": "im1", "scores": [0.8, 0.9, 0.7], "captions": ["cap d2", "cap d1", "cap d3"],
         "boxes": [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 25]],
         "gt_boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 11]], "gt_captions": ["gt a", "gt b", "gt a2"]},
        {"image_id": "im2", "scores": [0.75], "captions": ["cap d4"], "boxes": [[5, 0, 15, 10]],
         "gt_boxes": [[0, 0, 10, 10]], "gt_captions": ["gt c"]},
    ]


def test_hand_worked_map():
    # Global order by score: d1 (.9), d2 (.8), d4 (.75), d3 (.7); npos = 3 merged GT.
    # AP is the mean over t = 0, .01, ..., .99 of max precision at recall >= t.
    # TP FP TP TP: recall 1/3 1/3 2/3 1, precision 1 .5 .67 .75 -> t<=.33 (34 pts): 1; else .75 -> .835
    # TP FP TP FP: t<=.33: 1; .34..66 (33 pts): 2/3; above: 0                               -> .56
    # TP FP FP TP: t<=.33: 1; .34..66: max(.5) = .5; above: 0                                -> .505
    # TP FP FP FP: t<=.33: 1                                                                 -> .34
    A, B, C, D = 0.835, 0.56, 0.505, 0.34
    expected = {0.3: [A, A, B, B, D, D], 0.4: [C, C, D, D, D, D], 0.5: [C, C, D, D, D, D],
                0.6: [D] * 6, 0.7: [D] * 6}
    fake = FakeMeteor(METEOR)
    r = densecap_map(hand_case(), meteor=fake)
    for t_iou, row in expected.items():
        for t_m, ap in zip((0.0, 0.05, 0.1, 0.15, 0.2, 0.25), row):
            assert r["ap_breakdown"][f"iou_{t_iou}_meteor_{t_m}"] == pytest.approx(ap, abs=1e-6), (t_iou, t_m)
    assert r["map"] == pytest.approx(sum(sum(v) for v in expected.values()) / 30, abs=1e-6)
    det = {0.3: A, 0.4: C, 0.5: C, 0.6: D, 0.7: D}
    for t_iou, ap in det.items():
        assert r["det_breakdown"][f"iou_{t_iou}"] == pytest.approx(ap, abs=1e-6)
    assert r["detmap"] == pytest.approx(sum(det.values()) / 5, abs=1e-6)
    # the merged GT carries both captions; every matched detection is scored against its GT's references
    calls = dict(fake.calls)
    assert sorted(calls["cap d1"]) == ["gt a", "gt a2"] and sorted(calls["cap d2"]) == ["gt a", "gt a2"]
    assert calls["cap d3"] == ["gt b"] and calls["cap d4"] == ["gt c"]


def test_detection_only_needs_no_meteor():
    r = densecap_map(hand_case(), captions=False)
    assert "map" not in r and r["detmap"] == pytest.approx((0.835 + 2 * 0.505 + 2 * 0.34) / 5, abs=1e-6)


def test_unmatched_gt_lowers_recall_and_missing_detections_still_count():
    case = hand_case()
    case.append({"image_id": "im3", "scores": [], "boxes": [], "captions": [],
                 "gt_boxes": [[0, 0, 5, 5]], "gt_captions": ["gt e"]})
    # npos = 4: TP FP TP TP -> recall .25 .25 .5 .75, precision 1 .5 .67 .75:
    # t<=.25 (26 pts): 1; .26...75 (50 pts): .75; above: 0 -> (26 + 37.5) / 100
    r = densecap_map(case, captions=False)
    assert r["det_breakdown"]["iou_0.3"] == pytest.approx(0.635, abs=1e-6)


def test_merge_boxes_greedy_order():
    # heights 10, 11 (IoU .909), 16 (IoU .625 / .6875 with them), one far box
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60], [0, 0, 10, 16]], float)
    assert [g.tolist() for g in merge_boxes(boxes, 0.7)] == [[0, 1], [2], [3]]
    # a hub box merges boxes that do not overlap each other enough: heights 10 and 14.4 (IoU .694) via 12
    chain = np.array([[0, 0, 10, 10], [0, 0, 10, 14.4], [0, 0, 10, 12]], float)
    assert [g.tolist() for g in merge_boxes(chain, 0.7)] == [[0, 1, 2]]
    assert box_iou(boxes[:1], boxes[2:3])[0, 0] == 0


def test_score_ties_and_float32_ordering():
    # two detections whose scores differ only beyond float32 precision count as tied (stable: input order)
    ev = DenseCapEvaluator()
    ev.add_image([0.5, 0.5 + 1e-12], [[0, 0, 10, 10], [100, 100, 110, 110]], ["a", "b"],
                 [[0, 0, 10, 10]], ["a"])
    r = ev.evaluate(captions=False)
    assert r["detmap"] == pytest.approx(1.0)   # the TP stays first


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(1, 3), st.integers(1, 3)),
                min_size=1, max_size=6, unique_by=lambda t: (t[0], t[1])),
       st.integers(0, 2 ** 31 - 1))
def test_perfect_predictions_score_one(cells, seed):
    # GT boxes on a coarse grid cannot overlap >= 0.7 unless identical; the predictions are the GT themselves
    rng = np.random.default_rng(seed)
    gt = np.array([[x * 20, y * 20, x * 20 + w * 5, y * 20 + h * 5] for x, y, w, h in cells], float)
    caps = [f"caption {i}" for i in range(len(gt))]
    images = [{"scores": rng.random(len(gt)), "boxes": gt, "captions": caps, "gt_boxes": gt, "gt_captions": caps}]
    r = densecap_map(images, meteor=lambda c, refs: [1.0 if ci in rs else 0.0 for ci, rs in zip(c, refs)])
    assert r["map"] == pytest.approx(1.0) and r["detmap"] == pytest.approx(1.0)
    # and dropping one detection caps the AP at the recall left
    images[0] = {**images[0], "scores": images[0]["scores"][1:], "boxes": gt[1:], "captions": caps[1:]}
    if len(gt) > 1:
        r = densecap_map(images, captions=False)
        rec = (len(gt) - 1) / len(gt)
        n_pts = int(np.sum((np.arange(100) * 0.01).astype(np.float32) <= np.float32(rec)))
        assert r["detmap"] == pytest.approx(n_pts / 100, abs=1e-6)


def test_bad_inputs():
    good = hand_case()
    with pytest.raises(PredictionError, match="NaN"):
        densecap_map([{**good[0], "scores": [np.nan, 0.9, 0.7]}], captions=False)
    with pytest.raises(PredictionError, match=r"\[N, 4\]"):
        densecap_map([{**good[0], "boxes": [[0, 0, 10], [0, 0, 10], [0, 0, 1]]}], captions=False)
    with pytest.raises(PredictionError, match="3 scores, 3 boxes and 2 captions"):
        densecap_map([{**good[0], "captions": ["a", "b"]}], captions=False)
    with pytest.raises(PredictionError, match="x2 < x1"):
        densecap_map([{**good[0], "boxes": [[10, 0, 0, 10]] * 3}], captions=False)
    with pytest.raises(PredictionError, match="lacks"):
        densecap_map([{"scores": [1.0]}], captions=False)
    with pytest.raises(PredictionError, match="ground-truth"):
        densecap_map([{**good[0], "gt_boxes": [], "gt_captions": []}], captions=False)
    with pytest.raises(ValueError, match="returned 1 scores"):
        densecap_map(good, meteor=lambda c, r: [0.5])
