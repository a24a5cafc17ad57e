"""dynrefer.model: the DynRefer region-level vision-language model (PyTorch).

    DynReferConfig.from_preset("tiny" | "medium" | "official")
    build_dynrefer(config, texts, tag_list, classes, attributes)   random weights, local tokenizers
    DynRefer.forward(samples) → {"loss", "loss_llm", "loss_tag", "loss_rtc"}
    DynRefer.describe(images, boxes, prior=..., tasks=...)          inference on images (nested views)
    format_descriptions(results)                                     one line per region
    format_blocks(results)                                           a short block per region, for people
    loading: load_eva_vit, load_blip2_checkpoint, load_t5_directory, save_t5_directory, load_dynrefer_checkpoint,
             load_clip_text_weights (EVA-CLIP text tower)
    flops: flops_report(config), visual_macs(config, num_views)
"""
from __future__ import annotations

from typing import Any

__all__ = ["DynReferConfig", "PRESETS", "DynRefer", "TRAINABLE_PREFIXES", "build_dynrefer", "format_descriptions", "format_blocks",
           "load_eva_vit", "load_blip2_checkpoint", "load_t5_directory", "save_t5_directory",
           "load_dynrefer_checkpoint", "save_dynrefer_checkpoint", "flops_report", "visual_macs", "build_text_encoder",
           "load_clip_text_weights"]

# names are resolved on first use, so that torch-free submodules (config, placeholders) import without PyTorch
_LAZY = {"DynReferConfig": "config", "PRESETS": "config", "DynRefer": "dynrefer", "TRAINABLE_PREFIXES": "dynrefer",
         "format_descriptions": "dynrefer", "format_blocks": "dynrefer", "build_dynrefer": "factory",
         "load_eva_vit": "loading", "load_blip2_checkpoint": "loading", "load_t5_directory": "loading",
         "save_t5_directory": "loading", "load_dynrefer_checkpoint": "loading",
         "save_dynrefer_checkpoint": "loading", "flops_report": "flops", "visual_macs": "flops",
         "build_text_encoder": "factory", "load_clip_text_weights": "clip_text"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"dynrefer.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dynrefer.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
