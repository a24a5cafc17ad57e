"""dynrefer.model: visual MACs and parameter split, the text-embedding cache, the DDP gather, tokenizers."""
import os

import pytest
import torch

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")

from _model_data import CAPTIONS, build_tiny
from dynrefer.model import DynReferConfig
from dynrefer.model.flops import flops_report, parameter_split, visual_macs, vit_macs


def test_macs_match_design_section_8():
    cfg = DynReferConfig.from_preset("official")
    layer = vit_macs(cfg.vision)["layer"]
    assert abs(sum(layer.values()) / 1e9 - 6.67) < 0.01
    for part, g in (("qkv", 1.53), ("proj", 0.51), ("mlp", 4.45), ("attention", 0.19)):
        assert abs(layer[part] / 1e9 - g) < 0.01, part
    for n, g in ((1, 268), (2, 530), (3, 792)):
        assert abs(visual_macs(cfg, num_views=n)["total"] / 1e9 - g) < 1.0, n
    assert abs(visual_macs(cfg, 1, 336)["total"] / 1e9 - 618) < 1.0
    assert abs(visual_macs(cfg, 1, 448)["total"] / 1e9 - 1146) < 1.0
    assert abs(vit_macs(cfg.vision)["total"] * 3 / 1e9 - 781) < 1.0
    text = flops_report(cfg)
    assert "791.66" in text and "6.67 GMACs" in text and "trainable" in text


@pytest.mark.parametrize("rtc_head", ["bilinear", "cross"])
def test_parameter_split_counts_the_built_model(rtc_head):
    m = build_tiny(seed=0, train_llm=False, rtc_head=rtc_head)
    split = parameter_split(m.config)
    count = lambda pre: sum(p.numel() for n, p in m.named_parameters() if n.startswith(pre))  # noqa: E731
    assert split["visual_encoder"] == count("visual_encoder") + count("ln_vision")
    for key in ("cvem", "Qformer", "query_tokens", "t5_proj", "cem", "tag", "attr", "t5_model", "text_encoder"):
        assert split[key] == count(key), key
    assert split["trainable"] == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert split["trainable"] + split["frozen"] == sum(p.numel() for p in m.parameters())
    off = parameter_split(DynReferConfig.from_preset("official"))
    assert 0.98e9 < off["visual_encoder"] < 0.99e9 and 2.7e9 < off["t5_model"] < 2.9e9


