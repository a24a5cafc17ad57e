"""Training and evaluating DynRefer under one view scheme: the building blocks of the main job
(:mod:`dynrefer.app.demo`) and of ``dynrefer train`` / ``dynrefer eval`` on a data folder.

A view scheme is a set of :class:`dynrefer.views.NestedViews` keyword arguments (``prior``, ``num_views``,
``fixed_coeffs``); training runs the engine (:func:`dynrefer.train.run_training`), evaluation describes every
region of a split and scores region-caption CIDEr, attribute mAP (OVAD protocol) and category accuracy.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from dynrefer.data.records import Annotations
    from dynrefer.model.config import DynReferConfig
    from dynrefer.model.dynrefer import DynRefer
    from dynrefer.train.config import Config


import numpy as np

from dynrefer.eval import java_available

__all__ = ["train_scheme", "training_annotations", "evaluate_model", "evaluate_scheme", "score", "dataset_root",
           "model_config", "train_on_folder", "evaluate_bundle"]


def _ptb_available() -> bool:
    """pycocoevalcap's PTB tokeniser needs Java and the installed pycocoevalcap jars; without them captions are
    compared lower-cased with punctuation removed (the synthetic captions have no other tokenisation issue)."""
    return java_available("tokenizer", "stanford-corenlp-3.4.1.jar")


def _simple_tokens(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def evaluate_model(model: DynRefer, data_dir: str, split: str, views_kwargs: Mapping[str, Any], size: int,
                   tasks: Sequence[str] = ("category", "attribute", "caption"), seed: Optional[int] = 0,
                   task_for_prior: Optional[str] = None) -> Tuple[Dict[Hashable, Dict[str, Any]], Annotations]:
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
    preds: Dict[Hashable, Dict[str, Any]] = {}
    by_image: Dict[str, list] = {}
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


def score(preds_caption: Mapping[Hashable, Mapping[str, Any]], preds_attr_cat: Mapping[Hashable, Mapping[str, Any]],
          data_dir: str, split: str) -> Dict[str, float]:
    """CIDEr (captions), attribute mAP (OVAD protocol) and category top-1 accuracy, ×100."""
    from dynrefer.data.readers import load_annotations
    from dynrefer.eval import caption_metrics, evaluate, ovad_ground_truth

    caps = load_annotations(os.path.join(data_dir, f"{split}_caption.json"))
    gts: Dict[Hashable, List[Any]] = {r.id: [r.caption] for r in caps.records}
    res: Dict[Hashable, List[Any]] = {k: [preds_caption[k]["caption"] or "<empty>"] for k in gts}
    ptb = _ptb_available()
    if not ptb:
        gts = {k: [_simple_tokens(c) for c in v] for k, v in gts.items()}
        res = {k: [_simple_tokens(c) or "empty" for c in v] for k, v in res.items()}
    cider = caption_metrics(gts, res, metrics=("CIDEr",), tokenize=ptb)["CIDEr"] * 100
    att = load_annotations(os.path.join(data_dir, f"{split}_attribute.json"))
    scores = {r.id: [s for _, s in preds_attr_cat[r.id]["attributes"]] for r in att.records}
    ovad = evaluate("ovad", scores, ovad_ground_truth(att))
    cat = load_annotations(os.path.join(data_dir, f"{split}_category.json"))
    hits = [preds_attr_cat[r.id]["category"] == r.category for r in cat.records]
    return {"CIDEr": cider, "attr_mAP": float(ovad["all"]), "acc": 100.0 * float(np.mean(hits))}


def evaluate_scheme(model: DynRefer, data_dir: str, split: str, views_kwargs: Mapping[str, Any], size: int,
                    seed: Optional[int] = 0,
                    predictions: Optional[Dict[Hashable, Dict[str, Any]]] = None) -> Tuple[Dict[str, float], int]:
    """Caption CIDEr, attribute mAP and category accuracy (×100) of ``model`` on ``split`` with one view scheme: the
    captions with the caption prior, categories and attributes with the attribute prior (for ``prior="task"``).
    Returns (metrics, number of regions); ``predictions``: a dict that receives every region's answers by id."""
    import torch

    with torch.no_grad():
        cap, _ = evaluate_model(model, data_dir, split, views_kwargs, size, tasks=("caption",), seed=seed,
                                task_for_prior="caption")
        ac, _ = evaluate_model(model, data_dir, split, views_kwargs, size, tasks=("category", "attribute"),
                               seed=seed, task_for_prior="attribute")
    if predictions is not None:
        for rid, p in cap.items():
            predictions[rid] = {"caption": p.get("caption"), "caption_score": p.get("caption_score"),
                                "caption_view_coeffs": p.get("view_coeffs")}
        for rid, p in ac.items():
            predictions.setdefault(rid, {}).update(
                {"category": p.get("category"), "category_score": p.get("category_score"),
                 "attributes": {n: s for n, s in p.get("attributes", [])}, "view_coeffs": p.get("view_coeffs")})
    return score(cap, ac, data_dir, split), len(cap)


