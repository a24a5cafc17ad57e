"""COCO region recognition: accuracy, and box mAP equal to pycocotools' COCOeval on the same detections."""

import contextlib
import io

import numpy as np
import pytest

from dynrefer.eval import PredictionError, coco_box_map, coco_recognition


def _scene(rng, n_images=25, n_classes=6):
    boxes, labels, images, crowd = [], [], [], []
    for img in range(1, n_images + 1):
        for _ in range(rng.integers(0, 8)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(5, 80, 2)
            boxes.append([x, y, w, h])
            labels.append(int(rng.integers(0, n_classes)))
            images.append(img * 3)
            crowd.append(bool(rng.random() < 0.08))
        if rng.random() < 0.3 and boxes:  # a duplicate box: several GT with IoU 1
            boxes.append(list(boxes[-1]))
            labels.append(labels[-1])
            images.append(images[-1])
            crowd.append(False)
    return np.array(boxes), np.array(labels), np.array(images), np.array(crowd)


def _pycocotools_ap(boxes, labels, images, crowd, scores, n_classes):
    coco_mod = pytest.importorskip("pycocotools.coco", reason="pycocotools is not installed")
    eval_mod = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools is not installed")
    gt = coco_mod.COCO()
    gt.dataset = {
        "images": [{"id": int(i)} for i in sorted(set(images.tolist()))],
        "categories": [{"id": k + 1, "name": str(k)} for k in range(n_classes)],
        "annotations": [{"id": i + 1, "image_id": int(images[i]), "category_id": int(labels[i]) + 1,
                         "bbox": boxes[i].tolist(), "area": float(boxes[i, 2] * boxes[i, 3]),
                         "iscrowd": int(crowd[i])} for i in range(len(boxes))]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        pred = np.argmax(scores, 1)
        dets = [{"image_id": int(images[i]), "category_id": int(pred[i]) + 1, "bbox": boxes[i].tolist(),
                 "score": float(scores[i, pred[i]])} for i in range(len(boxes))]
        dt = gt.loadRes(dets)
        ev = eval_mod.COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    n_classes = 6
    boxes, labels, images, crowd = _scene(rng, n_classes=n_classes)
    logits = rng.normal(size=(len(boxes), n_classes))
    logits[np.arange(len(boxes)), labels] += rng.uniform(0, 2.5, len(boxes))  # informative but imperfect
    scores = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # rounding makes ties
    stats = _pycocotools_ap(boxes, labels, images, crowd, scores, n_classes)
    r = coco_recognition(scores, labels, boxes, images, iscrowd=crowd)
    assert r["map"] == pytest.approx(stats[0] * 100, abs=1e-9)
    assert r["ap50"] == pytest.approx(stats[1] * 100, abs=1e-9)
    assert r["ap75"] == pytest.approx(stats[2] * 100, abs=1e-9)
    assert r["acc"] == pytest.approx(100 * np.mean(np.argmax(scores, 1) == labels))
    assert 0 < r["map"] < 100


def test_perfect_classification_and_accuracy_only():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 10, 10], [0, 0, 30, 30]], float)
    labels = np.array([0, 1, 0])
    scores = np.eye(3)[labels]
    r = coco_recognition(scores, labels, boxes, np.array([1, 1, 2]))
    assert r["acc"] == 100 and r["map"] == pytest.approx(100)
    assert coco_recognition(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 1])) == {"acc": 50.0}


def test_box_map_low_level_matches_manual_case():
    # one class, one image, 2 GT, 3 detections: TP (0.9), FP (0.8), TP (0.7) at every IoU threshold
    gt = np.array([[0, 0, 10, 10], [50, 50, 10, 10]], float)
    dt = np.array([[0, 0, 10, 10], [100, 100, 5, 5], [50, 50, 10, 10]], float)
    r = coco_box_map(gt, [0, 0], [1, 1], dt, [0, 0, 0], [0.9, 0.8, 0.7], [1, 1, 1])
    # precision envelope: 1 up to recall .5, then 2/3 -> 51 recall points at 1, 50 at 2/3
    assert r["AP"] == pytest.approx((51 + 50 * (2 / 3 + 0 * np.spacing(1))) / 101, abs=1e-9)


def test_bad_inputs():
    with pytest.raises(PredictionError, match="NaN"):
        coco_recognition(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(PredictionError, match="labels must have shape"):
        coco_recognition(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(PredictionError, match="class indices"):
        coco_recognition(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(PredictionError, match="both boxes and image_ids"):
        coco_recognition(np.zeros((2, 3)), np.array([0, 1]), boxes=np.zeros((2, 4)))
    with pytest.raises(PredictionError, match=r"\[N boxes"):
        coco_recognition(np.zeros(3), np.array([0, 1, 2]))
