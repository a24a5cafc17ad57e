"""Loading the released weights by configuration, as LAVIS does, and `dynrefer convert`.

Each test writes small official-format files (tiny preset shapes, the official key names): LAVIS's eva_vit_g.pth (the
ViT's own keys), a BLIP-2 checkpoint ``{"model": ...}`` (no ViT; the Q-Former's text parts and position ids, which
the model does not have), EVA-CLIP weights (``text.*`` next to ``visual.*`` and a top-level ``logit_scale``), a
Hugging Face T5 directory and a LAVIS training checkpoint ``{"model", "optimizer", "config", "epoch"}`` holding the
trainable tensors only. The full-size layout check compares the official preset, built on the meta device, with the
official model's state-dict layout (tests/official_dynrefer_t5_layout.json).
"""
import json
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")
pytest.importorskip("open_clip", reason="the EVA-CLIP tokenizer reads open_clip's BPE vocabulary")
pytest.importorskip("ftfy")

from dynrefer.cli import main  # noqa: E402
from dynrefer.model import DynReferConfig, build_dynrefer  # noqa: E402
from dynrefer.model.config import TINY_EVA_CLIP_TEXT  # noqa: E402
from dynrefer.model.loading import LoadReport, group_keys, load_state  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**over):
    over["text_encoder"] = dict(TINY_EVA_CLIP_TEXT, **over.get("text_encoder", {}))
    return DynReferConfig.from_preset("tiny", train_llm=False, **over)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small synthetic data folder (images, official-format annotations, vocabularies)."""
    from dynrefer.data.synthetic import generate

    out = tmp_path_factory.mktemp("data")
    generate(str(out), seed=3, splits={"train": 2, "val": 2})
    return out


@pytest.fixture(scope="module")
def vocab(data):
    from dynrefer.app.bundle import read_vocab

    return read_vocab(str(data))


def _perturb(sd, gen, scale=0.1):
    return {k: (v + scale * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v
            for k, v in sd.items()}


@pytest.fixture(scope="module")
def official(tmp_path_factory, vocab):
    """(source model, folder of official-format files, the BLIP-2 Q-Former tensors) made from a random model."""
    from dynrefer.model.loading import save_t5_directory

    tags, classes, attributes = vocab
    src = build_dynrefer(tiny_cfg(), tag_list=tags, classes=classes, attributes=attributes, seed=11)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():   # non-trivial values everywhere (LayerNorms, biases, zero-initialised offsets)
        for p in src.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    # the text embeddings made by the perturbed text tower, as a model built on it computes them
    src2 = build_dynrefer(tiny_cfg(), tag_list=tags, classes=classes, attributes=attributes, seed=12,
                          text_encoder=src.text_encoder)
    src2.load_state_dict({k: v for k, v in src.state_dict().items() if not k.endswith("_embeds")}, strict=False)
    assert not torch.equal(src2.clip_embeds, src.clip_embeds)
    src = src2.eval()
    d = tmp_path_factory.mktemp("official")
    sd = src.state_dict()
    torch.save({k[len("visual_encoder."):]: v.clone() for k, v in sd.items() if k.startswith("visual_encoder.")},
               d / "eva_vit_g.pth")
    blip2 = {k: v.clone() for k, v in sd.items() if k.startswith(("ln_vision.", "query_tokens", "Qformer.", "t5_proj."))}
    # the Q-Former and t5_proj differ from the DynRefer checkpoint's, which is loaded later and overrides them
    blip2.update(_perturb({k: v for k, v in blip2.items() if k.startswith(("Qformer.", "t5_proj."))}, gen))
    blip2["Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    blip2["Qformer.bert.embeddings.word_embeddings.weight"] = torch.randn(30523, 32, generator=gen)
    blip2["Qformer.cls.predictions.bias"] = torch.randn(30523, generator=gen)
    torch.save({"model": blip2}, d / "blip2_pretrained_flant5xl.pth")
    clip = {"text." + k[len("text_encoder."):]: v.clone() for k, v in sd.items()
            if k.startswith("text_encoder.") and not k.endswith("logit_scale")}
    clip["logit_scale"] = torch.tensor(4.6)
    clip["visual.conv1.weight"] = torch.randn(8, 3, 2, 2, generator=gen)
    torch.save(clip, d / "eva_clip_psz14.pt")
    save_t5_directory(src, str(d / "flan-t5-xl"))
    trainable = {n: p.detach().clone() for n, p in src.named_parameters() if src.is_trainable_name(n)}
    assert not any(k.startswith(("visual_encoder.", "t5_model.", "text_encoder.")) for k in trainable)
    torch.save({"model": trainable, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
                "config": {"model": {"arch": "dynrefer_t5", "num_views": 2}}, "scaler": None, "epoch": 4},
               d / "checkpoint_4.pth")
    return src, d, blip2


def _files(d):
    return dict(vit_checkpoint=str(d / "eva_vit_g.pth"), pretrained=str(d / "blip2_pretrained_flant5xl.pth"),
                finetuned=str(d / "checkpoint_4.pth"),
                text_encoder=dict(TINY_EVA_CLIP_TEXT, weights=str(d / "eva_clip_psz14.pt")),
                llm={"path": str(d / "flan-t5-xl")})


def _same_state(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    bad = [k for k in sa if k not in skip and not torch.equal(sa[k].to(sb[k].dtype), sb[k])]
    assert bad == []


# ------------------------------------------------------------------------------------------------ by configuration
def test_config_loads_every_file_in_lavis_order(official, vocab, caplog):
    src, d, blip2 = official
    tags, classes, attributes = vocab
    cfg = DynReferConfig.from_preset("tiny", train_llm=False, **_files(d))
    with caplog.at_level(logging.INFO, logger="dynrefer.model.loading"):
        m = build_dynrefer(cfg, tag_list=tags, classes=classes, attributes=attributes, seed=0)
    reps = {r.key: r for r in m.load_reports if r.key}
    assert list(reps) == ["llm.path", "text_encoder.weights", "vit_checkpoint", "pretrained", "finetuned"]
    assert reps["llm.path"].missing == reps["llm.path"].unexpected == []
    # EVA-CLIP: text.* loaded, visual.* and the top-level logit_scale are not the tower's
    t = reps["text_encoder.weights"]
    assert t.missing == ["logit_scale"] and t.unexpected == [] and t.loaded == len(src.text_encoder.state_dict()) - 1
    v = reps["vit_checkpoint"]
    assert v.missing == v.unexpected == [] and v.loaded == len(src.visual_encoder.state_dict())
    b = reps["pretrained"]
    assert b.missing == [] and b.unexpected == ["Qformer.bert.embeddings.position_ids",
                                                "Qformer.bert.embeddings.word_embeddings.weight",
                                                "Qformer.cls.predictions.bias"]
    f = reps["finetuned"]
    assert f.missing == f.unexpected == []
    assert [r.initialized for r in m.load_reports if not r.key] == [["text_encoder.logit_scale"]]   # in no file
    # every tensor is the source's: the later DynRefer checkpoint overrode the BLIP-2 Q-Former
    _same_state(m, src, skip={"text_encoder.logit_scale"})
    assert not torch.equal(blip2["Qformer.bert.encoder.layer.0.attention.self.query.weight"],
                           m.state_dict()["Qformer.bert.encoder.layer.0.attention.self.query.weight"])
    assert float(m.text_encoder.logit_scale) == pytest.approx(math.log(1 / 0.07))
    # the text embeddings were computed with the loaded tower: equal to the source's
    assert torch.equal(m.clip_embeds, src.clip_embeds) and torch.equal(m.att_embeds, src.att_embeds)
    # frozen towers stay frozen, the official trainable split holds
    assert not any(p.requires_grad for p in m.visual_encoder.parameters())
    assert all(p.requires_grad for p in m.cvem_align.parameters()) and m.query_tokens.requires_grad is False
    # the reports are printed grouped and short
    assert "EVA-CLIP text" in caplog.text and "missing: logit_scale" in caplog.text
    m.eval()
    s = _views(m, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(m.encode_views(*s), src.encode_views(*s))


def _views(model, gen, regions=2):
    S, n = model.config.vision.image_size, model.config.num_views
    views = torch.randn(regions, n, 3, S, S, generator=gen)
    boxes = torch.tensor([[0.0, 0.0, S, S]] * n).expand(regions, n, 4).clone()
    boxes[:, 1:] *= 0.5
    return views, boxes


def test_meta_tensors_are_assigned_existing_ones_copied_into():
    sd = {"weight": torch.randn(3, 4), "bias": torch.randn(3, dtype=torch.float64)}
    with torch.device("meta"):
        meta = torch.nn.Linear(4, 3)
    rep = load_state(meta, sd, ["weight", "bias"], "test")
    assert meta.weight.data_ptr() == sd["weight"].data_ptr()           # the file's tensor itself, no copy
    assert meta.bias.dtype == torch.float32 and torch.equal(meta.bias, sd["bias"].float())   # converted
    assert meta.weight.requires_grad and rep.loaded == 2 and rep.missing == []
    with torch.device("meta"):
        half = torch.nn.Linear(4, 3)
    load_state(half, {"weight": sd["weight"]}, ["weight", "bias"], "test")
    assert not half.weight.is_meta and half.bias.is_meta
    lin = torch.nn.Linear(4, 3)
    w = lin.weight
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    load_state(lin, sd, ["weight", "bias"], "test")
    assert lin.weight is w and w.data_ptr() != sd["weight"].data_ptr() and torch.equal(w, sd["weight"])
    assert opt.param_groups[0]["params"][0] is lin.weight            # an optimizer still holds the parameters


def test_reports_are_grouped():
    keys = [f"blocks.{i}.attn.qkv.weight" for i in range(39)] + ["pos_embed"] + [f"x{i}.w" for i in range(3)]
    assert group_keys(keys) == ["blocks.*.attn.qkv.weight (x39)", "pos_embed", "x0.w", "x1.w", "x2.w"]
    many = [f"a{i}.layer.0.w" for i in range(12)]
    g = group_keys(many, limit=4)
    assert len(g) == 5 and g[-1] == "... and 8 more key patterns"
    rep = LoadReport(missing=["t5_proj.bias"], unexpected=keys, loaded=7, what="BLIP-2", path="/x/b.pth",
                     key="pretrained")
    text = str(rep)
    assert text.splitlines()[0] == "BLIP-2 /x/b.pth (pretrained): loaded 7 tensors; missing 1; unexpected 43"
    assert "blocks.*.attn.qkv.weight (x39)" in text and len(text.splitlines()) == 3


# ------------------------------------------------------------------------------------------------ position embedding
def lavis_interpolate(pos, grid_new):
    """LAVIS's interpolate_pos_embed (eva_vit.py) as documented: the checkpoint's embedding in float, the extra
    (class) token kept, the patch grid reshaped to [1, C, g, g], bicubic (align_corners=False) to the new grid."""
    pos = pos.float()
    extra, grid = pos[:, :1], pos[:, 1:]
    g, C = int(grid.shape[1] ** 0.5), grid.shape[-1]
    grid = grid.reshape(-1, g, g, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_new, grid_new), mode="bicubic", align_corners=False)
    return torch.cat([extra, grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def test_position_embedding_interpolated_as_lavis(official, vocab):
    src, d, _ = official
    tags, classes, attributes = vocab
    pos = torch.load(d / "eva_vit_g.pth", weights_only=True)["pos_embed"]
    assert pos.shape[1] == 1 + 4 * 4                    # tiny: 32 px, patch 8
    cfg = tiny_cfg(vision={"image_size": 48}, vit_checkpoint=str(d / "eva_vit_g.pth"))
    m = build_dynrefer(cfg, tag_list=tags, classes=classes, attributes=attributes, seed=0)
    got = m.visual_encoder.pos_embed.detach()
    want = lavis_interpolate(pos, 6)
    assert got.shape == (1, 37, 64) and torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.equal(got[0, 0], pos[0, 0])              # the class token is kept
    try:   # LAVIS's own function, where LAVIS is installed
        from lavis.models.eva_vit import interpolate_pos_embed as lavis_fn
    except Exception:   # noqa: BLE001 - not installed (CI): the documented semantics above are the reference
        lavis_fn = None
    if lavis_fn is not None:
        ck = {"pos_embed": pos.clone()}
        lavis_fn(_LavisView(m), ck)
        assert torch.allclose(got, ck["pos_embed"], atol=1e-6, rtol=0)
    views, boxes = _views(m, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.isfinite(m.encode_views(views, boxes)).all()


class _LavisView:
    """What LAVIS's interpolate_pos_embed reads of its model: patch_embed.num_patches and pos_embed."""

    def __init__(self, m):
        g = m.config.vision.grid
        self.patch_embed = type("P", (), {"num_patches": g * g})()
        self.pos_embed = m.visual_encoder.pos_embed


