"""dynrefer.train checkpoints: atomic writes under failure and kill, contents, exact resumption."""
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import _train_toy as T
from dynrefer.train import checkpoint as C
from dynrefer.train import load_config, run_training
from dynrefer.train.data import ResumableBatchSampler, SeededDataset
from dynrefer.train.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _temps(d):
    return [n for n in os.listdir(d) if n.startswith(C.TMP_PREFIX)]


def test_atomic_save_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pt")
    C.atomic_save({"v": torch.arange(5)}, path)
    real_save = torch.save

    def broken(obj, f, *a, **k):
        f.write(b"PARTIAL" * 1000)  # half a file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        C.atomic_save({"v": torch.arange(9)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(5))
    assert _temps(tmp_path) == []
    # a failure at the rename step too
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        C.atomic_save({"v": torch.arange(9)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(5))
    assert _temps(tmp_path) == []


def test_killed_mid_write_leaves_the_previous_file(tmp_path):
    """A process killed after writing most of a checkpoint (before the rename) leaves the old file intact."""
    path = str(tmp_path / "latest.pt")
    C.atomic_save({"v": torch.arange(5)}, path)
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {ROOT!r})
        from dynrefer.train import checkpoint as C
        os.fsync = lambda fd: os.kill(os.getpid(), 9)   # SIGKILL once the data is written, before the rename
        C.atomic_save({{"v": torch.zeros(1 << 20)}}, {path!r})
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert "not reached" not in proc.stdout
    assert len(_temps(tmp_path)) == 1  # the torn temp file is there, the destination is not touched
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(5))
    C.remove_stale_temps(str(tmp_path))
    assert _temps(tmp_path) == []


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in the legacy state
    state = C.get_rng_state()
    a = (random.random(), np.random.normal(), np.random.rand(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    C.set_rng_state(state)
    b = (random.random(), np.random.normal(), np.random.rand(3), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2]) and torch.equal(a[3], b[3])


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes():
    s = ResumableBatchSampler(23, 4, shuffle=True, seed=5, drop_last=True)
    s.set_epoch(1)
    full = list(s)
    assert len(full) == 5 == len(s) and all(len(b) == 4 for b in full)
    assert all(e == 1 for b in full for e, _ in b)
    idx = [i for b in full for _, i in b]
    assert len(set(idx)) == 20 and set(idx) <= set(range(23))
    s2 = ResumableBatchSampler(23, 4, shuffle=True, seed=5, drop_last=True)
    s2.set_epoch(1, start_batch=3)
    assert list(s2) == full[3:] and len(s2) == 2
    s2.set_epoch(2)
    assert list(s2) != full
    # sharding: rank r of W takes every W-th index; the union of a global batch is a single-process batch
    single = ResumableBatchSampler(24, 4, shuffle=True, seed=5)
    single.set_epoch(0)
    shards = [ResumableBatchSampler(24, 2, num_replicas=2, rank=r, shuffle=True, seed=5) for r in range(2)]
    for sh in shards:
        sh.set_epoch(0)
    for b, b0, b1 in zip(single, *shards):
        assert sorted(b) == sorted(b0 + b1)
    # padding to a multiple of the world size, no drop_last
    odd = [ResumableBatchSampler(5, 2, num_replicas=2, rank=r, shuffle=False, drop_last=False) for r in range(2)]
    assert [list(o) for o in odd] == [[[(0, 0), (0, 2)], [(0, 4)]], [[(0, 1), (0, 3)], [(0, 0)]]]
    with pytest.raises(ValueError, match="start_batch"):
        s.set_epoch(0, start_batch=6)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        ResumableBatchSampler(5, 2, num_replicas=2, rank=2)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(size=st.integers(1, 40), batch=st.integers(1, 7), world=st.integers(1, 4), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**40), epoch=st.integers(0, 5), data=st.data())
