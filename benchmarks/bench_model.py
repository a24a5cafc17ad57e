"""The DynRefer model on dynrefer's ops vs on the peers (backend "dynrefer" vs "peer"), same process, same inputs.

    python benchmarks/bench_model.py [--device cpu|cuda] [--quick] [--cases a,b] [--threads N] [--breakdown]

Cases:
  align      the align module (DeformableAlign, DCNv4 sampling) at the official width: C=1408, 16×16, one map per
             (region, context view); forward and forward+backward
  encode     views → ViT → RoI-Align → align → fusion MLP → Q-Former (``encode_views``) on the medium preset
  train      one training step (forward, backward) of the tiny preset
  pipeline   one training step and inference per region of the tiny preset, each including its data preparation
             from a photo: the official processor (pHash of every candidate, PIL/torchvision crops) + the model on
             the peer ops, vs NestedViews (stochastic / image prior) + the model on dynrefer's ops
  pipeline_medium  the same on the medium preset (224² views, ViT-S-like encoder, 4-layer Q-Former, small T5)
--cases picks cases (e.g. --cases pipeline,pipeline_medium); --breakdown profiles the medium pipeline.
Prints which implementation each primitive resolved to under "dynrefer" (an op missing from dynrefer.ops runs
its peer), then one table: case, pass, peer time, dynrefer time, ratio (peer / dynrefer; > 1 = faster).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _timing import bench, bench_interleaved, fmt_ms, table  # noqa: E402

from dynrefer.nn import DeformableAlign, backend  # noqa: E402


def align_case(device, quick):
    g = torch.Generator().manual_seed(0)
    n = 8 if quick else 64
    m = DeformableAlign(1408).to(device)
    torch.nn.init.normal_(m.offset_mask.weight, std=0.02, generator=g)  # trained-like offsets and masks
    ref = torch.randn(n, 1408, 16, 16, generator=g).to(device)
    x = torch.randn(n, 1408, 16, 16, generator=g).to(device).requires_grad_()

    def fwd():
        with torch.no_grad():
            m(ref, x)

    def fwdbwd():
        m(ref, x).sum().backward()

    return f"align C=1408 16×16 × {n}", [("fwd", fwd), ("fwd+bwd", fwdbwd)]


def encode_case(device, quick):
    from _model_data import CAPTIONS, TAGS, batch

    from dynrefer.model import DynReferConfig, build_dynrefer

    cfg = DynReferConfig.from_preset("medium", num_views=3)
    m = build_dynrefer(cfg, texts=CAPTIONS, tag_list=TAGS, seed=0).to(device).eval()
    R = 2 if quick else 8
    s = batch(m, torch.Generator().manual_seed(1), regions=R)
    views, boxes = s["views"].to(device), s["boxes"].to(device)

    def fwd():
        with torch.no_grad():
            m.encode_views(views, boxes)

    return f"encode_views medium, {R} regions × 3 views 224²", [("fwd", fwd)]


def train_case(device, quick):
    from _model_data import batch, build_tiny

    m = build_tiny(seed=0).to(device).train()
    s = batch(m, torch.Generator().manual_seed(2))
    s["views"], s["boxes"] = s["views"].to(device), s["boxes"].to(device)

    def step():
        m.zero_grad(set_to_none=True)
        m(s)["loss"].backward()

    return "tiny preset, 6 regions × 2 views", [("train step", step)]


def _photo():
    import glob

    import numpy as np
    from PIL import Image

    files = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                          "images", "COCO_*.jpg")))
    if files:
        return Image.open(files[0]).convert("RGB")
    from dynrefer.data.synthetic import render_scene   # a synthetic scene when the shared photos are absent

    return Image.fromarray(render_scene(np.random.default_rng(0), 640, 480)[0])


def pipeline_case(device, quick, preset="tiny"):
    """One training step and inference per region of ``preset``, each including its data preparation from a photo:
    peer = the official processor (pHash of every candidate, PIL/torchvision crops; greedy pHash selection at
    inference) + the model on the peer ops; dynrefer = NestedViews (stochastic in training, the image prior at
    inference) + the model on dynrefer's ops. Inference is what the official predict_answers computes per region
    (tags, attribute and class scores, a beam-searched caption), reported per region; the captions are decoded to
    their full max_new_tokens (randomly initialised weights would otherwise stop at different lengths on the two
    backends, whose float rounding differs)."""
    import numpy as np
    from _model_data import ATTRIBUTES, CAPTIONS, CLASSES, TAGS
    from bench_views import OfficialProcessor, regions_of

    from dynrefer.model import DynReferConfig, build_dynrefer
    from dynrefer.views import NestedViews

    pil = _photo()
    arr = np.asarray(pil)
    R = 4 if quick else 8
    boxes = regions_of(pil.size[0], pil.size[1], R)
    cfg = DynReferConfig.from_preset(preset, num_views=3)
    m = build_dynrefer(cfg, texts=CAPTIONS, tag_list=TAGS, classes=CLASSES, attributes=ATTRIBUTES, seed=0).to(device)
    S = cfg.vision.image_size
    official = {"train": OfficialProcessor(size=S, num_views=3, split="train"),
                "eval": OfficialProcessor(size=S, num_views=3, split="eval")}
    ours = {"train": NestedViews(size=S, num_views=3, prior="stochastic", seed=0),
            "eval": NestedViews(size=S, num_views=3, prior="image")}
    text = [CAPTIONS[i % len(CAPTIONS)] for i in range(R)]
    tags = torch.zeros(R, len(TAGS))

    def prepare(split):
        if backend.get_backend() == "peer":
            v, b = official[split](pil, boxes)  # [n, R, ...] as the official cascade_region_process returns them
            return v.transpose(0, 1), b.transpose(0, 1)
        o = ours[split](arr, boxes)
        return torch.from_numpy(o["views"]), torch.from_numpy(o["boxes"])

    def step():
        m.train()
        v, b = prepare("train")
        m.zero_grad(set_to_none=True)
        out = m({"views": v.to(device), "boxes": b.to(device), "text_output": text, "tags": tags.to(device)})
        out["loss"].backward()

    full = cfg.generation.max_new_tokens

    def infer():   # every caption runs to max_new_tokens, so both sides decode the same number of steps
        torch.manual_seed(0)
        v, b = prepare("eval")
        m.describe_views(v.to(device), b.to(device), min_new_tokens=full, min_length=None)

    where = f"{R} regions × 3 views of a {pil.size[0]}×{pil.size[1]} photo"
    return f"{preset} preset + data preparation, {where}", [("train step", step), (f"inference ÷ {R}", infer)], R


def pipeline_breakdown(device, quick, preset="medium", top=10):
    """Where the time of the pipeline goes: data preparation alone, the model alone, and the model's top aten
    ops (torch.profiler, self CPU time) on dynrefer's backend, for one training step and one inference call."""
    name, passes, R = pipeline_case(device, quick, preset)
    import numpy as np
    from bench_views import OfficialProcessor, regions_of

    from dynrefer.views import NestedViews

    pil = _photo()
    arr = np.asarray(pil)
    boxes = regions_of(pil.size[0], pil.size[1], R)
    S = 224 if preset != "tiny" else 32
    rows = []
    for split, prior in (("train", "stochastic"), ("eval", "image")):
        off, ours = OfficialProcessor(size=S, num_views=3, split=split), NestedViews(size=S, num_views=3, prior=prior)
        tp = bench(lambda: off(pil, boxes), device, min_repeats=3, max_repeats=10, budget_s=1.0)
        to = bench(lambda: ours(arr, boxes), device, min_repeats=3, max_repeats=10, budget_s=1.0)
        rows.append([f"data preparation ({split})", fmt_ms(tp), fmt_ms(to), f"{tp / to:.2f}×"])
    print(table(rows, ["stage", "official", "dynrefer", "ratio"]))
    from torch.profiler import ProfilerActivity, profile

    for label, fn in passes:
        prof_ms = {}
        for b in ("peer", "dynrefer"):
            with backend.use_backend(b):
                fn()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fn()
            prof_ms[b] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
        total = {b: sum(v.values()) for b, v in prof_ms.items()}
        keys = sorted(set(prof_ms["peer"]) | set(prof_ms["dynrefer"]),
                      key=lambda k: -max(prof_ms["peer"].get(k, 0), prof_ms["dynrefer"].get(k, 0)))[:top]
        rows = [[k[:50], f"{prof_ms['peer'].get(k, 0):.0f} ms", f"{prof_ms['dynrefer'].get(k, 0):.0f} ms",
                 f"{100 * prof_ms['dynrefer'].get(k, 0) / total['dynrefer']:.1f}%"] for k in keys]
        rows.append(["total (profiled, one call)", f"{total['peer']:.0f} ms", f"{total['dynrefer']:.0f} ms", "100%"])
        what = label.split(" ÷ ")[0] + (f" ({R} regions, one call)" if "÷" in label else "")
        print(f"\n{preset} {what}: top ops by self CPU time (torch.profiler; Python-level work such as PIL is "
              f"not an op)")
        print(table(rows, ["op", "peer", "dynrefer", "dynrefer share"]))


