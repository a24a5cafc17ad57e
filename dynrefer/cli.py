"""The ``dynrefer`` command.

    dynrefer demo [--out DIR] [--quick]          the main job: a miniature of the paper's Table 7 on the built-in
                                                 synthetic benchmark (generate, train, evaluate; no downloads)
    dynrefer describe IMAGE --box x1,y1,x2,y2 [--box ...] [--checkpoint BUNDLE] [--prior image|task|none]
                                                 category, attributes, tags and caption per box, and a PNG of the
                                                 chosen views with the answers
    dynrefer chat IMAGE --box x1,y1,x2,y2 [--box ...] --question TEXT --checkpoint BUNDLE
                                                 answer a question about the boxes (<region1>, <region2>, ... in the
                                                 question name them; needs a model with a decoder-only LLM)
    dynrefer ferret-bench QUESTIONS --images DIR --checkpoint BUNDLE --out ANSWERS.jsonl
                                                 answer Ferret-Bench questions in its answer format (its score is a
                                                 GPT-4 review, not run here)
    dynrefer train CONFIG [key=value ...]        train on annotation files in the official format (YAML config), or
                                                 on region conversations (datasets.conversations)
    dynrefer eval CONFIG --checkpoint BUNDLE     caption CIDEr, attribute mAP and category accuracy on a split
        [--detections FILE] [--gt-boxes]         or dense captioning mAP on a detector's boxes / the GT boxes
    dynrefer flops [PRESET] [--views N]          visual MACs per region and the parameter split of a preset
    dynrefer bench [--repeats R]                 RoI-Align on DynRefer's multi-view shapes, checked against
                                                 torchvision and timed side by side (benchmarks/ has the rest)
    dynrefer info                                build and device facts
"""
import argparse
import os
import sys
import time

DEFAULT_OUT = "dynrefer-demo"


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _info(_args):
    import numpy as np

    import dynrefer
    from dynrefer import _C

    print(f"dynrefer {dynrefer.__version__} | numpy {np.__version__}")
    print(f"CPU threads: {dynrefer.get_num_threads()} | views kernels: {_C.views_cpu_isa()}")
    print(f"CUDA kernels built: {_C.cuda_built()} | CUDA device usable: {dynrefer.cuda_available()}")
    print(f"CUDA launchers: {', '.join(_C.cuda_symbols()) or '-'}")
    return 0


# ---- demo (the main job) ---------------------------------------------------------------------------------------

def _demo(args):
    from dynrefer.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, epochs=args.epochs)
    return 0


# ---- describe --------------------------------------------------------------------------------------------------

def _parse_box(text):
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise CliError(f"--box {text!r}: expected four numbers x1,y1,x2,y2") from None
    if len(vals) != 4:
        raise CliError(f"--box {text!r}: expected four numbers x1,y1,x2,y2, got {len(vals)}")
    if not all(v == v and abs(v) != float("inf") for v in vals):
        raise CliError(f"--box {text!r}: coordinates must be finite")
    x1, y1, x2, y2 = vals
    if x2 <= x1 or y2 <= y1:
        raise CliError(f"--box {text!r}: needs x2 > x1 and y2 > y1")
    return vals


def _image_and_boxes(path, box_args):
    """The RGB image at path and the --box values as [N, 4] float32, each box overlapping the image."""
    import numpy as np
    from PIL import Image

    if not os.path.isfile(path):
        raise CliError(f"image not found: {path}")
    try:
        img = np.asarray(Image.open(path).convert("RGB"))
    except OSError as e:
        raise CliError(f"cannot read image {path}: {e}") from None
    boxes = np.array([_parse_box(b) for b in box_args], np.float32)
    h, w = img.shape[:2]
    for b in boxes:
        if b[2] <= 0 or b[3] <= 0 or b[0] >= w or b[1] >= h:
            raise CliError(f"box {b.tolist()} lies outside the {w}x{h} image")
    return img, boxes


