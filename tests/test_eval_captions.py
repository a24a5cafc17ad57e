"""Captioning metrics against the installed pycocoevalcap: BLEU-1..4, CIDEr-D (to 1e-6, in practice exactly),
PTB tokenisation and METEOR 1.5 (identical when Java runs both)."""

import math

import numpy as np
import pytest

from dynrefer.eval import Bleu, Cider, PredictionError, caption_metrics
from dynrefer.eval._resources import JavaUnavailableError

from _eval_data import caption_sets, simple_tokenize

pcap_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu", reason="pycocoevalcap is not installed")
pcap_cider = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap is not installed")


def _java_or_skip():
    try:
        from dynrefer.eval._resources import find_java, pycocoevalcap_file
        find_java()
        pycocoevalcap_file("meteor", "meteor-1.5.jar")
        pycocoevalcap_file("tokenizer", "stanford-corenlp-3.4.1.jar")
    except JavaUnavailableError as e:
        pytest.skip(f"needs Java and pycocoevalcap's jars: {e}")


# ---------------------------------------------------------------- BLEU / CIDEr (no Java) -----------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_cider_match_pycocoevalcap(seed):
    gts, res = caption_sets(seed, n_items=150)
    gts, res = simple_tokenize(gts), simple_tokenize(res)
    ref_b, ref_b_items = pcap_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    our_b, our_b_items = Bleu(4).compute_score(gts, res)
    np.testing.assert_allclose(our_b, ref_b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array(our_b_items), np.array(ref_b_items), rtol=0, atol=1e-12)
    ref_c, ref_c_items = pcap_cider.Cider().compute_score(gts, res)
    our_c, our_c_items = Cider().compute_score(gts, res)
    assert abs(our_c - ref_c) < 1e-9
    np.testing.assert_allclose(our_c_items, ref_c_items, rtol=0, atol=1e-9)
    assert ref_c > 0.1 and ref_b[0] > 0.1  # the sets are not degenerate


def test_bleu_cider_edge_cases_match_pycocoevalcap():
    # empty hypothesis, one-word sentences (CIDEr's bigram "length"), repeated n-grams (clipping),
    # a hypothesis longer than all references, and ties in the closest reference length
    gts = {1: ["a dog"], 2: ["the the the cat", "a cat"], 3: ["red"], 4: ["a man on a horse", "a man"],
           5: ["one two three", "one two three four five"], 6: ["x y"]}
    res = {1: [""], 2: ["the the the the cat cat"], 3: ["red"], 4: ["a man riding on a brown horse in a field"],
           5: ["one two three four"], 6: ["y"]}
    ref_b, ref_items = pcap_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    our_b, our_items = Bleu(4).compute_score(gts, res)
    assert our_b == ref_b and our_items == ref_items
    ref_c, ref_ci = pcap_cider.Cider().compute_score(gts, res)
    our_c, our_ci = Cider().compute_score(gts, res)
    np.testing.assert_allclose(our_ci, ref_ci, rtol=0, atol=1e-12)


def test_cider_detects_a_wrong_idf():
    # CIDEr depends on the whole evaluated set: scoring one item alone gives a different number
    gts, res = caption_sets(5, n_items=30)
    gts, res = simple_tokenize(gts), simple_tokenize(res)
    full = Cider().compute_score(gts, res)[1]
    k = next(i for i, k in enumerate(gts) if full[i] > 0)
    key = list(gts)[k]
    alone = Cider().compute_score({key: gts[key], "other": ["zzz"]}, {key: res[key], "other": ["zzz"]})[1][0]
    assert abs(alone - full[k]) > 1e-3


@pytest.mark.parametrize("scorer", [Bleu(4), Cider()])
def test_caption_scorers_reject_bad_input(scorer):
    with pytest.raises(PredictionError, match="no prediction"):
        scorer.compute_score({1: ["a b"], 2: ["c"]}, {1: ["a b"]})
    with pytest.raises(PredictionError, match="not in the references"):
        scorer.compute_score({1: ["a b"]}, {1: ["a b"], 3: ["x"]})
    with pytest.raises(PredictionError, match="exactly one"):
        scorer.compute_score({1: ["a b"]}, {1: ["a b", "c"]})
    with pytest.raises(PredictionError, match="no reference"):
        scorer.compute_score({1: []}, {1: ["a"]})
    with pytest.raises(TypeError):
        scorer.compute_score({1: "a b"}, {1: ["a b"]})


def test_clear_error_without_java(monkeypatch, tmp_path):
    from dynrefer.eval import Meteor, PTBTokenizer

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    for cls in (Meteor, PTBTokenizer):
        with pytest.raises(JavaUnavailableError, match="java"):
            cls()
    with pytest.raises(JavaUnavailableError):
        caption_metrics({1: ["a dog"]}, {1: ["a dog"]})


# ---------------------------------------------------------------- Java: tokenizer, METEOR ----------------------
@pytest.fixture(scope="module")
def meteors():
    """Our METEOR and pycocoevalcap's, started together so their JVMs load in parallel; shared by the module."""
    _java_or_skip()
    from pycocoevalcap.meteor.meteor import Meteor as RefMeteor

    from dynrefer.eval import Meteor

    ours, ref = Meteor(), RefMeteor()
    yield ours, ref
    ours.close()
    del ref


