"""Tag extraction rules (tokenisation, longest-first multi-word tags, inflection, stop list, the two sets) and
control-word sampling (exact sentence form, seeded reproducibility, the 0.5 / 0.5 probabilities)."""

import os

import numpy as np
import pytest
from scipy import stats

from dynrefer.data.control import SEPARATOR, control_from_scores, control_sentence, sample_control_words
from dynrefer.data.readers import load_tag_vocab
from dynrefer.data.tags import TagExtractor, singular, tokenize

VOCAB = ["man", "woman", "person", "t-shirt", "shirt", "red", "blue", "circle", "square", "hot dog", "dog",
         "hot", "teddy bear", "bear", "glass", "glasses", "leaf", "tree", "ride", "run", "stripe", "strip",
         "walk", "side", "back", "bicycle", "city street", "street", "rubik's cube", "dress", "bus", "baby"]


@pytest.fixture(scope="module")
def ex():
    return TagExtractor(VOCAB)


def names(ex, cap):
    return ex.extract_names(cap)


def test_tokenize_and_singular():
    assert tokenize("A Man's T-Shirt, (red)!") == ["a", "man", "t", "shirt", "red"]
    assert tokenize("the dogs' bowls") == ["the", "dogs", "bowls"]
    assert tokenize("") == [] and tokenize(" ,.; ") == []
    cases = {"men": "man", "people": "person", "leaves": "leaf", "babies": "baby", "boxes": "box",
             "benches": "bench", "glasses": "glass", "tomatoes": "tomato", "dogs": "dog", "bus": "bus",
             "dress": "dress", "cactus": "cactus", "cats": "cat", "gas": "gas", "sheep": "sheep", "is": "is"}
    for w, s in cases.items():
        assert singular(w) == s, w


def test_longest_first_and_exact_before_normalised(ex):
    assert names(ex, "a hot dog") == (["hot dog", "dog"], [])     # with its trailing sub-phrase, as official
    assert names(ex, "hot dogs") == (["hot dog", "dog"], [])
    assert TagExtractor(VOCAB, suffixes=False).extract_names("a hot dog") == (["hot dog"], [])
    assert names(ex, "a hot day with a dog") == (["hot"], ["dog"])
    assert names(ex, "teddy bears") == (["teddy bear", "bear"], [])
    assert names(ex, "the T-shirt") == (["t-shirt", "shirt"], [])
    assert names(ex, "the t shirt with a shirt") == (["t-shirt", "shirt"], ["shirt"])
    assert names(ex, "glasses") == (["glasses"], [])       # exact match beats the normal form glass
    assert names(ex, "a glass") == (["glass"], [])
    assert names(ex, "a city streets") == (["city street", "street"], [])
    assert names(ex, "Rubik's cube") == (["rubik's cube"], [])


def test_inflections_and_stop_list(ex):
    assert names(ex, "Two men and three women") == (["man", "woman"], [])       # "and" joins subjects
    assert names(ex, "people") == (["person"], [])
    assert names(ex, "fallen leaves") == (["leaf"], [])
    assert names(ex, "running babies") == (["run", "baby"], [])
    assert names(ex, "striped buses") == (["stripe", "bus"], [])
    assert names(ex, "walked bicycles") == (["walk", "bicycle"], [])
    # layout words are not tags even though they are in the vocabulary; a relation that is a tag is context
    assert names(ex, "the back side of a bear") == (["bear"], [])
    assert names(ex, "man riding a bicycle") == (["man"], ["ride", "bicycle"])


def test_two_sets(ex):
    assert names(ex, "a red circle left of a blue square") == (["red", "circle"], ["blue", "square"])
    assert names(ex, "red circle, red square") == (["red", "circle", "square"], [])
    assert names(ex, "on the street a man") == (["street", "man"], [])     # relation before any tag: no split
    s1, s2 = ex.extract("a red circle left of a blue square")
    assert s1 == [VOCAB.index("red"), VOCAB.index("circle")]
    pr = ex.parser_result("a man on a bicycle")
    assert pr == {"tag_set1": [0], "tag_set2": [VOCAB.index("bicycle")]}
    mh = ex.multi_hot("a man on a bicycle")
    assert mh.shape == (len(VOCAB),) and mh.sum() == 2 and mh[0] == 1
    assert ex.extract("") == ([], []) and ex.extract("nothing known here") == ([], [])


def test_real_vocabulary(shared_data):
    vocab = load_tag_vocab(os.path.join(shared_data, "vocab", "ram_tags.txt"))
    assert len(vocab) == 4585
    ex = TagExtractor(vocab)
    s1, s2 = ex.extract_names("A man in a red T-shirt riding bicycles down the city street")
    assert "man" in s1 and "red" in s2 and "bicycle" in s2
    assert all(0 <= i < len(vocab) for i in sum(ex.extract("white clouds in the blue sky"), []))
    assert ex.extract_names("a blue square")[0] == ["blue", "square"]