#: Training settings a preset brings (the engine's own defaults are the official LAVIS run's): the tiny preset
#: learns the synthetic benchmark in minutes with these. Keys set in a config always win over them.
PRESET_RUN_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "tiny": {"init_lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 10, "weight_decay": 0.05, "max_grad_norm": 1.0,
             "batch_size_train": 16, "max_epoch": 24, "seed": 0},
}


def training_annotations(data_dir: str, split: str, classes: Sequence[str]) -> Annotations:
    """``<split>_caption.json`` of ``data_dir``, each region given its category from ``<split>_category.json`` when
    that file exists and names the region (same id, image and box) with a class of ``classes``
    (``category_index`` then indexes ``classes``): the labels the category loss (``model.category_weight`` > 0)
    trains on."""
    import dataclasses

    from dynrefer.data.readers import load_annotations

    ann = load_annotations(os.path.join(data_dir, f"{split}_caption.json"))
    path = os.path.join(data_dir, f"{split}_category.json")
    if not classes or not os.path.isfile(path):
        return ann
    index = {str(c): i for i, c in enumerate(classes)}
    cats = {r.id: r for r in load_annotations(path).records if r.category is not None}
    records = []
    for r in ann.records:
        c = cats.get(r.id)
        if (r.category is None and c is not None and c.image_id == r.image_id and tuple(c.box) == tuple(r.box)
                and str(c.category) in index):
            r = dataclasses.replace(r, category=c.category, category_id=c.category_id,
                                    category_index=index[str(c.category)])
        records.append(r)
    return dataclasses.replace(ann, records=records)


