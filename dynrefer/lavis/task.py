"""The LAVIS-facing task ``dynrefer``: builds the model and datasets from a LAVIS config, trains with the model's
loss, predicts with ``predict_answers`` and scores the predictions with :func:`dynrefer.eval.evaluate`.

Which benchmark an evaluation is follows the official rule on ``run.eval_dataset_name``: a name containing
``reg`` or ``refcoco`` is region captioning (METEOR, CIDEr), ``ovad`` attribute detection (box-oracle mAP),
``coco`` region recognition (accuracy, mAP), any other ``vg`` name dense captioning (mAP). The ground truth is
the evaluated annotation file, or ``run.eval_gt_file`` where the regions evaluated are not the ground truth
(predicted boxes); ``run.eval_benchmark`` names the benchmark outright (e.g. for the synthetic set),
``run.caption_metrics`` the caption metrics (default METEOR and CIDEr). ``agg_metrics`` (what LAVIS's runner
tracks) is METEOR, mAP ``all``, accuracy and mAP respectively.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from dynrefer.lavis._common import get, to_plain

__all__ = ["task_class", "benchmark_of"]

log = logging.getLogger("dynrefer.lavis")


def benchmark_of(name: Optional[str]) -> Optional[str]:
    """``"caption"``, ``"ovad"``, ``"coco"``, ``"densecap"`` or None for an ``eval_dataset_name``."""
    name = str(name or "")
    if "reg" in name or "refcoco" in name:
        return "caption"
    if "ovad" in name:
        return "ovad"
    if name == "coco":
        return "coco"
    if "vg" in name or "grit" in name:
        return "densecap"
    return None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def task_class(base: Optional[type] = None, registry: Any = None) -> type:
    """The ``dynrefer`` task class (deriving from LAVIS's ``BaseTask`` when given); ``registry`` resolves model
    and builder names."""
    bases = (base,) if base is not None else (object,)

    class DynReferTask(*bases):  # type: ignore[misc]
        def __init__(self, evaluate: bool = False, eval_dataset_name: Optional[str] = None,
                     report_metric: bool = True, visualize: bool = False, accum_grad_iters: int = 1,
                     caption_metrics: Sequence[str] = ("METEOR", "CIDEr"), eval_gt_file: Optional[str] = None,
                     eval_benchmark: Optional[str] = None, **kwargs: Any) -> None:
            super().__init__()
            self.evaluate = bool(evaluate)
            self.eval_dataset_name = eval_dataset_name
            self.report_metric = bool(report_metric)
            self.visualize = bool(visualize)   # accepted; no drawings are made
            self.accum_grad_iters = int(accum_grad_iters)
            self.caption_metrics = tuple(caption_metrics)
            self.eval_gt_file = eval_gt_file
            if eval_benchmark not in (None, "caption", "ovad", "coco", "densecap"):
                raise ValueError(f"eval_benchmark must be caption, ovad, coco or densecap, got {eval_benchmark!r}")
            self.eval_benchmark = eval_benchmark
            self.eval_dataset_ann_path: Optional[str] = None
            self.inst_id_key = "instance_id"

        @classmethod
        def setup_task(cls, cfg: Any = None, **kwargs: Any) -> Any:
            run = to_plain(get(cfg, "run_cfg")) if cfg is not None else {}
            return cls(**dict(run or {}, **kwargs))

        # ---- building --------------------------------------------------------------------------------------
        def build_model(self, cfg: Any) -> Any:
            mcfg = get(cfg, "model_cfg")
            arch = get(mcfg, "arch")
            model_cls = registry.get_model_class(arch) if registry is not None else None
            if model_cls is None:
                raise ValueError(f"model arch {arch!r} is not registered")
            model = model_cls.from_config(mcfg)
            ckpt = get(get(cfg, "run_cfg"), "load_ckpt_path")
            for path in ([ckpt] if isinstance(ckpt, str) else list(ckpt or [])):
                model.load_checkpoint(url_or_filename=path)
            return model

        def build_datasets(self, cfg: Any) -> Dict[str, Dict[str, Any]]:
            """``{dataset name: {split: dataset}}``; only the evaluated dataset keeps its val/test splits."""
            dcfg = get(cfg, "datasets_cfg")
            names = list(dcfg or [])
            if not names:
                raise ValueError("the config has no datasets")
            eval_name = self.eval_dataset_name or names[0]
            if eval_name not in names:
                raise ValueError(f"eval_dataset_name {eval_name!r} is not among the datasets {names}")
            self.eval_dataset_name = eval_name
            val = get(get(get(dcfg[eval_name], "build_info"), "annotations"), "val")
            val = to_plain(val)
            self.eval_dataset_ann_path = (val[0] if isinstance(val, list) and val else val) or None
            out: Dict[str, Dict[str, Any]] = {}
            for name in names:
                c = dcfg[name]
                builder_name = get(get(c, "build_info"), "builder", "dynrefer")
                builder_cls = registry.get_builder_class(builder_name) if registry is not None else None
                if builder_cls is None:
                    raise ValueError(f"dataset builder {builder_name!r} is not registered")
                ds = builder_cls(c).build_datasets()
                if name != eval_name:
                    ds.pop("val", None)
                    ds.pop("test", None)
                out[name] = ds
            return out

        # ---- steps -----------------------------------------------------------------------------------------
        def valid_step(self, model: Any, samples: Dict[str, Any]) -> List[Dict[str, Any]]:
            return model.predict_answers(samples=samples)

        def before_evaluation(self, model: Any, dataset: Any, **kwargs: Any) -> None:
            model.before_evaluation(dataset=dataset, task_type=type(self))

        def after_evaluation(self, val_result: List[Dict[str, Any]], split_name: str = "val",
                             epoch: Optional[int] = None, result_dir: Optional[str] = None,
                             **kwargs: Any) -> Dict[str, Any]:
            """Gather every process's predictions (under torch.distributed; duplicates of a region, from a
            sampler's padding, count once), write them (``{split}_predictions.json`` in LAVIS's result_dir, when
            it has one) and return the metrics of :meth:`report_metrics` (``{"agg_metrics": 0}`` with
            ``report_metric`` off). Only the main process writes and scores; the others return
            ``{"agg_metrics": 0}``."""
            val_result, is_main = _gather_predictions(val_result)
            if not is_main:
                return {"agg_metrics": 0.0}
            result_dir = result_dir or (registry.get_path("result_dir") if registry is not None and hasattr(
                registry, "get_path") else None)
            if result_dir:
                from dynrefer.data.readers import write_json

                os.makedirs(result_dir, exist_ok=True)
                write_json(os.path.join(result_dir, f"{split_name}_predictions.json"),
                           json.loads(json.dumps(val_result, default=_json_default)))
            if not self.report_metric:
                return {"agg_metrics": 0.0}
            return self.report_metrics(val_result)

        # ---- metrics ---------------------------------------------------------------------------------------
        def report_metrics(self, predictions: Iterable[Dict[str, Any]], annotations: Any = None,
                           benchmark: Optional[str] = None) -> Dict[str, Any]:
            """Score ``predictions`` (``predict_answers`` dicts) against ``annotations`` (a path or loaded
            :class:`~dynrefer.data.Annotations`; default ``eval_gt_file`` or the evaluated file) with
            :func:`dynrefer.eval.evaluate`; metrics ×100 plus ``agg_metrics``."""
            from dynrefer import eval as dr_eval
            from dynrefer.data import Annotations, load_annotations

            kind = benchmark or self.eval_benchmark or benchmark_of(self.eval_dataset_name)
            if kind is None:
                log.info("no metric for dataset %r", self.eval_dataset_name)
                return {"agg_metrics": 0.0}
            src = annotations or self.eval_gt_file or self.eval_dataset_ann_path
            if src is None:
                raise ValueError("no ground truth: build the datasets first or set run.eval_gt_file")
            ann = src if isinstance(src, Annotations) else load_annotations(src)
            by_id = {p["id"]: p for p in predictions}
            if kind == "caption":
                gts, key_of = ann.caption_references("box")
                res: Dict[Any, str] = {}
                for rid, key in key_of.items():
                    if rid in by_id and key not in res:
                        res[key] = by_id[rid]["caption"]
                missing = [k for k in gts if k not in res]
                if missing:
                    raise ValueError(f"no prediction for {len(missing)} evaluated regions, e.g. {missing[:3]}")
                m = dr_eval.evaluate("caption", res, gts, metrics=self.caption_metrics)
                agg = m.get("METEOR", m.get("CIDEr", 0.0))
            elif kind == "ovad":
                gt = dr_eval.ovad_ground_truth(ann)
                ids = gt.annotation_ids.tolist()
                _require(by_id, ids)
                m = dr_eval.evaluate("ovad", {i: by_id[i]["attr"] for i in ids}, gt)
                agg = m["all"]
            elif kind == "coco":
                coco_gt = ann.coco_ground_truth()
                _require(by_id, coco_gt["ids"])
                m = dr_eval.evaluate("coco", {i: by_id[i]["cls"] for i in coco_gt["ids"]}, coco_gt,
                                     num_classes=len(ann.categories))
                agg = m["acc"]
            else:   # dense captioning: the evaluated regions (with their caption scores) against the ground truth
                evaluated = load_annotations(self.eval_dataset_ann_path) if self.eval_dataset_ann_path else ann
                preds: Dict[Any, Dict[str, List[Any]]] = {}
                for img in ann.images:
                    preds[img] = {"boxes": [], "scores": [], "captions": []}
                _require(by_id, [r.id for r in evaluated.records if r.image_id in preds])
                for r in evaluated.records:
                    if r.image_id not in preds:
                        continue
                    p = by_id[r.id]
                    det = r.extra.get("grit_result")   # predicted boxes carry their detector's score
                    score = det.get("score", p["score"]) if isinstance(det, dict) else p["score"]
                    preds[r.image_id]["boxes"].append(list(r.box))
                    preds[r.image_id]["scores"].append(float(score))
                    preds[r.image_id]["captions"].append(p["caption"])
                m = dr_eval.evaluate("densecap", preds, ann.densecap_ground_truth())
                agg = m.get("map", 0.0)
            m = dict(m)
            m["agg_metrics"] = float(agg)
            log.info("%s metrics: %s", self.eval_dataset_name, {k: v for k, v in m.items() if "breakdown" not in k})
            return m

    if not hasattr(DynReferTask, "evaluation"):   # LAVIS's BaseTask has its own loop (logging, barriers)
        DynReferTask.evaluation = _evaluation
    if not hasattr(DynReferTask, "train_step"):   # LAVIS's own matches its training loop (1.0.2: the loss;
        DynReferTask.train_step = _train_step     # later releases: (loss, loss_dict)); model(samples) has "loss"
    DynReferTask.__module__, DynReferTask.__qualname__ = __name__, "DynReferTask"
    return DynReferTask


def _train_step(self: Any, model: Any, samples: Dict[str, Any]) -> Any:
    """The loss to back-propagate."""
    return model(samples)["loss"]


def _require(by_id: Dict[Any, Any], ids: Iterable[Any]) -> None:
    """Every evaluated region has a prediction: evaluation never drops samples silently."""
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} evaluated regions, e.g. {missing[:3]}")


def _gather_predictions(predictions: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], bool]:
    """(all processes' predictions, de-duplicated by id in rank order; whether this is the main process)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return predictions, True
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return predictions, True
    parts: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(predictions))
    seen: set = set()
    merged: List[Dict[str, Any]] = []
    for part in parts:
        for p in part:
            if p["id"] not in seen:
                seen.add(p["id"])
                merged.append(p)
    return merged, dist.get_rank() == 0


def _evaluation(self: Any, model: Any, data_loader: Iterable[Dict[str, Any]], cuda_enabled: bool = True
                ) -> List[Dict[str, Any]]:
    """Predictions for every batch of ``data_loader`` (``valid_step`` per batch)."""
    import torch

    out: List[Dict[str, Any]] = []
    device = next(model.parameters()).device
    for samples in data_loader:
        samples = {k: (v.to(device) if isinstance(v, torch.Tensor) and cuda_enabled else v)
                   for k, v in samples.items()}
        out.extend(self.valid_step(model=model, samples=samples))
    return out