# ------------------------------------------------------------------------------------------------ errors
def test_wrong_shape_names_file_key_and_shapes(official, vocab, tmp_path):
    src, d, _ = official
    tags, classes, attributes = vocab
    vit = torch.load(d / "eva_vit_g.pth", weights_only=True)
    vit["blocks.1.attn.qkv.weight"] = torch.zeros(96, 64)
    bad = tmp_path / "eva_vit_g.pth"
    torch.save(vit, bad)
    with pytest.raises(ValueError) as e:
        build_dynrefer(tiny_cfg(vit_checkpoint=str(bad)), tag_list=tags, classes=classes, seed=0)
    msg = str(e.value)
    assert str(bad) in msg and "blocks.1.attn.qkv.weight" in msg and "[96, 64]" in msg and "[192, 64]" in msg
    ck = torch.load(d / "checkpoint_4.pth", weights_only=True)
    ck["model"]["tag_fc.weight"] = torch.zeros(2, 32)
    torch.save(ck, tmp_path / "ck.pth")
    with pytest.raises(ValueError, match=r"ck\.pth: tag_fc\.weight has shape \[2, 32\] in the file but \[1, 32\]"):
        build_dynrefer(tiny_cfg(finetuned=str(tmp_path / "ck.pth")), tag_list=tags, classes=classes, seed=0)