def train_scheme(cfg: DynReferConfig, data_dir: str, out_dir: str, views_kwargs: Mapping[str, Any],
                 texts: Iterable[str], tags: Sequence[str], classes: Sequence[str], attributes: Sequence[Any],
                 epochs: Optional[int] = None, seed: Optional[int] = None, batch_size: Optional[int] = None,
                 run_extra: Optional[Mapping[str, Any]] = None, sections: Optional[Mapping[str, Any]] = None,
                 evaluate: Optional[Callable[[DynRefer, str], Any]] = None,
                 preset: Optional[str] = None) -> Tuple[DynRefer, dict]:
    """Train DynRefer on ``train_caption.json`` of ``data_dir`` with the training engine (with the categories of
    ``train_category.json`` when ``cfg.category_weight`` > 0: :func:`training_annotations`). The ``run`` section is the
    training defaults of ``preset`` (:data:`PRESET_RUN_DEFAULTS`), then ``epochs`` / ``seed`` / ``batch_size`` when given,
    then ``run_extra`` (a config's explicit keys: they win). ``sections``: the config's ``model`` and ``datasets``
    sections, saved with the run's ``config.yaml`` so that it reproduces the run; ``evaluate(model, split)``: the
    engine's evaluation of ``run.valid_splits``. Returns (model, summary)."""
    from dynrefer.data.dataset import RegionDataset, collate_regions
    from dynrefer.model import build_dynrefer
    from dynrefer.train import run_training

    run = {"log_freq": 20, "progress_bar": False, "num_workers": 0, "save_epoch_ckpts": False,
           **PRESET_RUN_DEFAULTS.get(preset, {}), "output_dir": out_dir}  # type: ignore[arg-type]
    for key, value in (("max_epoch", epochs), ("seed", seed), ("batch_size_train", batch_size)):
        if value is not None:
            run[key] = value
    run.update(run_extra or {})
    seed = run.get("seed", 42)
    from dynrefer.views import NestedViews

    # with the category loss on (cfg.category_weight > 0) the regions carry their categories
    train_ann: Any = (training_annotations(data_dir, "train", classes) if cfg.category_weight > 0
                      else os.path.join(data_dir, "train_caption.json"))
    ds = RegionDataset(train_ann,
                       NestedViews(size=cfg.vision.image_size, seed=seed, **views_kwargs), training=True, seed=seed,
                       num_tags=len(tags))
    ds.collate_fn = collate_regions  # type: ignore[attr-defined]
    built: List[DynRefer] = []

    def build(_: Any) -> DynRefer:
        built.append(build_dynrefer(cfg, texts=texts, tag_list=tags, classes=classes, attributes=attributes,
                                    seed=seed))
        return built[-1]

    sections = sections or {}
    summary = run_training({"model": sections.get("model") or {}, "datasets": sections.get("datasets") or {},
                            "run": run}, build, lambda _: {"train": ds}, evaluate)
    model = built[-1]
    model.eval()
    return model, summary


def dataset_root(datasets: dict, split: str) -> str:
    """``datasets.root`` of a config, checked to hold the vocabularies and ``<split>_caption.json``."""
    from dynrefer.app.errors import UserError

    root = datasets.get("root")
    if not root:
        raise UserError("the config needs datasets.root: a folder with tags.txt, classes.json, attributes.json and "
                        "<split>_caption.json (+ _attribute.json, _category.json) as `dynrefer demo` writes them")
    need = ["tags.txt", "classes.json", "attributes.json", f"{split}_caption.json"]
    missing = [f for f in need if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise UserError(f"datasets.root {root} lacks {', '.join(missing)}")
    return root


def model_config(model_section: dict) -> DynReferConfig:
    """A :class:`dynrefer.model.DynReferConfig` from a config's ``model`` section (``preset`` + overrides; ``views``
    and ``arch`` are not model fields)."""
    from dynrefer.app.errors import UserError
    from dynrefer.model import DynReferConfig

    preset = model_section.get("preset", "tiny")
    over = {k: v for k, v in model_section.items() if k not in ("preset", "arch", "views")}
    try:
        cfg = DynReferConfig.from_preset(preset, **over)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"model: {e}") from None
    if cfg.num_views < 1:
        raise UserError(f"model.num_views: a region needs at least one view, got {cfg.num_views}")
    return cfg


