"""A decoder-only LLM behind D_llm (config.llm.kind "causal"): a tiny LLaMA from a local directory, the sequence
layout and loss masking, batched (left-padded) generation, LoRA's trainable split and its save/load, and the T5
path left as it was."""
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")

from _llm_data import LLAMA, build_causal, save_tiny_llama  # noqa: E402
from _model_data import batch, build_tiny  # noqa: E402
from dynrefer.model import TRAINABLE_PREFIXES, DynReferConfig  # noqa: E402
from dynrefer.model import causal  # noqa: E402
from dynrefer.model.config import LLMConfig  # noqa: E402
from dynrefer.model.loading import load_dynrefer_checkpoint, save_dynrefer_checkpoint  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def model(llm_dir):
    return build_causal(llm_dir)


@pytest.fixture
def gen(request):
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def test_llm_config_round_trip_and_validation():
    cfg = DynReferConfig.from_preset("tiny", llm={"kind": "causal", "config": dict(LLAMA), "lora": True})
    assert DynReferConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.llm.lora_targets == ("embed_tokens", "lm_head", "q_proj", "v_proj")
    assert (cfg.llm.lora_r, cfg.llm.lora_alpha, cfg.llm.lora_dropout) == (64, 128, 0.0)  # the official LoRA
    old = DynReferConfig.from_preset("tiny").to_dict()
    del old["llm"]  # configs written before the llm section still load, as T5 models
    assert DynReferConfig.from_dict(old).llm.kind == "t5"
    with pytest.raises(ValueError, match="kind"):
        LLMConfig(kind="gpt")
    with pytest.raises(ValueError, match="causal"):
        LLMConfig(kind="t5", lora=True)


def test_t5_path_keeps_its_names():
    m = build_tiny(seed=0, train_llm=False)
    keys = set(m.state_dict())
    assert {"t5_proj.weight", "cem_memory", "t5_model.shared.weight"} <= keys
    assert not any(k.startswith(("llm_model", "llm_proj")) for k in keys)
    assert m.llm is m.t5_model and m.llm_projection is m.t5_proj and m.tokenizer is m.t5_tokenizer


def test_causal_model_from_a_directory(model, llm_dir, gen):
    from transformers import LlamaForCausalLM

    assert isinstance(model.llm_model, LlamaForCausalLM) and model.llm is model.llm_model
    d = LLAMA["hidden_size"]
    assert model.llm_proj.in_features == model.config.qformer.hidden_size and model.llm_proj.out_features == d
    assert model.cem_memory.shape == (d,) and not hasattr(model, "t5_model")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.split(".")[0].startswith(TRAINABLE_PREFIXES) for n in trainable)
    assert "llm_proj.weight" in trainable and "cem_memory" in trainable
    assert not any(p.requires_grad for p in model.llm_model.parameters())  # frozen by default
    model.train()
    assert not model.llm_model.training
    out = model(batch(model, gen, regions=3))
    assert set(out) == {"loss", "loss_llm", "loss_tag", "loss_rtc"} and all(torch.isfinite(v) for v in out.values())
    model.zero_grad(set_to_none=True)
    out["loss"].backward()
    assert model.llm_proj.weight.grad is not None and model.cem_memory.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm_model.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()


def test_sequence_layout_and_loss_masking(model, gen):
    s = batch(model, gen, regions=3)
    tok = model.llm_tokenizer
    bos, eos, pad = causal.special_ids(tok)
    ctrl = ["car,red|", "|", "dog,white,old|"]
    caps = ["the red car", "the man on a horse", "the white dog"]
    with torch.no_grad():
        x_v = model.encode_views(s["views"], s["boxes"])
        seqs = model.decoder.caption_sequences(x_v, ctrl, caps)
        emb = model.llm.get_input_embeddings()
        b = causal.pack(seqs, emb, side="right")
    Q = model.config.qformer.num_query_tokens
    ctrl_ids = causal.text_ids(tok, ctrl)
    cap_ids = causal.text_ids(tok, caps)
    for i in range(3):
        n_real = Q + 1 + len(ctrl_ids[i]) + len(cap_ids[i]) + 1
        assert int(b["attention_mask"][i].sum()) == n_real and b["attention_mask"][i, :n_real].all()
        assert b["position_ids"][i, :n_real].tolist() == list(range(n_real))
        lab = b["labels"][i]
        # loss only on the caption and its </s>: -100 on region tokens, <s>, control words and padding
        assert lab[lab != -100].tolist() == cap_ids[i] + [eos]
        assert (lab[:Q + 1 + len(ctrl_ids[i])] == -100).all() and (lab[n_real:] == -100).all()
        e = b["inputs_embeds"][i]
        assert torch.allclose(e[:Q], model.llm_proj(x_v[i]))
        assert torch.allclose(e[Q], emb.weight[bos])
        c0 = Q + 1
        ids = torch.tensor(ctrl_ids[i])
        assert torch.allclose(e[c0:c0 + len(ids)], emb(ids) + model.cem_memory)  # memory on every control token
    with torch.no_grad():
        left = causal.pack(seqs, emb, side="left")
    L = left["attention_mask"].shape[1]
    assert left["attention_mask"][:, -1].all()
    assert (left["position_ids"][:, -1] == left["attention_mask"].sum(1) - 1).all()
    assert int(left["attention_mask"][1].sum()) < L and left["attention_mask"][1, 0] == 0
    # the loss equals the Hugging Face model's own causal-LM loss on these labels
    with torch.no_grad():
        ours = model.decoder.sequence_loss(seqs)
        labels = b.pop("labels")
        ref = model.llm(**b, labels=labels).loss
    assert torch.allclose(ours, ref, rtol=1e-5)
    # changing a caption changes only the targets: its loss moves, the label mask keeps its shape
    with torch.no_grad():
        other = model.decoder.sequence_loss(model.decoder.caption_sequences(x_v, ctrl, ["the blue sky", "the old bus", "the red car"]))
    assert not torch.allclose(ours, other)


