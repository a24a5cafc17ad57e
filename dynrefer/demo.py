"""The built-in main job: a miniature of the paper's Table 7 on the synthetic benchmark, from real runs.

    dynrefer demo [--out DIR] [--quick] [--seed S] [--epochs E]

1. Generate the synthetic benchmark (``dynrefer.data.synthetic``): scenes of textured, coloured shapes whose
   captions name a neighbour ("a red striped circle left of a blue square"), so captions need context, attributes
   need fine detail and categories need the object.
2. Train the tiny DynRefer once per view scheme of Table 7 with the training engine (``dynrefer.train``):
   the cropped region alone (one view, t = 0); the whole image with RoI-Align of the region (one view, t = 1); a fixed
   pair (t = 0, 1); and stochastic nested views (the tight view + 2 random candidates per region and step).
3. Evaluate on the validation split: region-caption CIDEr, attribute mAP (OVAD protocol) and category accuracy;
   the stochastic model once per inference prior (none = random views, image = pHash search, task = the paper's
   per-task table).
4. Print the table and keep the stochastic model as a bundle (``model.pt``) that ``dynrefer describe`` loads.

Everything is local: no download, no GPU needed, ~6 minutes on 2 CPU cores (``--quick``: ~1 minute).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

# name, training views (NestedViews keyword arguments), inference schemes [(prior label, kwargs)]
SCHEMES = [
    ("cropped region", dict(prior="fixed", fixed_coeffs=(0.0,)), [("—", dict(prior="fixed", fixed_coeffs=(0.0,)))]),
    ("single view + RoI-Align", dict(prior="fixed", fixed_coeffs=(1.0,)),
     [("—", dict(prior="fixed", fixed_coeffs=(1.0,)))]),
    ("fixed 2 views (t = 0, 1)", dict(prior="fixed", fixed_coeffs=(0.0, 1.0)),
     [("—", dict(prior="fixed", fixed_coeffs=(0.0, 1.0)))]),
    ("stochastic 3 views", dict(prior="stochastic", num_views=3),
     [("none", dict(prior="none", num_views=3)), ("image", dict(prior="image", num_views=3)),
      ("task", dict(prior="task", num_views=3))]),
]


def markdown_table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _log(msg):
    print(msg, flush=True)


def _ptb_available():
    """pycocoevalcap's PTB tokeniser needs Java and the installed pycocoevalcap jars; without them captions are
    compared lower-cased with punctuation removed (the synthetic captions have no other tokenisation issue)."""
    from dynrefer.eval._resources import JavaUnavailableError, find_java, pycocoevalcap_file

    try:
        find_java()
        pycocoevalcap_file("tokenizer", "stanford-corenlp-3.4.1.jar")
        return True
    except JavaUnavailableError:
        return False


def _simple_tokens(text):
    import re

    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _vocab(data_dir):
    tags = [t.strip() for t in open(os.path.join(data_dir, "tags.txt"), encoding="utf-8") if t.strip()]
    classes = json.load(open(os.path.join(data_dir, "classes.json"), encoding="utf-8"))
    attributes = json.load(open(os.path.join(data_dir, "attributes.json"), encoding="utf-8"))
    return tags, classes, attributes


def build_bundle_model(bundle):
    """Rebuild a model saved by :func:`save_bundle` (tokenizers are rebuilt from the saved texts; deterministic)."""
    from dynrefer.model import DynReferConfig, build_dynrefer

    cfg = DynReferConfig.from_dict(bundle["config"])
    model = build_dynrefer(cfg, texts=bundle["texts"], tag_list=bundle["tags"], classes=bundle["classes"],
                           attributes=bundle["attributes"], seed=0)
    missing, unexpected = model.load_state_dict(bundle["model"], strict=False)
    external = model.external_llm_keys()  # a frozen LLM reloaded from config.llm.path
    if unexpected or [k for k in missing if not k.endswith("_embeds") and k not in external]:
        raise RuntimeError(f"bundle does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model


def save_bundle(model, path, texts, tags, classes, attributes, views):
    """Everything ``dynrefer describe`` needs in one file, written atomically."""
    from dynrefer.train.checkpoint import atomic_save

    external = model.external_llm_keys()  # a frozen LLM from config.llm.path is reloaded from there
    atomic_save({"format": "dynrefer-bundle-1", "config": model.config.to_dict(), "texts": list(texts),
                 "tags": list(tags), "classes": list(classes), "attributes": list(attributes), "views": views,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in external}}, path)
    return path


def load_bundle(path):
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model bundle at {path} (run `dynrefer demo` first, or pass --checkpoint)")
    try:  # tensors, lists, dicts and strings only: no pickled code is executed
        b = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a bundle" to the user
        raise ValueError(f"{path} is not a dynrefer model bundle ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(b, dict) or b.get("format") != "dynrefer-bundle-1":
        raise ValueError(f"{path} is not a dynrefer model bundle (written by `dynrefer demo` / save_bundle)")
    return b


def evaluate_model(model, data_dir, split, views_kwargs, size, tasks=("category", "attribute", "caption"),
                   seed=0, task_for_prior=None):
    """Describe every region of ``split`` with the given view scheme; return predictions keyed by region id."""
    import torch

    from dynrefer.data.dataset import load_image
    from dynrefer.data.readers import load_annotations
    from dynrefer.views import NestedViews

    ann = load_annotations(os.path.join(data_dir, f"{split}_caption.json"))
    kw = dict(views_kwargs)
    if kw.get("prior") == "task":
        kw["task"] = task_for_prior or "caption"
    nv = NestedViews(size=size, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    preds = {}
    by_image = {}
    for r in ann.records:
        by_image.setdefault(r.image_path, []).append(r)
    for path, recs in sorted(by_image.items()):
        img = load_image(path)
        boxes = np.array([r.box for r in recs], np.float32)
        out = nv(img, boxes, rng=rng)
        res = model.describe_views(torch.from_numpy(out["views"]), torch.from_numpy(out["boxes"]),
                                   coeffs=torch.from_numpy(out["coeffs"]), tasks=tasks)
        for r, p in zip(recs, res):
            preds[r.id] = p
    return preds, ann


def score(preds_caption, preds_attr_cat, data_dir, split):
    """CIDEr (captions), attribute mAP (OVAD protocol) and category top-1 accuracy, ×100."""
    from dynrefer.data.readers import load_annotations
    from dynrefer.eval import evaluate
    from dynrefer.eval.api import caption_metrics

    caps = load_annotations(os.path.join(data_dir, f"{split}_caption.json"))
    gts = {r.id: [r.caption] for r in caps.records}
    res = {k: [preds_caption[k]["caption"] or "<empty>"] for k in gts}
    ptb = _ptb_available()
    if not ptb:
        gts = {k: [_simple_tokens(c) for c in v] for k, v in gts.items()}
        res = {k: [_simple_tokens(c) or "empty" for c in v] for k, v in res.items()}
    cider = caption_metrics(gts, res, metrics=("CIDEr",), tokenize=ptb)["CIDEr"] * 100
    att = load_annotations(os.path.join(data_dir, f"{split}_attribute.json"))
    scores = {r.id: [s for _, s in preds_attr_cat[r.id]["attributes"]] for r in att.records}
    ovad = evaluate("ovad", scores, att.ovad_ground_truth())
    cat = load_annotations(os.path.join(data_dir, f"{split}_category.json"))
    hits = [preds_attr_cat[r.id]["category"] == r.category for r in cat.records]
    return {"CIDEr": cider, "attr_mAP": float(ovad["all"]), "acc": 100.0 * float(np.mean(hits))}


def evaluate_scheme(model, data_dir, split, views_kwargs, size, seed=0):
    """Caption CIDEr, attribute mAP and category accuracy (×100) of ``model`` on ``split`` with one view scheme: the
    captions with the caption prior, categories and attributes with the attribute prior (for ``prior="task"``).
    Returns (metrics, number of regions)."""
    import torch

    with torch.no_grad():
        cap, _ = evaluate_model(model, data_dir, split, views_kwargs, size, tasks=("caption",), seed=seed,
                                task_for_prior="caption")
        ac, _ = evaluate_model(model, data_dir, split, views_kwargs, size, tasks=("category", "attribute"),
                               seed=seed, task_for_prior="attribute")
    return score(cap, ac, data_dir, split), len(cap)


def train_scheme(cfg, data_dir, out_dir, views_kwargs, texts, tags, classes, attributes, epochs, seed, batch_size,
                 run_extra=None):
    """Train DynRefer on ``train_caption.json`` of ``data_dir`` with the training engine; ``run_extra`` adds or
    overrides keys of the engine's ``run`` section. Returns (model, summary)."""
    from dynrefer.data.dataset import RegionDataset, collate_regions
    from dynrefer.model import build_dynrefer
    from dynrefer.train import run_training
    from dynrefer.views import NestedViews

    ds = RegionDataset(os.path.join(data_dir, "train_caption.json"),
                       NestedViews(size=cfg.vision.image_size, seed=seed, **views_kwargs), training=True, seed=seed,
                       num_tags=len(tags))
    ds.collate_fn = collate_regions
    built = []

    def build(_):
        built.append(build_dynrefer(cfg, texts=texts, tag_list=tags, classes=classes, attributes=attributes,
                                    seed=seed))
        return built[-1]

    run = {"output_dir": out_dir, "max_epoch": epochs, "batch_size_train": batch_size, "init_lr": 3e-3,
           "min_lr": 1e-4, "warmup_steps": 10, "weight_decay": 0.05, "log_freq": 20, "progress_bar": False,
           "seed": seed, "num_workers": 0, "max_grad_norm": 1.0, "save_epoch_ckpts": False}
    run.update(run_extra or {})
    summary = run_training({"model": {}, "datasets": {}, "run": run}, build, lambda _: {"train": ds})
    model = built[-1]
    model.eval()
    return model, summary