def test_sampler_properties(size, batch, world, shuffle, drop_last, seed, epoch, data):
    samplers = [ResumableBatchSampler(size, batch, world, r, shuffle, seed, drop_last) for r in range(world)]
    per_rank = -(-size // world)
    runs = []
    for s in samplers:
        s.set_epoch(epoch)
        runs.append(list(s))
    # every rank takes the same number of batches (DDP needs it), of the batch size except maybe a last one
    assert len({len(r) for r in runs}) == 1
    assert len(runs[0]) == (per_rank // batch if drop_last else -(-per_rank // batch))
    for r in runs:
        assert all(len(b) == batch for b in r[:-1]) and all(0 < len(b) <= batch for b in r)
    flat = [i for r in runs for b in r for e, i in b]
    assert all(e == epoch for r in runs for b in r for e, _ in b)
    assert set(flat) <= set(range(size))
    if not drop_last or per_rank % batch == 0:
        # nothing dropped: every index, padded by wrapping around to a multiple of the world size
        assert set(flat) == set(range(size)) and len(flat) == per_rank * world
        assert all(flat.count(i) <= -(-per_rank * world // size) for i in range(size))
    # resuming at any batch yields exactly the rest; the order depends only on (seed, epoch)
    start = data.draw(st.integers(0, len(runs[0])))
    again = ResumableBatchSampler(size, batch, world, world - 1, shuffle, seed, drop_last)
    again.set_epoch(epoch, start)
    assert list(again) == runs[-1][start:] and len(again) == len(runs[-1]) - start


def test_seeded_dataset_is_deterministic_per_sample_and_restores_caller_rng():
    ds = SeededDataset(T.ToyDataset(n=8), seed=11)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(0, 3)]["x"]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(ds[(0, 3)]["x"], a)
    assert not torch.equal(ds[(1, 3)]["x"], a)  # a new epoch draws new augmentation
    assert not torch.equal(ds[(0, 4)]["x"] - T.ToyDataset(n=8, augment=False)[4]["x"],
                           a - T.ToyDataset(n=8, augment=False)[3]["x"])


def test_checkpoint_contents_and_trainable_only(tmp_path):
    run_training(load_config(T.config(tmp_path / "a", max_epoch=1)), T.build_model, T.build_datasets)
    ck = torch.load(tmp_path / "a" / "latest.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "epoch_step", "step", "sampler", "rng", "best",
            "config", "version"} <= set(ck)
    assert ck["epoch"] == 1 and ck["epoch_step"] == 0 and ck["step"] == 6 and ck["scheduler"]["step_index"] == 6
    assert "frozen.weight" not in ck["model"] and "frozen.bias" not in ck["model"]
    assert "fc1.weight" in ck["model"] and "calls" in ck["model"]  # buffers are kept
    assert ck["config"]["run"]["max_epoch"] == 1 and len(ck["rng"]) == 1
    assert {"python", "numpy", "torch", "cuda"} <= set(ck["rng"][0])
    assert os.path.isfile(tmp_path / "a" / "checkpoint_0.pt") and os.path.isfile(tmp_path / "a" / "config.yaml")
    run_training(load_config(T.config(tmp_path / "b", max_epoch=1, save_all_params=True, save_epoch_ckpts=False)),
                 T.build_model, T.build_datasets)
    ck = torch.load(tmp_path / "b" / "latest.pt", weights_only=True)
    assert "frozen.weight" in ck["model"]
    assert not os.path.exists(tmp_path / "b" / "checkpoint_0.pt")


def _losses(path):
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_jsonl(str(path)) if r["type"] == "train"]


@pytest.mark.parametrize("workers, accum", [(2, 1), (0, 2)])
def test_resume_mid_epoch_continues_exactly(tmp_path, workers, accum):
    """Interrupted after k steps and resumed == uninterrupted: bitwise losses, grad norms, parameters."""
    common = dict(max_epoch=2, num_workers=workers, accum_grad_iters=accum, shuffle=True, batch_size_train=3,
                  max_grad_norm=5.0)
    s_full = run_training(load_config(T.config(tmp_path / "full", **common)), T.build_model, T.build_datasets)
    total = s_full["step"]
    k = total // 2 - 1  # mid-epoch 0... and with accum 2 the epoch has 4 steps
    s1 = run_training(load_config(T.config(tmp_path / "cut", stop_after_steps=k, **common)),
                      T.build_model, T.build_datasets)
    assert s1["interrupted"] and s1["step"] == k
    ck = torch.load(tmp_path / "cut" / "latest.pt", weights_only=True)
    assert ck["step"] == k and 0 < ck["epoch_step"] < s_full["total_steps"] // 2
    # resumed in a fresh model and process state: the RNG is deliberately disturbed first
    torch.manual_seed(12345)
    np.random.seed(6789)
    s2 = run_training(load_config(T.config(tmp_path / "cut", resume_ckpt_path="auto", **common)),
                      T.build_model, T.build_datasets)
    assert not s2["interrupted"] and s2["step"] == total
    assert _losses(tmp_path / "cut" / "metrics.jsonl") == _losses(tmp_path / "full" / "metrics.jsonl")
    a = torch.load(tmp_path / "full" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "latest.pt", weights_only=True)
    for key, v in a["model"].items():
        assert torch.equal(b["model"][key], v), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_resume_after_a_crash_uses_the_last_periodic_checkpoint(tmp_path):
    """The model raises at step 5 (a crash); latest.pt from step 4 resumes; metrics after 4 are rewritten."""
    common = dict(max_epoch=1, num_workers=0, ckpt_freq_steps=2, batch_size_train=3)
    run_training(load_config(T.config(tmp_path / "full", **common)), T.build_model, T.build_datasets)

    class Crash(RuntimeError):
        pass

    def crashing(cfg):
        m = T.build_model(cfg)
        fwd = m.forward

        def forward(samples):
            if int(m.calls) == 5:
                raise Crash("power cut")
            return fwd(samples)

        m.forward = forward
        return m

    with pytest.raises(Crash):
        run_training(load_config(T.config(tmp_path / "crash", **common)), crashing, T.build_datasets)
    assert torch.load(tmp_path / "crash" / "latest.pt", weights_only=True)["step"] == 4
    run_training(load_config(T.config(tmp_path / "crash", resume_ckpt_path="auto", **common)),
                 T.build_model, T.build_datasets)
    assert _losses(tmp_path / "crash" / "metrics.jsonl") == _losses(tmp_path / "full" / "metrics.jsonl")


def test_resume_errors_and_lavis_style_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run\.resume_ckpt_path: checkpoint not found"):
        run_training(load_config(T.config(tmp_path / "x", resume_ckpt_path=str(tmp_path / "nope.pt"))),
                     T.build_model, T.build_datasets)
    run_training(load_config(T.config(tmp_path / "a", max_epoch=1, stop_after_steps=2)),
                 T.build_model, T.build_datasets)
    with pytest.raises(ValueError, match=r"run\.seed: 4 differs from the checkpoint's 3"):
        run_training(load_config(T.config(tmp_path / "a", max_epoch=1, seed=4, resume_ckpt_path="auto")),
                     T.build_model, T.build_datasets)
    torch.save({"not": "a checkpoint"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a dynrefer/LAVIS checkpoint"):
        run_training(load_config(T.config(tmp_path / "y", resume_ckpt_path=str(tmp_path / "bad.pt"))),
                     T.build_model, T.build_datasets)

    def other(cfg):
        return T.ToyModel(hidden=8)

    with pytest.raises(RuntimeError, match="size mismatch"):
        run_training(load_config(T.config(tmp_path / "a", resume_ckpt_path="auto")), other, T.build_datasets)


def test_resume_from_a_lavis_layout_checkpoint(tmp_path):
    """LAVIS saves {model, optimizer, config, scaler, epoch} at the end of epoch `epoch`: continue with the next."""
    run_training(load_config(T.config(tmp_path / "a", max_epoch=1)), T.build_model, T.build_datasets)
    ck = torch.load(tmp_path / "a" / "checkpoint_0.pt", weights_only=True)
    lavis = {"model": ck["model"], "optimizer": ck["optimizer"], "config": ck["config"], "scaler": None, "epoch": 0}
    torch.save(lavis, tmp_path / "lavis.pth")
    s = run_training(load_config(T.config(tmp_path / "b", max_epoch=2, resume_ckpt_path=str(tmp_path / "lavis.pth"))),
                     T.build_model, T.build_datasets)
    assert s["step"] == 12 and s["epoch"] == 2
    recs = [r for r in read_jsonl(str(tmp_path / "b" / "metrics.jsonl")) if r["type"] == "train"]
    assert [r["step"] for r in recs] == list(range(7, 13)) and all(r["epoch"] == 1 for r in recs)
    # the schedule continues with epoch 1 of 2: LAVIS's per-epoch cosine holds its midpoint for the whole epoch
    assert [r["lr"] for r in recs] == pytest.approx([0.5e-2] * 6, rel=1e-12)


def test_stop_signal_checkpoints_and_resumes_exactly(tmp_path):
    """SIGTERM (a preemption notice) mid-epoch: latest.pt at the end of that step, then resume == uninterrupted."""
    import signal

    common = dict(max_epoch=1, batch_size_train=3)
    run_training(load_config(T.config(tmp_path / "full", **common)), T.build_model, T.build_datasets)
    before = signal.getsignal(signal.SIGTERM)

    def preempted(cfg):
        m = T.build_model(cfg)
        fwd = m.forward

        def forward(samples):
            if int(m.calls) == 2:  # during the third step
                os.kill(os.getpid(), signal.SIGTERM)
            return fwd(samples)

        m.forward = forward
        return m

    s = run_training(load_config(T.config(tmp_path / "cut", **common)), preempted, T.build_datasets)
    assert s["interrupted"] and s["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    assert torch.load(tmp_path / "cut" / "latest.pt", weights_only=True)["step"] == 3
    run_training(load_config(T.config(tmp_path / "cut", resume_ckpt_path="auto", **common)), T.build_model,
                 T.build_datasets)
    assert _losses(tmp_path / "cut" / "metrics.jsonl") == _losses(tmp_path / "full" / "metrics.jsonl")
    with pytest.raises(ValueError, match=r"run\.stop_signals: 'SIGNOPE' is not a signal name"):
        load_config({"run": {"stop_signals": ["SIGNOPE"]}})
