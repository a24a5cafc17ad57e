"""Configuration of a DynRefer model, with presets.

    tiny      ~0.2 M parameters, 32×32 views, 2 views, T5 trained too (a random T5 cannot be steered by soft
              prompts alone), larger init of the BERT parts: overfits a few regions on a CPU in seconds (tests)
    medium    a small but real-shaped model (ViT-S-like encoder, 4-layer Q-Former, small T5)
    official  EVA ViT-g (39 × 1408, patch 14) + BERT-base Q-Former (32 queries) + FlanT5-XL, as DynRefer trains it

Any preset takes a decoder-only LLM instead of the T5 with ``llm={"kind": "causal", "path": DIR}`` (a local Hugging
Face causal-LM directory, e.g. Vicuna-7B as the paper's Tables 5-6 use) or ``llm={"kind": "causal", "config": {...}}``
(a randomly initialised model from a Hugging Face config dict, for tests); see :class:`LLMConfig`.

``DynReferConfig.from_preset(name, **overrides)``; nested sections are plain dataclasses, ``to_dict``/``from_dict``
round-trip through JSON/YAML.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["VisionConfig", "QFormerConfig", "HeadConfig", "T5Config", "LLMConfig", "TextEncoderConfig",
           "GenerationConfig", "DynReferConfig", "PRESETS", "EVA_CLIP_TEXT", "TINY_EVA_CLIP_TEXT"]


@dataclass
class VisionConfig:
    arch: str = "eva"            # "eva" (EVA ViT-g layout, LAVIS) or "clip" (OpenAI CLIP ViT layout)
    image_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637
    eps: float = 1e-6            # LayerNorm eps inside the ViT (EVA: 1e-6; CLIP: 1e-5)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass
class QFormerConfig:
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    num_query_tokens: int = 32
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02       # BERT initialisation (random-init models only; checkpoints overwrite it)
    dropout: float = 0.0         # BERT hidden and attention-probability dropout in training (official: 0.1)


@dataclass
class HeadConfig:
    """The tag (D_tag) and region-text (D_rtc, the official ``attr``) decoders: cross-attention-only BERT layers."""
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    dropout: float = 0.0         # BERT hidden and attention-probability dropout in training (official: 0.1)


@dataclass
class T5Config:
    """A Hugging Face T5 built from this config (random init), unless a pretrained directory is loaded."""
    d_model: int = 2048
    d_kv: int = 64
    d_ff: int = 5120
    num_layers: int = 24
    num_decoder_layers: int = 24
    num_heads: int = 32
    feed_forward_proj: str = "gated-gelu"
    vocab_size: int = 32128
    tie_word_embeddings: bool = False
    dense_act_fn: Optional[str] = None   # the FFN activation; None: Hugging Face's for feed_forward_proj ("gelu_new"
    #                                      for gated-gelu); LAVIS sets exact "gelu" on FlanT5 (the official preset)
    dropout_rate: float = 0.0            # T5 dropout; it acts only while the T5 runs in train mode (llm_train_mode)


# The official Vicuna variant's LoRA (dynrefer_vicuna.py): r 64, alpha 128, dropout 0 on the modules named
# "embed_tokens", "lm_head", "q", "v". peft matches a name by its last dotted component, so "q" and "v" (T5's
# attention names) select nothing in a LLaMA, whose projections are q_proj / v_proj: we name those.
OFFICIAL_LORA_TARGETS = ("embed_tokens", "lm_head", "q_proj", "v_proj")


@dataclass
class LLMConfig:
    """Which LLM sits behind D_llm.

    kind "t5" (default): the encoder-decoder T5 of ``DynReferConfig.t5`` (official names ``t5_model``, ``t5_proj``).
    With kind "t5", ``path`` is a local Hugging Face T5 directory (LAVIS's ``t5_model``, e.g. flan-t5-xl) whose
    weights and tokenizer replace the ones built from ``DynReferConfig.t5`` (loaded in ``dtype``; model bundles
    keep the path and reload the T5 from there).
    kind "causal": a decoder-only Hugging Face causal LM (official Vicuna-variant names ``llm_model``, ``llm_proj``):
    ``path`` a local directory (``AutoModelForCausalLM`` + ``AutoTokenizer``, nothing downloaded), or ``config`` a
    Hugging Face config dict with its ``model_type`` (random weights, word-level tokenizer trained on the caller's
    texts; tests and bundles). ``dtype`` ("fp16" / "bf16" / None) is the dtype the directory's weights load in.
    LoRA (needs ``peft``): ``lora`` on, rank ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``.
    Prompting: ``prompt`` (text after the control sentence when captioning, empty officially), ``system`` and the
    ``user`` / ``assistant`` role tags of the chat template; ``max_answer_len`` caps answer tokens in training
    (the official ``max_output_txt_len``), ``max_len`` a whole training conversation.
    """
    kind: str = "t5"
    path: Optional[str] = None
    config: Optional[Dict[str, Any]] = None
    dtype: Optional[str] = None
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_targets: Tuple[str, ...] = OFFICIAL_LORA_TARGETS
    prompt: str = ""
    system: str = "A chat between a user and an assistant that answers questions about regions of an image."
    user: str = "USER:"
    assistant: str = "ASSISTANT:"
    max_answer_len: int = 256
    max_len: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in ("t5", "causal"):
            raise ValueError(f"llm.kind must be 't5' or 'causal', got {self.kind!r}")
        if self.dtype not in (None, "fp16", "bf16", "fp32"):
            raise ValueError(f"llm.dtype must be null, 'fp16', 'bf16' or 'fp32', got {self.dtype!r}")
        if self.kind == "t5" and self.lora:
            raise ValueError("llm.lora applies to kind 'causal' only")
        self.lora_targets = tuple(self.lora_targets)


@dataclass
class TextEncoderConfig:
    """The frozen text encoder that embeds tag names, class and attribute prompts and captions.

    kind "bert": a BERT over a word-level tokenizer trained on the model's texts, mean-pooled (embeddings
    ``hidden_size`` wide). kind "eva_clip": EVA-CLIP's text tower (:mod:`dynrefer.model.clip_text`; CLIP BPE
    tokenizer, causal transformer, EOT pooling, projection to ``embed_dim``), as the official DynRefer uses; its
    ``vocab_size`` is the CLIP vocabulary (49408), ``max_length`` the context (77), ``weights`` an optional file of
    EVA-CLIP text weights to load (an EVA-CLIP checkpoint's ``text.*`` entries, e.g. the official
    ``eva_clip_psz14.pt``; ``build_dynrefer`` builds the tower on the meta device and assigns them before the text
    embeddings are computed), ``bpe_path`` the CLIP merges file (default: the installed ``open_clip`` package's).
    """
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_length: int = 32
    kind: str = "bert"
    embed_dim: int = 1024        # eva_clip: width of text_projection's output (the embedding width)
    weights: Optional[str] = None   # eva_clip: EVA-CLIP text weights to load
    bpe_path: Optional[str] = None  # eva_clip: the CLIP BPE merges file

    def __post_init__(self) -> None:
        if self.kind not in ("bert", "eva_clip"):
            raise ValueError(f"text_encoder.kind must be 'bert' or 'eva_clip', got {self.kind!r}")
        if self.kind == "eva_clip" and self.vocab_size < 49408:
            raise ValueError(f"text_encoder.vocab_size must be at least 49408 (the CLIP vocabulary) for kind "
                             f"'eva_clip', got {self.vocab_size}")

    @property
    def embed_width(self) -> int:
        """The width of the text embeddings (``clip_embeds`` …) this encoder makes."""
        return self.embed_dim if self.kind == "eva_clip" else self.hidden_size


# A tiny EVA-CLIP-layout text tower for tests (the full CLIP vocabulary, a small transformer).
TINY_EVA_CLIP_TEXT: Dict[str, Any] = dict(kind="eva_clip", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=128,
                          vocab_size=49408, max_length=77, embed_dim=48)

# EVA-CLIP ViT-g/14's text tower (model_configs/EVA_CLIP_g_14.json, text_cfg; embed_dim 1024).
EVA_CLIP_TEXT: Dict[str, Any] = dict(kind="eva_clip", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                     vocab_size=49408, max_length=77, embed_dim=1024)


@dataclass
class GenerationConfig:
    num_beams: int = 2
    max_new_tokens: int = 20
    min_length: int = 1
    length_penalty: float = 0.0
    repetition_penalty: float = 1.5
    tag_threshold: float = 0.7
    chunk_size: int = 20         # regions per forward pass at inference


@dataclass
class DynReferConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    t5: T5Config = field(default_factory=T5Config)
    llm: LLMConfig = field(default_factory=LLMConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    num_views: int = 3
    max_txt_len: int = 32
    tag_weight: float = 0.01
    rtc_weight: float = 0.5
    category_weight: float = 0.0  # > 0: also train D_rtc on category labels against the class prompts (off officially)
    full_drop_ratio: float = 0.5  # training: drop the whole control sentence with this probability
    drop_ratio: float = 0.5       # training: otherwise drop each control word with this probability
    asl_gamma_neg: float = 7.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    roi_sampling_ratio: int = 2
    align_group: int = 4
    train_llm: bool = False       # also train the LLM (frozen officially; the tiny preset trains it)
    vit_precision: str = "fp32"   # "fp16" / "bf16": the frozen ViT runs under that autocast on CUDA
    llm_precision: str = "fp32"
    head_precision: str = "fp32"  # "bf16": D_tag, D_rtc and t5_proj run under that autocast (officially, on CUDA)
    cpu_autocast: bool = False    # also apply vit/llm/head precision autocast on the CPU (bf16 only; slow there)
    llm_weights_bf16: bool = False  # store the frozen T5's weights in bfloat16 (LAVIS casts FlanT5 so)
    llm_train_mode: bool = False  # run the frozen LLM in train mode while training (its dropout on), as LAVIS does
    rtc_scores: str = "calibrated"  # inference scores of D_rtc: "calibrated" sigmoid(s·e^t + b) for categories and
    #                                 attributes; "official": categories the raw similarity s, attributes sigmoid(s)
    rtc_head: str = "cross"      # D_rtc's read-out: "cross" (official: a cross-attention decoder with the text as
    #                              queries) or "bilinear" (Σ over region tokens of ⟨vision token, text⟩ / √width)
    rtc_gather_grad: bool = True  # region-text loss: gradients flow through the features gathered from other
    #                               processes (True) or not (False: LAVIS's concat_all_gather)
    # Weights build_dynrefer loads, in LAVIS's order, after text_encoder.weights and llm.path (local files only;
    # dynrefer.model.loading): the EVA ViT-g file, a BLIP-2 checkpoint, a DynRefer checkpoint.
    vit_checkpoint: Optional[str] = None  # LAVIS's eva_vit_g.pth (position embedding interpolated to image_size)
    pretrained: Optional[str] = None      # BLIP-2 {"model": ...} (LAVIS's `pretrained`, blip2_pretrained_flant5xl.pth)
    finetuned: Optional[str] = None       # a DynRefer checkpoint (LAVIS's `finetuned`; official: trainable keys)

    def __post_init__(self) -> None:
        for name in ("vit_precision", "llm_precision", "head_precision"):
            if getattr(self, name) not in ("fp16", "bf16", "fp32"):
                raise ValueError(f"{name} must be 'fp16', 'bf16' or 'fp32', got {getattr(self, name)!r}")
        if self.rtc_scores not in ("calibrated", "official"):
            raise ValueError(f"rtc_scores must be 'calibrated' or 'official', got {self.rtc_scores!r}")
        if self.rtc_head not in ("cross", "bilinear"):
            raise ValueError(f"rtc_head must be 'cross' or 'bilinear', got {self.rtc_head!r}")
        if self.category_weight < 0:
            raise ValueError(f"category_weight must be >= 0, got {self.category_weight}")

    def __repr__(self) -> str:
        """One short line of the dimensions that tell configurations apart (``to_dict()`` has every field)."""
        v, q, t, l, te = self.vision, self.qformer, self.t5, self.llm, self.text_encoder
        if l.kind == "t5":
            llm = f"t5 {t.d_model}x{t.num_layers}+{t.num_decoder_layers}"
        else:
            llm = f"causal {l.path or (l.config or {}).get('model_type', '?')}" + (" +LoRA" if l.lora else "")
        return (f"DynReferConfig({v.arch} ViT {v.width}x{v.depth} @{v.image_size}/{v.patch_size}, "
                f"{self.num_views} views, Q-Former {q.hidden_size}x{q.num_layers} ({q.num_query_tokens} queries), "
                f"LLM {llm}, text {te.kind} {te.hidden_size}x{te.num_layers})")

    # --------------------------------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DynReferConfig:
        d = dict(d)
        sections = {"vision": VisionConfig, "qformer": QFormerConfig, "head": HeadConfig, "t5": T5Config,
                    "llm": LLMConfig, "text_encoder": TextEncoderConfig, "generation": GenerationConfig}
        kw: Dict[str, Any] = {}
        for k, v in d.items():
            if k in sections:
                kw[k] = sections[k](**v) if isinstance(v, dict) else v
            elif k in {f.name for f in dataclasses.fields(cls)}:
                kw[k] = v
            else:
                raise ValueError(f"unknown DynReferConfig field {k!r}")
        return cls(**kw)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DynReferConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        d = copy.deepcopy(PRESETS[name])
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                d[k].update(v)
            else:
                d[k] = v
        return cls.from_dict(d)


PRESETS: Dict[str, Dict[str, Any]] = {
    # the official model (dynrefer_t5 on LAVIS 1.0.2); tests/test_official_parity.py checks it against goldens
    # made by the official code at scaled-down sizes
    "official": DynReferConfig(text_encoder=TextEncoderConfig(**EVA_CLIP_TEXT), vit_precision="fp16",
                               llm_precision="bf16", head_precision="bf16", llm_weights_bf16=True,
                               qformer=QFormerConfig(dropout=0.1), head=HeadConfig(dropout=0.1),
                               t5=T5Config(dense_act_fn="gelu", dropout_rate=0.1), llm_train_mode=True,
                               rtc_scores="official", rtc_gather_grad=False).to_dict(),
    "medium": DynReferConfig(
        vision=VisionConfig(image_size=224, patch_size=14, width=384, depth=6, num_heads=6, mlp_ratio=4.0),
        qformer=QFormerConfig(hidden_size=384, num_layers=4, num_heads=6, intermediate_size=1536),
        head=HeadConfig(),
        t5=T5Config(d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=8,
                    vocab_size=8192),
        text_encoder=TextEncoderConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                                       vocab_size=8192),
    ).to_dict(),
    "tiny": DynReferConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_ratio=2.0),
        qformer=QFormerConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                              num_query_tokens=4, init_std=0.1),
        head=HeadConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, init_std=0.1),
        t5=T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
                    feed_forward_proj="relu", vocab_size=256),
        text_encoder=TextEncoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                       vocab_size=256, max_length=16),
        num_views=2,
        train_llm=True,  # a random-init T5 cannot be steered by its inputs alone
        # no pretrained text tower gives its class prompts meaning, and a small Q-Former trained from scratch gives
        # the cross read-out nothing to tell classes apart: categories are learnt from their labels, read bilinearly
        rtc_head="bilinear", category_weight=0.5,
        # 19 tags with about 5 positive per region, not 4585 with 5: ASL's negative focusing (γ− = 7) for that
        # imbalance leaves nearly every tag above the 0.7 threshold, and the control sentences then carry them all
        asl_gamma_neg=2.0,
        generation=GenerationConfig(num_beams=2, max_new_tokens=16, chunk_size=8),
    ).to_dict(),
}