def train_on_folder(cfg: Config, log: Callable[[str], Any] = print) -> Tuple[dict, str]:
    """``dynrefer train CONFIG``: train on the official-format annotations of ``datasets.root`` (or, with a
    ``datasets.conversations`` section, on region conversations: :func:`dynrefer.app.referring.train_conversations`)
    and write ``<run.output_dir>/model.pt``. ``cfg``: a :class:`dynrefer.train.Config`. Returns (summary, bundle
    path)."""
    from dynrefer.app.bundle import read_vocab, save_bundle
    from dynrefer.app.errors import UserError
    from dynrefer.data import AnnotationError
    from dynrefer.data.readers import load_annotations

    if "conversations" in cfg.datasets:
        from dynrefer.app.referring import ConversationConfigError, train_conversations

        try:
            _, summary, path = train_conversations(cfg, log=log)
        except (FileNotFoundError, AnnotationError, ConversationConfigError, ImportError) as e:
            raise UserError(str(e)) from None
        return summary, path
    m = dict(cfg.model)
    root = dataset_root(cfg.datasets, "train")
    mcfg = model_config(m)
    explicit = {k: cfg.run[k] for k in cfg.run_explicit if k in cfg.run}
    for split in cfg.run["valid_splits"] + cfg.run["test_splits"]:
        dataset_root(cfg.datasets, split)   # every split to evaluate has its files before training starts
    views = m.get("views", {"prior": "stochastic"})
    if not isinstance(views, dict):
        raise UserError(f"model.views: expected a mapping of NestedViews settings, got {type(views).__name__}")
    views = dict(views)
    views.setdefault("num_views", mcfg.num_views)
    from dynrefer.views import NestedViews

    try:  # the settings are checked before anything is built
        NestedViews(size=mcfg.vision.image_size, **views)
    except (TypeError, ValueError) as e:
        raise UserError(f"model.views: {e}") from None
    tags, classes, attributes = read_vocab(root)
    texts = [r.caption for r in load_annotations(os.path.join(root, "train_caption.json")).records if r.caption]
    eval_prior = "image" if views.get("prior", "stochastic") == "stochastic" else views["prior"]
    eval_views = {"prior": eval_prior, "num_views": views["num_views"],
                  **({"fixed_coeffs": views["fixed_coeffs"]} if "fixed_coeffs" in views else {})}

    def evaluate(model: DynRefer, split: str) -> Dict[str, float]:   # the engine logs the record and prints it
        return evaluate_scheme(model, root, split, eval_views, mcfg.vision.image_size)[0]

    model, summary = train_scheme(mcfg, root, explicit.get("output_dir", cfg.run["output_dir"]), views, texts, tags,
                                  classes, attributes, run_extra=explicit,
                                  sections={"model": cfg.model, "datasets": cfg.datasets}, evaluate=evaluate,
                                  preset=m.get("preset", "tiny"))
    out = explicit.get("output_dir", cfg.run["output_dir"])
    path = save_bundle(model, os.path.join(out, "model.pt"), texts, tags, classes, attributes,
                       {"num_views": views["num_views"], "size": mcfg.vision.image_size})
    return summary, path


def evaluate_bundle(cfg: Config, checkpoint: str, split: str = "val", prior: str = "image",
                    out: Optional[str] = None) -> Tuple[Dict[str, float], int, int]:
    """``dynrefer eval CONFIG --checkpoint BUNDLE [--out FILE]``: the bundle's model on ``split`` of
    ``datasets.root`` with ``prior``. Returns (metrics, number of regions, number of views); ``out``: a JSON file
    with the metrics, the settings and every region's answers (box, caption, category, attribute scores, the
    views used) next to its ground truth."""
    from dynrefer.app.bundle import load_bundle_model

    root = dataset_root(cfg.datasets, split)
    bundle, model = load_bundle_model(checkpoint)
    n = bundle["views"]["num_views"]
    preds: Any = {} if out else None
    m, regions = evaluate_scheme(model, root, split, {"prior": prior, "num_views": n}, bundle["views"]["size"],
                                 predictions=preds)
    if out:
        from dynrefer.data import load_annotations, write_json

        caps = load_annotations(os.path.join(root, f"{split}_caption.json"))
        rows = []
        for r in caps.records:
            p = preds.get(r.id, {})
            rows.append({"id": r.id, "image_id": r.image_id, "box": [float(v) for v in r.box],
                         "ground_truth": {"caption": r.caption, "category": r.category}, **p})
        write_json(out, {"metrics": m, "settings": {"split": split, "prior": prior, "num_views": n,
                                                    "checkpoint": checkpoint, "root": root},
                         "regions": rows})
    return m, regions, n
