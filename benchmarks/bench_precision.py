"""D_llm on the CPU in float32 vs the official bfloat16 settings (``llm_weights_bf16``, ``cpu_autocast``).

    python benchmarks/bench_precision.py [--regions 8] [--budget 2] [--repeats 3] [--threads N] [--t5 small|base]

The medium preset with a T5 of t5-small's (512 wide, 8+8 layers, 6 heads, FFN 1024, gated GELU) or
t5-base's (768, 12+12, 12 heads, FFN 2048) shape, random weights. Per configuration, the captioning loss of a batch
(forward only) and beam-search captioning (2 beams, 20 new tokens) of ``--regions`` regions from the same Q-Former
tokens, with the official control sentences:

    fp32          the T5 in float32 (the project's CPU default)
    bf16 weights  the T5 stored in bfloat16 and run so, no autocast (LAVIS's official model on the CPU)
    bf16 autocast the same with the heads, the projection and the T5 under CPU bfloat16 autocast (cpu_autocast)
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _timing import bench, fmt_ms, table  # noqa: E402

T5_SHAPES = {"small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
             "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)}


def build(shape, **switches):
    from _model_data import CAPTIONS, TAGS

    from dynrefer.model import DynReferConfig, build_dynrefer

    t5 = dict(T5_SHAPES[shape], feed_forward_proj="gated-gelu", dense_act_fn="gelu")
    cfg = DynReferConfig.from_preset("medium", t5=t5, llm_precision="bf16", head_precision="bf16", **switches)
    return build_dynrefer(cfg, texts=CAPTIONS, tag_list=TAGS, seed=0).eval(), CAPTIONS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--regions", type=int, default=8)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="at least this many timed calls")
    ap.add_argument("--t5", choices=sorted(T5_SHAPES), default="small")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [("fp32", {}), ("bf16 weights", {"llm_weights_bf16": True}),
               ("bf16 autocast", {"llm_weights_bf16": True, "cpu_autocast": True})]
    rows, base = [], {}
    for name, sw in configs:
        model, captions = build(args.t5, **sw)
        g = torch.Generator().manual_seed(0)
        R = args.regions
        x_v = torch.randn(R, model.config.qformer.num_query_tokens, model.config.qformer.hidden_size, generator=g)
        caps = [captions[i % len(captions)] for i in range(R)]
        ctrl = [",".join(model.tag_list[(3 * i + j) % len(model.tag_list)] for j in range(3)) + "|" for i in range(R)]

        def loss():
            with torch.no_grad(), model.head_autocast():
                model.llm_loss(x_v, ctrl, caps)

        def generate():
            with model.head_autocast():
                model.generate_captions(x_v, ctrl, num_beams=2, max_new_tokens=20, min_length=20)

        for label, fn in (("loss (fwd)", loss), ("captions, beam 2 × 20 tokens", generate)):
            t = bench(fn, budget_s=args.budget, min_repeats=args.repeats, max_repeats=max(args.repeats, 50))
            base.setdefault(label, t)
            rows.append([name, label, fmt_ms(t), f"{base[label] / t:.2f}×"])
            print(" | ".join(rows[-1]), flush=True)
        del model
    print(f"T5 {args.t5}, {args.regions} regions, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table(rows, ["configuration", "pass", "time", "speed vs fp32"]))


if __name__ == "__main__":
    main()
