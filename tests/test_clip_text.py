"""EVA-CLIP's text tower: the official layout, its forward against open_clip's TextTransformer, the encoder the
model uses, the weight loader, and a model built with it."""
import os

import pytest
import torch

pytest.importorskip("ftfy")
pytest.importorskip("regex")
open_clip = pytest.importorskip("open_clip")

from dynrefer.model.clip_text import (CLIPTextTransformer, EVACLIPTextEncoder, eva_clip_text_keys,  # noqa: E402
                                      load_clip_text_weights)
from dynrefer.model.config import EVA_CLIP_TEXT, TINY_EVA_CLIP_TEXT, DynReferConfig, TextEncoderConfig  # noqa: E402
from dynrefer.nn import backend  # noqa: E402

# The official text tower: callsys/DynRefer, commit 2200c5b11b8a894c4dcaddca2ce70a61feaafaee,
# dynrefer/models/eva_clip/eva_model.py (class TextTransformer, with Transformer / ResidualAttentionBlock), built by
# dynrefer/models/dynrefer_t5.py (build_clip_text_encoder) with vocab_size 49408, width 768, layers 12, heads 12,
# context_length 77, embed_dim 1024, act_layer nn.GELU, and kept as the model's `text_encoder`. Its state dict in
# module order (the attention is nn.MultiheadAttention; the MLP's `ln` slot is an Identity without parameters;
# the causal mask `attn_mask` is a non-persistent buffer):
_BLOCK = [("ln_1.weight", (768,)), ("ln_1.bias", (768,)), ("attn.in_proj_weight", (2304, 768)),
          ("attn.in_proj_bias", (2304,)), ("attn.out_proj.weight", (768, 768)), ("attn.out_proj.bias", (768,)),
          ("ln_2.weight", (768,)), ("ln_2.bias", (768,)), ("mlp.c_fc.weight", (3072, 768)),
          ("mlp.c_fc.bias", (3072,)), ("mlp.c_proj.weight", (768, 3072)), ("mlp.c_proj.bias", (768,))]
OFFICIAL_LAYOUT = ([("positional_embedding", (77, 768)), ("text_projection", (768, 1024)), ("logit_scale", ())]
                   + [(f"transformer.resblocks.{i}.{k}", s) for i in range(12) for k, s in _BLOCK]
                   + [("token_embedding.weight", (49408, 768)), ("ln_final.weight", (768,)),
                      ("ln_final.bias", (768,))])


