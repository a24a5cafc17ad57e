"""The DynRefer model on dynrefer's ops vs on the peers (backend "dynrefer" vs "peer"), same process, same inputs.

    python benchmarks/bench_model.py [--device cpu|cuda] [--quick]

Cases:
  align      the align module (DeformableAlign, DCNv4 sampling) at the official width: C=1408, 16×16, one map per
             (region, context view); forward and forward+backward
  encode     views → ViT → RoI-Align → align → fusion MLP → Q-Former (``encode_views``) on the medium preset
  train      one training step (forward, backward) of the tiny preset
  pipeline   one training step of the tiny preset including its data preparation from a photo: the official
             processor (pHash of every candidate, PIL/torchvision crops) + the model on the peer ops, vs
             NestedViews (stochastic) + the model on dynrefer's ops
Prints which implementation each primitive resolved to under "dynrefer" (an op missing from dynrefer.ops runs
its peer), then one table: case, pass, peer time, dynrefer time, ratio (peer / dynrefer; > 1 = faster).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _timing import bench, fmt_ms, table  # noqa: E402

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


def pipeline_case(device, quick):
    import glob

    import numpy as np
    from PIL import Image
    from _model_data import CAPTIONS, TAGS
    from bench_views import OfficialProcessor, regions_of

    from dynrefer.model import DynReferConfig, build_dynrefer
    from dynrefer.views import NestedViews

    files = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                          "images", "COCO_*.jpg")))
    if files:
        pil = Image.open(files[0]).convert("RGB")
    else:  # a synthetic scene when the shared photos are absent
        from dynrefer.data.synthetic import render_scene

        pil = Image.fromarray(render_scene(np.random.default_rng(0), 640, 480)[0])
    arr = np.asarray(pil)
    R = 4 if quick else 8
    boxes = regions_of(pil.size[0], pil.size[1], R)
    cfg = DynReferConfig.from_preset("tiny", num_views=3)
    m = build_dynrefer(cfg, texts=CAPTIONS, tag_list=TAGS, seed=0).to(device).train()
    S = cfg.vision.image_size
    official = OfficialProcessor(size=S, num_views=3, split="train")
    ours = NestedViews(size=S, num_views=3, prior="stochastic", seed=0)
    text = [CAPTIONS[i % len(CAPTIONS)] for i in range(R)]
    tags = torch.zeros(R, len(TAGS))

    def step():
        if backend.get_backend() == "peer":
            v, b = official(pil, boxes)  # [n, R, ...] as the official cascade_region_process returns them
            v, b = v.transpose(0, 1), b.transpose(0, 1)
        else:
            o = ours(arr, boxes)
            v, b = torch.from_numpy(o["views"]), torch.from_numpy(o["boxes"])
        m.zero_grad(set_to_none=True)
        m({"views": v.to(device), "boxes": b.to(device), "text_output": text, "tags": tags.to(device)})["loss"].backward()

    return f"tiny preset + data preparation, {R} regions × 3 views of a {pil.size[0]}×{pil.size[1]} photo", \
        [("train step", step)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=3.0)
    args = ap.parse_args()
    print("torch", torch.__version__, "| threads", torch.get_num_threads(), "| device", args.device)
    with backend.use_backend("dynrefer"):
        print("dynrefer backend resolves to:", backend.resolved_ops())
    rows = []
    for case in (align_case, encode_case, train_case, pipeline_case):
        name, passes = case(args.device, args.quick)
        for label, fn in passes:
            t = {}
            for b in ("peer", "dynrefer"):
                with backend.use_backend(b):
                    t[b] = bench(fn, args.device, min_repeats=3, max_repeats=20, budget_s=args.budget)
            rows.append([name, label, fmt_ms(t["peer"]), fmt_ms(t["dynrefer"]), f"{t['peer'] / t['dynrefer']:.2f}×"])
            print(" | ".join(rows[-1]), flush=True)
    print(table(rows, ["case", "pass", "peer", "dynrefer", "peer/dynrefer"]))


if __name__ == "__main__":
    main()
