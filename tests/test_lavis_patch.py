"""dynrefer.lavis.use_dynrefer_ops on LAVIS's own BLIP-2 (skipped where salesforce-lavis is not installed; it lives
in its own environment, see the README's LAVIS section).

A small ``Blip2Qformer`` is built through LAVIS's own constructor with random weights — its tokenizer, EVA ViT
(or CLIP ViT-L) and Q-Former factories swapped for small local ones, since LAVIS's download the full-size models —
and its features, captions, losses and gradients are compared before patching, after patching (dynrefer's
attention kernel is called) and after restoring.
"""
import warnings

import pytest

pytest.importorskip("lavis", reason="salesforce-lavis is not installed")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import dynrefer.ops  # noqa: E402
from dynrefer.lavis import patched_modules, restore_lavis_ops, use_dynrefer_ops  # noqa: E402

IMG, PATCH, WIDTH, HEADS = 28, 7, 48, 4
WORDS = "a an the dog dogs cat cats red blue two on mat sits sitting table photo of small big".split()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _tokenizer(tmp_path):
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizer(str(vocab))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def _blip2(tmp_path, monkeypatch, vit="eva", rel_pos=False, dropout=0.0, seed=0):
    """LAVIS's Blip2Qformer at test size: its constructor runs as written, on small local parts."""
    from lavis.models.blip2_models import blip2
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
    from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel

    def init_tokenizer(cls):
        return _tokenizer(tmp_path)

    def init_vision_encoder(cls, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        if vit == "eva":
            from lavis.models.eva_vit import VisionTransformer

            enc = VisionTransformer(img_size=img_size, patch_size=PATCH, embed_dim=WIDTH, depth=3, num_heads=HEADS,
                                    mlp_ratio=2.0, qkv_bias=True, use_rel_pos_bias=rel_pos,
                                    norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6))
            if rel_pos:  # LAVIS initialises the table to zeros; a random one makes the bias matter
                for blk in enc.blocks:
                    nn.init.normal_(blk.attn.relative_position_bias_table, std=0.5)
        else:
            from lavis.models.clip_vit import VisionTransformer

            enc = VisionTransformer(input_resolution=img_size, patch_size=PATCH, width=WIDTH, layers=3, heads=HEADS,
                                    use_grad_checkpointing=False)
        return enc, blip2.LayerNorm(enc.num_features)

    def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
        cfg = BertConfig(vocab_size=len(WORDS) + 6, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                         max_position_embeddings=64)
        cfg.encoder_width = vision_width
        cfg.add_cross_attention = True
        cfg.cross_attention_freq = cross_attention_freq
        cfg.query_length = num_query_token
        qformer = BertLMHeadModel(cfg)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, cfg.hidden_size))
        query_tokens.data.normal_(mean=0.0, std=cfg.initializer_range)
        return qformer, query_tokens

    monkeypatch.setattr(Blip2Qformer, "init_tokenizer", classmethod(init_tokenizer))
    monkeypatch.setattr(Blip2Qformer, "init_vision_encoder", classmethod(init_vision_encoder))
    monkeypatch.setattr(Blip2Qformer, "init_Qformer", classmethod(init_Qformer))
    torch.manual_seed(seed)
    model = Blip2Qformer(vit_model="eva_clip_g" if vit == "eva" else "clip_L", img_size=IMG, vit_precision="fp32",
                         num_query_token=6, cross_attention_freq=1, embed_dim=32, max_txt_len=12)
    # trained attention is peaked; at LAVIS's initialisation (std 0.02) it is nearly uniform, which would hide a
    # wrong scale or mask: larger query/key projections make every term of the softmax count
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("qkv.weight", "query.weight", "key.weight", "in_proj_weight")):
                p.normal_(std=0.3)
    return model


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of dynrefer's attention op (the backend looks it up on dynrefer.ops at every call)."""
    n = [0]
    op = dynrefer.ops.attention

    def counted(*args, **kw):
        n[0] += 1
        return op(*args, **kw)

    monkeypatch.setattr(dynrefer.ops, "attention", counted)
    return n


def _samples(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, IMG, IMG, generator=g),
            "text_input": ["a red dog sitting on the mat", "two cats"]}


