"""dynrefer.model on the tiny preset: shapes, trainable split, losses, overfitting, inference, precision, backends."""
import math
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")

from _model_data import CAPTIONS, CLASSES, TAGS, batch, build_tiny, tag_targets  # noqa: E402
from dynrefer.model import DynReferConfig, format_descriptions
from dynrefer.model.losses import AsymmetricLoss, pairwise_sigmoid_loss
from dynrefer.nn import backend


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=0)


@pytest.fixture
def gen(request):
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


# ------------------------------------------------------------------------------------------------ config
def test_presets_round_trip():
    for name in ("tiny", "medium", "official"):
        cfg = DynReferConfig.from_preset(name)
        assert DynReferConfig.from_dict(cfg.to_dict()) == cfg
    off = DynReferConfig.from_preset("official")
    assert (off.vision.width, off.vision.depth, off.vision.patch_size, off.vision.grid) == (1408, 39, 14, 16)
    assert (off.qformer.num_query_tokens, off.qformer.hidden_size, off.head.hidden_size) == (32, 768, 256)
    assert off.t5.d_model == 2048 and off.num_views == 3 and off.vision.mlp_hidden == 6144
    g = off.generation
    assert (g.num_beams, g.max_new_tokens, g.repetition_penalty, g.length_penalty) == (2, 20, 1.5, 0.0)
    assert DynReferConfig.from_preset("tiny", num_views=3, head={"num_heads": 4}).head.num_heads == 4
    with pytest.raises(ValueError, match="preset"):
        DynReferConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown"):
        DynReferConfig.from_dict({"bogus": 1})


# ------------------------------------------------------------------------------------------------ shapes
def test_shapes_through_every_module(model, gen):
    cfg = model.config
    s = batch(model, gen, regions=3)
    R, n, g, C = 3, cfg.num_views, cfg.vision.grid, cfg.vision.width
    with torch.no_grad():
        tokens = model.ln_vision(model.visual_encoder(s["views"].flatten(0, 1)))
        assert tokens.shape == (R * n, 1 + g * g, C) and tokens.dtype == torch.float32
        fused = model.cvem_forward(tokens, s["boxes"].reshape(-1, 4), R, n)
        assert fused.shape == (R, 1 + g * g, C)
        x_v = model.encode_views(s["views"], s["boxes"])
        assert x_v.shape == (R, cfg.qformer.num_query_tokens, cfg.qformer.hidden_size)
        assert model.tag_logits(x_v).shape == (R, len(TAGS))
        txt = model.attr_text_proj(model.ov_embeds)
        assert model.rtc_similarity(txt, model.attr_vision_proj(x_v)).shape == (R, len(CLASSES))
    assert model.clip_embeds.shape == (len(TAGS), cfg.text_encoder.hidden_size)
    assert model.att_embeds.shape[0] == sum(model.att_len_synonyms) == 7
    out = model(s)
    assert set(out) == {"loss", "loss_llm", "loss_tag", "loss_rtc"}
    for v in out.values():
        assert v.shape == () and torch.isfinite(v)
    total = out["loss_llm"] + 0.01 * out["loss_tag"] + 0.5 * out["loss_rtc"]
    assert torch.allclose(out["loss"].detach(), total, rtol=1e-5)


def test_views_change_the_representation(model, gen):
    s = batch(model, gen, regions=2)
    with torch.no_grad():
        a = model.encode_views(s["views"], s["boxes"])
        s["views"][1, -1] += 1.0  # a context view of region 1 only
        b = model.encode_views(s["views"], s["boxes"])
        s["boxes"][0, 0] = torch.tensor([1.0, 2.0, 9.0, 30.0])  # (the align module's output starts at zero,
        # so a context view's RoI box only matters once the offset/mask layer has been trained)
        c = model.encode_views(s["views"], s["boxes"])
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    assert not torch.allclose(b[0], c[0])