def _tiny_tower(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(vocab_size=49408, width=64, layers=2, heads=4, context_length=77, embed_dim=48)
    args.update(kw)
    t = CLIPTextTransformer(**args)
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for n, p in t.named_parameters():
            if n.endswith("bias") or ".ln_" in n or "ln_final" in n:
                p.add_(0.1 * torch.randn_like(p))
    return t.eval()


@pytest.fixture(scope="module")
def tokenizer():
    from dynrefer.model.clip_tokenizer import CLIPTokenizer

    return CLIPTokenizer()


TEXTS = ["a photo of a cat", "the red car parked on the street", "x", "", "the person has long hair",
         "Café & crème brûlée 😀", "dog " * 120]


def test_full_size_layout_on_meta():
    with torch.device("meta"):
        tower = CLIPTextTransformer(**{k: v for k, v in dict(
            vocab_size=49408, width=768, layers=12, heads=12, context_length=77, embed_dim=1024).items()})
    got = [(k, tuple(v.shape)) for k, v in tower.state_dict().items()]
    assert got == OFFICIAL_LAYOUT
    assert [k for k, _ in OFFICIAL_LAYOUT] == eva_clip_text_keys(12)
    assert [n for n, _ in tower.named_buffers()] == ["attn_mask"] and tuple(tower.attn_mask.shape) == (77, 77)
    assert "attn_mask" not in tower.state_dict()
    # the config preset builds the same tower
    with torch.device("meta"):
        enc_cfg = DynReferConfig.from_preset("official").text_encoder
        assert enc_cfg == TextEncoderConfig(**EVA_CLIP_TEXT) and enc_cfg.embed_width == 1024
        t2 = CLIPTextTransformer(enc_cfg.vocab_size, enc_cfg.hidden_size, enc_cfg.num_layers, enc_cfg.num_heads,
                                 enc_cfg.max_length, enc_cfg.embed_dim, enc_cfg.intermediate_size)
    assert [(k, tuple(v.shape)) for k, v in t2.state_dict().items()] == OFFICIAL_LAYOUT
    mask = CLIPTextTransformer(vocab_size=10, width=8, layers=1, heads=2, context_length=5, embed_dim=4).attn_mask
    assert torch.equal(torch.isinf(mask), torch.ones(5, 5).triu(1).bool()) and (mask.tril() == 0).all()


def _open_clip_tower(ours):
    w = ours.transformer.width
    ref = open_clip.transformer.TextTransformer(
        context_length=ours.context_length, vocab_size=ours.vocab_size, width=w,
        heads=ours.transformer.resblocks[0].attn.num_heads, layers=ours.transformer.layers,
        output_dim=ours.embed_dim, proj_type="linear", proj_bias=False, act_layer=torch.nn.GELU)
    sd = {k: v for k, v in ours.state_dict().items() if k != "logit_scale"}  # open_clip keeps it on the CLIP model
    ref.load_state_dict(sd, strict=True)
    return ref.eval()


@pytest.mark.parametrize("name", ["dynrefer", "peer"])
def test_forward_matches_open_clip(tokenizer, name):
    ours = _tiny_tower()
    ref = _open_clip_tower(ours)
    ids = tokenizer(TEXTS)
    with torch.no_grad(), backend.use_backend(name):
        got = ours(ids)
        feats = ours.forward_features(ids)
        tokens = ours.forward_tokens(ids)
    with torch.no_grad():
        want = ref(ids)
    assert got.shape == (len(TEXTS), 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    eot = ids.argmax(-1)
    torch.testing.assert_close(tokens[torch.arange(len(TEXTS)), eot], got, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats @ ours.text_projection, got, rtol=1e-5, atol=1e-5)


def test_forward_is_causal_and_pools_eot(tokenizer):
    ours = _tiny_tower(seed=1)
    ids = tokenizer(["a photo of a cat", "a photo of a dog"])
    with torch.no_grad():
        h = ours.forward_tokens(ids)
        out = ours(ids)
        short = ours(ids[:, :10])  # padding after EOT never reaches EOT (causal mask)
    # "<sot> a photo of a" is shared; from "cat" / "dog" on the rows differ
    torch.testing.assert_close(h[0, :5], h[1, :5])
    assert not torch.allclose(h[0, 5], h[1, 5])
    torch.testing.assert_close(short, out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        ours(torch.zeros(1, 78, dtype=torch.long))


def test_quick_gelu_variant_matches_open_clip(tokenizer):
    ours = _tiny_tower(quick_gelu=True)
    ref = open_clip.transformer.TextTransformer(context_length=77, vocab_size=49408, width=64, heads=4, layers=2,
                                                output_dim=48, act_layer=open_clip.transformer.QuickGELU)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "logit_scale"})
    ids = tokenizer(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref.eval()(ids), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ encoder
def _tiny_encoder(**kw):
    torch.manual_seed(0)
    return EVACLIPTextEncoder(TextEncoderConfig(**{**TINY_EVA_CLIP_TEXT, **kw}))


def test_encoder_embeds_as_the_official_encode_text(tokenizer, tmp_path):
    enc = _tiny_encoder()
    assert enc.width == 48 and enc.kind == "eva_clip" and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    texts = ["car", "the red car", "car"]
    got = enc.encode(texts)
    with torch.no_grad():
        want = enc(tokenizer(texts))  # unnormalised projected EOT features
    assert torch.equal(got, want) and got.shape == (3, 48)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(3))
    assert torch.equal(enc.encode(texts, batch_size=1), got)
    assert torch.equal(enc.encode_memo(texts), got)
    a = enc.embed(texts, cache_dir=str(tmp_path))
    assert torch.equal(a, got) and len(os.listdir(tmp_path)) == 1
    assert enc.encode([]).shape == (0, 48)


def test_model_with_eva_clip_text_tower():
    from _model_data import ATTRIBUTES, CLASSES, TAGS, batch, build_tiny

    m = build_tiny(seed=0, text_encoder=TINY_EVA_CLIP_TEXT)
    assert isinstance(m.text_encoder, EVACLIPTextEncoder)
    H = m.config.head.hidden_size
    assert tuple(m.clip_embeds.shape) == (len(TAGS), 48) and tuple(m.ov_embeds.shape) == (len(CLASSES), 48)
    assert m.att_embeds.shape[1] == 48 and m.att_embeds.shape[0] == sum(m.att_len_synonyms)
    assert tuple(m.tag_text_proj.weight.shape) == (H, 48) and tuple(m.attr_text_proj.weight.shape) == (H, 48)
    sd = m.state_dict()
    assert tuple(sd["text_encoder.token_embedding.weight"].shape) == (49408, 32)
    assert "text_encoder.transformer.resblocks.0.attn.in_proj_weight" in sd and "text_encoder.logit_scale" in sd
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith("text_encoder."))
    torch.testing.assert_close(m.clip_embeds, m.text_encoder.encode(TAGS))
    torch.testing.assert_close(m.ov_embeds, m.text_encoder.encode([f"the {c}" for c in CLASSES]))
    g = torch.Generator().manual_seed(0)
    out = m(batch(m, g))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert len(ATTRIBUTES) == len(m.att_len_synonyms)