def test_text_embedding_cache(tmp_path, monkeypatch):
    m = build_tiny(seed=0)
    enc = m.text_encoder
    texts = ["the red car", "a dog", "the red car"]
    a = enc.embed(texts, cache_dir=str(tmp_path))
    assert a.shape == (3, enc.width) and torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert len(os.listdir(tmp_path)) == 1
    monkeypatch.setattr(enc, "encode", lambda *_: (_ for _ in ()).throw(AssertionError("not cached")))
    assert torch.equal(enc.embed(texts, cache_dir=str(tmp_path)), a)
    monkeypatch.undo()
    enc.embed(["other"], cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2
    assert torch.allclose(enc.encode_memo(["a dog", "the red car"]), a[[1, 0]], atol=1e-6)
    assert all(p.requires_grad is False for p in enc.parameters())


def test_t5_tokenizer_specials_and_control_sentence():
    m = build_tiny(seed=0)
    tok = m.t5_tokenizer
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    ids = tok("car,red|").input_ids
    assert ids[-1] == 1 and tok.unk_token_id not in ids and len(ids) == 5
    assert tok.decode(tok(CAPTIONS[2]).input_ids, skip_special_tokens=True) == CAPTIONS[2]


def _gather_worker(rank, path, out_path):
    import torch.distributed as dist

    from dynrefer.model import _dist
    from dynrefer.model.losses import pairwise_sigmoid_loss

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    torch.manual_seed(0)
    full = torch.randn(4, 3, dtype=torch.float64)
    local = full[2 * rank:2 * rank + 2].clone().requires_grad_()
    gathered = _dist.all_gather_with_grad(local)
    logits = local @ gathered.t()
    pairwise_sigmoid_loss(logits, _dist.rank() * 2).backward()
    torch.save({"gathered": gathered.detach(), "grad": local.grad}, f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_all_gather_with_grad_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    from dynrefer.model import _dist
    from dynrefer.model.losses import pairwise_sigmoid_loss

    mp.spawn(_gather_worker, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2, join=True)
    torch.manual_seed(0)
    full = torch.randn(4, 3, dtype=torch.float64).requires_grad_()
    assert _dist.all_gather_with_grad(full) is full  # no process group: identity
    # the sum of both processes' losses, computed in one process
    total = sum(pairwise_sigmoid_loss(full[2 * r:2 * r + 2] @ full.t(), 2 * r) for r in range(2))
    total.backward()
    for r in range(2):
        res = torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True)
        assert torch.equal(res["gathered"], full.detach())
        assert torch.allclose(res["grad"], full.grad[2 * r:2 * r + 2], rtol=1e-12)


@pytest.mark.parametrize("name", ["tiny", "medium"])
def test_flops_report_runs_for_presets(name):
    text = flops_report(name)
    assert "per region" in text and "parameters (M)" in text


def test_tiny_model_on_the_real_vocabularies(shared_data):
    """RAM's 4585 tags, COCO's 80 classes and OVAD's 117 attributes through the locally built tokenizers, the
    frozen text encoder and every head."""
    import json

    from dynrefer.model import build_dynrefer
    from _model_data import batch

    vocab = os.path.join(shared_data, "vocab")
    tags = [t.strip() for t in open(os.path.join(vocab, "ram_tags.txt"), encoding="utf-8") if t.strip()]
    classes = json.load(open(os.path.join(vocab, "coco_classes.json")))
    attributes = json.load(open(os.path.join(vocab, "ovad_attributes.json")))
    assert (len(tags), len(classes), len(attributes)) == (4585, 80, 117)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = build_dynrefer("tiny", texts=CAPTIONS, tag_list=tags, classes=classes, attributes=attributes, seed=0)
        unk = m.t5_tokenizer.unk_token_id
        assert all(unk not in m.t5_tokenizer(t).input_ids for t in tags[:500] + classes + CAPTIONS)
        assert m.clip_embeds.shape[0] == 4585 and m.ov_embeds.shape[0] == 80
        assert len(m.att_len_synonyms) == 117 and m.att_embeds.shape[0] == sum(m.att_len_synonyms)
        s = batch(m, torch.Generator().manual_seed(0), regions=2)
        s["tags"] = torch.zeros(2, 2 * len(tags))
        s["tags"][0, [3, 4585 + 7]] = 1
        out = m(s)
        assert torch.isfinite(out["loss"])
        res = m.describe_views(s["views"], s["boxes"], tasks=("category", "attribute"))
        assert res[0]["category"] in classes and len(res[0]["attributes"]) == 117
    finally:
        torch.set_num_threads(n)


def test_attribute_prompts_are_the_official_set(shared_data):
    """OVAD attribute records give the official 474 prompts (the same strings, in the same order and groups, as
    dynrefer.eval.ovad.ovad_prompts); names without is/has keep one "the {syn} {type}" prompt per synonym."""
    import json

    from dynrefer.eval.ovad import ovad_prompts
    from dynrefer.model.dynrefer import attribute_prompts

    attributes = json.load(open(os.path.join(shared_data, "vocab", "ovad_attributes.json")))
    prompts = attribute_prompts(attributes)
    texts, sizes = ovad_prompts(attributes)
    assert [p for ps in prompts for p in ps] == texts and [len(p) for p in prompts] == sizes
    assert len(texts) == 474 and len(prompts) == 117
    by_name = {a["name"]: p for a, p in zip(attributes, prompts)}
    assert by_name["cleanliness:clean/neat"] == ["the clean", "the  is clean", "the neat", "the  is neat"]
    young = next(p for n, p in by_name.items() if n.endswith(":young/baby"))
    assert len(young) == 2 * 8 and "the kid" in young and "the  is toddler" in young
    has = next(a for a in attributes if a["is_has_att"] == "has" and " tone" in a["name"])
    syn = has["name"].split(":")[1].split("/")[0]
    typ = has["name"].split(":")[0].replace(" tone", "")
    assert by_name[has["name"]][:2] == [f"the {syn} {typ}", f"the  has {syn} {typ}"]
    assert attribute_prompts(["color:red/reddish", {"name": "age:old"}, "shiny", ["a", "b"]]) == [
        ["the red color", "the reddish color"], ["the old age"], ["the shiny"], ["a", "b"]]
