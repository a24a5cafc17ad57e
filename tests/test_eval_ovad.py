"""OVAD box-oracle mAP: per-attribute AP equal to sklearn's, the paper's Chance row on the real annotations,
the loader and DynRefer's prompt construction."""

import os

import numpy as np
import pytest

from dynrefer.eval import PredictionError, load_ovad, max_over_prompts, ovad_ap, ovad_prompts
from dynrefer.eval.ovad import default_ovad_path

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")

OVAD_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ovad", "ovad2000.json.gz")
needs_ovad = pytest.mark.skipif(not os.path.isfile(OVAD_PATH),
                                reason=f"OVAD annotations not found at {OVAD_PATH} (../shared/data)")


def _random_problem(rng, n=400, a=12):
    labels = rng.choice([-1, 0, 1], size=(n, a), p=[0.2, 0.6, 0.2])
    labels[:, 0] = np.where(labels[:, 0] == 1, 0, labels[:, 0])      # no positives: skipped
    scores = rng.random((n, a))
    scores[:, 1] = np.round(scores[:, 1], 1)                           # many ties
    scores[:, 2] = rng.random((n,)).astype(np.float32)
    attrs = [{"name": f"t:a{j}", "freq_set": ("head", "medium", "tail")[j % 3]} for j in range(a)]
    return scores, labels, attrs


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_attribute_ap_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    scores, labels, attrs = _random_problem(rng)
    r = ovad_ap(scores, labels, attrs)
    expected = []
    for j, a in enumerate(attrs):
        keep = labels[:, j] >= 0
        if labels[keep, j].sum() == 0:
            assert np.isnan(r["per_attribute"][a["name"]])
            continue
        ap = sk.average_precision_score(labels[keep, j], scores[keep, j]) * 100
        assert r["per_attribute"][a["name"]] == pytest.approx(ap, abs=1e-10)
        expected.append((a["freq_set"], ap))
    assert r["all"] == pytest.approx(np.mean([v for _, v in expected]), abs=1e-10)
    for g in ("head", "medium", "tail"):
        assert r[g] == pytest.approx(np.mean([v for f, v in expected if f == g]), abs=1e-10)


def test_perfect_and_reversed_scores():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, -1], [0, 0]])
    attrs = ["head", "tail"]
    assert ovad_ap(labels.clip(0, 1).astype(float), labels, attrs)["all"] == pytest.approx(100)
    r = ovad_ap(1 - labels.clip(0, 1).astype(float), labels, attrs)
    # attribute 0 (5 labelled boxes, 2 positive): the 3 negatives tie at score 1 and reach no positive, the 2
    # positives tie at 0 and are reached together with everything: AP = (1 - 0) * 2/5
    assert r["per_attribute"]["attribute_0"] == pytest.approx(40)
    # attribute 1 (4 labelled, 1 positive ranked last alone): AP = 1/4
    assert r["per_attribute"]["attribute_1"] == pytest.approx(25)


@needs_ovad
def test_loader_and_chance_row_on_real_annotations():
    ann = load_ovad(OVAD_PATH)
    assert ann.labels.shape == (14300, 117) and len(ann.attributes) == 117
    assert len({a["image_id"] for a in [{"image_id": i} for i in ann.image_ids]}) == 2000
    assert set(np.unique(ann.labels)) == {-1, 0, 1}
    # constant scores carry no information: AP = positive rate per attribute
    r = ovad_ap(np.full(ann.labels.shape, 0.5), ann.labels, ann.attributes)
    assert round(r["head"], 1) == 36.0
    assert round(r["medium"], 1) == 7.3
    assert round(r["tail"], 1) == 0.6
    # "all" is 8.68 with the reference's NaN-mean (one attribute, hair color:violet, has no positive box);
    # the paper prints 8.6 for Chance
    assert r["all"] == pytest.approx(8.6, abs=0.1)
    pos = (ann.labels == 1).sum(0)
    rate = pos / ((ann.labels >= 0).sum(0))
    assert r["all"] == pytest.approx(100 * rate[pos > 0].mean(), abs=1e-9)
    assert np.isnan(r["per_attribute"]["hair color:violet"])


@needs_ovad
def test_default_path_points_at_shared_data():
    assert os.path.samefile(default_ovad_path(), OVAD_PATH)


def test_prompts_and_max_over_prompts():
    attrs = [{"name": "cleanliness:clean/neat", "is_has_att": "is"},
             {"name": "skin tone:dark", "is_has_att": "has"},
             {"name": "maturity:young/baby", "is_has_att": "is"}]
    texts, sizes = ovad_prompts(attrs)
    assert texts[:4] == ["the clean", "the  is clean", "the neat", "the  is neat"]
    assert texts[4:6] == ["the dark skin", "the  has dark skin"]
    assert sizes == [4, 2, 2 * 8]   # young/baby widened with kid/kids/child/toddler/boy/girl
    rng = np.random.default_rng(0)
    p = rng.random((5, sum(sizes)))
    out = max_over_prompts(p, sizes)
    np.testing.assert_array_equal(out[:, 0], p[:, :4].max(1))
    np.testing.assert_array_equal(out[:, 2], p[:, 6:].max(1))
    with pytest.raises(PredictionError):
        max_over_prompts(p[:, :-1], sizes)


def test_bad_inputs():
    labels = np.array([[1, 0], [0, 1]])
    with pytest.raises(PredictionError, match="NaN"):
        ovad_ap(np.array([[np.nan, 0.1], [0.2, 0.3]]), labels, ["head", "tail"])
    with pytest.raises(PredictionError, match="does not match"):
        ovad_ap(np.zeros((3, 2)), labels, ["head", "tail"])
    with pytest.raises(PredictionError, match="attributes"):
        ovad_ap(np.zeros((2, 2)), labels, ["head"])
    with pytest.raises(PredictionError, match=r"\[N boxes"):
        ovad_ap(np.zeros(4), labels, ["head", "tail"])
    with pytest.raises(PredictionError, match="labels must be"):
        ovad_ap(np.zeros((2, 2)), np.array([[2, 0], [0, 1]]), ["head", "tail"])
    with pytest.warns(UserWarning, match="clipped"):
        ovad_ap(np.array([[3.0, -1.0], [0.2, 0.3]]), labels, ["head", "tail"])