def test_bad_inputs(model, gen):
    s = batch(model, gen, regions=2)
    with pytest.raises(ValueError, match="views"):
        model.encode_views(s["views"][:, :1], s["boxes"][:, :1])
    with pytest.raises(ValueError, match="views must be"):
        model.encode_views(s["views"][0], s["boxes"])
    with pytest.raises(ValueError, match="boxes"):
        model.encode_views(s["views"], s["boxes"][:, :, :3])
    with pytest.raises(ValueError, match="32x32"):
        model.encode_views(torch.zeros(2, 2, 3, 16, 16), s["boxes"])
    with pytest.raises(KeyError, match="text_output"):
        model({k: v for k, v in s.items() if k != "text_output"})
    with pytest.raises(ValueError, match="tags"):
        model({**s, "tags": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="captions"):
        model({**s, "text_output": ["a"]})
    with pytest.raises(ValueError, match="tasks"):
        model.describe_views(s["views"], s["boxes"], tasks=("poem",))


# ------------------------------------------------------------------------------------------------ trainable split
def test_gradients_reach_exactly_the_trainable_parameters(gen):
    m = build_tiny(seed=1, train_llm=False)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    prefixes = ("cvem", "cem", "tag", "attr", "Qformer", "t5_proj")
    assert names == {n for n, _ in m.named_parameters() if n.split(".")[0].startswith(prefixes)}
    assert not any(n.startswith(("visual_encoder", "ln_vision", "t5_model", "text_encoder", "query_tokens"))
                   for n in names)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.train()
    for _ in range(2):  # the zero-initialised offset/mask layer first has to move for all gradients to flow
        opt.zero_grad()
        m(batch(m, gen, regions=4))["loss"].backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    assert not m.t5_model.training and not m.visual_encoder.training and m.Qformer.training


def test_control_words_follow_the_tags_and_the_seed(model):
    targets = tag_targets()
    torch.manual_seed(5)
    a = model.training_control_words(targets)
    torch.manual_seed(5)
    b = model.training_control_words(targets)
    assert a == b and all(w.endswith("|") for w in a)
    for words, cap in zip(a, CAPTIONS):
        for w in words[:-1].split(","):
            assert w == "" or w in cap.split()
    torch.manual_seed(6)
    many = [model.training_control_words(targets[:1])[0] for _ in range(200)]
    empty = sum(w == "|" for w in many) / len(many)
    assert 0.55 < empty < 0.9  # p(drop all) 0.5 + 0.5 · p(both words dropped) 0.25 = 0.625


# ------------------------------------------------------------------------------------------------ losses
def test_asymmetric_loss_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(4, 9, generator=g) > 0.6).double()
    p = torch.sigmoid(x)
    pm = (p - 0.05).clamp(min=0)
    ref = -(y * torch.log(p) + (1 - y) * pm ** 7 * torch.log(1 - pm)).sum()
    assert torch.allclose(AsymmetricLoss(7, 0, 0.05)(x, y), ref, rtol=1e-10)


def test_pairwise_sigmoid_loss_formula():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 6, generator=g, dtype=torch.float64)
    lab = -torch.ones(3, 6, dtype=torch.float64)
    for i in range(3):
        lab[i, 3 + i] = 1
    ref = -torch.log(torch.sigmoid(lab * z)).sum() / 3
    assert torch.allclose(pairwise_sigmoid_loss(z, 3), ref, rtol=1e-12)