def test_batched_generation_matches_one_by_one(model, gen):
    s = batch(model, gen, regions=3)
    ctrl = ["car,red,old|", "|", "dog|"]  # different control lengths: the batch is left-padded
    # (no repetition penalty here: transformers applies it to rows of an inputs_embeds batch slightly differently
    # from a batch of one, so only the penalty-free scores are comparable row by row)
    kw = dict(max_new_tokens=6, repetition_penalty=1.0)
    with torch.no_grad():
        x_v = model.encode_views(s["views"], s["boxes"])
        for beams in (1, 2):
            caps, scores = model.generate_captions(x_v, ctrl, num_beams=beams, **kw)
            assert len(caps) == 3 and all(0 < sc <= 1 for sc in scores)
            singles = [model.generate_captions(x_v[i:i + 1], ctrl[i:i + 1], num_beams=beams, **kw)
                       for i in range(3)]
            assert caps == [c[0][0] for c in singles]
            for sc, (_, one) in zip(scores, singles):
                assert sc == pytest.approx(one[0], rel=1e-4)
            assert model.generate_captions(x_v, ctrl, num_beams=beams, **kw) == (caps, scores)
        # the official settings (2 beams, repetition penalty 1.5) are deterministic too
        assert model.generate_captions(x_v, ctrl) == model.generate_captions(x_v, ctrl)
        res = model.describe_views(s["views"], s["boxes"], tasks=("tag", "caption"))
    assert all("caption" in r and "tags" in r for r in res)


def test_random_llm_from_a_config_dict(gen):
    m = build_causal(None, seed=0)
    assert m.llm_model.config.vocab_size >= len(m.llm_tokenizer) and m.external_llm_keys() == set()
    again = build_causal(None, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
    out = m(batch(m, gen, regions=2))
    assert torch.isfinite(out["loss"])


def test_lora_trainable_split_and_round_trip(llm_dir, tmp_path, gen):
    pytest.importorskip("peft", reason="LoRA needs peft (pip install dynrefer[llm])")
    lora = {"lora": True, "lora_r": 4, "lora_alpha": 8}
    m = build_causal(llm_dir, seed=0, llm=lora, train_llm=True)  # train_llm with LoRA: the adapters only
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    in_llm = [n for n in trainable if n.startswith("llm_model.")]
    assert in_llm and all(".lora_" in n for n in in_llm)
    assert all(n.split(".")[0].startswith(TRAINABLE_PREFIXES) or ".lora_" in n for n in trainable)
    for target in ("embed_tokens", "lm_head", "q_proj", "v_proj"):
        assert any(f".{target}.lora_" in n for n in in_llm), target
    assert not any(".k_proj.lora_" in n or ".o_proj.lora_" in n for n in in_llm)
    m.train()
    s = batch(m, gen, regions=2)
    m(s)["loss"].backward()
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if ".lora_" in n)
    # move every trainable tensor (adapters included), then save the trainable state and load it into a fresh
    # model with the same frozen weights (official checkpoints hold the trainable tensors only)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    m.eval()
    path = tmp_path / "lora.pth"
    save_dynrefer_checkpoint(m, str(path))
    saved = torch.load(path, weights_only=True)["model"]
    assert set(saved) == {n for n, p in m.named_parameters() if p.requires_grad}
    fresh = build_causal(llm_dir, seed=0, llm=lora)
    assert not torch.equal(fresh.llm_proj.weight, m.llm_proj.weight)
    rep = load_dynrefer_checkpoint(fresh, str(path))
    assert rep.missing == [] and rep.unexpected == []
    fresh.eval()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    with torch.no_grad():
        x_a = m.encode_views(s["views"], s["boxes"])
        x_b = fresh.encode_views(s["views"], s["boxes"])
        assert m.generate_captions(x_a, ["car|", "|"], max_new_tokens=5) == \
            fresh.generate_captions(x_b, ["car|", "|"], max_new_tokens=5)