def test_config_switch():
    assert DynReferConfig.from_preset("tiny").text_encoder.kind == "bert"
    assert DynReferConfig.from_preset("medium").text_encoder.kind == "bert"
    off = DynReferConfig.from_preset("official")
    assert off.text_encoder.kind == "eva_clip" and DynReferConfig.from_dict(off.to_dict()) == off
    with pytest.raises(ValueError, match="kind"):
        TextEncoderConfig(kind="t5")
    with pytest.raises(ValueError, match="49408"):
        TextEncoderConfig(kind="eva_clip", vocab_size=1000)
    from dynrefer.model.flops import parameter_split

    with torch.device("meta"):
        n = sum(p.numel() for p in CLIPTextTransformer().parameters())
    assert parameter_split(off)["text_encoder"] == n and 123e6 < n < 124e6


# ------------------------------------------------------------------------------------------------ loading
def _eva_clip_checkpoint(tower, path, wrap=None, prefix="text."):
    sd = {prefix + k: v.clone() for k, v in tower.state_dict().items()}
    sd["visual.cls_token"] = torch.zeros(1, 1, 8)  # the image tower's entries are ignored
    torch.save({wrap: sd} if wrap else sd, path)
    return sd


@pytest.mark.parametrize("wrap,prefix", [(None, "text."), ("state_dict", "text."), (None, "text_encoder."),
                                         ("model", "")])
def test_loader_reads_eva_clip_and_dynrefer_files(tmp_path, wrap, prefix):
    src = _tiny_tower(seed=3)
    path = tmp_path / "eva_clip_psz14.pt"
    _eva_clip_checkpoint(src, path, wrap, prefix)
    enc = _tiny_encoder(intermediate_size=256, hidden_size=64, num_layers=2, num_heads=4)
    before = enc.fingerprint()
    rep = load_clip_text_weights(enc, path)
    assert rep.missing == [] and rep.prefix == prefix and len(rep.loaded) == len(src.state_dict())
    assert rep.unexpected == []
    for k, v in src.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    assert enc.fingerprint() != before


def test_loader_by_configuration_and_reports(tmp_path):
    torch.manual_seed(4)
    src = CLIPTextTransformer(49408, 32, 1, 2, 77, 48, 128)
    sd = {"text." + k: v for k, v in src.state_dict().items() if k != "logit_scale"}
    sd["text.extra_param"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    enc = EVACLIPTextEncoder(TextEncoderConfig(**{**TINY_EVA_CLIP_TEXT, "weights": str(path)}))
    rep = enc.load_report
    assert rep.missing == ["logit_scale"] and rep.unexpected == ["extra_param"]
    assert torch.equal(enc.token_embedding.weight, src.token_embedding.weight)
    with pytest.raises(ValueError, match="missing"):
        load_clip_text_weights(enc, path, strict=True)


def test_loader_errors_name_file_and_key(tmp_path):
    enc = _tiny_encoder()
    bad = {"text." + k: v for k, v in enc.state_dict().items()}
    bad["text.text_projection"] = torch.zeros(32, 1024)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"bad\.pt: text\.text_projection has shape \(32, 1024\).*\(32, 48\)"):
        load_clip_text_weights(enc, path)
    missing = tmp_path / "ckpts" / "eva_clip_psz14.pt"
    with pytest.raises(FileNotFoundError, match=r"ckpts/eva_clip_psz14\.pt"):
        load_clip_text_weights(enc, missing)
    with pytest.raises(FileNotFoundError, match="eva_clip_psz14"):
        EVACLIPTextEncoder(TextEncoderConfig(**{**TINY_EVA_CLIP_TEXT, "weights": str(missing)}))
    other = tmp_path / "other.pt"
    torch.save({"visual.cls_token": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="no EVA-CLIP text-tower keys"):
        load_clip_text_weights(enc, other)
