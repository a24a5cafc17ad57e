"""The LAVIS-facing dataset and builder: official-format annotation files → datasets whose items and batches use
the official keys.

A dataset config (LAVIS layout, the official DynRefer keys)::

    datasets:
      vg1.2:
        vis_processor: {train: {name: dynrefer, image_size: 224}, eval: {name: dynrefer, image_size: 224}}
        text_processor: {train: {name: blip_caption}, eval: {name: blip_caption}}
        build_info:
          builder: dynrefer        # the builder the DynRefer task uses (default)
          num_views: 3             # views per region, the tight one included
          with_seg: False
          max_imgs: 1e7            # first N images of each annotation file
          max_objs: 1e7            # at most N regions per training item (with obj_lvl false)
          obj_lvl: True            # training items are single regions (else all regions of an image)
          tag_list: data/ram_tag_list.txt
          annotations:
            train: [data/vg/dynrefer/vg1.2/train.json]
            val: [data/vg/dynrefer/vg1.2/test.json]

dynrefer adds three optional ``build_info`` keys: ``image_root`` (overrides the files' ``dataset.image_root``),
``seed`` (makes view sampling and control words a function of (seed, epoch, index)) and ``control_phrases``
(training control candidates also from the caption's noun/adjective phrases, as the official ``parse_sentence``;
needs ``textblob``; default off, on in the shipped VG and RefCOCOg configs as in the official runs).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from dynrefer.lavis._common import as_int, config_file, get, read_yaml, to_plain

__all__ = ["DATASET_CONFIGS", "dataset_class", "builder_class", "load_dataset_config"]

#: dataset name -> its default config (relative to ``dynrefer/lavis/configs``); a builder is registered per name.
DATASET_CONFIGS = {
    "vg1.0": "datasets/vg/vg1.0.yaml",
    "vg1.2": "datasets/vg/vg1.2.yaml",
    "vgcoco": "datasets/vg/vgcoco.yaml",
    "vg_reg": "datasets/vg/vg_reg.yaml",
    "refcocog": "datasets/refcoco/refcocog.yaml",
    "ovad": "datasets/ovad/ovad.yaml",
    "coco": "datasets/coco/coco.yaml",
    "dynrefer_synthetic": "datasets/synthetic/synthetic.yaml",
}


def load_dataset_config(path: str) -> Any:
    """The config of the first dataset in a ``datasets:`` YAML file (as the official builder reads it)."""
    ds = read_yaml(path).get("datasets") or {}
    if not ds:
        raise ValueError(f"{path}: no 'datasets' section")
    return next(iter(ds.values()))


def _subset(ann: Any, max_imgs: int) -> Any:
    """The first ``max_imgs`` images of an annotation file and their regions."""
    from dynrefer.data.records import Annotations

    if max_imgs >= len(ann.images):
        return ann
    keep = dict(list(ann.images.items())[:max_imgs])
    return Annotations(records=[r for r in ann.records if r.image_id in keep], images=keep,
                       categories=ann.categories, attributes=ann.attributes, tag_vocab=ann.tag_vocab,
                       info=ann.info, path=ann.path)


def dataset_class() -> type:
    """The dataset class (PyTorch map-style; built here so importing dynrefer.lavis does not import torch)."""
    import torch

    from dynrefer.data.dataset import RegionDataset
    from dynrefer.data.readers import load_annotations

    class DynReferDataset(torch.utils.data.Dataset):
        """Regions of official-format annotation files, as the official DynRefer dataset serves them.

        Items: ``cascade_region_images`` [R, n, 3, S, S], ``cascade_region_bboxes`` [R, n, 4],
        ``cascade_region_ratios`` [R, n], ``caps`` (text-processed captions), ``tags`` int64 [R, 2T] (tag_set1
        in the first T columns, tag_set2 in the last T), ``cap_control_words`` (training only: sampled control
        sentences; the official model draws them itself, and at inference they come from the predicted tags),
        ``ids``, ``image_ids``; :meth:`collater` concatenates them (plus ``batch_idx``). Training items are single regions
        (``obj_lvl``), evaluation items all regions of one image. Built on :class:`dynrefer.data.RegionDataset`
        (images decoded once per item, views cut by the processor in batched calls); a missing image raises an
        error naming it instead of being skipped.
        """

        def __init__(self, vis_processor: Any, text_processor: Any, split: str, annotations: Any = None,
                     num_views: int = 2, with_seg: bool = False, max_imgs: Any = int(1e7), max_objs: Any = int(1e7),
                     obj_lvl: bool = True, tag_list: Optional[str] = None, image_root: Optional[str] = None,
                     seed: Optional[int] = None, control_phrases: bool = False, **kwargs: Any) -> None:
            files = to_plain(get(annotations, split)) if annotations is not None else None
            if not files:
                raise ValueError(f"build_info.annotations.{split}: no annotation file")
            if isinstance(files, str):
                files = [files]
            self.split = split
            self.training = split == "train"
            self.vis_processor, self.text_processor = vis_processor, text_processor
            if vis_processor is not None:   # as the official dataset configures its processor
                vis_processor.with_seg = bool(with_seg)
                vis_processor.num_views = int(num_views)
                vis_processor.split = split
            max_imgs, max_objs = as_int(max_imgs, "max_imgs"), as_int(max_objs, "max_objs")
            group = "region" if (self.training and obj_lvl) else "image"
            self.parts: List[Any] = []            # per file: its RegionDataset
            self.records: List[Dict[Any, Any]] = []   # per file: {region id: record}
            self.tag_vocab = None
            for f in files:
                ann = _subset(load_annotations(f, tags=tag_list, image_root=image_root), max_imgs)
                if self.tag_vocab is None:
                    self.tag_vocab = ann.tag_vocab
                self.records.append({r.id: r for r in ann.records})
                transform = None if vis_processor is None else vis_processor.transform
                self.parts.append(RegionDataset(
                    ann, transform, group=group, training=self.training, seed=seed,
                    max_regions=max_objs if (self.training and group == "image") else None,
                    num_tags=len(ann.tag_vocab) if ann.tag_vocab is not None else None,
                    control_phrases=bool(control_phrases) and self.training))
            self.num_tags = len(self.tag_vocab) if self.tag_vocab is not None else 0
            self._ends = np.cumsum([len(p) for p in self.parts])

        def __len__(self) -> int:
            return int(self._ends[-1]) if len(self._ends) else 0

        def set_epoch(self, epoch: int) -> None:
            for p in self.parts:
                p.set_epoch(epoch)

        def __getitem__(self, index: int) -> Dict[str, Any]:
            if not 0 <= index < len(self):
                raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
            k = int(np.searchsorted(self._ends, index, side="right"))
            item = self.parts[k][index - (int(self._ends[k - 1]) if k else 0)]
            recs = [self.records[k][i] for i in item["region_ids"]]
            T = self.num_tags
            tags = torch.zeros(len(recs), 2 * T, dtype=torch.long)
            for j, r in enumerate(recs):
                tags[j, list(r.tag_set1)] = 1
                tags[j, [T + t for t in r.tag_set2]] = 1
            caps = list(item["captions"])
            if self.text_processor is not None:
                caps = [self.text_processor(c) for c in caps]
            out = {"cascade_region_images": torch.from_numpy(item["views"]),
                   "cascade_region_bboxes": torch.from_numpy(item["boxes"]),
                   "cascade_region_ratios": torch.from_numpy(item["coeffs"].astype(np.float64)),
                   "caps": caps, "tags": tags, "ids": list(item["region_ids"]),
                   "image_ids": [item["image_id"]] * len(recs)}
            if self.training:
                out["cap_control_words"] = list(item["control"])
            return out

        def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
            batch: Dict[str, Any] = {k: torch.cat([s[k] for s in samples], 0)
                     for k in ("cascade_region_images", "cascade_region_bboxes", "cascade_region_ratios", "tags")}
            for k in ("caps", "cap_control_words", "ids", "image_ids"):
                if all(k in s for s in samples):
                    batch[k] = [v for s in samples for v in s[k]]
            batch["batch_idx"] = torch.cat([torch.full((len(s["ids"]),), i, dtype=torch.long)
                                            for i, s in enumerate(samples)])
            return batch

    DynReferDataset.__module__, DynReferDataset.__qualname__ = __name__, "DynReferDataset"
    return DynReferDataset


def builder_class(base: Optional[type] = None, registry: Any = None,
                  processors: Optional[Dict[str, type]] = None) -> type:
    """The ``dynrefer`` builder class (deriving from LAVIS's ``BaseDatasetBuilder`` when given).

    ``registry`` resolves processor names (``get_processor_class``); ``processors`` maps names to classes used when
    the registry lacks them (``dynrefer``, ``blip_caption``)."""
    bases = (base,) if base is not None else (object,)
    known: Dict[str, Any] = dict(processors or {})

    class DynReferBuilder(*bases):  # type: ignore[misc]
        """Builds ``{split: DynReferDataset}`` from a dataset config (see the module docstring). Subclasses
        registered under the dataset names (``vg1.2``, ``refcocog``, ...) carry their packaged default config,
        so LAVIS's config loader finds them by dataset name."""

        train_dataset_cls: Optional[type] = None   # set in build(): dataset_class() needs torch
        eval_dataset_cls: Optional[type] = None
        DATASET_CONFIG_DICT: Dict[str, str] = {}

        def __init__(self, cfg: Any = None) -> None:
            if cfg is None:
                cfg = self.default_config_path()
            if isinstance(cfg, (str, os.PathLike)):
                cfg = load_dataset_config(os.fspath(cfg))
            self.config = cfg
            self.data_type = get(cfg, "data_type", "images")
            self.vis_processors = {"train": None, "eval": None}
            self.text_processors = {"train": None, "eval": None}

        @classmethod
        def default_config_path(cls, type: str = "default") -> str:
            if type not in cls.DATASET_CONFIG_DICT:
                raise ValueError(f"{cls.__name__} has no {type!r} config; it has {sorted(cls.DATASET_CONFIG_DICT)}")
            return config_file(cls.DATASET_CONFIG_DICT[type])

        @staticmethod
        def _processor(cfg: Any) -> Any:
            if cfg is None:
                return None
            name = get(cfg, "name")
            pcls: Any = registry.get_processor_class(name) if registry is not None and hasattr(
                registry, "get_processor_class") else None
            pcls = pcls or known.get(name)
            if pcls is None:
                raise ValueError(f"processor {name!r} is not registered")
            return pcls.from_config(cfg)

        def build_processors(self) -> None:
            for kind, out in (("vis_processor", self.vis_processors), ("text_processor", self.text_processors)):
                pc = get(self.config, kind)
                if pc is not None:
                    out["train"] = self._processor(get(pc, "train"))
                    out["eval"] = self._processor(get(pc, "eval"))

        def build_datasets(self) -> Dict[str, Any]:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            return self.build()

        def build(self) -> Dict[str, Any]:
            self.build_processors()
            info = to_plain(get(self.config, "build_info")) or {}
            anns = info.get("annotations") or {}
            datasets: Dict[str, Any] = {}
            for split in anns:
                if split not in ("train", "val", "test") or not anns[split]:
                    continue   # the official configs list empty training files for evaluation-only sets
                train = split == "train"
                cls = self.train_dataset_cls if train else self.eval_dataset_cls
                if cls is None:
                    cls = type(self).train_dataset_cls = type(self).eval_dataset_cls = dataset_class()
                datasets[split] = cls(vis_processor=self.vis_processors["train" if train else "eval"],
                                      text_processor=self.text_processors["train" if train else "eval"],
                                      split=split, **info)
            return datasets

    DynReferBuilder.__module__, DynReferBuilder.__qualname__ = __name__, "DynReferBuilder"
    return DynReferBuilder
