"""Control candidates from the caption's noun/adjective phrases (the official training's, dynrefer.data.control):
the phrase rule on given tags, the tagger TextBlob ships (skipped without textblob), and RegionDataset's
``control_phrases``."""
import os

import pytest

from dynrefer.data.control import caption_phrases, phrases_from_tags


def test_phrase_rule_as_the_official_parse_sentence():
    # every NN*/JJ* word starts a phrase at its first occurrence; the phrase runs over words tagged NN* anywhere
    tagged = [("a", "DT"), ("red", "JJ"), ("motorcycle", "NN"), ("parked", "VBN"), ("on", "IN"), ("the", "DT"),
              ("street", "NN")]
    assert phrases_from_tags(tagged) == ["red motorcycle", "motorcycle", "street"]
    tagged = [("the", "DT"), ("dog", "NN"), ("and", "CC"), ("the", "DT"), ("dog", "NN"), ("bowl", "NN")]
    # the second "dog" starts at the first one (tokens.index), so both give "dog"; "bowl" alone
    assert phrases_from_tags(tagged) == ["dog", "dog", "bowl"]
    tagged = [("tall", "JJ"), ("green", "JJ"), ("tree", "NN"), ("branches", "NNS"), ("swaying", "VBG")]
    assert phrases_from_tags(tagged) == ["tall", "green tree branches", "tree branches", "branches"]
    assert phrases_from_tags([("is", "VBZ"), ("running", "VBG")]) == []
    assert phrases_from_tags([]) == []


def test_caption_phrases_with_textblobs_tagger():
    pytest.importorskip("textblob")
    assert caption_phrases("a red motorcycle parked on the street") == ["red motorcycle", "motorcycle", "street"]
    assert caption_phrases("white and black dog on the grass") == ["white", "black dog", "dog", "grass"]
    assert caption_phrases("   ") == []
    assert all("," not in p for p in caption_phrases("a cat, a dog, and a bird"))
    with pytest.raises(TypeError, match="caption"):
        caption_phrases(None)


def test_dataset_control_phrases(tmp_path):
    pytest.importorskip("textblob")
    pytest.importorskip("torch")
    from dynrefer.data import load_annotations
    from dynrefer.data.dataset import RegionDataset
    from dynrefer.data.synthetic import generate

    m = generate(str(tmp_path), seed=11, splits={"train": 3})
    ann = load_annotations(os.path.join(str(tmp_path), m["files"]["train"]["caption"]))
    plain = RegionDataset(ann, None, control="all")
    with_phrases = RegionDataset(ann, None, control="all", control_phrases=True)
    rec = ann[0]
    words = plain._control(rec, None)[:-1].split(",")
    extra = [p for p in caption_phrases(rec.caption) if p not in words]
    assert extra, rec.caption
    assert with_phrases._control(rec, None) == ",".join(dict.fromkeys(words + extra)) + "|"


def test_lavis_dataset_build_info_key(tmp_path):
    pytest.importorskip("textblob")
    pytest.importorskip("torch")
    from dynrefer.data.synthetic import generate
    from dynrefer.lavis.builder import dataset_class

    m = generate(str(tmp_path), seed=11, splits={"train": 2})
    path = os.path.join(str(tmp_path), m["files"]["train"]["caption"])
    cls = dataset_class()
    on = cls(None, None, "train", annotations={"train": [path]}, control_phrases=True)
    off = cls(None, None, "train", annotations={"train": [path]})
    assert on.parts[0].control_phrases and not off.parts[0].control_phrases
    ev = cls(None, None, "val", annotations={"val": [path]}, control_phrases=True)
    assert not ev.parts[0].control_phrases   # evaluation controls come from predicted tags
