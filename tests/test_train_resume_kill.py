"""Exact resume of a real DynRefer training run after SIGKILLs.

`dynrefer train` on the synthetic benchmark (tiny preset, stochastic views, two DataLoader workers, shuffling,
a checkpoint every step) is killed with SIGKILL at random moments and once in the middle of writing a checkpoint,
restarted with `run.resume_ckpt_path=auto` each time, and compared with an uninterrupted run: the final weights and
optimizer state bit for bit, and every metric record equal except the measured throughput and memory fields.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# a stand-in for `dynrefer train` that SIGKILLs itself half-way through the Nth checkpoint write
_KILL_IN_WRITE = """
import os, signal, sys
import dynrefer.train.checkpoint as ck
n = int(os.environ["KILL_AT_WRITE"])
calls = [0]
real = ck._atomic_write

def dying(path, write):
    calls[0] += 1
    if calls[0] == n:
        def half(f):
            import io
            buf = io.BytesIO()
            write(buf)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, half)
    return real(path, write)

ck._atomic_write = dying
from dynrefer.cli import main
sys.exit(main(sys.argv[1:]))
"""

_TIMING = ("samples_per_s", "steps_per_s", "mem_mb")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dynrefer.data.synthetic import generate

    d = tmp_path_factory.mktemp("resume")
    generate(str(d / "data"), seed=0, splits={"train": 8, "val": 2})
    cfg = d / "cfg.yaml"
    cfg.write_text(
        "model: {preset: tiny, views: {prior: stochastic}}\n"
        f"datasets: {{root: {d / 'data'}}}\n"
        "run: {max_epoch: 3, batch_size_train: 8, init_lr: 0.003, warmup_steps: 2, seed: 0, num_workers: 2,\n"
        "      shuffle: true, max_grad_norm: 1.0, ckpt_freq_steps: 1, log_freq: 3, progress_bar: false,\n"
        "      save_epoch_ckpts: false}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    full = d / "full"
    subprocess.run([sys.executable, "-m", "dynrefer.cli", "train", str(cfg), f"run.output_dir={full}"], check=True,
                   env=env, capture_output=True)
    return d, cfg, env, full


def _train_records(path):
    recs = [json.loads(line) for line in open(path, encoding="utf-8")]
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in recs if r.get("type") == "train"]


def _assert_same_run(full, cut):
    a = torch.load(full / "latest.pt", weights_only=True)
    b = torch.load(cut / "latest.pt", weights_only=True)
    assert a["step"] == b["step"]
    diff = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not diff, f"{len(diff)} of {len(a['model'])} tensors differ, e.g. {diff[:3]}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert _train_records(cut / "metrics.jsonl") == _train_records(full / "metrics.jsonl")


def _run_until_done(cmd, cut, env, max_runs=12):
    for _ in range(max_runs):
        resume = ["run.resume_ckpt_path=auto"] if (cut / "latest.pt").exists() else []
        p = subprocess.run(cmd + resume, env=env, capture_output=True)
        if p.returncode == 0:
            return
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    raise AssertionError("training did not finish")


def test_killed_during_a_checkpoint_write_resumes_bit_for_bit(setup):
    d, cfg, env, full = setup
    cut = d / "cut_write"
    cmd = [sys.executable, "-c", _KILL_IN_WRITE, "train", str(cfg), f"run.output_dir={cut}"]
    p = subprocess.run(cmd, env={**env, "KILL_AT_WRITE": "5"}, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    # the torn write left the previous checkpoint whole
    assert 1 <= torch.load(cut / "latest.pt", weights_only=True)["step"] < 12
    _run_until_done([sys.executable, "-m", "dynrefer.cli", "train", str(cfg), f"run.output_dir={cut}"], cut, env)
    _assert_same_run(full, cut)


def test_killed_at_random_moments_resumes_bit_for_bit(setup):
    d, cfg, env, full = setup
    cut = d / "cut_random"
    rng = random.Random(int(os.environ.get("DYNREFER_TEST_SEED", "0")))
    cmd = [sys.executable, "-m", "dynrefer.cli", "train", str(cfg), f"run.output_dir={cut}"]
    kills = 0
    for _ in range(3):
        resume = ["run.resume_ckpt_path=auto"] if (cut / "latest.pt").exists() else []
        p = subprocess.Popen(cmd + resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(2.0, 7.0))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)   # the workers too
            kills += 1
        p.wait()
    _run_until_done(cmd, cut, env)
    assert kills >= 1
    _assert_same_run(full, cut)