@pytest.mark.parametrize("key", ["vit_checkpoint", "pretrained", "finetuned", "text_encoder.weights", "llm.path"])
def test_absent_files_name_the_key_and_the_path(key, vocab, tmp_path):
    tags, classes, _ = vocab
    path = str(tmp_path / "ckpts" / "absent.pth")
    over = {key.split(".")[0]: {key.split(".")[1]: path}} if "." in key else {key: path}
    cfg = tiny_cfg(**over)
    with pytest.raises(FileNotFoundError) as e:
        build_dynrefer(cfg, tag_list=tags, classes=classes, seed=0)
    assert key in str(e.value) and path in str(e.value)


def test_urls_are_refused_not_downloaded(vocab):
    tags, classes, _ = vocab
    url = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
    with pytest.raises(ValueError, match="local files only"):
        build_dynrefer(tiny_cfg(vit_checkpoint=url), tag_list=tags, classes=classes, seed=0)


def test_not_a_checkpoint(vocab, tmp_path):
    tags, classes, _ = vocab
    (tmp_path / "x.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"pretrained: .*x\.pth could not be read"):
        build_dynrefer(tiny_cfg(pretrained=str(tmp_path / "x.pth")), tag_list=tags, classes=classes, seed=0)


def test_load_weights_false_and_meta_reads_nothing(vocab, tmp_path):
    tags, classes, _ = vocab
    cfg = tiny_cfg(vit_checkpoint=str(tmp_path / "absent.pth"))
    m = build_dynrefer(cfg, tag_list=tags, classes=classes, seed=0, load_weights=False)
    assert m.load_reports == [] and not m.visual_encoder.pos_embed.is_meta
    m = build_dynrefer(cfg, tag_list=tags, classes=classes, device="meta")
    assert all(t.is_meta for t in m.state_dict().values())
    with pytest.raises(ValueError, match="device"):
        build_dynrefer(cfg, tag_list=tags, device="cpu")


# ------------------------------------------------------------------------------------------------ dynrefer convert
def test_convert_then_describe_and_eval(official, data, tmp_path, capsys):
    src, d, _ = official
    bundle = tmp_path / "official.pt"
    assert main(["convert", "--preset", "tiny", "--checkpoint", str(d / "checkpoint_4.pth"), "--vit",
                 str(d / "eva_vit_g.pth"), "--blip2", str(d / "blip2_pretrained_flant5xl.pth"), "--clip-text",
                 str(d / "eva_clip_psz14.pt"), "--t5", str(d / "flan-t5-xl"), "--vocab", str(data), "--out",
                 str(bundle)]) != 0   # the tiny preset's text encoder is a BERT: the EVA-CLIP file does not fit it
    err = capsys.readouterr().err
    assert "dynrefer convert: error:" in err
    cfg = tmp_path / "convert.yaml"
    cfg.write_text("model:\n  preset: tiny\n  train_llm: false\n  text_encoder:\n"
                   + "".join(f"    {k}: {v}\n" for k, v in TINY_EVA_CLIP_TEXT.items()))
    assert main(["convert", "--config", str(cfg), "--checkpoint", str(d / "checkpoint_4.pth"), "--vit",
                 str(d / "eva_vit_g.pth"), "--blip2", str(d / "blip2_pretrained_flant5xl.pth"), "--clip-text",
                 str(d / "eva_clip_psz14.pt"), "--t5", str(d / "flan-t5-xl"), "--vocab", str(data), "--out",
                 str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "BLIP-2" in out and "unexpected: Qformer.bert.embeddings.position_ids" in out and "model bundle" in out
    from dynrefer.app.bundle import load_bundle, load_bundle_model

    b = load_bundle(str(bundle))
    assert b["sha256"] and b["config"]["vit_checkpoint"] is None and b["config"]["text_encoder"]["weights"] is None
    assert b["config"]["llm"]["path"] == str(d / "flan-t5-xl")          # the T5 is reloaded from its directory
    assert not any(k.startswith("t5_model.") for k in b["model"])
    _, m = load_bundle_model(str(bundle))
    _same_state(m, src, skip={"text_encoder.logit_scale"})
    # describe and eval from the bundle, through the command
    img = sorted((data / "images").glob("val_*.png"))[0]
    assert main(["describe", str(img), "--box", "10,10,80,90", "--checkpoint", str(bundle), "--out",
                 str(tmp_path / "desc")]) == 0
    out = capsys.readouterr().out
    assert "caption " in out and "category " in out and os.path.isfile(tmp_path / "desc_0.png")
    ev = tmp_path / "eval.yaml"
    ev.write_text(f"model:\n  preset: tiny\ndatasets:\n  root: {data}\nrun:\n  output_dir: {tmp_path / 'run'}\n")
    assert main(["eval", str(ev), "--checkpoint", str(bundle), "--split", "val", "--out",
                 str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "CIDEr" in out and "accuracy" in out
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["regions"] and all("caption" in r for r in res["regions"])


def test_convert_errors(official, data, tmp_path, capsys):
    src, d, _ = official
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  preset: tiny\n  train_llm: false\n  text_encoder:\n"
                   + "".join(f"    {k}: {v}\n" for k, v in TINY_EVA_CLIP_TEXT.items()))
    base = ["convert", "--config", str(cfg), "--vocab", str(data), "--out", str(tmp_path / "b.pt")]
    # no ViT file: named with its config key
    assert main(base + ["--t5", str(d / "flan-t5-xl"), "--clip-text", str(d / "eva_clip_psz14.pt")]) == 2
    assert "vit_checkpoint" in capsys.readouterr().err
    # an absent file: the key and the path
    missing = str(tmp_path / "nowhere" / "vg1.2_5e.pth")
    assert main(base + ["--vit", str(d / "eva_vit_g.pth"), "--t5", str(d / "flan-t5-xl"), "--clip-text",
                        str(d / "eva_clip_psz14.pt"), "--checkpoint", missing]) == 2
    err = capsys.readouterr().err
    assert "finetuned" in err and missing in err
    assert not os.path.exists(tmp_path / "b.pt")


# ------------------------------------------------------------------------------------------------ full size
def test_official_preset_matches_the_official_layout_at_full_size(shared_data):
    """The official preset on the meta device has the official model's state-dict layout, key for key and shape
    for shape (1575 keys; the Q-Former's position-id buffer, not a weight, is the one key the model does not keep).

    The layout file was derived on the meta device from the official classes: LAVIS 1.0.2 (eva_vit
    VisionTransformer as create_eva_vit_g builds it; Qformer BertLMHeadModel on bert-base's configuration with
    Blip2T5's removals; modeling_t5 T5ForConditionalGeneration with google/flan-t5-xl's configuration) and
    callsys/DynRefer commit 2200c5b11b8a894c4dcaddca2ce70a61feaafaee (dynrefer/models/dynrefer_t5.py DynReferT5:
    CustomDCNv4, cvem_mlp, cem_memory, the EVA-CLIP TextTransformer, the tag/attr BertModels of
    tag_decoder_bert_config.json, the embeddings of the RAM tag list (4585), the OVAD prompts (474) and the COCO
    classes (80)), following Blip2T5.__init__ and DynReferT5.__init__."""
    with open(os.path.join(HERE, "official_dynrefer_t5_layout.json"), encoding="utf-8") as f:
        layout = {k: tuple(s) for k, s in json.load(f)}
    assert len(layout) == 1575
    voc = os.path.join(shared_data, "vocab")
    tags = [t.strip() for t in open(os.path.join(voc, "ram_tags.txt"), encoding="utf-8") if t.strip()]
    classes = json.load(open(os.path.join(voc, "coco_classes.json"), encoding="utf-8"))
    attributes = json.load(open(os.path.join(voc, "ovad_attributes.json"), encoding="utf-8"))
    m = build_dynrefer("official", tag_list=tags, classes=classes, attributes=attributes, device="meta")
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert all(v.is_meta for v in m.state_dict().values())
    expected = {k: s for k, s in layout.items() if not k.endswith("position_ids")}
    assert len(expected) == 1574
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert [(k, ours[k], s) for k, s in expected.items() if ours[k] != s] == []
    assert sum(math.prod(s) for s in ours.values()) > 4.0e9   # ViT-g + FlanT5-XL + Q-Former + text tower


def test_bundle_of_a_model_loaded_by_config_needs_no_files(official, vocab, tmp_path, monkeypatch):
    """A bundle holds the weights: the files its config names are not read again (here they are gone), and its
    text embeddings are not computed again."""
    import shutil

    from dynrefer.app.bundle import load_bundle_model, save_bundle

    src, d, _ = official
    tags, classes, attributes = vocab
    vit = tmp_path / "eva_vit_g.pth"
    shutil.copy(d / "eva_vit_g.pth", vit)
    m = build_dynrefer(tiny_cfg(vit_checkpoint=str(vit)), tag_list=tags, classes=classes, attributes=attributes,
                       seed=4)
    save_bundle(m, str(tmp_path / "b.pt"), [], tags, classes, attributes, {"num_views": 2, "size": 32})
    vit.unlink()
    from dynrefer.model.clip_text import EVACLIPTextEncoder

    def no_encoding(self, texts, batch_size=256):
        raise AssertionError("a bundle's text embeddings were computed again")

    monkeypatch.setattr(EVACLIPTextEncoder, "encode", no_encoding)
    b, m2 = load_bundle_model(str(tmp_path / "b.pt"))
    assert b["config"]["vit_checkpoint"] == str(vit)
    assert [r.what for r in m2.load_reports] == ["text encoder", "state dict"]   # the text tower goes first
    assert not any(r.missing or r.unexpected or r.initialized for r in m2.load_reports)
    _same_state(m2, m)