def bench_ab(fn, device, budget_s, min_repeats=3, max_repeats=20):
    """Median times of fn() under the "peer" and the "dynrefer" backend, the two interleaved call by call (the
    order alternating), so a change of load on a shared machine hits both alike. One warm-up call each."""

    def under(b):
        def call():
            with backend.use_backend(b):
                fn()
        return call

    (_, peer), (_, ours) = bench_interleaved([under("peer"), under("dynrefer")], device, min_repeats=min_repeats,
                                             max_repeats=max_repeats, budget_s=2 * budget_s)
    return {"peer": peer, "dynrefer": ours}


CASES = {
    "align": align_case, "encode": encode_case, "train": train_case,
    "pipeline": pipeline_case, "pipeline_medium": lambda d, q: pipeline_case(d, q, "medium"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also profile the medium pipeline: data preparation alone and the model's top ops")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("torch", torch.__version__, "| threads", torch.get_num_threads(), "| device", args.device)
    with backend.use_backend("dynrefer"):
        print("dynrefer backend resolves to:", backend.resolved_ops())
    rows = []
    for key in args.cases.split(","):
        if key not in CASES:
            sys.exit(f"unknown case {key!r}; choose from {', '.join(CASES)}")
        name, passes, *per = CASES[key](args.device, args.quick)
        for label, fn in passes:
            if key.startswith("pipeline"):   # long calls: interleaved, so load changes hit both sides
                t = bench_ab(fn, args.device, args.budget)
            else:
                t = {}
                for b in ("peer", "dynrefer"):
                    with backend.use_backend(b):
                        t[b] = bench(fn, args.device, min_repeats=3, max_repeats=20, budget_s=args.budget)
            if "÷" in label:   # per-region time of a call over several regions
                t = {b: v / per[0] for b, v in t.items()}
            rows.append([name, label, fmt_ms(t["peer"]), fmt_ms(t["dynrefer"]), f"{t['peer'] / t['dynrefer']:.2f}×"])
            print(" | ".join(rows[-1]), flush=True)
    print(table(rows, ["case", "pass", "peer", "dynrefer", "peer/dynrefer"]))
    if args.breakdown:
        pipeline_breakdown(args.device, args.quick)


if __name__ == "__main__":
    main()
