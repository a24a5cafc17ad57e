"""Attention: dynrefer vs torch.nn.functional.scaled_dot_product_attention, in one process on the same inputs.

    python benchmarks/bench_attention.py [--device cpu|cuda] [--quick] [--dtypes float32,bfloat16] [--no-memory]
    python benchmarks/bench_attention.py --interleave [--threads N] [--quick] [--dtypes ...]

--interleave calls PyTorch's default SDPA and dynrefer in turn on the same inputs and prints, per shape and pass,
the ratio of the fastest calls and of the medians (no memory columns, no math backend): on a machine whose speed
drifts this compares like with like. --threads sets both libraries' thread counts.

Shapes (DynRefer's): EVA ViT-g self-attention (B=48, H=16, L=257, D=88), Q-Former cross-attention (B=64, H=12,
Lq=32, Lk=257, D=64), Q-Former self-attention (B=64, H=12, L=32, D=64), tag decoder (B=8, H=4, Lq=4585, Lk=32,
D=64). --quick divides B by 8 (by 4 for the tag decoder). Contenders: PyTorch's default SDPA dispatch (its fastest
backend: the flash kernel on CPU and GPU), PyTorch's math backend (``sdpa_kernel(SDPBackend.MATH)``) and dynrefer.
Passes: forward, forward+backward (gradients for q, k, v).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the inputs; on the CPU, the growth of the
resident set size during one call (sampled every 0.1 ms from /proc/self/statm), measured in a fresh process per
contender and shape so that no allocator cache from earlier runs hides it (includes each library's scratch memory;
approximate; the same method for every contender).
Prints one table per dtype: shape, pass, times, speed-ups (PyTorch time / dynrefer time; > 1 = faster).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench, bench_interleaved, fmt_ms, sync, table  # noqa: E402

import dynrefer  # noqa: E402
from dynrefer.ops import attention  # noqa: E402

SHAPES = [  # name, B, H, Lq, Lk, D
    ("ViT self 48x16x257x88", 48, 16, 257, 257, 88),
    ("Q-Former cross 64x12x32x257x64", 64, 12, 32, 257, 64),
    ("Q-Former self 64x12x32x64", 64, 12, 32, 32, 64),
    ("tag decoder 8x4x4585x32x64", 8, 4, 4585, 32, 64),
]


def sdpa_default(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_math(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


CONTENDERS = {"torch": sdpa_default, "torch-math": sdpa_math, "dynrefer": attention}


def _child_peak(label, b, h, lq, lk, d, dtype):
    """In a fresh process (warmed up on a tiny input): peak resident-set growth (bytes) during one forward, then
    during one forward+backward, above the level just before each (sampled every 0.1 ms from /proc/self/statm)."""
    import threading
    import time

    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(getattr(torch, dtype)) for n in (lq, lk, lk))
    go = torch.randn(b, h, lq, d, generator=g).to(getattr(torch, dtype))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    fn = CONTENDERS[label]
    tiny = [torch.randn(1, 1, 2, d, dtype=q.dtype, requires_grad=True) for _ in range(3)]
    torch.autograd.grad(fn(*tiny), tiny, torch.ones(1, 1, 2, d, dtype=q.dtype))  # one-time imports and setup
    out = []
    for step in (lambda: fn(q, k, v), lambda: torch.autograd.grad(fn(*leaves), leaves, go)):
        state = {"stop": False, "peak": rss()}
        base = state["peak"]

        def sample():
            while not state["stop"]:
                state["peak"] = max(state["peak"], rss())
                time.sleep(0.0001)

        t = threading.Thread(target=sample)
        t.start()
        step()
        state["stop"] = True
        t.join()
        out.append(max(state["peak"], rss()) - base)
    print(*out)


def peak_memory(label, shape, dtype, device):
    """(forward, forward+backward) peak memory above the inputs: CUDA allocator peaks, or on the CPU the peak RSS
    growth measured in a fresh process (so the allocator's caches from earlier runs do not hide it)."""
    _, b, h, lq, lk, d = shape
    if device.startswith("cuda"):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, generator=g).to(device=device, dtype=dtype) for n in (lq, lk, lk))
        go = torch.randn(b, h, lq, d, generator=g).to(device=device, dtype=dtype)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        fn = CONTENDERS[label]
        out = []
        for step in (lambda: fn(q, k, v), lambda: torch.autograd.grad(fn(*leaves), leaves, go)):
            sync(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            sync(device)
            out.append(torch.cuda.max_memory_allocated() - base)
        return tuple(out)
    import subprocess

    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_attention as m; m._child_peak({label!r}, {b}, {h}, {lq}, {lk}, {d}, {str(dtype).split('.')[-1]!r})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fwd, both = res.stdout.split()
    return int(fwd), int(both)


def fmt_mb(n):
    return f"{n / 2**20:.0f} MB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smaller batches, for a smoke run")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per measurement")
    ap.add_argument("--interleave", action="store_true",
                    help="torch and dynrefer called in turn: fastest and median ratios")
    ap.add_argument("--threads", type=int, default=None, help="torch's and dynrefer's thread count")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        dynrefer.set_num_threads(args.threads)
    dev = args.device
    g = torch.Generator().manual_seed(0)
    dev_name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU, {dynrefer.get_num_threads()} threads"
    print(f"attention on {dev_name} (torch {torch.__version__}, torch threads {torch.get_num_threads()})")
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        rows = []
        for name, b, h, lq, lk, d in SHAPES:
            if args.quick:
                b = max(1, b // (4 if lq > 1000 else 8))
                name = name.split(" ")[0] + " " + name.split(" ")[1] + f" (B={b})" if " " in name else name
            q, k, v = (torch.randn(b, h, n, d, generator=g).to(device=dev, dtype=dtype) for n in (lq, lk, lk))
            go = torch.randn(b, h, lq, d, generator=g).to(device=dev, dtype=dtype)
            ref = sdpa_math(q.double(), k.double(), v.double())
            errs = {}
            for label, fn in CONTENDERS.items():
                errs[label] = ((fn(q, k, v).double() - ref).norm() / ref.norm()).item()
            # correctness guard: ours must be no worse than twice PyTorch's default error (reported, not fatal, so
            # one bad shape does not hide the others' numbers)
            if errs["dynrefer"] > max(2 * errs["torch"], 1e-5):
                print(f"CHECK FAILED {name} {dname}: relative errors vs float64 {errs}")
            if args.interleave:
                leaves = {lab: [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
                          for lab in ("torch", "dynrefer")}

                def fb(lab):
                    return lambda: torch.autograd.grad(CONTENDERS[lab](*leaves[lab]), leaves[lab], go)

                for p, pair in (("fwd", [lambda: sdpa_default(q, k, v), lambda: attention(q, k, v)]),
                                ("fwd+bwd", [fb("torch"), fb("dynrefer")])):
                    (tmin, tmed), (omin, omed) = bench_interleaved(pair, dev, budget_s=args.budget)
                    rows.append([name, p, fmt_ms(tmin), fmt_ms(omin), f"{tmin / omin:.2f}x", fmt_ms(tmed), fmt_ms(omed),
                                 f"{tmed / omed:.2f}x"])
                continue
            times, mems = {}, {}
            for label, fn in CONTENDERS.items():
                times[(label, "fwd")] = bench(lambda: fn(q, k, v), dev, budget_s=args.budget)
                leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]

                def fwd_bwd(fn=fn, leaves=leaves):
                    torch.autograd.grad(fn(*leaves), leaves, go)

                times[(label, "fwd+bwd")] = bench(fwd_bwd, dev, budget_s=args.budget)
                if not args.no_memory:
                    mems[(label, "fwd")], mems[(label, "fwd+bwd")] = peak_memory(label, (name, b, h, lq, lk, d), dtype, dev)
            for p in ("fwd", "fwd+bwd"):
                t, tm, ours = times[("torch", p)], times[("torch-math", p)], times[("dynrefer", p)]
                row = [name, p, fmt_ms(t), fmt_ms(tm), fmt_ms(ours), f"{t / ours:.2f}x", f"{tm / ours:.2f}x"]
                if not args.no_memory:
                    row += [fmt_mb(mems[(lab, p)]) for lab in ("torch", "torch-math", "dynrefer")]
                rows.append(row)
        headers = ["shape", "pass", "torch", "torch math", "dynrefer", "vs torch", "vs math"]
        if args.interleave:
            headers = ["shape", "pass", "torch fastest", "dynrefer fastest", "ratio", "torch median", "dynrefer median",
                       "ratio"]
        elif not args.no_memory:
            headers += ["peak torch", "peak math", "peak dynrefer"]
        print(f"\n{dname}")
        print(table(rows, headers))


if __name__ == "__main__":
    main()