# ------------------------------------------------------------------------------------------------ overfitting
def test_tiny_model_overfits_a_handful_of_regions():
    torch.manual_seed(0)
    m = build_tiny(seed=0)
    s = batch(m, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    m.train()
    t0 = time.time()
    for _ in range(200):
        out = m(s)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss_llm"] < 0.05, out
    res = m.describe_views(s["views"], s["boxes"])
    for r, cap in zip(res, CAPTIONS):
        assert r["caption"] == cap
        assert 0.5 < r["caption_score"] <= 1.0
        assert r["category"] == CLASSES[CAPTIONS.index(cap)]
    with torch.no_grad():
        probs = torch.sigmoid(m.tag_logits(m.encode_views(s["views"], s["boxes"])))
    truth = s["tags"].bool()
    for i in range(len(CAPTIONS)):  # every true tag ranks above every other tag
        assert probs[i][truth[i]].min() > probs[i][~truth[i]].max(), (CAPTIONS[i], probs[i])
    print(f"overfit: {time.time() - t0:.1f}s")


# ------------------------------------------------------------------------------------------------ inference
def test_describe_is_deterministic_under_a_seed(model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 40, 30], [20, 10, 70, 55], [0, 0, 80, 60]], np.float32)
    a = model.describe(img, boxes, prior="none", seed=3)
    b = model.describe(img, boxes, prior="none", seed=3)
    assert a == b and len(a) == 3
    for r in a:
        assert set(r) >= {"box", "view_coeffs", "category", "category_score", "attributes", "tags", "caption",
                          "caption_score"}
        assert r["view_coeffs"][0] == 0 and len(r["view_coeffs"]) == model.num_views
        assert r["category"] in CLASSES and 0 <= r["category_score"] <= 1
        assert [n for n, _ in r["attributes"]] == ["red", "white", "green", "blue", "old"]
        assert 0 < r["caption_score"] <= 1
    many = model.describe([img, img], [boxes[:1], np.zeros((0, 4))], prior="image", seed=1,
                          tasks=("category", "caption"))
    assert len(many) == 2 and len(many[0]) == 1 and many[1] == []
    assert "tags" not in many[0][0] and "attributes" not in many[0][0]
    text = format_descriptions(a)
    assert len(text.splitlines()) == 3 and "caption=" in text and "views=0.0," in text
    with pytest.raises(ValueError, match="prior"):
        model.describe(img, boxes, prior="stochastic")


def test_describe_real_photo_with_each_prior(model, shared_data):
    import os

    from PIL import Image

    from dynrefer.views import TASK_PRIOR

    folder = os.path.join(shared_data, "images")
    name = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))[0]
    img = np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))
    H, W = img.shape[:2]
    boxes = np.array([[0.1 * W, 0.2 * H, 0.5 * W, 0.7 * H], [0.6 * W, 0.1 * H, 0.95 * W, 0.5 * H]], np.float32)
    by_task = model.describe(img, boxes, prior="task", tasks=("attribute", "caption"), seed=0)
    n = model.num_views
    # captions from the caption prior's views, attributes from the attribute prior's (as the evaluation reads them)
    assert [r["view_coeffs"][1:] for r in by_task] == [list(TASK_PRIOR["caption"][:n - 1])] * 2
    assert [r["view_coeffs_attribute"][1:] for r in by_task] == [list(TASK_PRIOR["attribute"][:n - 1])] * 2
    cap = model.describe(img, boxes, prior="task", tasks=("caption",), seed=0)
    assert cap[0]["view_coeffs"][1:] == list(TASK_PRIOR["caption"][:n - 1])
    by_image = model.describe(img, boxes, prior="image", seed=0)
    assert by_image == model.describe(img, boxes, prior="image", seed=0)
    for r in by_image:
        assert r["view_coeffs"][0] == 0 and all(0 < c <= 1 for c in r["view_coeffs"][1:])


def test_describe_views_chunking_and_beam_settings(model, gen):
    s = batch(model, gen, regions=5)
    old = model.config.generation.chunk_size
    try:
        model.config.generation.chunk_size = 2
        chunked = model.describe_views(s["views"], s["boxes"], tasks=("tag", "caption", "category"))
        model.config.generation.chunk_size = 64
        whole = model.describe_views(s["views"], s["boxes"], tasks=("tag", "caption", "category"))
    finally:
        model.config.generation.chunk_size = old
    assert [r["caption"] for r in chunked] == [r["caption"] for r in whole]
    for a, b in zip(chunked, whole):
        assert math.isclose(a["caption_score"], b["caption_score"], rel_tol=1e-4)
        assert math.isclose(a["category_score"], b["category_score"], rel_tol=1e-4)
    greedy = model.describe_views(s["views"][:2], s["boxes"][:2], tasks=("caption",), num_beams=1)
    assert all(0 < r["caption_score"] <= 1 for r in greedy)