@torch.no_grad()
def _features(model, samples):
    out = {}
    for mode in ("image", "text", "multimodal"):
        f = model.extract_features(samples, mode=mode)
        for key in ("image_embeds", "image_embeds_proj", "text_embeds", "text_embeds_proj", "multimodal_embeds"):
            v = getattr(f, key, None)
            if v is not None:
                out[f"{mode}.{key}"] = v.clone()
    return out


def _assert_close(a, b, atol=2e-5):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=k)


@pytest.mark.parametrize("vit,rel_pos", [("eva", False), ("eva", True), ("clip", False)])
def test_features_and_captions_equal(tmp_path, monkeypatch, calls, vit, rel_pos):
    from lavis.models.blip2_models.Qformer import BertSelfAttention

    model = _blip2(tmp_path, monkeypatch, vit=vit, rel_pos=rel_pos).eval()
    samples = _samples()
    keys = list(model.state_dict())
    before = _features(model, samples)
    with torch.no_grad():
        caps = model.generate(samples, num_beams=2, max_length=8, min_length=2)
    assert calls[0] == 0

    n_attn = sum(isinstance(m, BertSelfAttention) for m in model.modules())
    counts = use_dynrefer_ops(model)
    assert counts == {"eva_vit": 3 if vit == "eva" else 0, "clip_vit": 2 if vit == "clip" else 0,
                      "qformer": n_attn}
    assert n_attn == 2 * 2   # two layers, each with self- and cross-attention (cross_attention_freq 1)
    assert len(patched_modules(model)) == sum(counts.values())
    assert list(model.state_dict()) == keys
    assert use_dynrefer_ops(model) == counts    # a second call finds them swapped already

    after = _features(model, samples)
    assert calls[0] > 0
    _assert_close(before, after)
    with torch.no_grad():
        assert model.generate(samples, num_beams=2, max_length=8, min_length=2) == caps   # past_key_value path

    assert restore_lavis_ops(model) == sum(counts.values()) and not patched_modules(model)
    n = calls[0]
    again = _features(model, samples)
    assert calls[0] == n
    for k in before:
        assert torch.equal(before[k], again[k]), k


def _loss_and_grads(model, samples):
    torch.manual_seed(5)   # ITM's hard negatives are sampled
    out = model(samples)
    model.zero_grad(set_to_none=True)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": out["loss"].detach(), "itc": out["loss_itc"].detach(), "itm": out["loss_itm"].detach(),
            "lm": out["loss_lm"].detach()}, grads


@pytest.fixture
def process_group(tmp_path):
    """BLIP-2's forward asks torch.distributed for its rank: a one-process gloo group."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_training_losses_and_gradients_equal(tmp_path, monkeypatch, calls, process_group):
    model = _blip2(tmp_path, monkeypatch, vit="eva").train()
    samples = _samples(2)
    loss0, grads0 = _loss_and_grads(model, samples)
    assert calls[0] == 0 and len(grads0) > 20
    use_dynrefer_ops(model)
    loss1, grads1 = _loss_and_grads(model, samples)
    assert calls[0] > 0
    _assert_close(loss0, loss1, atol=1e-5)
    _assert_close(grads0, grads1, atol=1e-5)


def test_attention_dropout_in_training_runs_lavis_forward(tmp_path, monkeypatch, calls):
    model = _blip2(tmp_path, monkeypatch, vit="eva", dropout=0.1)
    use_dynrefer_ops(model, vit=False)
    samples = _samples(3)
    model.train()
    model.Qformer.train()
    with torch.no_grad():
        model.extract_features(samples, mode="text")
    assert calls[0] == 0                      # dropout on the probabilities: LAVIS's own forward
    model.eval()
    with torch.no_grad():
        model.extract_features(samples, mode="text")
    assert calls[0] > 0


def test_arguments(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="model"):
        use_dynrefer_ops("blip2")
    model = _blip2(tmp_path, monkeypatch, vit="clip")
    assert use_dynrefer_ops(model, vit=False, qformer=False) == {"eva_vit": 0, "clip_vit": 0, "qformer": 0}
    assert use_dynrefer_ops(model, qformer=False)["clip_vit"] == 2 and restore_lavis_ops(model) == 2
