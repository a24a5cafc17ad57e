"""The LAVIS-facing model ``dynrefer_t5``: config mapping and the class (built on a given base class).

:func:`model_class` returns a subclass of :class:`dynrefer.model.DynRefer` that also derives from LAVIS's
``BaseModel`` when given it, so parameter names stay the official ones (``cvem_align``, ``Qformer``, ``t5_proj``,
...) and LAVIS's own ``load_checkpoint`` / optimiser grouping see the model exactly as the official one.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from dynrefer.lavis._common import config_file, get, read_yaml

__all__ = ["MODEL_TYPES", "IGNORED_MODEL_KEYS", "config_from_lavis", "model_class", "read_class_names",
           "read_attributes", "vocabulary_file"]

#: model_type -> config file (relative to ``dynrefer/lavis/configs``), as ``PRETRAINED_MODEL_CONFIG_DICT``.
MODEL_TYPES = {
    "flant5xl": "models/dynrefer_flant5xl.yaml",          # EVA ViT-g + FlanT5-XL: the paper's model
    "flant5xl_vitL": "models/dynrefer_flant5xl_vitL.yaml",  # CLIP ViT-L variant of the official code
    "medium": "models/dynrefer_medium.yaml",               # a small real-shaped model (CPU experiments)
    "tiny": "models/dynrefer_tiny.yaml",                   # test size
}

#: Official model keys that are accepted and have no effect here (the ViT is always frozen, no drop path or
#: gradient checkpointing, no lemmatiser, one caption per region, beam search only).
IGNORED_MODEL_KEYS = ("drop_path_rate", "use_grad_checkpoint", "freeze_vit", "first_word_control",
                      "apply_lemmatizer", "num_return_sequences", "do_sample", "top_p", "temperature", "prompt",
                      "model_type", "load_pretrained", "arch")


def config_from_lavis(cfg: Any) -> Any:
    """A :class:`DynReferConfig` from a LAVIS model config (a dict or an OmegaConf node)."""
    from dynrefer.model.config import DynReferConfig

    vit = get(cfg, "vit_model", "eva_clip_g")
    if vit == "eva_clip_g":
        base = DynReferConfig.from_preset("official")
    elif vit in ("clip_L", "clip_vit_L", "vit_large"):
        base = DynReferConfig.from_preset("official", vision={"arch": "clip", "width": 1024, "depth": 23,
                                                              "num_heads": 16, "mlp_ratio": 4.0, "eps": 1e-5})
    elif vit in ("tiny", "medium"):
        base = DynReferConfig.from_preset(vit)
    else:
        raise ValueError(f"vit_model must be 'eva_clip_g', 'clip_L', 'tiny' or 'medium', got {vit!r}")
    if get(cfg, "finetune_llm", False):
        raise ValueError("finetune_llm=True (LoRA on the LLM) is not supported; the LLM stays frozen")
    d = base.to_dict()
    d["num_views"] = int(get(cfg, "num_views", 2))
    d["vision"]["image_size"] = int(get(cfg, "img_size", d["vision"]["image_size"]))
    d["qformer"]["num_query_tokens"] = int(get(cfg, "num_query_token", d["qformer"]["num_query_tokens"]))
    d["max_txt_len"] = int(get(cfg, "max_txt_len", d["max_txt_len"]))
    d["vit_precision"] = str(get(cfg, "vit_precision", d["vit_precision"]))
    for key in ("full_drop_ratio", "drop_ratio"):
        if get(cfg, key) is not None:
            d[key] = float(get(cfg, key))
    bert = get(cfg, "tag_bert_config")
    if bert:  # the decoders' depth and heads; width 256 / FFN 1024 as the official code forces them
        from dynrefer.data import read_json

        b = read_json(bert)
        d["head"]["num_layers"] = int(b.get("num_hidden_layers", d["head"]["num_layers"]))
        d["head"]["num_heads"] = int(b.get("num_attention_heads", d["head"]["num_heads"]))
        d["head"]["layer_norm_eps"] = float(b.get("layer_norm_eps", d["head"]["layer_norm_eps"]))
    gen = d["generation"]
    for ours, theirs in (("tag_threshold", "tag_thr"), ("num_beams", "num_beams"),
                         ("max_new_tokens", "max_new_tokens"), ("min_length", "min_length"),
                         ("length_penalty", "length_penalty"), ("repetition_penalty", "repetition_penalty"),
                         ("chunk_size", "split_size")):
        v = get(cfg, theirs)
        if v is not None:
            gen[ours] = type(gen[ours])(v)
    # weight files, loaded by the factory in LAVIS's order (ViT, T5, text tower, BLIP-2, DynRefer checkpoint)
    d["vit_checkpoint"] = get(cfg, "vit_checkpoint") or None
    d["pretrained"] = get(cfg, "pretrained") or None
    d["finetuned"] = (get(cfg, "finetuned") or None) if get(cfg, "load_finetuned", True) else None
    if get(cfg, "t5_model"):
        d["llm"]["path"] = str(get(cfg, "t5_model"))
    if get(cfg, "clip_text_weights"):
        d["text_encoder"]["weights"] = str(get(cfg, "clip_text_weights"))
    return DynReferConfig.from_dict(d)


def read_class_names(path: str) -> List[str]:
    """Class names from a JSON file: a list of names (the official ``coco.json``), of ``{"name": ...}`` records,
    or a COCO file's ``categories``."""
    from dynrefer.data import read_json

    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("categories", data.get("classes"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of class names or a COCO file with categories")
    return [c["name"] if isinstance(c, dict) else str(c) for c in data]


def read_attributes(path: str) -> List[Any]:
    """Attribute records from a JSON file: OVAD's ``attributes`` (the official ``ovad2000.json``) or a list of
    records / ``"type:syn1/syn2"`` names."""
    from dynrefer.data import read_json

    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("attributes")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of attributes or an OVAD file with 'attributes'")
    return data


_GEN_KEYS = {"num_beams": "num_beams", "max_new_tokens": "max_new_tokens", "max_len": "max_new_tokens",
             "min_length": "min_length", "min_len": "min_length", "length_penalty": "length_penalty",
             "repetition_penalty": "repetition_penalty"}


def _read_tags(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [t.strip() for t in f if t.strip()]


# what each vocabulary of a model config is, and how to get the packaged configs' files
_VOCABS = {"tag_list": "the tag vocabulary, one tag per line", "ov_file": "the class names",
           "ovad_file": "the attribute vocabulary"}


def _hint(path: str) -> str:
    rel = os.path.normpath(str(path)).replace(os.sep, "/")
    if rel.startswith("data/synthetic/"):
        return "generate the synthetic benchmark there first: python -m dynrefer.data synthetic data/synthetic"
    if rel.startswith("data/vocab/"):
        return ("data/vocab/ holds the official vocabularies (RAM's tag list ram_tags.txt, the COCO class names "
                "coco_classes.json, the OVAD attributes ovad_attributes.json): run from the folder that holds "
                "data/, or set the key to your file")
    return "paths in LAVIS configs are relative to the working directory: run from the folder they start from, " \
           "or set the key to an absolute path"


def vocabulary_file(cfg: Any, key: str) -> Optional[str]:
    """The path of the vocabulary ``key`` (``tag_list``, ``ov_file``, ``ovad_file``) of a model config, checked
    to exist: a missing file raises ``FileNotFoundError`` naming the key, the path, the working directory it was
    looked up from and how to get it (e.g. the command that generates the synthetic benchmark's vocabularies)."""
    path = get(cfg, key)
    if path and not os.path.isfile(path):
        raise FileNotFoundError(f"model.{key} ({_VOCABS.get(key, 'a vocabulary')}) is {path!r}, which is not a "
                                f"file (looked up from the working directory {os.getcwd()}); {_hint(path)}")
    return path


def _is_url(s: Any) -> bool:
    return isinstance(s, str) and s.split("://", 1)[0] in ("http", "https", "gs", "s3")


def model_class(base: Optional[type] = None) -> type:
    """The ``dynrefer_t5`` class: :class:`DynRefer` plus LAVIS's model API, also deriving from ``base`` (LAVIS's
    ``BaseModel``) when given."""
    import torch

    from dynrefer.model.dynrefer import DynRefer

    bases = (DynRefer,) if base is None or issubclass(DynRefer, base) else (DynRefer, base)

    class DynReferT5(*bases):  # type: ignore[misc]
        """DynRefer under LAVIS's model API (``from_config``, ``from_pretrained``, ``forward(samples)``,
        ``generate``, ``predict_answers``, ``load_checkpoint``). Batches use the official keys:
        ``cascade_region_images`` [R, n, 3, S, S], ``cascade_region_bboxes`` [R, n, 4], ``caps`` (R captions),
        ``tags`` [R, 2T] (the two tag sets side by side) or [R, T], ``ids``; optional ``cap_control_words``.
        dynrefer's own keys (``views``, ``boxes``, ``text_output``, ``control``) are accepted too."""

        PRETRAINED_MODEL_CONFIG_DICT = dict(MODEL_TYPES)

        # ---- construction ---------------------------------------------------------------------------------
        @classmethod
        def default_config_path(cls, model_type: str = "flant5xl") -> str:
            """The packaged YAML of ``model_type`` (an absolute path; LAVIS's default joins it to its own root)."""
            if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
                raise ValueError(f"unknown model_type {model_type!r}; choose from "
                                 f"{', '.join(cls.PRETRAINED_MODEL_CONFIG_DICT)}")
            return config_file(cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])

        @classmethod
        def from_pretrained(cls, model_type: str = "flant5xl") -> Any:
            return cls.from_config(read_yaml(cls.default_config_path(model_type))["model"])

        @classmethod
        def from_config(cls, cfg: Any) -> Any:
            """Build from a LAVIS model config (see :func:`config_from_lavis` for the architecture keys).

            Vocabularies: ``tag_list`` (required; one tag per line), ``ov_file`` (class names), ``ovad_file``
            (attributes), ``texts`` (extra words for the word-level tokenizers of a model without ``t5_model``).
            Weights (local files only, loaded by :func:`dynrefer.model.factory.build_dynrefer` in LAVIS's order,
            large frozen towers built on the meta device and assigned, a report per file): ``vit_checkpoint``
            (``eva_vit_g.pth``, which LAVIS itself downloads), ``t5_model`` (a Hugging Face directory),
            ``clip_text_weights`` (EVA-CLIP text weights), ``pretrained`` (a BLIP-2 checkpoint), ``finetuned`` (a
            DynRefer checkpoint; loaded unless ``load_finetuned`` is false). An absent file is an error naming
            its key and path. ``seed`` fixes the random initialisation."""
            from dynrefer.model.factory import build_dynrefer

            config = config_from_lavis(cfg)
            tag_file = vocabulary_file(cfg, "tag_list")
            if not tag_file:
                raise ValueError("the LAVIS config needs tag_list (a file with one tag per line)")
            ov_file, ovad_file = vocabulary_file(cfg, "ov_file"), vocabulary_file(cfg, "ovad_file")
            tags = _read_tags(tag_file)
            classes = read_class_names(ov_file) if ov_file else []
            attributes = read_attributes(ovad_file) if ovad_file else []
            seed = get(cfg, "seed")
            model: Any = build_dynrefer(config, texts=list(get(cfg, "texts", []) or []), tag_list=tags,
                                        classes=classes, attributes=attributes,
                                        embed_cache_dir=get(cfg, "embed_cache_dir"),
                                        seed=None if seed is None else int(seed), model_cls=cls)
            return model

        # ---- checkpoints ----------------------------------------------------------------------------------
        def load_checkpoint(self, url_or_filename: str) -> Any:
            """Load a DynRefer checkpoint (``{"model": state_dict}``, official names) from a local file."""
            from dynrefer.model.loading import load_dynrefer_checkpoint

            if _is_url(url_or_filename):
                raise ValueError(f"checkpoints are read from local files only, got the URL {url_or_filename!r}")
            return load_dynrefer_checkpoint(self, url_or_filename)

        def load_from_pretrained(self, url_or_filename: str) -> Any:
            """Load a BLIP-2 checkpoint (ViT, Q-Former, t5_proj) from a local file."""
            from dynrefer.model.loading import load_blip2_checkpoint

            if _is_url(url_or_filename):
                raise ValueError(f"checkpoints are read from local files only, got the URL {url_or_filename!r}")
            return load_blip2_checkpoint(self, url_or_filename)

        def before_evaluation(self, **kwargs: Any) -> None:
            pass

        # ---- batches --------------------------------------------------------------------------------------
        @staticmethod
        def dynrefer_samples(samples: Dict[str, Any]) -> Dict[str, Any]:
            """The batch in dynrefer's keys (``views``, ``boxes``, ``text_output``, ``tags``, ``control_words``)."""
            def pick(*keys: str) -> Any:
                for k in keys:
                    if k in samples:
                        return samples[k]
                return None

            views, boxes = pick("cascade_region_images", "views"), pick("cascade_region_bboxes", "boxes")
            if views is None or boxes is None:
                raise KeyError("samples need cascade_region_images and cascade_region_bboxes (or views and boxes)")
            out = {"views": torch.as_tensor(views), "boxes": torch.as_tensor(boxes)}
            for ours, keys in (("text_output", ("caps", "text_output")), ("tags", ("tags",)),
                               ("control_words", ("cap_control_words", "control_words", "control"))):
                v = pick(*keys)
                if v is not None:
                    out[ours] = v
            return out

        def forward(self, samples: Dict[str, Any]) -> Dict[str, Any]:
            """Training forward: ``{"loss", "loss_llm", "loss_tag", "loss_rtc"}``."""
            return super().forward(self.dynrefer_samples(samples))

        @torch.no_grad()
        def generate(self, samples: Dict[str, Any], use_nucleus_sampling: bool = False,
                     num_beams: Optional[int] = None, max_length: Optional[int] = None,
                     min_length: Optional[int] = None, top_p: Optional[float] = None,
                     repetition_penalty: Optional[float] = None, length_penalty: Optional[float] = None,
                     num_captions: int = 1, temperature: Optional[float] = None) -> List[str]:
            """One caption per region (LAVIS's ``generate`` signature; ``max_length`` counts new tokens). The
            control sentence is ``cap_control_words`` when given, else the predicted tags above ``tag_thr``."""
            if use_nucleus_sampling or num_captions != 1:
                raise ValueError("generate: only beam search with one caption per region is supported")
            s = self.dynrefer_samples(samples)
            gen = {k: v for k, v in (("num_beams", num_beams), ("max_new_tokens", max_length),
                                     ("min_length", min_length), ("repetition_penalty", repetition_penalty),
                                     ("length_penalty", length_penalty)) if v is not None}
            res = self.describe_views(s["views"], s["boxes"], tasks=("caption",),
                                      control_words=s.get("control_words"), **gen)
            return [r["caption"] for r in res]

        @torch.no_grad()
        def predict_answers(self, samples: Dict[str, Any], *args: Any, **kwargs: Any) -> List[Dict[str, Any]]:
            """The official evaluation output, one dict per region: ``id``, ``caption``, ``score`` (exp of the
            beam score), ``tag_set1`` / ``tag_set2`` (predicted tags), ``attr`` (a score per attribute),
            ``cls`` (a score per class). Generation settings in ``kwargs`` (``num_beams``, ``max_new_tokens`` or
            LAVIS's ``max_len``, ``min_length`` / ``min_len``, ``length_penalty``, ``repetition_penalty``)
            override the config's; other keyword arguments LAVIS tasks pass are ignored."""
            s = self.dynrefer_samples(samples)
            tasks = ["tag", "caption"]
            if self.classes:
                tasks.insert(0, "category")
            if self.attributes:
                tasks.insert(0, "attribute")
            gen = {ours: kwargs[k] for k, ours in _GEN_KEYS.items() if kwargs.get(k) is not None}
            res = self.describe_views(s["views"], s["boxes"], tasks=tuple(tasks),
                                      control_words=samples.get("cap_control_words"), **gen)
            ids = samples.get("ids")
            ids = list(range(len(res))) if ids is None else list(ids)
            if len(ids) != len(res):
                raise ValueError(f"{len(ids)} ids for {len(res)} regions")
            out = []
            for i, r in zip(ids, res):
                tags = [t for t, _ in r.get("tags", [])]
                out.append({"id": i.item() if hasattr(i, "item") else i, "caption": r["caption"],
                            "score": r["caption_score"], "tag_set1": tags, "tag_set2": list(tags),
                            "attr": [sc for _, sc in r.get("attributes", [])], "cls": r.get("category_scores", [])})
            return out

    DynReferT5.__module__, DynReferT5.__qualname__ = __name__, "DynReferT5"
    return DynReferT5