@pytest.fixture(scope="module")
def tokenized():
    _java_or_skip()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer as RefTok

    from dynrefer.eval import PTBTokenizer

    gts, res = caption_sets(11, n_items=120)
    extra = ["Don't stop -- \"quoted\" (yes)!", "A man's café, 3.5 ft. tall; U.S.A.", "", "e.g. {curly} [square]"]
    for i, c in enumerate(extra):
        gts[f"x{i}"] = [c, "a plain reference"]
        res[f"x{i}"] = [c]
    to_ref = lambda d: {k: [{"caption": c} for c in v] for k, v in d.items()}  # noqa: E731
    ref = RefTok()
    ref_g, ref_r = ref.tokenize(to_ref(gts)), ref.tokenize(to_ref(res))
    ours = PTBTokenizer()
    return gts, res, ref_g, ref_r, ours.tokenize(gts), ours.tokenize(to_ref(res))


def test_ptb_tokenizer_matches_pycocoevalcap(tokenized):
    gts, res, ref_g, ref_r, our_g, our_r = tokenized
    assert our_g == ref_g
    assert our_r == ref_r
    # the reference lists "-LRB-" but lower-cases first, so brackets survive as "-lrb-": reproduced on purpose
    assert our_r["x0"] == ["do n't stop quoted -lrb- yes -rrb-"]


def test_bleu_cider_on_ptb_tokens_match(tokenized):
    _, _, ref_g, ref_r, our_g, our_r = tokenized
    ref_b, _ = pcap_bleu.Bleu(4).compute_score(ref_g, ref_r, verbose=0)
    assert Bleu(4).compute_score(our_g, our_r)[0] == pytest.approx(ref_b, abs=1e-6)
    assert Cider().compute_score(our_g, our_r)[0] == pytest.approx(
        pcap_cider.Cider().compute_score(ref_g, ref_r)[0], abs=1e-6)


def test_tokenizer_never_misaligns():
    _java_or_skip()
    from dynrefer.eval import PTBTokenizer

    out = PTBTokenizer().tokenize({1: ["first\rline", "second\nline"], 2: ["Third."]})
    assert out == {1: ["first line", "second line"], 2: ["third"]}


def test_meteor_matches_pycocoevalcap(meteors, tokenized):
    ours, ref = meteors
    _, _, ref_g, ref_r, our_g, our_r = tokenized
    ref_score, ref_items = ref.compute_score(ref_g, ref_r)
    our_score, our_items = ours.compute_score(our_g, our_r)
    assert our_score == ref_score
    assert our_items == ref_items
    assert 0.05 < our_score < 1
    # the corpus score comes from aggregated statistics, not the mean of the item scores
    assert not math.isclose(our_score, float(np.mean(our_items)), rel_tol=1e-6)


def test_caption_metrics_pipeline(meteors, tokenized):
    ours, ref = meteors
    gts, res, ref_g, ref_r, _, _ = tokenized
    m = caption_metrics(gts, res, meteor=ours)
    assert m["CIDEr"] == pytest.approx(pcap_cider.Cider().compute_score(ref_g, ref_r)[0], abs=1e-6)
    assert m["METEOR"] == ref.compute_score(ref_g, ref_r)[0]
    assert m["BLEU-4"] == pytest.approx(pcap_bleu.Bleu(4).compute_score(ref_g, ref_r, verbose=0)[0][3], abs=1e-6)


def test_meteor_segment_scores_and_densecap_default_scorer(meteors):
    ours, ref = meteors
    hyps = ["a man riding a horse", "a red car", "blue sky"]
    refs = [["a man rides a horse", "person on a horse"], ["the red car"], ["green grass"]]
    seg = ours.segment_scores(hyps, refs)
    single = [ours.segment_scores([h], [r])[0] for h, r in zip(hyps, refs)]
    assert seg == single                      # per-item scores do not depend on the batch
    assert seg[0] > 0.3 and seg[2] == 0.0

    from dynrefer.eval import densecap_map
    images = [{"scores": [0.9, 0.8], "boxes": [[0, 0, 10, 10], [20, 20, 30, 30]],
               "captions": ["a man riding a horse", "blue sky"],
               "gt_boxes": [[0, 0, 10, 10], [20, 20, 30, 30]],
               "gt_captions": ["a man rides a horse", "green grass"]}]
    r = densecap_map(images, meteor=ours)
    # det 1 is a TP for every METEOR threshold below its score, det 2 (METEOR 0) never is
    m1 = ours.segment_scores(["a man riding a horse"], [["a man rides a horse"]])[0]
    n_pass = sum(m1 > t for t in (0, 0.05, 0.1, 0.15, 0.2, 0.25))
    # one TP first, then an FP: AP = 51/100 (recall 0.5 reached at t <= 0.5 with precision 1)
    assert r["map"] == pytest.approx(n_pass * 0.51 / 6, abs=1e-7)
