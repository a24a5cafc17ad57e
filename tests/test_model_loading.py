"""Weights from local files: EVA ViT, BLIP-2, DynRefer checkpoints and Hugging Face T5 directories.

Each checkpoint is written by the test in the official layout (key names learned from LAVIS / DynRefer)."""
import logging

import pytest
import torch

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")

from _model_data import batch, build_tiny
from dynrefer.model import DynReferConfig
from dynrefer.model.loading import (load_blip2_checkpoint, load_dynrefer_checkpoint, load_eva_vit,
                                    load_t5_directory, read_checkpoint, save_dynrefer_checkpoint,
                                    save_t5_directory)
from dynrefer.model.vision import CLIPViT, EVAViT

# Key names as the official checkpoints spell them (LAVIS eva_vit_g.pth, blip2_*.pth, DynRefer).
OFFICIAL_KEYS = [
    "visual_encoder.cls_token", "visual_encoder.pos_embed", "visual_encoder.patch_embed.proj.weight",
    "visual_encoder.blocks.0.norm1.weight", "visual_encoder.blocks.0.attn.qkv.weight",
    "visual_encoder.blocks.0.attn.q_bias", "visual_encoder.blocks.0.attn.v_bias",
    "visual_encoder.blocks.0.attn.proj.bias", "visual_encoder.blocks.1.mlp.fc1.weight",
    "visual_encoder.blocks.1.mlp.fc2.bias", "ln_vision.weight", "query_tokens",
    "Qformer.bert.embeddings.LayerNorm.weight",
    "Qformer.bert.encoder.layer.0.attention.self.query.weight",
    "Qformer.bert.encoder.layer.0.attention.output.LayerNorm.bias",
    "Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
    "Qformer.bert.encoder.layer.0.crossattention.output.dense.weight",
    "Qformer.bert.encoder.layer.1.intermediate_query.dense.weight",
    "Qformer.bert.encoder.layer.1.output_query.LayerNorm.weight",
    "t5_proj.weight", "cem_memory",
    "cvem_align.offset_mask_dw.weight", "cvem_align.offset_mask.weight", "cvem_align.value_proj.weight",
    "cvem_align.output_proj.bias", "cvem_mlp.0.weight", "cvem_mlp.2.bias",
    "tag_head.encoder.layer.0.crossattention.self.value.weight",
    "tag_head.encoder.layer.0.crossattention.output.LayerNorm.weight",
    "tag_head.encoder.layer.0.intermediate.dense.weight", "tag_head.encoder.layer.0.output.dense.weight",
    "tag_vision_proj.weight", "tag_text_proj.weight", "tag_fc.weight",
    "attr_head.encoder.layer.0.crossattention.self.query.bias", "attr_text_proj.weight",
    "attr_vision_proj.bias", "attr_fc.weight", "attr_t", "attr_b",
    "clip_embeds", "att_embeds", "ov_embeds",
    "t5_model.shared.weight", "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=0, train_llm=False, rtc_head="cross")  # the official D_rtc (the tiny preset's is bilinear)


def test_state_dict_uses_the_official_names(model):
    keys = set(model.state_dict())
    assert [k for k in OFFICIAL_KEYS if k not in keys] == []
    assert "Qformer.bert.encoder.layer.1.crossattention.self.key.weight" not in keys  # cross-attention every 2nd
    assert not any(k.startswith("Qformer.bert.embeddings.word_embeddings") for k in keys)


def _perturbed(sd, gen):
    return {k: v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in sd.items()}


def test_eva_vit_checkpoint(tmp_path, caplog):
    gen = torch.Generator().manual_seed(0)
    cfg = DynReferConfig.from_preset("tiny").vision
    vit = EVAViT(cfg)
    sd = _perturbed(vit.state_dict(), gen)
    del sd["blocks.1.mlp.fc2.bias"]
    sd["head.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "eva_vit_g.pth")
    fresh = EVAViT(cfg)
    with caplog.at_level(logging.WARNING, logger="dynrefer.model.loading"):
        rep = load_eva_vit(fresh, str(tmp_path / "eva_vit_g.pth"))
    assert rep.missing == ["blocks.1.mlp.fc2.bias"] and rep.unexpected == ["head.weight"]
    assert "missing" in caplog.text and "head.weight" in caplog.text
    got = fresh.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if k in got)
    # another resolution: the position embedding is interpolated (CLS kept)
    big = EVAViT(DynReferConfig.from_preset("tiny", vision={"image_size": 48}).vision)
    rep = load_eva_vit(big, str(tmp_path / "eva_vit_g.pth"))
    assert big.pos_embed.shape == (1, 37, cfg.width) and torch.equal(big.pos_embed[0, 0], sd["pos_embed"][0, 0])
    x = torch.randn(2, 3, 48, 48, generator=gen)
    assert big(x).shape == (2, 37, cfg.width)


def test_blip2_checkpoint(tmp_path, model):
    gen = torch.Generator().manual_seed(1)
    own = model.state_dict()
    prefixes = ("visual_encoder.", "ln_vision.", "query_tokens", "Qformer.", "t5_proj.")
    sd = _perturbed({k: v for k, v in own.items() if k.startswith(prefixes)}, gen)
    sd["Qformer.bert.embeddings.word_embeddings.weight"] = torch.zeros(10, 32)  # removed in BLIP-2-T5
    del sd["t5_proj.bias"]
    torch.save({"model": sd, "epoch": 3}, tmp_path / "blip2.pth")
    m = build_tiny(seed=5, train_llm=False)
    rep = load_blip2_checkpoint(m, str(tmp_path / "blip2.pth"))
    assert rep.missing == ["t5_proj.bias"]
    assert rep.unexpected == ["Qformer.bert.embeddings.word_embeddings.weight"]
    got = m.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if k in got)
    bad = dict(sd, **{"t5_proj.weight": torch.zeros(3, 3)})
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="t5_proj.weight"):
        load_blip2_checkpoint(m, str(tmp_path / "bad.pth"))


