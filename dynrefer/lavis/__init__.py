"""LAVIS compatibility: register DynRefer under the official name ``dynrefer_t5`` and speak LAVIS's config and
sample keys.

    from dynrefer.lavis import register
    register()            # into lavis.common.registry.registry (needs salesforce-lavis)
    register(registry)    # into any object with ``register_model(name)`` (a decorator factory), e.g. a test double

The registered class builds from a LAVIS model config (``from_config``; official keys: num_views, vit_model,
img_size, num_query_token, t5_model (a local Hugging Face directory), tag_list (a file), max_txt_len, tag_thr,
num_beams, max_new_tokens, min_length, length_penalty, repetition_penalty, vit_precision, pretrained /
finetuned (local checkpoints)) and accepts LAVIS batches: cascade_region_images [R,n,3,S,S],
cascade_region_bboxes [R,n,4], caps, tags, ids.
"""
from __future__ import annotations

__all__ = ["register", "config_from_lavis", "LAVIS_NAME", "lavis_model_class"]

LAVIS_NAME = "dynrefer_t5"


def _get(cfg, key, default=None):
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def config_from_lavis(cfg):
    """A :class:`DynReferConfig` from a LAVIS model config (a dict or an OmegaConf node)."""
    from dynrefer.model.config import DynReferConfig

    vit = _get(cfg, "vit_model", "eva_clip_g")
    if vit == "eva_clip_g":
        base = DynReferConfig.from_preset("official")
    elif vit in ("clip_L", "clip_vit_L", "vit_large"):
        base = DynReferConfig.from_preset("official", vision={"arch": "clip", "width": 1024, "depth": 23,
                                                              "num_heads": 16, "mlp_ratio": 4.0, "eps": 1e-5})
    elif vit in ("tiny", "medium"):
        base = DynReferConfig.from_preset(vit)
    else:
        raise ValueError(f"vit_model must be 'eva_clip_g', 'clip_L', 'tiny' or 'medium', got {vit!r}")
    d = base.to_dict()
    d["num_views"] = int(_get(cfg, "num_views", 2))
    d["vision"]["image_size"] = int(_get(cfg, "img_size", d["vision"]["image_size"]))
    d["qformer"]["num_query_tokens"] = int(_get(cfg, "num_query_token", d["qformer"]["num_query_tokens"]))
    d["max_txt_len"] = int(_get(cfg, "max_txt_len", d["max_txt_len"]))
    d["vit_precision"] = str(_get(cfg, "vit_precision", d["vit_precision"]))
    gen = d["generation"]
    for ours, theirs in (("tag_threshold", "tag_thr"), ("num_beams", "num_beams"),
                         ("max_new_tokens", "max_new_tokens"), ("min_length", "min_length"),
                         ("length_penalty", "length_penalty"), ("repetition_penalty", "repetition_penalty"),
                         ("chunk_size", "split_size")):
        v = _get(cfg, theirs)
        if v is not None:
            gen[ours] = type(gen[ours])(v)
    return DynReferConfig.from_dict(d)


def lavis_model_class(base=None):
    """The LAVIS-facing model class (a subclass of ``base``, LAVIS's BaseModel when given)."""
    import torch.nn as nn

    base = base or nn.Module

    class DynReferT5(base):
        PRETRAINED_MODEL_CONFIG_DICT = {}

        def __init__(self, model):
            super().__init__()
            self.model = model

        @classmethod
        def from_config(cls, cfg):
            from dynrefer.model import build_dynrefer
            from dynrefer.model.loading import load_blip2_checkpoint, load_dynrefer_checkpoint, load_t5_directory

            config = config_from_lavis(cfg)
            tag_file = _get(cfg, "tag_list")
            if not tag_file:
                raise ValueError("the LAVIS config needs tag_list (a file with one tag per line)")
            with open(tag_file, encoding="utf-8") as f:
                tags = [t.strip() for t in f if t.strip()]
            t5_model = t5_tok = None
            if _get(cfg, "t5_model"):
                t5_model, t5_tok = load_t5_directory(_get(cfg, "t5_model"))
            model = build_dynrefer(config, texts=list(_get(cfg, "texts", []) or []), tag_list=tags,
                                   classes=list(_get(cfg, "classes", []) or []),
                                   attributes=list(_get(cfg, "attributes", []) or []), t5_model=t5_model,
                                   t5_tokenizer=t5_tok, embed_cache_dir=_get(cfg, "embed_cache_dir"))
            if _get(cfg, "pretrained"):
                load_blip2_checkpoint(model, _get(cfg, "pretrained"))
            if _get(cfg, "finetuned"):
                load_dynrefer_checkpoint(model, _get(cfg, "finetuned"))
            return cls(model)

        @staticmethod
        def _samples(samples):
            out = {"views": samples["cascade_region_images"], "boxes": samples["cascade_region_bboxes"]}
            if "caps" in samples:
                out["text_output"] = samples["caps"]
            if "tags" in samples:
                out["tags"] = samples["tags"]
            if "cap_control_words" in samples:
                out["control_words"] = samples["cap_control_words"]
            return out

        def forward(self, samples):
            return self.model(self._samples(samples))

        def predict_answers(self, samples, **kwargs):
            s = self._samples(samples)
            res = self.model.describe_views(s["views"], s["boxes"], **kwargs)
            ids = samples.get("ids", list(range(len(res))))
            out = []
            for i, r in zip(ids, res):
                tags = [t for t, _ in r.get("tags", [])]
                out.append({"id": i, "caption": r.get("caption"), "score": r.get("caption_score"),
                            "tag_set1": tags, "tag_set2": tags,
                            "attr": [s for _, s in r.get("attributes", [])], "cls": r.get("category_scores", [])})
            return out

    DynReferT5.__name__ = DynReferT5.__qualname__ = "DynReferT5"
    return DynReferT5


def register(registry=None):
    """Register the model as ``dynrefer_t5``; returns the registered class."""
    base = None
    if registry is None:
        try:
            from lavis.common.registry import registry
            from lavis.models.base_model import BaseModel
        except ImportError as e:
            raise ImportError("dynrefer.lavis.register() needs salesforce-lavis (pip install dynrefer[lavis]); "
                              "or pass a registry object") from e
        base = BaseModel
    if not hasattr(registry, "register_model"):
        raise TypeError("registry must provide register_model(name)")
    cls = lavis_model_class(base)
    return registry.register_model(LAVIS_NAME)(cls)
