"""The CLIP BPE tokenizer against open_clip's (the reference implementation of the same algorithm)."""
import json
import os
import random

import pytest
import torch

pytest.importorskip("ftfy")
pytest.importorskip("regex")
open_clip = pytest.importorskip("open_clip")

from dynrefer.model.clip_tokenizer import CLIPTokenizer, bytes_to_unicode, clip_bpe_path  # noqa: E402

_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r\x0b\x0c\xa0\u2002\u2009\u3000\u2028",
    ".,;:!?'\"()[]{}<>/\\|-_+=*&^%$#@~`",
    "éèêëàâäôöûüçñßøåæœÉÀÇÑØ",
    "αβγδεζηθλμπσωΩΣ", "абвгдежзийклмнопрстуфхцчшщыэюяЖЩ",
    "日本語中文字漢字かなカタナ한국어",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي", "אבגדהוזחטיכלמנסעפצקרשת",
    "😀😂🤖🐱🐶🍕🚗❤️👍🏽👨‍👩‍👧🇫🇷✨🔥",
    "\u200b\u200d\ufeff\u00ad\u0301\u0308",   # zero-width, soft hyphen, combining marks
    "’‘“”–—…•©®™°±×÷¼½€£¥",
]
_ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&nbsp;", "&amp;amp;", "&#x27;", "&eacute;", "&hellip;",
             "&#128512;", "&amp;lt;b&amp;gt;", "&copy;", "&bogus;", "&#0;", "&#x85;"]
_WORDS = ["a", "photo", "of", "the", "man", "wearing", "red", "shirt", "don't", "it's", "we're", "I'll", "they've",
          "CAFÉ", "naïve", "coöperate", "façade", "mojibake cafÃ©", "SchrÃ¶dinger", "l33t", "3.14159", "x2",
          "hello-world", "e-mail", "U.S.A.", "#hashtag", "@user", "http://example.com/a?b=c&d=e", "<b>", "|x|"]


def _strings(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:    # random characters from a few pools
            pools = rng.sample(_POOLS, rng.randint(1, 4))
            out.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40))))
        elif kind == 1:  # words, entities and emoji
            parts = [rng.choice(_WORDS + _ENTITIES + list(_POOLS[10])) for _ in range(rng.randint(1, 12))]
            out.append(rng.choice([" ", "", "  ", "\n", ", "]).join(parts))
        elif kind == 2:  # arbitrary code points (no surrogates)
            cps = [rng.choice([rng.randint(1, 0x2FF), rng.randint(0x300, 0xFFFF), rng.randint(0x10000, 0x1FAFF)])
                   for _ in range(rng.randint(1, 25))]
            out.append("".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF))
        else:            # long texts: past the 77-token context
            out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(30, 200))))
    return out + ["", " ", "\n\t", "a", "A", "'s", "'S", "x" * 1000, "🤖" * 100, "supercalifragilistic" * 20]


def _real_vocab(shared_data):
    d = os.path.join(shared_data, "vocab")
    with open(os.path.join(d, "ram_tags.txt"), encoding="utf-8") as f:
        tags = [t.strip() for t in f if t.strip()]
    with open(os.path.join(d, "coco_classes.json"), encoding="utf-8") as f:
        classes = json.load(f)
    with open(os.path.join(d, "ovad_attributes.json"), encoding="utf-8") as f:
        attributes = json.load(f)
    from dynrefer.eval.ovad import ovad_prompts

    return tags, [f"the {c.lower()}" for c in classes], ovad_prompts(attributes)[0]


@pytest.fixture(scope="module")
def toks():
    return CLIPTokenizer(), open_clip.tokenizer.SimpleTokenizer()


def test_vocabulary_layout(toks):
    ours, ref = toks
    assert len(ours) == ours.vocab_size == 49408
    assert (ours.sot_token_id, ours.eot_token_id) == (49406, 49407)
    assert (ref.sot_token_id, ref.eot_token_id) == (49406, 49407)
    # same id for every symbol (open_clip names its two specials differently)
    ref_symbols = sorted(ref.encoder, key=ref.encoder.get)
    assert ours.decoder[:-2] == ref_symbols[:-2]
    assert bytes_to_unicode() == open_clip.tokenizer.bytes_to_unicode()
    assert ours.bpe_path == clip_bpe_path() and os.path.isfile(ours.bpe_path)


def test_encode_matches_open_clip_on_random_strings(toks):
    ours, ref = toks
    strings = _strings(3000)
    bad = [s for s in strings if ours.encode(s) != ref.encode(s)]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]!r}"


def test_batches_match_open_clip_tokenize(toks):
    ours, _ = toks
    strings = _strings(1200, seed=1)
    got = ours(strings)
    assert got.dtype == torch.long and got.shape == (len(strings), 77)
    assert torch.equal(got, open_clip.tokenize(strings))
    assert torch.equal(ours(strings, context_length=16), open_clip.tokenize(strings, context_length=16))
    assert torch.equal(ours("a cat"), open_clip.tokenize(["a cat"]))


def test_truncation_keeps_eot(toks):
    ours, _ = toks
    row = ours(["dog " * 200])[0]
    assert row[0] == 49406 and row[-1] == 49407 and (row != 0).all()
    assert (row[1:-1] == ours.encode("dog")[0]).all()
    row = ours(["dog " * 75])[0]  # exactly 77 with SOT and EOT: nothing cut
    assert row[-1] == 49407 and row[-2] == ours.encode("dog")[0]
    short = ours(["dog"])[0]
    assert short[:3].tolist() == [49406, ours.encode("dog")[0], 49407] and (short[3:] == 0).all()


def test_special_markers_in_text(toks):
    # EVA-CLIP's tokenizer (OpenAI's) recognises its own special names in the text (open_clip spells them
    # <start_of_text> / <end_of_text>, which is why the comparisons above leave them out).
    ours, _ = toks
    assert ours.encode("a <|endoftext|> b") == ours.encode("a") + [49407] + ours.encode("b")
    assert ours.encode("<|StartOfText|>") == [49406]
    assert ours.decode(ours(["a cat"])[0, :4].tolist()) == "<|startoftext|>a cat <|endoftext|>"


def test_decode_round_trip(toks):
    ours, ref = toks
    for s in _strings(300, seed=2):
        ids = ours.encode(s)
        assert ours.decode(ids) == ref.decode(ids)


def test_real_vocabularies(toks, shared_data):
    ours, ref = toks
    tags, class_prompts, att_prompts = _real_vocab(shared_data)
    assert len(tags) == 4585 and len(class_prompts) == 80 and len(att_prompts) == 474
    texts = tags + class_prompts + att_prompts
    for t in texts:
        assert ours.encode(t) == ref.encode(t), t
    assert torch.equal(ours(texts), open_clip.tokenize(texts))


def test_missing_vocabulary_file_is_named(tmp_path):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        CLIPTokenizer(bpe_path=str(missing))
