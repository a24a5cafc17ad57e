"""The ``dynrefer`` command: argument parsing and dispatch to :mod:`dynrefer.app`.

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
    dynrefer convert --out BUNDLE [--config CONFIG] [--checkpoint F] [--vit F] [--blip2 F] [--clip-text F]
        [--t5 DIR] [--vocab DIR | --tags F --classes F --attributes F]
                                                 official-format weights (DynRefer, EVA ViT-g, BLIP-2, EVA-CLIP text,
                                                 T5) → a model bundle for describe / eval / chat
    dynrefer flops [PRESET] [--views N]          visual MACs per region and the parameter split of a preset
    dynrefer bench [--repeats R]                 RoI-Align on DynRefer's multi-view shapes, checked against
                                                 torchvision and timed side by side (benchmarks/ has the rest)
    dynrefer info                                build and device facts
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from dynrefer.app.errors import UserError as CliError  # printed on one line, exit status 2

if TYPE_CHECKING:
    from dynrefer.train.config import Config

DEFAULT_OUT = "dynrefer-demo"


def _info(_args: argparse.Namespace) -> int:
    import dynrefer

    try:   # PyTorch's own CUDA facts, when it is installed
        import torch  # noqa: F401
    except ImportError:
        pass
    i = dynrefer.build_info()
    print(f"dynrefer {i['dynrefer']} | Python {i['python']} | {i['platform']}")
    print(" | ".join(f"{k} {i[k] or '-'}" for k in ("numpy", "torch", "torchvision", "transformers")))
    print(f"CPU: {i['cpu']} | kernels: {i['cpu_isa']}, {i['threads']} threads")
    print(f"CUDA kernels built: {i['cuda_built']} | CUDA device usable: {i['cuda_available']} | torch CUDA "
          f"{i['torch_cuda'] or '-'} | GPU {i['gpu'] or '-'}")
    print(f"CUDA launchers: {', '.join(i['cuda_launchers']) or '-'}")
    return 0


def _threads(args: argparse.Namespace) -> None:
    """--threads: torch's CPU threads for this command (None: torch's default, all cores or OMP_NUM_THREADS; a 7B
    LLM wants them all, one is fastest for the small presets)."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    if n < 1:
        raise CliError(f"--threads must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)


def _demo(args: argparse.Namespace) -> int:
    from dynrefer.app.demo import run_demo

    if args.seeds < 1 or (args.jobs is not None and args.jobs < 1):
        raise CliError("--seeds and --jobs must be at least 1")
    run_demo(args.out, quick=args.quick, seed=args.seed, epochs=args.epochs, threads=args.threads, seeds=args.seeds,
             jobs=args.jobs)
    return 0


def _parse_box(text: str) -> List[float]:
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


def _describe(args: argparse.Namespace) -> int:
    from dynrefer.app.describe import describe_image
    from dynrefer.model import format_blocks

    boxes = [_parse_box(b) for b in args.box]
    _threads(args)
    res, paths = describe_image(args.image, boxes, args.checkpoint, prior=args.prior, seed=args.seed,
                                out_stem=args.out)
    print(format_blocks(res))
    for k, r in enumerate(res):
        if r.get("clipped"):
            print(f"[{k}] the box reaches outside the image: clipped to {[round(v, 1) for v in r['box']]}")
    for k, path in enumerate(paths):
        print(f"[{k}] views and answers → {path}")
    return 0


def _gen_args(args: argparse.Namespace) -> Dict[str, Any]:
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.num_beams is not None and args.num_beams < 1:
        raise CliError(f"--num-beams must be at least 1, got {args.num_beams}")
    gen = {"max_new_tokens": args.max_new_tokens}
    if args.num_beams is not None:
        gen["num_beams"] = args.num_beams
    return gen


def _chat(args: argparse.Namespace) -> int:
    from dynrefer.app.describe import image_and_boxes
    from dynrefer.app.referring import load_chat_model

    img, boxes = image_and_boxes(args.image, [_parse_box(b) for b in args.box])
    if not args.question.strip():
        raise CliError("--question must not be empty")
    gen = _gen_args(args)  # checked before the model loads
    _threads(args)
    model = load_chat_model(args.checkpoint)
    try:
        answer = model.chat(img, boxes, args.question, prior=args.prior, seed=args.seed, **gen)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(answer)
    return 0


def _ferret_bench(args: argparse.Namespace) -> int:
    from dynrefer.app.ferret_bench import FerretBenchError, export_answers, read_questions
    from dynrefer.app.referring import load_chat_model

    try:
        questions = read_questions(args.questions)
    except (FileNotFoundError, FerretBenchError) as e:
        raise CliError(str(e)) from None
    if not os.path.isdir(args.images):
        raise CliError(f"image folder not found: {args.images}")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    gen = _gen_args(args)  # checked before the model loads
    _threads(args)
    model = load_chat_model(args.checkpoint)
    try:
        recs = export_answers(model, questions, args.images, args.out, model_id=args.model_id, limit=args.limit,
                              log=print, **gen)
    except (FileNotFoundError, FerretBenchError, ValueError) as e:
        raise CliError(str(e)) from None
    print(f"{len(recs)} answers → {args.out}")
    print("Ferret-Bench's score is a GPT-4 review of these answers against its reference answers "
          "(ml-ferret's eval_gpt_review_3newclass.py); it needs the OpenAI API and is not run here.")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dynrefer.app.schemes import train_on_folder
    from dynrefer.train import load_config

    cfg = load_config(args.config, args.overrides)
    _threads(args)
    summary, path = train_on_folder(cfg)
    print(f"trained {summary['step']} steps; model bundle → {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dynrefer.train import load_config

    cfg = load_config(args.config, args.overrides)
    _threads(args)
    if args.detections or args.gt_boxes:
        return _eval_densecap(args, cfg)
    only = [f for f, v in (("--annotations", args.annotations), ("--det-frame", args.det_frame),
                           ("--rank", args.rank), ("--det-box-format", args.det_box_format),
                           ("--no-meteor", args.no_meteor)) if v]
    if only:
        raise CliError(f"{', '.join(only)}: dense captioning options; add --detections FILE and/or --gt-boxes")
    from dynrefer.app.schemes import evaluate_bundle

    m, regions, n = evaluate_bundle(cfg, args.checkpoint, args.split, args.prior, out=args.out)
    print(f"{args.split} ({regions} regions, {n} views, prior {args.prior}): CIDEr {m['CIDEr']:.1f} | "
          f"attribute mAP {m['attr_mAP']:.1f} | accuracy {m['acc']:.1f}")
    if args.out:
        print(f"metrics and per-region predictions → {args.out}")
    return 0


def _eval_densecap(args: argparse.Namespace, cfg: Config) -> int:
    """Dense captioning mAP (dynrefer.app.densecap.run_densecap_eval; the ranking rules are in
    dynrefer.eval.densecap)."""
    from dynrefer.app.densecap import run_densecap_eval

    ann_path = args.annotations
    if ann_path is None:
        root = cfg.datasets.get("root")
        if not root:
            raise CliError("dense captioning needs the ground truth: pass --annotations FILE (official format, "
                           "e.g. VG test.json) or set datasets.root (uses <root>/<split>_caption.json)")
        ann_path = os.path.join(root, f"{args.split}_caption.json")
    run_densecap_eval(args.checkpoint, ann_path, args.detections, gt_boxes=args.gt_boxes, rank=args.rank,
                      det_frame=args.det_frame, det_box_format=args.det_box_format, meteor=not args.no_meteor,
                      prior=args.prior, out=args.out, log=lambda msg: print(msg, flush=True))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from dynrefer.app.convert import convert_official

    section: Dict[str, Any] = {}
    if args.config:
        from dynrefer.train import load_config

        section = dict(load_config(args.config, args.overrides).model)
    elif args.overrides:
        raise CliError("key=value overrides need --config")
    if args.preset:
        section["preset"] = args.preset
    for opt, key in (("checkpoint", "finetuned"), ("vit", "vit_checkpoint"), ("blip2", "pretrained"),
                     ("tags", "tag_list"), ("classes", "ov_file"), ("attributes", "ovad_file")):
        if getattr(args, opt):
            section[key] = getattr(args, opt)
    for opt, sec, key in (("clip_text", "text_encoder", "weights"), ("t5", "llm", "path")):
        if getattr(args, opt):
            section[sec] = dict(section.get(sec) or {}, **{key: getattr(args, opt)})
    if args.vocab and any(getattr(args, o) for o in ("tags", "classes", "attributes")):
        raise CliError("--vocab DIR or --tags/--classes/--attributes, not both")
    _threads(args)
    convert_official(args.out, section, vocab_dir=args.vocab)
    return 0


def _flops(args: argparse.Namespace) -> int:
    from dynrefer.model import DynReferConfig, flops_report

    try:
        cfg = DynReferConfig.from_preset(args.preset, **({"num_views": args.views} if args.views else {}))
    except KeyError as e:
        raise CliError(f"unknown preset {args.preset!r}: {e}") from None
    print(flops_report(cfg))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dynrefer.app.bench import roi_align_bench

    roi_align_bench(args.regions, args.views, args.channels, threads=args.threads, repeats=args.repeats,
                    seed=args.seed)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="dynrefer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from dynrefer import __version__

    ap.add_argument("--version", action="version", version=f"dynrefer {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the main job: miniature Table 7 on the synthetic benchmark")
    d.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    d.add_argument("--quick", action="store_true", help="a small run (~2 minutes) that checks the pipeline")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--seed", type=int, default=0, help="the data's seed and the first training seed")
    d.add_argument("--seeds", type=int, default=3, help="training seeds per view scheme (default 3)")
    d.add_argument("--jobs", type=int, default=None, help="trainings side by side (default: one per CPU, at most 4)")
    d.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the tiny preset's ops are "
                   "too small to split; the C kernels keep their own pool)")
    d.set_defaults(fn=_demo)
    de = sub.add_parser("describe", help="describe boxes of an image")
    de.add_argument("image")
    de.add_argument("--box", action="append", required=True, help="x1,y1,x2,y2 in pixels (repeatable)")
    de.add_argument("--checkpoint", default=os.path.join(DEFAULT_OUT, "model.pt"))
    de.add_argument("--prior", choices=("image", "task", "none"), default="image")
    de.add_argument("--out", default=None, help="PNG path stem (default: <image>_described)")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, i.e. all cores "
                   "or OMP_NUM_THREADS)")
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
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, i.e. all cores "
                   "or OMP_NUM_THREADS)")
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
    e.add_argument("--out", metavar="FILE", help="write the metrics and every region's predictions (JSON)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, i.e. all cores "
                   "or OMP_NUM_THREADS)")
    e.set_defaults(fn=_eval)
    cv = sub.add_parser("convert", help="official-format weights → a model bundle (describe / eval / chat)")
    cv.add_argument("overrides", nargs="*", help="dotted overrides of --config, e.g. model.num_views=3")
    cv.add_argument("--out", required=True, help="the bundle to write")
    cv.add_argument("--config", help="YAML with a model section: preset, fields, weight and vocabulary keys")
    cv.add_argument("--preset", default=None, help="model preset (default: the config's, else official)")
    cv.add_argument("--checkpoint", help="a DynRefer checkpoint, e.g. ckpts/vg1.2_5e.pth (model.finetuned)")
    cv.add_argument("--vit", help="EVA ViT-g weights, eva_vit_g.pth (model.vit_checkpoint)")
    cv.add_argument("--blip2", help="BLIP-2 checkpoint, blip2_pretrained_flant5xl.pth (model.pretrained)")
    cv.add_argument("--clip-text", help="EVA-CLIP weights, eva_clip_psz14.pt (model.text_encoder.weights)")
    cv.add_argument("--t5", help="the T5's Hugging Face directory, flan-t5-xl (model.llm.path)")
    cv.add_argument("--vocab", help="a data folder with tags.txt, classes.json and attributes.json")
    cv.add_argument("--tags", help="tag list, one per line (model.tag_list)")
    cv.add_argument("--classes", help="class names, JSON (model.ov_file)")
    cv.add_argument("--attributes", help="OVAD attributes, JSON (model.ovad_file)")
    cv.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    cv.set_defaults(fn=_convert)
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
    except Exception as err:  # noqa: BLE001 - a user's mistake is one line and exit 2; a defect still raises
        from dynrefer.app.errors import describe_user_error

        line = describe_user_error(err)
        if line is None:
            raise
        print(f"dynrefer {args.cmd}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
