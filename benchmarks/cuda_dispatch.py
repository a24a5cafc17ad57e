"""Measure each model primitive on this GPU against the peer the "peer" backend uses, and write the dispatch table
that decides, per kind of GPU, where the "dynrefer" backend may use dynrefer's CUDA kernels.

    python benchmarks/cuda_dispatch.py [--write] [--table dynrefer/nn/cuda_dispatch.json]

Shapes are the model's: attention on the four DynRefer shapes of bench_attention.py in the model's precision
(bfloat16), RoI-Align on DynRefer's multi-view case (dynrefer.app.bench.multiview_case), DCNv4 on the align
module's case of bench_dcn.py (N = 32). For every op and pass (forward, forward+backward) the ratio is peer time /
dynrefer time, the worst over the op's shapes (median of interleaved calls). With --write the entry for this GPU's
compute capability ("sm_90") is replaced in the table; the rule that reads it is in dynrefer/nn/backend.py.
"""
import argparse
import datetime
import json
import os
import sys

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench_interleaved  # noqa: E402

from dynrefer.app.bench import ROI_ALIGN_ARGS, multiview_case  # noqa: E402
from dynrefer.nn import backend  # noqa: E402
from dynrefer.ops import attention, dcnv4, offset_mask_channels, roi_align  # noqa: E402

ATTENTION_SHAPES = [(48, 16, 257, 257, 88), (64, 12, 32, 257, 64), (64, 12, 32, 32, 64), (8, 4, 4585, 32, 64)]


def _ratios(ours, peer, leaves, device):
    """{"forward": r, "forward_backward": r} for two callables of the same leaves."""
    (_, t_peer), (_, t_ours) = bench_interleaved([peer, ours], device, budget_s=1.0)
    out = {"forward": t_peer / t_ours}
    grads = [torch.randn_like(peer())]

    def fb(fn):
        def run():
            for x in leaves:
                x.grad = None
            fn().backward(grads[0])
        return run

    (_, t_peer), (_, t_ours) = bench_interleaved([fb(peer), fb(ours)], device, budget_s=1.0)
    out["forward_backward"] = t_peer / t_ours
    return out


def _worst(results):
    return {p: min(r[p] for r in results) for p in results[0]}


def measure(device):
    g = torch.Generator(device="cpu").manual_seed(0)
    table = {}
    att = []
    for b, h, lq, lk, d in ATTENTION_SHAPES:
        q, k, v = (torch.randn(b, h, n, d, generator=g).to(device, torch.bfloat16).requires_grad_(True)
                   for n in (lq, lk, lk))
        att.append(_ratios(lambda: attention(q, k, v), lambda: F.scaled_dot_product_attention(q, k, v),
                           [q, k, v], device))
    table["attention"] = _worst(att)
    x, rois, _ = multiview_case(64, 3, 1408, seed=0, device=device)
    x = x.detach().requires_grad_(True)
    a = ROI_ALIGN_ARGS
    table["roi_align"] = _ratios(lambda: roi_align(x, rois, **a), lambda: torchvision.ops.roi_align(x, rois, **a),
                                 [x], device)
    n, c, grp = 32, 1408, 4
    value = torch.randn(n, 16, 16, c, generator=g).to(device).requires_grad_(True)
    om = (torch.randn(n, 16, 16, offset_mask_channels(grp, 3), generator=g) * 0.5).to(device).requires_grad_(True)
    table["dcnv4"] = _ratios(lambda: dcnv4(value, om, 3, 1, 1, 1, grp),
                             lambda: backend.dcnv4_reference(value, om, 3, 1, 1, 1, grp), [value, om], device)
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="replace this GPU's entry in the table")
    ap.add_argument("--table", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dynrefer",
                                                    "nn", "cuda_dispatch.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_dispatch.py measures CUDA kernels: no CUDA device here")
    device = torch.device("cuda")
    kind = backend.cuda_kind(device)
    ops = measure(device)
    for op, passes in ops.items():
        verdict = "dynrefer" if all(r >= 1.0 for r in passes.values()) else "peer"
        print(f"{kind} {op:10s} " + "  ".join(f"{p} {r:.2f}x" for p, r in passes.items()) + f"  -> {verdict}")
    if args.write:
        path = os.path.abspath(args.table)
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        table.setdefault("devices", {})[kind] = {
            "device": torch.cuda.get_device_name(device), "measured": datetime.date.today().isoformat(),
            "source": f"benchmarks/cuda_dispatch.py, torch {torch.__version__}",
            "ops": {op: {p: round(r, 3) for p, r in passes.items()} for op, passes in ops.items()}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=2)
            f.write("\n")
        print(f"table entry {kind} written to {path}")


if __name__ == "__main__":
    main()
