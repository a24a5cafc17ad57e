"""dynrefer.train under 2 CPU processes (gloo): same parameters as 1 process with the same global batch, and a
checkpoint written by 2 processes resumes exactly."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _train_toy as T
from dynrefer.train import load_config, run_training
from dynrefer.train.metrics import read_jsonl

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(out, dropout, **run):
    run = {"max_epoch": 2, "batch_size_train": 2, "num_workers": 0, "device": "cpu", **run}
    raw = T.config(out, **run)
    raw["model"]["dropout"] = dropout
    raw["datasets"]["toy"]["n"] = 16  # 4 global batches of 4 per epoch
    return load_config(raw)


def _worker(rank, world, ports, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    summaries = {}
    # 1) the engine joins the group itself from the torchrun environment (env://) and leaves it at the end
    summaries["a"] = run_training(_cfg(os.path.join(out, "a"), 0.0), T.build_model, T.build_datasets)
    assert not dist.is_initialized()
    # 2) inside a group the caller made: interrupted mid-epoch, resumed, and an uninterrupted reference
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=world)
    summaries["cut"] = run_training(_cfg(os.path.join(out, "cut"), 0.2, stop_after_steps=3),
                                    T.build_model, T.build_datasets)
    torch.manual_seed(999 + rank)  # disturb: the checkpoint must restore every rank's generator
    summaries["resumed"] = run_training(_cfg(os.path.join(out, "cut"), 0.2, resume_ckpt_path="auto"),
                                        T.build_model, T.build_datasets)
    summaries["ref"] = run_training(_cfg(os.path.join(out, "ref"), 0.2), T.build_model, T.build_datasets)
    assert dist.is_initialized()
    dist.destroy_process_group()
    with open(os.path.join(out, f"summary{rank}.json"), "w") as f:
        json.dump(summaries, f, default=str)


def _train_losses(path):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_jsonl(path) if r["type"] == "train"]


def test_two_processes_match_one_and_resume(tmp_path):
    out = str(tmp_path)
    mp.start_processes(_worker, args=(2, (_free_port(), _free_port()), out), nprocs=2, join=True,
                       start_method="spawn")
    s0 = json.load(open(tmp_path / "summary0.json"))
    s1 = json.load(open(tmp_path / "summary1.json"))
    assert s0["a"]["world_size"] == 2 and s1["a"]["world_size"] == 2
    # only rank 0 writes; the directory has one metrics file, its plot and event files, and checkpoints
    assert sorted(n for n in os.listdir(tmp_path / "a")) == sorted(
        ["config.yaml", "metrics.jsonl", "metrics.png", "tensorboard", "latest.pt", "checkpoint_0.pt",
         "checkpoint_1.pt"])
    assert len(os.listdir(tmp_path / "a" / "tensorboard")) == 1

    # one process with the global batch (2 x 2) on the same data order
    single = run_training(_cfg(tmp_path / "single", 0.0, batch_size_train=4), T.build_model, T.build_datasets)
    assert single["step"] == s0["a"]["step"] == 8
    a = torch.load(tmp_path / "a" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "latest.pt", weights_only=True)
    for k, v in b["model"].items():
        if k != "calls":
            torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=1e-5)
    la, lb = _train_losses(str(tmp_path / "a" / "metrics.jsonl")), _train_losses(
        str(tmp_path / "single" / "metrics.jsonl"))
    assert [x[0] for x in la] == [x[0] for x in lb]
    assert [x[1] for x in la] == pytest.approx([x[1] for x in lb], rel=1e-4)  # losses reduced across ranks
    assert [x[2] for x in la] == pytest.approx([x[2] for x in lb], rel=1e-4)

    # the 2-process checkpoint carries both ranks' RNG states and resumes exactly
    assert s0["cut"]["interrupted"] and s0["cut"]["step"] == 3
    ck = torch.load(tmp_path / "cut" / "checkpoint_1.pt", weights_only=True)
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
    assert _train_losses(str(tmp_path / "cut" / "metrics.jsonl")) == _train_losses(
        str(tmp_path / "ref" / "metrics.jsonl"))
    c = torch.load(tmp_path / "cut" / "latest.pt", weights_only=True)
    r = torch.load(tmp_path / "ref" / "latest.pt", weights_only=True)
    for k, v in r["model"].items():
        assert torch.equal(c["model"][k], v), k
