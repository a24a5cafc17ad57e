"""dynrefer.train optimisation: parameter groups, schedule, accumulation, clipping, AMP."""
import math

import pytest
import torch
from torch import nn

import _train_toy as T
from dynrefer.train import load_config, run_training
from dynrefer.train.metrics import read_jsonl
from dynrefer.train.optim import LinearWarmupCosineLR, build_optimizer, param_groups


class Groups(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 5)
        self.ln = nn.LayerNorm(5)
        self.bn = nn.BatchNorm1d(5)
        self.gn = nn.GroupNorm(1, 5)
        self.conv = nn.Conv2d(2, 3, 3)
        self.temp = nn.Parameter(torch.ones(()))  # 0-D learned scalar
        self.query = nn.Parameter(torch.randn(1, 8, 5))  # 3-D: decayed
        self.vec = nn.Parameter(torch.randn(5))  # 1-D: not decayed
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.tied = self.proj  # a shared module appears once


def test_param_groups_follow_the_official_rules():
    m = Groups()
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert sorted(decay["names"]) == ["conv.weight", "proj.weight", "query"]
    assert sorted(no_decay["names"]) == sorted(["proj.bias", "ln.weight", "ln.bias", "bn.weight", "bn.bias",
                                                "gn.weight", "gn.bias", "conv.bias", "temp", "vec"])
    opt = build_optimizer(m, load_config({"run": {"init_lr": 3e-4}}).run)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.9, 0.999) and g["lr"] == 3e-4 for g in opt.param_groups)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids.isdisjoint({id(p) for p in m.frozen.parameters()})
    assert len(ids) == sum(1 for p in m.parameters() if p.requires_grad)


def test_no_trainable_parameters_is_an_error():
    m = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter has requires_grad"):
        build_optimizer(m, load_config({}).run)


def test_schedule_warmup_then_cosine_to_minimum():
    opt = torch.optim.AdamW([nn.Parameter(torch.ones(2))])
    s = LinearWarmupCosineLR(opt, total_steps=20, init_lr=1e-3, min_lr=1e-5, warmup_steps=4, warmup_lr=1e-6)
    lrs = []
    for _ in range(20):
        lrs.append(s.apply())
        s.advance()
    assert opt.param_groups[0]["lr"] == lrs[-1]
    for i in range(4):
        assert lrs[i] == pytest.approx(1e-6 + (1e-3 - 1e-6) * i / 4, rel=1e-12)
    for i in range(4, 20):
        p = (i - 4) / 16
        assert lrs[i] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * p)), rel=1e-12)
    assert lrs[4] == pytest.approx(1e-3) and max(lrs) == lrs[4]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert s.lr_at(20) == pytest.approx(1e-5) and s.lr_at(100) == pytest.approx(1e-5)
    # resumable by position
    s2 = LinearWarmupCosineLR(opt, 20, 1e-3, 1e-5, 4, 1e-6)
    s2.load_state_dict(s.state_dict())
    assert s2.step_index == 20
    const = LinearWarmupCosineLR(opt, 10, 1e-3, 0.0, 2, 0.0, cosine=False)
    assert [const.lr_at(i) for i in range(4)] == [0.0, 5e-4, 1e-3, 1e-3]


def _train(tmp_path, name, **run):
    cfg = load_config(T.config(tmp_path / name, **run))
    summary = run_training(cfg, T.build_model, T.build_datasets)
    ckpt = torch.load(tmp_path / name / "latest.pt", weights_only=True)
    return summary, read_jsonl(str(tmp_path / name / "metrics.jsonl")), ckpt["model"]


def test_lr_logged_per_step_and_ends_at_min(tmp_path):
    summary, recs, _ = _train(tmp_path, "a", max_epoch=2, warmup_steps=3, warmup_lr=1e-4, min_lr=1e-4,
                              lr_decay="step")
    train = [r for r in recs if r["type"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13)) and summary["total_steps"] == 12
    s = LinearWarmupCosineLR(None, 12, 1e-2, 1e-4, 3, 1e-4)
    assert [r["lr"] for r in train] == pytest.approx([s.lr_at(i) for i in range(12)], rel=1e-12)


