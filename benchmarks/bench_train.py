"""Training-engine overhead: dynrefer.train.run_training against a plain PyTorch loop doing the same work.

Both train the same MLP on the same in-memory dataset with AdamW, per-step warm-up/cosine learning rate,
gradient clipping and a DataLoader; the engine adds its sampler, per-sample seeding (optional), loss
bookkeeping, JSONL logging and an end-of-run checkpoint. Reported: milliseconds per optimiser step (median of
repeats, each a full run of --steps steps) and the ratio engine / plain loop.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps 60] [--batch 64] [--width 512]
"""
import argparse
import math
import os
import sys
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import bench, fmt_ms, table  # noqa: E402

from dynrefer.train import load_config, run_training  # noqa: E402


class Data(Dataset):
    def __init__(self, n, dim, classes):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class MLP(nn.Module):
    def __init__(self, dim, width, classes):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, width),
                                 nn.GELU(), nn.Linear(width, classes))

    def forward(self, samples):
        loss = nn.functional.cross_entropy(self.net(samples["x"]), samples["y"])
        return {"loss": loss}


def plain_loop(args, data, device):
    torch.manual_seed(0)
    model = MLP(args.dim, args.width, args.classes).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.999))
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    warm, total = 5, args.steps
    for step, batch in enumerate(loader):
        lr = 1e-4 * step / warm if step < warm else 0.5e-4 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = {k: v.to(device) for k, v in batch.items()}
        model(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def engine(args, data, device, out, seeded):
    cfg = load_config({"run": {
        "output_dir": out, "max_epoch": 1, "batch_size_train": args.batch, "init_lr": 1e-4, "warmup_steps": 5,
        "max_grad_norm": 1.0, "log_freq": 20, "progress_bar": False, "save_epoch_ckpts": False,
        "device": device, "seed_per_sample": seeded}})
    run_training(cfg, lambda c: MLP(args.dim, args.width, args.classes), lambda c: {"train": data})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = Data(args.steps * args.batch, args.dim, args.classes)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps of batch {args.batch}, MLP {args.dim}->{args.width}->{args.width}->{args.classes}")
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(device=args.device, min_repeats=args.repeats, max_repeats=args.repeats, budget_s=0)
        t_plain = bench(lambda: plain_loop(args, data, args.device), **kw)
        t_eng = bench(lambda: engine(args, data, args.device, os.path.join(tmp, "a"), True), **kw)
        t_eng_ns = bench(lambda: engine(args, data, args.device, os.path.join(tmp, "b"), False), **kw)
    n = args.steps
    rows = [
        ["plain PyTorch loop", fmt_ms(t_plain / n), "1.00"],
        ["run_training (seed_per_sample)", fmt_ms(t_eng / n), f"{t_eng / t_plain:.2f}"],
        ["run_training (no per-sample seeding)", fmt_ms(t_eng_ns / n), f"{t_eng_ns / t_plain:.2f}"],
    ]
    print(table(rows, ["loop", "per step (whole run / steps)", "ratio to plain"]))


if __name__ == "__main__":
    main()