# ------------------------------------------------------------------------------------------------ precision, backends
def test_bfloat16_autocast_on_cpu(gen):
    m = build_tiny(seed=2)
    s = batch(m, gen, regions=3)
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(s)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    with torch.no_grad():
        ref = m(s)
    assert abs(float(out["loss"].detach()) - float(ref["loss"])) < 0.1 * float(ref["loss"])


def test_backends_agree(gen):
    m = build_tiny(seed=3).double()
    torch.nn.init.normal_(m.cvem_align.offset_mask.weight, std=0.2)  # exercise the deformable sampling
    s = batch(m, gen, regions=3)
    s["views"], s["boxes"] = s["views"].double(), s["boxes"].double()
    m.eval()
    with torch.no_grad():
        with backend.use_backend("peer"):
            a = m.encode_views(s["views"], s["boxes"])
        with backend.use_backend("dynrefer"):
            b = m.encode_views(s["views"], s["boxes"])
    assert float((a - b).norm() / a.norm()) < 1e-10


@pytest.mark.cuda
def test_cuda_forward_backward_and_backends_agree():
    from conftest import cuda_devices

    if not cuda_devices():
        pytest.skip("needs a CUDA device and dynrefer's CUDA kernels")
    backend.set_cuda_dispatch("dynrefer")   # the kernels themselves, whatever the dispatch table says
    try:
        _cuda_forward_backward_and_backends_agree()
    finally:
        backend.set_cuda_dispatch(None)


def _cuda_forward_backward_and_backends_agree():
    m = build_tiny(seed=4).cuda()
    torch.nn.init.normal_(m.cvem_align.offset_mask.weight, std=0.2)
    s = batch(m, torch.Generator().manual_seed(7), regions=3)
    s["views"], s["boxes"] = s["views"].cuda(), s["boxes"].cuda()
    m.train()
    out = m(s)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.cvem_align.value_proj.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        with backend.use_backend("peer"):
            a = m.encode_views(s["views"], s["boxes"])
        with backend.use_backend("dynrefer"):
            b = m.encode_views(s["views"], s["boxes"])
    assert float((a - b).norm() / a.norm()) < 1e-4
    res = m.describe_views(s["views"], s["boxes"])
    assert len(res) == 3 and all("caption" in r for r in res)


def test_task_prior_reads_captions_and_attributes_from_their_own_views(model):
    """describe(prior="task") answers as the evaluation reads them: captions (and the tags steering them) from the
    caption prior's views, categories and attributes from the attribute prior's."""
    from dynrefer.model import format_blocks
    from dynrefer.views import TASK_PRIOR

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 70], [80, 20, 150, 110]], np.float32)
    both = model.describe(img, boxes, prior="task", seed=0)
    cap = model.describe(img, boxes, prior="task", task="caption", tasks=("tag", "caption"), seed=0)
    att = model.describe(img, boxes, prior="task", task="attribute", tasks=("category", "attribute"), seed=0)
    n = model.num_views
    for b, c, a in zip(both, cap, att):
        assert b["view_coeffs"] == c["view_coeffs"] == [0.0] + list(TASK_PRIOR["caption"][:n - 1])
        assert b["view_coeffs_attribute"] == a["view_coeffs"] == [0.0] + list(TASK_PRIOR["attribute"][:n - 1])
        assert b["caption"] == c["caption"] and b["tags"] == c["tags"]
        assert b["category"] == a["category"] and b["attributes"] == a["attributes"]
    text = format_blocks(both)
    assert text.count("\n[") == 1 and "attribute: t = " in text and "    caption     " in text