def _lavis_lrs(max_epoch, steps_per_epoch, init_lr, min_lr, warmup_steps, warmup_start_lr):
    """The learning rates LAVIS's LinearWarmupCosineLRScheduler sets (its formulas; lavis/common/optims.py)."""
    out = []
    for epoch in range(max_epoch):
        for i in range(steps_per_epoch):
            if epoch == 0:
                start = warmup_start_lr if warmup_start_lr >= 0 else init_lr
                out.append(min(init_lr, start + (init_lr - start) * i / max(warmup_steps, 1)))
            else:
                out.append((init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / max_epoch)) + min_lr)
    return out


@pytest.mark.parametrize("warmup_lr,lavis_start", [(None, -1), (1e-5, 1e-5)])
def test_epoch_schedule_is_lavis(warmup_lr, lavis_start):
    # the official settings: warmup_lr unset (LAVIS -1 → init_lr: epoch 0 flat at init_lr), warm-up longer than an
    # epoch (5000 steps); and a real ramp that ends within epoch 0
    for warmup in (5000, 3):
        s = LinearWarmupCosineLR(None, 4 * 6, 1e-4, 1e-6, warmup, warmup_lr, epoch_steps=6)
        ref = _lavis_lrs(4, 6, 1e-4, 1e-6, warmup, lavis_start)
        assert [s.lr_at(i) for i in range(24)] == pytest.approx(ref, rel=1e-12, abs=0)
    flat = LinearWarmupCosineLR(None, 24, 1e-4, 0.0, 5000, None, epoch_steps=6)
    assert [flat.lr_at(i) for i in range(6)] == [1e-4] * 6
    assert flat.lr_at(6) == flat.lr_at(11) == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi / 4)))
    try:
        from lavis.common.optims import LinearWarmupCosineLRScheduler
    except ImportError:
        return
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lav = LinearWarmupCosineLRScheduler(opt, max_epoch=4, min_lr=1e-6, init_lr=1e-4, warmup_steps=3,
                                        warmup_start_lr=lavis_start)
    s = LinearWarmupCosineLR(None, 24, 1e-4, 1e-6, 3, warmup_lr, epoch_steps=6)
    for step in range(24):
        lav.step(cur_epoch=step // 6, cur_step=step % 6)
        assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(step), rel=1e-12)