def test_dynrefer_checkpoint_round_trip(tmp_path, model):
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    save_dynrefer_checkpoint(model, str(tmp_path / "dynrefer.pth"))
    sd = read_checkpoint(str(tmp_path / "dynrefer.pth"))
    assert set(sd) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert torch.load(tmp_path / "dynrefer.pth", weights_only=True)["config"] == model.config.to_dict()
    other = build_tiny(seed=9, train_llm=False, rtc_head="cross")
    # the frozen parts (ViT, ln_vision, query_tokens, T5) come from their own files in practice
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k not in sd}, strict=False)
    rep = load_dynrefer_checkpoint(other, str(tmp_path / "dynrefer.pth"))
    assert rep.missing == [] and rep.unexpected == [] and rep.loaded == len(sd)
    s = batch(model, torch.Generator().manual_seed(3), regions=2)
    with torch.no_grad():
        assert torch.allclose(model.encode_views(s["views"], s["boxes"]),
                              other.encode_views(s["views"], s["boxes"]), atol=1e-6)
    partial = {k: v for k, v in sd.items() if not k.startswith("attr_")}
    partial["cvem_unknown.weight"] = torch.zeros(1)
    torch.save({"model": partial}, tmp_path / "partial.pth")
    rep = load_dynrefer_checkpoint(other, str(tmp_path / "partial.pth"))
    assert rep.unexpected == ["cvem_unknown.weight"] and rep.missing and all(k.startswith("attr_")
                                                                              for k in rep.missing)


def test_t5_directory_round_trip(tmp_path, model):
    save_t5_directory(model, str(tmp_path / "t5"))
    t5, tok = load_t5_directory(str(tmp_path / "t5"))
    assert tok("the red car|").input_ids == model.t5_tokenizer("the red car|").input_ids
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    ref = model.t5_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in t5.state_dict().items())
    m2 = build_tiny(seed=0, train_llm=False)
    from dynrefer.model import DynRefer

    m3 = DynRefer(m2.config, tok, m2.tag_list, m2.text_encoder, classes=m2.classes, t5_model=t5)
    assert m3.t5_model is t5 and m3.t5_proj.out_features == t5.config.d_model


def test_loader_errors(tmp_path, model):
    with pytest.raises(FileNotFoundError):
        load_dynrefer_checkpoint(model, str(tmp_path / "nope.pth"))
    with pytest.raises(TypeError, match="path"):
        load_eva_vit(model, 3)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_dynrefer_checkpoint(model, str(tmp_path / "list.pth"))
    with pytest.raises(FileNotFoundError):
        load_t5_directory(str(tmp_path / "none"))


def test_clip_vit_layout_matches_openai_clip(tmp_path):
    cfg = DynReferConfig.from_preset("tiny", vision={"arch": "clip", "eps": 1e-5}).vision
    vit = CLIPViT(cfg)
    keys = set(vit.state_dict())
    for k in ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight",
              "transformer.resblocks.0.ln_1.weight", "transformer.resblocks.0.attn.in_proj_weight",
              "transformer.resblocks.0.attn.in_proj_bias", "transformer.resblocks.0.attn.out_proj.weight",
              "transformer.resblocks.1.mlp.c_fc.weight", "transformer.resblocks.1.mlp.c_proj.bias",
              "transformer.resblocks.1.ln_2.bias"):
        assert k in keys, k
    # one block equals a reference built from nn.MultiheadAttention with the same weights
    blk = vit.transformer.resblocks[0]
    mha = torch.nn.MultiheadAttention(cfg.width, cfg.num_heads, batch_first=True)
    mha.load_state_dict(blk.attn.state_dict())
    x = torch.randn(2, 5, cfg.width, generator=torch.Generator().manual_seed(4))
    h = x + mha(blk.ln_1(x), blk.ln_1(x), blk.ln_1(x), need_weights=False)[0]
    u = blk.mlp.c_fc(blk.ln_2(h))
    ref = h + blk.mlp.c_proj(u * torch.sigmoid(1.702 * u))
    assert torch.allclose(blk(x), ref, atol=1e-5)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, cfg.grid ** 2 + 1, cfg.width)