def run_demo(out="dynrefer-demo", *, quick=False, seed=0, epochs=None, log=_log):
    """Run the miniature Table 7; returns the rows and writes ``table7.md`` and ``model.pt`` under ``out``."""
    import torch

    t_start = time.time()
    data_dir = os.path.join(out, "data")
    splits = {"train": 16, "val": 6} if quick else {"train": 96, "val": 32}
    epochs = epochs or (6 if quick else 24)
    # the tiny model's ops are too small to split across threads: one torch thread is several times faster than
    # two on a 2-core machine (the C kernels keep their own pool for the views)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, data_dir, splits, epochs, seed, log, t_start)
    finally:
        torch.set_num_threads(prev_threads)


def _run(out, data_dir, splits, epochs, seed, log, t_start):
    from dynrefer.data.readers import load_annotations
    from dynrefer.data.synthetic import generate
    from dynrefer.model import DynReferConfig

    log(f"== synthetic benchmark → {data_dir} (seed {seed}, {splits})")
    generate(data_dir, seed=seed, splits=splits)
    tags, classes, attributes = _vocab(data_dir)
    texts = [r.caption for r in load_annotations(os.path.join(data_dir, "train_caption.json")).records if r.caption]
    log(f"   {len(texts)} training regions, {len(classes)} categories, {len(attributes)} attributes, "
        f"{len(tags)} tags")
    rows = []
    final_model = None
    for name, train_views, evals in SCHEMES:
        n = len(train_views.get("fixed_coeffs", ())) or train_views.get("num_views", 3)
        cfg = DynReferConfig.from_preset("tiny", num_views=n)
        t0 = time.time()
        log(f"== train: {name} ({n} view{'s' if n > 1 else ''}, {epochs} epochs)")
        model, summary = train_scheme(cfg, data_dir, os.path.join(out, "runs", name.split()[0] + f"_{n}"),
                                      train_views, texts, tags, classes, attributes, epochs, seed,
                                      batch_size=16)
        loss = summary.get("last_train", {}).get("loss")
        log(f"   {summary['step']} steps in {time.time() - t0:.0f} s, last loss {loss if loss is None else round(loss, 3)}")
        for prior, ev in evals:
            m, _ = evaluate_scheme(model, data_dir, "val", ev, cfg.vision.image_size, seed=seed)
            rows.append([name, str(n), prior, f"{m['CIDEr']:.1f}", f"{m['attr_mAP']:.1f}", f"{m['acc']:.1f}"])
            log(f"   prior {prior}: CIDEr {m['CIDEr']:.1f}  attribute mAP {m['attr_mAP']:.1f}  "
                f"accuracy {m['acc']:.1f}")
        final_model = model
    bundle = save_bundle(final_model, os.path.join(out, "model.pt"), texts, tags, classes, attributes,
                         {"num_views": 3, "size": final_model.config.vision.image_size})
    header = ["view scheme", "views", "inference prior", "CIDEr", "attribute mAP", "accuracy"]
    table = markdown_table(rows, header)
    with open(os.path.join(out, "table7.md"), "w", encoding="utf-8") as f:
        f.write(f"Miniature Table 7 (synthetic benchmark, seed {seed}, tiny DynRefer, {epochs} epochs)\n\n")
        f.write(table + "\n")
    log("")
    log(f"Miniature Table 7 — synthetic benchmark, tiny DynRefer, validation split ({time.time() - t_start:.0f} s)")
    log(table)
    log(f"\nmodel bundle: {bundle}  (try: dynrefer describe IMAGE --box x1,y1,x2,y2 --checkpoint {bundle})")
    return rows