def test_lr_per_epoch_in_training(tmp_path):
    summary, recs, _ = _train(tmp_path, "e", max_epoch=2, warmup_steps=3, min_lr=1e-4)
    train = [r for r in recs if r["type"] == "train"]
    per_epoch = summary["total_steps"] // 2
    # warmup_lr unset: epoch 0 at init_lr throughout; epoch 1 at the cosine value of epoch 1 of 2 (the midpoint)
    assert [r["lr"] for r in train[:per_epoch]] == pytest.approx([1e-2] * per_epoch, rel=1e-12)
    assert [r["lr"] for r in train[per_epoch:]] == pytest.approx([1e-4 + (1e-2 - 1e-4) * 0.5] * per_epoch, rel=1e-12)
    for r in train:
        assert {"loss", "loss_ce", "loss_reg", "grad_norm", "samples_per_s", "steps_per_s", "mem_mb"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_ce"] + r["loss_reg"], rel=1e-6)
        assert r["samples_per_s"] > 0 and r["mem_mb"] > 0


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    # no dropout, no augmentation: 2 micro-batches of 4 accumulated == one batch of 8
    common = dict(max_epoch=1, warmup_steps=1, shuffle=True)
    over = {"model": {"dropout": 0.0}, "datasets": {"toy": {"n": 24, "augment": False}}}
    outs = []
    for name, run in (("big", dict(batch_size_train=8, accum_grad_iters=1)),
                      ("acc", dict(batch_size_train=4, accum_grad_iters=2))):
        raw = T.config(tmp_path / name, **common, **run)
        raw.update(over)
        run_training(load_config(raw), T.build_model, T.build_datasets)
        outs.append((torch.load(tmp_path / name / "latest.pt", weights_only=True),
                     read_jsonl(str(tmp_path / name / "metrics.jsonl"))))
    (ck_big, rec_big), (ck_acc, rec_acc) = outs
    assert ck_big["step"] == ck_acc["step"] == 3
    assert [r["loss"] for r in rec_acc] == pytest.approx([r["loss"] for r in rec_big], rel=1e-5)
    assert int(ck_acc["model"]["calls"]) == 2 * int(ck_big["model"]["calls"]) == 6  # forward calls
    for k, v in ck_big["model"].items():
        if k != "calls":
            torch.testing.assert_close(ck_acc["model"][k], v, rtol=1e-5, atol=1e-6)
    # an epoch of 5 micro-batches with accum 2 -> 3 steps, the last averaging one micro-batch
    raw = T.config(tmp_path / "odd", max_epoch=1, batch_size_train=4, accum_grad_iters=2)
    raw["datasets"]["toy"]["n"] = 20
    s = run_training(load_config(raw), T.build_model, T.build_datasets)
    assert s["step"] == 3 and s["total_steps"] == 3


def test_clipping_bounds_the_update(tmp_path):
    # one step with lr large enough that AdamW's first step is ~lr*sign(g): compare with manual clipping
    raw = T.config(tmp_path / "clip", max_epoch=1, max_grad_norm=0.05, warmup_steps=0, weight_decay=0.0)
    raw["model"]["dropout"] = 0.0
    raw["datasets"]["toy"] = {"n": 4, "augment": False}
    run_training(load_config(raw), T.build_model, T.build_datasets)
    rec = read_jsonl(str(tmp_path / "clip" / "metrics.jsonl"))[0]
    # reproduce by hand: same seed, same model, same single batch
    torch.manual_seed(3)
    import random

    import numpy as np
    random.seed(3)
    np.random.seed(3)
    model = T.build_model(load_config(raw))
    ds = T.ToyDataset(n=4, augment=False)
    out = model({"x": ds.x, "y": ds.y})
    out["loss"].backward()
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, 0.05)
    assert rec["grad_norm"] == pytest.approx(float(norm), rel=1e-5)  # the logged norm is before clipping
    assert float(norm) > 0.05
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert float(clipped) == pytest.approx(0.05, rel=1e-4)
    opt = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if p.requires_grad and
                                         p.ndim >= 2 and not n.startswith("norm")], "weight_decay": 0.0},
                             {"params": [p for n, p in model.named_parameters() if p.requires_grad and
                                         (p.ndim < 2 or n.startswith("norm"))], "weight_decay": 0.0}], lr=1e-2)
    opt.step()
    saved = torch.load(tmp_path / "clip" / "latest.pt", weights_only=True)["model"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(saved[name], p.detach(), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_on_cpu(tmp_path):
    holder = {}

    def build(cfg):
        holder["m"] = T.build_model(cfg)
        return holder["m"]

    s = run_training(load_config(T.config(tmp_path / "bf", max_epoch=1, amp="bf16")), build, T.build_datasets)
    assert s["amp"] == "bf16"
    assert set(holder["m"].seen_dtypes) == {torch.bfloat16}
    recs = read_jsonl(str(tmp_path / "bf" / "metrics.jsonl"))
    assert all(math.isfinite(r["loss"]) for r in recs)
    assert holder["m"].fc1.weight.dtype == torch.float32  # master weights stay float32
    # amp: true means bf16 on the CPU
    s = run_training(load_config(T.config(tmp_path / "t", max_epoch=1, amp=True)), T.build_model, T.build_datasets)
    assert s["amp"] == "bf16"


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match=r"run\.amp: 'fp16' needs a CUDA device"):
        run_training(load_config(T.config(tmp_path / "f", amp="fp16", device="cpu")), T.build_model,
                     T.build_datasets)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_with_grad_scaler_on_cuda(tmp_path):
    s = run_training(load_config(T.config(tmp_path / "g", max_epoch=1, amp="fp16", device="cuda")),
                     T.build_model, T.build_datasets)
    assert s["amp"] == "fp16" and s["device"].startswith("cuda")
    ck = torch.load(tmp_path / "g" / "latest.pt", weights_only=True)
    assert ck["scaler"] is not None and ck["scaler"]["scale"] > 0
    recs = read_jsonl(str(tmp_path / "g" / "metrics.jsonl"))
    assert all(math.isfinite(r["loss"]) for r in recs)
