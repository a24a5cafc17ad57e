"""Visual cost per region and the parameter split of a configuration.

MACs follow the fvcore convention the paper's "FLOPs" use: one multiply-accumulate per weight use of a Linear/Conv,
two batched matrix products per attention (QKᵀ and PV), LayerNorm/softmax/activations not counted. RoI-Align and
deformable sampling count 4 MACs per bilinear sample and channel. "Visual" covers everything before the LLM: the
ViT over the n views, RoI-Align, the align module, the fusion MLP and the Q-Former.

Parameters are counted on the meta device (no memory), so the official 4 B-parameter configuration is cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Union

if TYPE_CHECKING:
    from dynrefer.model.config import DynReferConfig, VisionConfig

__all__ = ["vit_macs", "visual_macs", "parameter_split", "flops_report"]


def _vit_layer_macs(N: int, C: int, M: int) -> Dict[str, int]:
    return {"qkv": N * C * 3 * C, "proj": N * C * C, "mlp": 2 * N * C * M, "attention": 2 * N * N * C}


def vit_macs(vc: VisionConfig, image_size: Optional[int] = None) -> Dict[str, Any]:
    """MACs of one ViT pass over one image: {"patch_embed", "layer" (dict), "layers", "total"}."""
    S = image_size or vc.image_size
    g = S // vc.patch_size
    N, C = g * g + 1, vc.width
    layer = _vit_layer_macs(N, C, vc.mlp_hidden)
    patch = g * g * C * 3 * vc.patch_size ** 2
    layers = vc.depth * sum(layer.values())
    return {"patch_embed": patch, "layer": layer, "layers": layers, "total": patch + layers}


def visual_macs(config: DynReferConfig, num_views: Optional[int] = None,
                image_size: Optional[int] = None) -> Dict[str, int]:
    """Visual MACs per region (dict of parts and "total") for ``num_views`` views of ``image_size`` pixels."""
    vc, qc = config.vision, config.qformer
    n = config.num_views if num_views is None else num_views
    S = image_size or vc.image_size
    g = S // vc.patch_size
    L, C = g * g + 1, vc.width
    vit = vit_macs(vc, S)["total"] * n
    roi = n * g * g * config.roi_sampling_ratio ** 2 * 4 * C
    K = 9
    P = -(-3 * config.align_group * K // 8) * 8
    align = (n - 1) * (2 * g * g * C * C           # value_proj, output_proj
                       + g * g * C * 2 * K         # depthwise-grouped 3x3 conv, 2 inputs per output channel
                       + g * g * C * P             # offset/mask Linear
                       + g * g * C * K * 4)        # bilinear taps
    mlp = L * n * C * C + L * C * C
    Q, H, I = qc.num_query_tokens, qc.hidden_size, qc.intermediate_size
    qf = 0
    for i in range(qc.num_layers):
        qf += 4 * Q * H * H + 2 * Q * Q * H + 2 * Q * H * I
        if i % qc.cross_attention_freq == 0:
            qf += 2 * Q * H * H + 2 * L * C * H + 2 * Q * L * H
    parts = {"vit": vit, "roi_align": roi, "align": align, "fusion_mlp": mlp, "qformer": qf}
    parts["total"] = sum(parts.values())
    return parts


def parameter_split(config: DynReferConfig) -> Dict[str, int]:
    """Parameter counts per official prefix, with trainable/frozen totals (T5 from ``config.t5``)."""
    import torch
    import torch.nn as nn
    from transformers import BertConfig, BertModel

    from dynrefer.model.decoders import build_t5
    from dynrefer.model.qformer import CrossDecoder, QFormer
    from dynrefer.model.vision import build_vision_encoder
    from dynrefer.nn.align import DeformableAlign

    class _Tok:  # what build_t5 reads from a tokenizer
        pad_token_id, eos_token_id = 0, 1

        def __len__(self) -> int:
            return config.t5.vocab_size

    vc, qc, hc, tc, ec = config.vision, config.qformer, config.head, config.t5, config.text_encoder
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        C, n, H = vc.width, config.num_views, hc.hidden_size
        t5 = build_t5(tc, _Tok())
        d_model = t5.config.d_model
        if ec.kind == "eva_clip":
            from dynrefer.model.clip_text import CLIPTextTransformer

            text = CLIPTextTransformer(ec.vocab_size, ec.hidden_size, ec.num_layers, ec.num_heads, ec.max_length,
                                       ec.embed_dim, ec.intermediate_size)
        else:
            text = BertModel(BertConfig(vocab_size=ec.vocab_size, hidden_size=ec.hidden_size,
                                        num_hidden_layers=ec.num_layers, num_attention_heads=ec.num_heads,
                                        intermediate_size=ec.intermediate_size), add_pooling_layer=False)
        E = ec.embed_width
        projections = (qc.hidden_size * H + H) + (E * H + H)
        head = lambda: count(CrossDecoder(hc)) + projections + (H + 1)  # noqa: E731
        split = {
            "visual_encoder": count(build_vision_encoder(vc)) + 2 * C,  # + ln_vision
            "cvem": count(DeformableAlign(C, group=config.align_group)) + count(
                nn.Sequential(nn.Linear(C * n, C), nn.Linear(C, C))),
            "Qformer": count(QFormer(qc, C)),
            "query_tokens": qc.num_query_tokens * qc.hidden_size,
            "t5_proj": qc.hidden_size * d_model + d_model,
            "cem": d_model,
            "tag": head(),
            "attr": (head() if config.rtc_head == "cross" else projections) + 2,  # the bilinear D_rtc: no decoder
            "t5_model": count(t5),
            "text_encoder": count(text),
        }
    trainable = ["cvem", "Qformer", "t5_proj", "cem", "tag", "attr"] + (["t5_model"] if config.train_llm else [])
    split["trainable"] = sum(split[k] for k in trainable)
    split["frozen"] = sum(v for k, v in split.items() if k not in trainable and k != "trainable")
    return split


def flops_report(config: Union[DynReferConfig, str]) -> str:
    """A text report: visual GMACs per region for 1..num_views views (and at 1.5× / 2× resolution for one view),
    the breakdown of one ViT layer, and the parameter split."""
    if isinstance(config, str):
        from dynrefer.model.config import DynReferConfig

        config = DynReferConfig.from_preset(config)
    vc = config.vision
    lay = vit_macs(vc)["layer"]
    big = visual_macs(config, num_views=1)["total"] >= 1e9
    unit, div = ("GMACs", 1e9) if big else ("MMACs", 1e6)
    f = lambda v: f"{v / div:.2f}"  # noqa: E731
    lines = [f"ViT layer at {vc.image_size} ({vc.grid ** 2 + 1} tokens): {f(sum(lay.values()))} {unit} ("
             + ", ".join(f"{k} {f(v)}" for k, v in lay.items()) + ")",
             f"visual {unit} per region (ViT + RoI-Align + align + fusion MLP + Q-Former):"]
    for n in range(1, max(config.num_views, 3) + 1):
        p = visual_macs(config, num_views=n)
        lines.append(f"  {n} view{'s' if n > 1 else ' '} at {vc.image_size}: {f(p['total']):>9}   "
                     f"(ViT {f(p['vit'])}, Q-Former {f(p['qformer'])}, align {f(p['align'])}, "
                     f"MLP {f(p['fusion_mlp'])})")
    for s in (vc.image_size * 3 // 2, vc.image_size * 2):
        s = s // vc.patch_size * vc.patch_size
        lines.append(f"  1 view  at {s}: {f(visual_macs(config, num_views=1, image_size=s)['total']):>9}")
    ps = parameter_split(config)
    lines.append("parameters (M): " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in ps.items()))
    return "\n".join(lines)