def test_official_lora_targets_on_llama(llm_dir):
    """The official list names T5's "q" and "v"; on a LLaMA (q_proj, v_proj) peft matches only embed_tokens and
    lm_head with it — documented, and reproducible by passing that list."""
    pytest.importorskip("peft", reason="LoRA needs peft (pip install dynrefer[llm])")
    m = build_causal(llm_dir, llm={"lora": True, "lora_r": 2, "lora_alpha": 4,
                                   "lora_targets": ["embed_tokens", "lm_head", "q", "v"]})
    names = [n for n, p in m.named_parameters() if p.requires_grad and ".lora_" in n]
    assert any(".embed_tokens.lora_" in n for n in names) and any(".lm_head.lora_" in n for n in names)
    assert not any("self_attn" in n for n in names)


def test_lora_without_peft_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="peft"):
        build_causal(None, llm={"lora": True, "lora_r": 2, "lora_alpha": 4})


def test_chat_views_placeholders_and_errors(model, gen):
    s = batch(model, gen, regions=2)
    a = model.chat_views(s["views"], s["boxes"], "what is <region1> next to <region2> ?", max_new_tokens=4)
    assert isinstance(a, str)
    assert model.chat_views(s["views"], s["boxes"], "what is <region1> next to <region2> ?", max_new_tokens=4) == a
    # a question naming no region is about all of them, in order
    b = model.chat_views(s["views"], s["boxes"], "what is next to what ?", max_new_tokens=4)
    assert b == model.chat_views(s["views"], s["boxes"], "<region1> <region2> what is next to what ?",
                                 max_new_tokens=4)
    h = model.chat_views(s["views"], s["boxes"], "and <region2> ?", history=[("what is <region1> ?", "a car .")],
                         max_new_tokens=4)
    assert isinstance(h, str)
    with pytest.raises(ValueError, match="<region3>"):
        model.chat_views(s["views"], s["boxes"], "is <region3> red ?")
    with pytest.raises(ValueError, match="non-empty"):
        model.chat_views(s["views"], s["boxes"], "  ")
    t5 = build_tiny(seed=0)
    with pytest.raises(ValueError, match="decoder-only"):
        t5.chat_views(s["views"], s["boxes"], "what is <region1> ?")


def test_conversation_layout_and_multi_turn_targets(model, gen):
    """Each <regionK> becomes region K's tokens plus its control sentence (with memory); every gpt turn, and only
    the gpt turns, are targets."""
    s = batch(model, gen, regions=2)
    tok = model.llm_tokenizer
    bos, eos, _ = causal.special_ids(tok)
    turns = [("what is <region2> near <region1> ?", "the white dog ."), ("and <region1> ?", "a red car .")]
    with torch.no_grad():
        x_v = model.encode_views(s["views"], s["boxes"])
        proj = model.llm_proj(x_v)
        ctrl = causal.text_ids(tok, ["dog,white|", "car|"])
        seq = model.decoder.chat_sequence(turns, proj, ctrl)
        b = causal.pack([seq], model.llm.get_input_embeddings())
    lab = b["labels"][0]
    ans = causal.text_ids(tok, [a for _, a in turns])
    assert lab[lab != -100].tolist() == ans[0] + [eos] + ans[1] + [eos]
    # the layout: <s>, system, USER:, "what is", region 2, control 2, "near", region 1, control 1, "?", ASSISTANT: …
    region_rows = [i for i, sg in enumerate(seq) if sg.embeds is not None]
    assert len(region_rows) == 3 and seq[0].ids == [bos]
    for i, k in zip(region_rows, (1, 0, 0)):
        assert torch.equal(seq[i].embeds, proj[k]) and seq[i + 1].ids == ctrl[k] and seq[i + 1].add is model.cem_memory
    targets = [sg for sg in seq if sg.target]
    assert [list(t.ids) for t in targets] == [ans[0] + [eos], ans[1] + [eos]]
    # the answer to be generated is left open after the last ASSISTANT:
    open_seq = model.decoder.chat_sequence(turns[:1] + [("and <region1> ?", None)], proj, ctrl)
    assert not open_seq[-1].target and open_seq[-1].ids == causal.text_ids(tok, [model.config.llm.assistant])[0]
    with pytest.raises(ValueError, match="not the last"):
        model.decoder.chat_sequence([("a <region1>", None), ("b", "c")], proj, ctrl)
    # a conversation batch trains D_llm alone
    model.train()
    out = model({"views": s["views"], "boxes": s["boxes"], "turns": [turns, turns[:1]],
                 "region_index": [[0, 1], [1, 0]]})
    model.eval()
    assert set(out) == {"loss", "loss_llm"} and out["loss"].requires_grad and torch.isfinite(out["loss"])