def _describe(args):
    from dynrefer.demo import build_bundle_model, load_bundle
    from dynrefer.model import format_descriptions
    from dynrefer.views import plot_views

    img, boxes = _image_and_boxes(args.image, args.box)
    try:
        bundle = load_bundle(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    import torch

    torch.set_num_threads(1)
    model = build_bundle_model(bundle)
    res = model.describe(img, boxes, prior=args.prior, seed=args.seed)
    print(format_descriptions(res))
    stem = args.out or os.path.splitext(os.path.basename(args.image))[0] + "_described"
    for k, r in enumerate(res):
        lines = [f"category: {r.get('category', '-')}",
                 "attributes: " + ", ".join(n for n, _ in sorted(r.get("attributes", []), key=lambda t: -t[1])[:3]),
                 "tags: " + (", ".join(n for n, _ in r.get("tags", [])) or "-"),
                 f"caption: {r.get('caption', '-')}"]
        path = plot_views(img, boxes[k], f"{stem}_{k}.png", chosen=r.get("view_coeffs", [0.0]), labels=lines)
        print(f"[{k}] views and answers → {path}")
    return 0


# ---- chat / ferret-bench -------------------------------------------------------------------------------------

def _chat_model(checkpoint, threads=None):
    """The bundle's model for chat; ``threads``: torch CPU threads (None: torch's default — a 7B LLM wants them
    all; 1 is fastest for the small presets)."""
    from dynrefer.demo import build_bundle_model, load_bundle

    if threads is not None and threads < 1:
        raise CliError(f"--threads must be at least 1, got {threads}")
    try:
        bundle = load_bundle(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    if bundle["config"].get("llm", {}).get("kind", "t5") != "causal":
        raise CliError(f"{checkpoint}: this model's D_llm is a T5; chat needs a model with a decoder-only LLM "
                       "(train one on conversations: datasets.conversations and model.llm.kind causal)")
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return build_bundle_model(bundle)
    except (FileNotFoundError, ImportError, RuntimeError) as e:
        raise CliError(f"{checkpoint}: {e}") from None


def _gen_args(args):
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.num_beams is not None and args.num_beams < 1:
        raise CliError(f"--num-beams must be at least 1, got {args.num_beams}")
    gen = {"max_new_tokens": args.max_new_tokens}
    if args.num_beams is not None:
        gen["num_beams"] = args.num_beams
    return gen


def _chat(args):
    img, boxes = _image_and_boxes(args.image, args.box)
    if not args.question.strip():
        raise CliError("--question must not be empty")
    gen = _gen_args(args)  # checked before the model loads
    model = _chat_model(args.checkpoint, args.threads)
    try:
        answer = model.chat(img, boxes, args.question, prior=args.prior, seed=args.seed, **gen)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(answer)
    return 0


def _ferret_bench(args):
    from dynrefer.eval.ferret_bench import FerretBenchError, export_answers, read_questions

    try:
        questions = read_questions(args.questions)
    except (FileNotFoundError, FerretBenchError) as e:
        raise CliError(str(e)) from None
    if not os.path.isdir(args.images):
        raise CliError(f"image folder not found: {args.images}")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    gen = _gen_args(args)  # checked before the model loads
    model = _chat_model(args.checkpoint, args.threads)
    try:
        recs = export_answers(model, questions, args.images, args.out, model_id=args.model_id, limit=args.limit,
                              log=print, **gen)
    except (FileNotFoundError, FerretBenchError, ValueError) as e:
        raise CliError(str(e)) from None
    print(f"{len(recs)} answers → {args.out}")
    print("Ferret-Bench's score is a GPT-4 review of these answers against its reference answers "
          "(ml-ferret's eval_gpt_review_3newclass.py); it needs the OpenAI API and is not run here.")
    return 0


# ---- train / eval --------------------------------------------------------------------------------------------

def _dataset_files(cfg_datasets, split):
    root = cfg_datasets.get("root")
    if not root:
        raise CliError("the config needs datasets.root: a folder with tags.txt, classes.json, attributes.json and "
                       "<split>_caption.json (+ _attribute.json, _category.json) as `dynrefer demo` writes them")
    need = ["tags.txt", "classes.json", "attributes.json", f"{split}_caption.json"]
    missing = [f for f in need if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise CliError(f"datasets.root {root} lacks {', '.join(missing)}")
    return root


def _model_config(cfg_model):
    from dynrefer.model import DynReferConfig

    preset = cfg_model.get("preset", "tiny")
    over = {k: v for k, v in cfg_model.items() if k not in ("preset", "arch", "views")}
    try:
        return DynReferConfig.from_preset(preset, **over)
    except (KeyError, TypeError, ValueError) as e:
        raise CliError(f"model: {e}") from None


def _train(args):
    import torch

    from dynrefer.data.readers import load_annotations
    from dynrefer.demo import _vocab, save_bundle, train_scheme
    from dynrefer.train import load_config

    cfg = load_config(args.config, args.overrides)
    if "conversations" in cfg.datasets:
        return _train_conversations(cfg)
    m, run = dict(cfg.model), dict(cfg.run)
    root = _dataset_files(cfg.datasets, "train")
    mcfg = _model_config(m)
    views = dict(m.get("views", {"prior": "stochastic"}))
    views.setdefault("num_views", mcfg.num_views)
    tags, classes, attributes = _vocab(root)
    texts = [r.caption for r in load_annotations(os.path.join(root, "train_caption.json")).records if r.caption]
    out = run["output_dir"]
    torch.set_num_threads(1)  # the small presets' ops are too small to split across threads
    model, summary = train_scheme(mcfg, root, out, views, texts, tags, classes, attributes, run["max_epoch"],
                                  run["seed"], run["batch_size_train"], run_extra=run)
    path = save_bundle(model, os.path.join(out, "model.pt"), texts, tags, classes, attributes,
                       {"num_views": views["num_views"], "size": mcfg.vision.image_size})
    print(f"trained {summary['step']} steps; model bundle → {path}")
    return 0


def _train_conversations(cfg):
    from dynrefer.data import AnnotationError
    from dynrefer.referring import ConversationConfigError, train_conversations

    try:
        _, summary, path = train_conversations(cfg)
    except (FileNotFoundError, AnnotationError, ConversationConfigError, ImportError) as e:
        raise CliError(str(e)) from None
    print(f"trained {summary['step']} steps; model bundle → {path}")
    return 0


def _eval(args):
    import torch

    from dynrefer.demo import build_bundle_model, evaluate_scheme, load_bundle
    from dynrefer.train import load_config

    cfg = load_config(args.config, args.overrides)
    if args.detections or args.gt_boxes:
        return _eval_densecap(args, cfg)
    only = [f for f, v in (("--annotations", args.annotations), ("--det-frame", args.det_frame),
                           ("--rank", args.rank), ("--det-box-format", args.det_box_format),
                           ("--no-meteor", args.no_meteor), ("--out", args.out)) if v]
    if only:
        raise CliError(f"{', '.join(only)}: dense captioning options; add --detections FILE and/or --gt-boxes")
    root = _dataset_files(cfg.datasets, args.split)
    try:
        bundle = load_bundle(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    torch.set_num_threads(1)
    model = build_bundle_model(bundle)
    n = bundle["views"]["num_views"]
    m, regions = evaluate_scheme(model, root, args.split, {"prior": args.prior, "num_views": n},
                                 bundle["views"]["size"])
    print(f"{args.split} ({regions} regions, {n} views, prior {args.prior}): CIDEr {m['CIDEr']:.1f} | "
          f"attribute mAP {m['attr_mAP']:.1f} | accuracy {m['acc']:.1f}")
    return 0


def _eval_densecap(args, cfg):
    """Dense captioning mAP of a bundle with a detector's boxes (--detections) and/or the ground-truth boxes
    (--gt-boxes); see dynrefer.eval.densecap_pipeline for the ranking rules and their sources."""
    import json

    import torch

    from dynrefer.data.detections import load_detections
    from dynrefer.data.readers import load_annotations, write_json
    from dynrefer.data.records import AnnotationError
    from dynrefer.demo import build_bundle_model, load_bundle
    from dynrefer.eval import JavaUnavailableError, PredictionError
    from dynrefer.eval.densecap_pipeline import evaluate_densecap, predictions_to_json

    if args.gt_boxes and not args.detections and args.rank not in (None, "caption"):
        raise CliError(f"--rank {args.rank} needs detector scores; ground-truth boxes are ranked by caption score")
    if not args.detections and (args.det_frame or args.det_box_format):
        raise CliError("--det-frame and --det-box-format describe a --detections file; none was given")
    ann_path = args.annotations
    if ann_path is None:
        root = cfg.datasets.get("root")
        if not root:
            raise CliError("dense captioning needs the ground truth: pass --annotations FILE (official format, "
                           "e.g. VG test.json) or set datasets.root (uses <root>/<split>_caption.json)")
        ann_path = os.path.join(root, f"{args.split}_caption.json")
    if not os.path.isfile(ann_path):
        raise CliError(f"annotation file not found: {ann_path}")
    try:
        ann = load_annotations(ann_path)
        dets = (load_detections(args.detections, ann, box_format=args.det_box_format,
                                frame=args.det_frame or "image")
                if args.detections else None)
    except (AnnotationError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    try:
        bundle = load_bundle(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    torch.set_num_threads(1)
    try:
        model = build_bundle_model(bundle)
    except RuntimeError as e:  # a bundle whose weights do not fit its config
        raise CliError(f"{args.checkpoint}: {e}") from None
    meteor = None
    if not args.no_meteor:  # started before the captioning, so a missing Java stops the command at once
        from dynrefer.eval.meteor import Meteor

        try:
            meteor = Meteor()
        except JavaUnavailableError as e:
            raise CliError(f"dense captioning mAP scores captions with METEOR 1.5, which needs Java: {e}. "
                           f"Pass --no-meteor to report the detection mAP only") from None
    settings = ([("predicted boxes", "predicted", dets, args.rank)] if dets is not None else []) + \
               ([("ground-truth boxes", "ground_truth", None, "caption")] if args.gt_boxes else [])
    report = {}
    try:
        for label, key, d, rank in settings:
            if d is not None:
                print(f"{label}: {d.num_boxes} boxes from {args.detections} over {len(d)} images "
                      f"({len(d.images_without_detections)} without a detection: their regions count as missed)",
                      flush=True)
            try:
                m, preds = evaluate_densecap(model, ann, d, rank=rank, meteor=meteor, captions=meteor is not None,
                                             prior=args.prior, seed=0, log=lambda msg: print(msg, flush=True))
            except (PredictionError, FileNotFoundError) as e:
                raise CliError(str(e)) from None
            cap = f"mAP {m['map']:.2f} | " if "map" in m else "mAP - (--no-meteor) | "
            print(f"dense captioning, {label} ({m['images']} images, {m['boxes']} boxes, {m['gt_regions']} GT "
                  f"regions, rank by {m['rank']}, prior {args.prior}): {cap}detection mAP {m['detmap']:.2f}")
            report[key] = predictions_to_json(preds, m, {"annotations": ann_path, "detections": args.detections
                                                         if d is not None else None, "rank": m["rank"],
                                                         "prior": args.prior, "checkpoint": args.checkpoint})
    finally:
        if meteor is not None:
            meteor.close()
    if args.out:
        write_json(args.out, json.loads(json.dumps(report, default=str)))
        print(f"predictions and metrics → {args.out}")
    return 0


# ---- flops / bench ---------------------------------------------------------------------------------------------

def _flops(args):
    from dynrefer.model import DynReferConfig, flops_report

    try:
        cfg = DynReferConfig.from_preset(args.preset, **({"num_views": args.views} if args.views else {}))
    except KeyError as e:
        raise CliError(f"unknown preset {args.preset!r}: {e}") from None
    print(flops_report(cfg))
    return 0


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _bench(args):
    """RoI-Align of DynRefer's multi-view embedding on synthetic ViT maps: each region is seen in nested views; every
    view's 16x16 map (patch 14 on 224x224) is pooled with the referred box in that view's frame (16x16 output,
    spatial_scale 1/14, sampling_ratio 2), checked against torchvision and timed."""
    import numpy as np
    import torch
    import torchvision

    import dynrefer
    from dynrefer.ops import roi_align
    from dynrefer.views import view_boxes

    if args.threads:
        dynrefer.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    regions, views, c = args.regions, args.views, args.channels
    W, H = 640.0, 480.0
    xy = rng.uniform(0, [W * 0.7, H * 0.7], size=(regions, 2))
    wh = rng.uniform(20, [W * 0.3, H * 0.3], size=(regions, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    ts = np.concatenate([[0.0], np.sort(rng.choice(np.arange(1, 11) / 10, views - 1, replace=False))])
    vb = view_boxes(boxes, ts, W, H)
    rois = []
    for r in range(regions):
        for v in range(views):
            x0, y0, x1, y1 = vb[r, v]
            sx, sy = 224.0 / (x1 - x0), 224.0 / (y1 - y0)
            b = (boxes[r] - [x0, y0, x0, y0]) * [sx, sy, sx, sy]
            rois.append([r * views + v, *b])
    rois = torch.tensor(np.asarray(rois, np.float32))
    n = regions * views
    x = torch.randn(n, 16, 16, c, generator=torch.Generator().manual_seed(args.seed)).permute(0, 3, 1, 2)
    print(f"{regions} regions x {views} views (t = {', '.join(f'{t:.1f}' for t in ts)}), ViT maps {n}x{c}x16x16 "
          f"channels-last, {dynrefer.get_num_threads()} threads")
    ours = roi_align(x, rois, 16, 1 / 14, 2, False)
    ref = torchvision.ops.roi_align(x, rois, 16, 1 / 14, 2, False)
    err = ((ours - ref).norm() / ref.norm()).item()
    print(f"agrees with torchvision.ops.roi_align: relative error {err:.2e}")
    if err > 1e-5:
        raise CliError("dynrefer and torchvision disagree")
    t_ours = _median_time(lambda: roi_align(x, rois, 16, 1 / 14, 2, False), args.repeats)
    t_tv = _median_time(lambda: torchvision.ops.roi_align(x, rois, 16, 1 / 14, 2, False), args.repeats)
    print(f"forward: dynrefer {t_ours * 1e3:.2f} ms, torchvision {t_tv * 1e3:.2f} ms -> {t_tv / t_ours:.1f}x")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dynrefer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the main job: miniature Table 7 on the synthetic benchmark")
    d.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    d.add_argument("--quick", action="store_true", help="a small run (~2 minutes) that checks the pipeline")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_demo)
    de = sub.add_parser("describe", help="describe boxes of an image")
    de.add_argument("image")
    de.add_argument("--box", action="append", required=True, help="x1,y1,x2,y2 in pixels (repeatable)")
    de.add_argument("--checkpoint", default=os.path.join(DEFAULT_OUT, "model.pt"))
    de.add_argument("--prior", choices=("image", "task", "none"), default="image")
    de.add_argument("--out", default=None, help="PNG path stem (default: <image>_described)")
    de.add_argument("--seed", type=int, default=0)
    de.set_defaults(fn=_describe)
    c = sub.add_parser("chat", help="answer a question about boxes of an image (referring reasoning)")
    c.add_argument("image")
    c.add_argument("--box", action="append", required=True, help="x1,y1,x2,y2 in pixels (repeatable; <regionK> "
                   "in the question names the K-th)")
    c.add_argument("--question", required=True)
    c.add_argument("--checkpoint", default=os.path.join(DEFAULT_OUT, "model.pt"))
    c.add_argument("--prior", choices=("image", "task", "none"), default="image")
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.add_argument("--num-beams", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    c.set_defaults(fn=_chat)
    fb = sub.add_parser("ferret-bench", help="answer Ferret-Bench questions (its GPT-4 review is not run)")
    fb.add_argument("questions", help="a Ferret-Bench question.jsonl")
    fb.add_argument("--images", required=True, help="folder of its COCO images")
    fb.add_argument("--checkpoint", required=True)
    fb.add_argument("--out", required=True, help="the answer .jsonl to write")
    fb.add_argument("--model-id", default="dynrefer")
    fb.add_argument("--limit", type=int, default=None)
    fb.add_argument("--max-new-tokens", type=int, default=128)
    fb.add_argument("--num-beams", type=int, default=None)
    fb.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    fb.set_defaults(fn=_ferret_bench)
    t = sub.add_parser("train", help="train on official-format annotations or region conversations (YAML config)")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.max_epoch=2")
    t.set_defaults(fn=_train)
    e = sub.add_parser("eval", help="evaluate a model bundle on a split")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--prior", choices=("image", "task", "none"), default="image")
    e.add_argument("--detections", metavar="FILE", help="dense captioning mAP on a detector's boxes (GRiT's "
                   "vg_instances_results.json or one entry per image with boxes and scores)")
    e.add_argument("--gt-boxes", action="store_true", help="dense captioning mAP on the ground-truth boxes")
    e.add_argument("--annotations", metavar="FILE", help="dense captioning ground truth (official format; "
                   "default <datasets.root>/<split>_caption.json)")
    e.add_argument("--det-frame", choices=("image", "longest720"), default=None,
                   help="frame of the detection boxes: image pixels, or GRiT's VG output (longer side 720)")
    e.add_argument("--det-box-format", choices=("xyxy", "xywh"), default=None,
                   help="override the box convention (default: 'bbox' is x,y,w,h; 'boxes' are x1,y1,x2,y2)")
    e.add_argument("--rank", choices=("detector", "caption", "product", "geometric"), default=None,
                   help="ranking score of a predicted box (default: detector, as the official evaluation)")
    e.add_argument("--no-meteor", action="store_true", help="dense captioning: detection mAP only (no Java)")
    e.add_argument("--out", metavar="FILE", help="dense captioning: write predictions and metrics (JSON)")
    e.set_defaults(fn=_eval)
    f = sub.add_parser("flops", help="visual MACs per region and parameter split")
    f.add_argument("preset", nargs="?", default="official")
    f.add_argument("--views", type=int, default=None)
    f.set_defaults(fn=_flops)
    b = sub.add_parser("bench", help="RoI-Align vs torchvision on DynRefer's multi-view shapes")
    b.add_argument("--regions", type=int, default=16)
    b.add_argument("--views", type=int, default=3)
    b.add_argument("--channels", type=int, default=1408)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=_bench)
    i = sub.add_parser("info", help="build and device facts")
    i.set_defaults(fn=_info)
    args = ap.parse_args(argv)
    if args.cmd == "bench" and not (1 <= args.views <= 11 and args.regions >= 1):
        ap.error("--views must be in [1, 11] and --regions >= 1")
    try:
        return args.fn(args)
    except CliError as err:
        print(f"dynrefer {args.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