# ---- control words ------------------------------------------------------------------------------------------

def test_control_sentence_form():
    assert control_sentence(["dog", "red", "dog", " ", "ball "]) == "dog,red,ball|"
    assert control_sentence([]) == SEPARATOR == "|"
    with pytest.raises(ValueError, match="contains"):
        control_sentence(["a,b"])
    with pytest.raises(TypeError):
        control_sentence([1])
    with pytest.raises(TypeError, match="single string"):
        sample_control_words("dog", 0)
    assert sample_control_words(["b", "a", "b"], training=False) == "b,a|"
    with pytest.raises(ValueError, match="p_drop_all"):
        sample_control_words(["a"], 0, p_drop_all=1.5)


def test_control_sampling_seeded():
    words = [f"w{i}" for i in range(8)]
    a = [sample_control_words(words, np.random.default_rng(s)) for s in range(50)]
    b = [sample_control_words(words, s) for s in range(50)]
    assert a == b
    assert len(set(a)) > 20
    for s in a:
        assert s.endswith("|") and s.count("|") == 1
        got = [w for w in s[:-1].split(",") if w]
        assert len(got) == len(set(got)) and set(got) <= set(words)
    assert sample_control_words([], np.random.default_rng(0)) == "|"


def test_control_sampling_statistics():
    rng = np.random.default_rng(12345)
    words = [f"w{i}" for i in range(6)]
    n = 4000
    dropped, kept_counts, first_pos = 0, np.zeros(6), np.zeros(6)
    sizes = []
    for _ in range(n):
        s = sample_control_words(words, rng)
        got = [w for w in s[:-1].split(",") if w]
        if s == "|":
            dropped += 1
        else:
            sizes.append(len(got))
        for w in got:
            kept_counts[int(w[1:])] += 1
        if len(got) >= 2:
            first_pos[int(got[0][1:])] += 1
    kept_n = n - dropped
    # P(sentence empty) = 0.5 + 0.5 * 0.5**6; binomial test at a strict level
    p_empty = 0.5 + 0.5 * 0.5 ** 6
    assert stats.binomtest(dropped, n, p_empty).pvalue > 1e-4
    # exact check: sizes of non-empty kept sets follow Binomial(6, 0.5) conditioned on >= 1
    hist = np.bincount(sizes, minlength=7)[1:]
    probs = np.array([stats.binom.pmf(k, 6, 0.5) for k in range(1, 7)])
    probs /= probs.sum()
    assert stats.chisquare(hist, probs * hist.sum()).pvalue > 1e-4
    # every word equally likely to be kept, and shuffled: each equally likely to come first
    assert stats.chisquare(kept_counts).pvalue > 1e-4
    assert stats.chisquare(first_pos).pvalue > 1e-4
    assert kept_n > 0


# ---- properties -----------------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_WORDS = st.sampled_from(VOCAB + ["a", "the", "on", "of", "left", "with", "men", "dogs", "riding", "x-ray", "'s",
                                  ",", "!", "  ", "É", "2"])


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(_WORDS, max_size=20).map(" ".join))
def test_extraction_properties(caption):
    ex = TagExtractor(VOCAB)
    s1, s2 = ex.extract(caption)
    assert all(0 <= i < len(VOCAB) for i in s1 + s2)
    assert len(set(s1)) == len(s1) and len(set(s2)) == len(s2)
    # every tag found is spelled (up to inflection) in the caption's tokens
    toks = set(tokenize(caption)) | {singular(t) for t in tokenize(caption)}
    for i in s1 + s2:
        assert set(tokenize(VOCAB[i])) <= toks | {"run", "ride", "walk", "stripe", "strip"}
    # case and punctuation do not matter
    assert ex.extract(caption.upper().replace(" ", " , ")) == (s1, s2)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.text(alphabet="abc xyz", min_size=1, max_size=6), max_size=10), st.integers(0, 2**32 - 1))
def test_control_sampling_properties(words, seed):
    words = [w for w in words if w.strip()]
    s = sample_control_words(words, np.random.default_rng(seed))
    assert s.endswith("|") and s.count("|") == 1
    got = [w for w in s[:-1].split(",") if w]
    assert len(got) == len(set(got)) and set(got) <= {w.strip() for w in words}
    assert s == sample_control_words(words, np.random.default_rng(seed))


def test_control_from_scores():
    vocab = ["dog", "red", "ball", "grass"]
    assert control_from_scores([0.9, 0.1, 0.71, 0.7], vocab) == ["dog,ball|"]
    two = np.array([[0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1]])
    assert control_from_scores(two, vocab, 0.76) == ["|", "dog,red,ball,grass|"]
    with pytest.raises(ValueError, match="T = 4"):
        control_from_scores([0.5, 0.5], vocab)
    with pytest.raises(ValueError, match="NaN"):
        control_from_scores([np.nan, 0, 0, 0], vocab)
