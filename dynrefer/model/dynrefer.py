"""The DynRefer model: nested views → frozen ViT → RoI-Align + align + fuse (cvem) → Q-Former → three decoders.

Parameter names follow the official implementation so its checkpoints load by name:
    visual_encoder, ln_vision           frozen ViT and its LayerNorm (BLIP-2 names)
    cvem_align, cvem_mlp                contextual visual embedding: DCNv4 align module, fusion MLP
    query_tokens, Qformer               BLIP-2 Q-Former (the learned queries stay frozen, as officially)
    t5_proj, t5_model, cem_memory       D_llm: projection, frozen T5, control-embedding memory
    llm_proj, llm_model, cem_memory     D_llm with a decoder-only LLM (``config.llm.kind == "causal"``; the names of the
                                        official Vicuna variant); LoRA adapters, when on, live inside llm_model
    tag_head, tag_vision_proj, tag_text_proj, tag_fc                            D_tag
    attr_head, attr_vision_proj, attr_text_proj, attr_fc, attr_t, attr_b        D_rtc (region–text contrast; the
                                        bilinear read-out, ``config.rtc_head``, has no attr_head / attr_fc)
    clip_embeds, att_embeds, ov_embeds  frozen text embeddings of tags, attribute prompts, class prompts (buffers)
    text_encoder                        the frozen text encoder that made them (and embeds captions in training)
D_llm's language model is a component, ``self.decoder`` (:mod:`dynrefer.model.decoders`: a T5 or a causal LM behind
one interface), that creates its modules on this model under the names above.
Trainable: parameters whose top-level name starts with cvem, cem, tag, attr, Qformer, t5_proj or llm_proj, and LoRA
adapters (names containing "lora_").

Training batch (``forward(samples)``), R regions of n views each:
    samples["views"]        float [R, n, 3, S, S]  normalised views, the tight view first
    samples["boxes"]        float [R, n, 4]        the referred box (xyxy) in each view's S×S frame
    samples["text_output"]  list of R captions
    samples["tags"]         0/1 [R, T] or [R, 2T]  multi-hot tag targets over ``tag_list`` (two tag sets are OR-ed)
    samples["control_words"] optional list of R control sentences ("w1,w2|"; also read from "control", the key
                            of dynrefer.data.collate_regions); default: drawn from the tags with torch's RNG
    samples["category"]     optional int [R]: class indices into ``classes`` (-1: none); read only when
                            ``config.category_weight`` > 0 (the tiny preset's; 0 in the others), see
                            :meth:`DynRefer.category_loss`
    Other keys (coeffs, att_vec, ids, …) are ignored.
→ {"loss", "loss_llm", "loss_tag", "loss_rtc"} (the components detached), and "loss_cat" when the category
loss is on and the batch carries ``category``.

Conversation batch (referring reasoning, causal LLM only; ``dynrefer.data.conversation_dataset``): ``views`` and
``boxes`` of every region of every conversation, ``turns`` (per conversation a list of [human, gpt] texts whose
``<regionK>`` placeholders name the conversation's K-th region) and ``region_index`` (per conversation the rows
of its regions) → {"loss", "loss_llm"}: the LLM loss on every gpt turn.

Decoder-only D_llm sequences (``config.llm``): captioning (as the official Vicuna variant orders them)
    [llm_proj(x_v) ; <s> ; control sentence + memory ; prompt ; caption </s>]
and a conversation
    [<s> ; system ; USER: ; question ; ASSISTANT: ; answer </s> ; USER: ; … ]
where each ``<regionK>`` of a question becomes [llm_proj(x_v of region K) ; its control sentence + memory] (the
control sentence: tags the tag decoder predicts for that region). The loss is on caption / answer tokens only.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dynrefer.model import _dist
from dynrefer.model.config import DynReferConfig
from dynrefer.model.decoders import DECODERS, autocast
from dynrefer.model.losses import AsymmetricLoss, pairwise_sigmoid_loss
from dynrefer.model.qformer import CrossDecoder, QFormer
from dynrefer.model.text import FrozenTextEncoder, normalize_text
from dynrefer.model.vision import build_vision_encoder
from dynrefer.nn import backend
from dynrefer.nn.align import DeformableAlign

if TYPE_CHECKING:
    from dynrefer.model.decoders import CausalDecoder, LanguageDecoder

# one region's description (see DynRefer.describe)
_Region = Dict[str, Any]

__all__ = ["DynRefer", "TRAINABLE_PREFIXES", "attribute_prompts", "class_prompts", "format_descriptions",
           "format_blocks"]

log = logging.getLogger("dynrefer.model")

TRAINABLE_PREFIXES = ("cvem", "cem", "tag", "attr", "Qformer", "t5_proj", "llm_proj")
_FROZEN_MODULES = ("visual_encoder", "ln_vision", "text_encoder")  # + the LLM (t5_model / llm_model)


def class_prompts(classes: Iterable[object]) -> List[str]:
    """The official open-vocabulary prompt: "the {class}"."""
    return [f"the {normalize_text(c)}" for c in classes]


# The official attribute prompt set (DynRefer's build_att_embeds over OVAD's "the" object_attribute_templates,
# empty noun): both templates of the attribute's is/has kind for every synonym; the maturity attributes take extra
# synonyms. dynrefer.eval.ovad.ovad_prompts builds the same strings on the evaluation side.
_OFFICIAL_TEMPLATES = {
    "has": ("the {attr} {dobj} {noun}", "the {noun} has {attr} {dobj}"),
    "is": ("the {attr} {noun}", "the {noun} is {attr}"),
}
_EXTRA_SYNONYMS = {"young/baby": "/kid/kids/child/toddler/boy/girl", "adult/old/aged": "/teen/elder"}


def attribute_prompts(attributes: Iterable[Any]) -> List[List[str]]:
    """Prompts per attribute (its score is the max over them at inference). An attribute is

    - an OVAD attribute record (``name`` "type:syn1/syn2", ``is_has_att`` "is" or "has"): the official prompts,
      for every synonym both templates of its kind — "the {syn} {type}" and "the  has {syn} {type}" for "has",
      "the {syn}" and "the  is {syn}" for "is" (" tone" dropped from the type; the empty noun leaves a double
      space) — with extra synonyms for young/baby and adult/old/aged: 474 prompts for OVAD's 117 attributes;
    - an OVAD name "type:syn1/syn2" alone (or a record without ``is_has_att``): "the {syn} {type}" per synonym;
    - any other string: "the {a}"; a list: its own prompts.
    """
    out = []
    for a in attributes:
        if isinstance(a, dict) and a.get("is_has_att") in _OFFICIAL_TEMPLATES and ":" in str(a["name"]):
            att_type, syns = str(a["name"]).split(":", 1)
            syns += _EXTRA_SYNONYMS.get(syns, "")
            dobj = att_type.replace(" tone", "")
            out.append([tpl.format(attr=syn, dobj=dobj, noun="").strip()
                        for syn in syns.split("/") if syn for tpl in _OFFICIAL_TEMPLATES[a["is_has_att"]]])
        else:
            if isinstance(a, dict):
                a = str(a["name"])
            if isinstance(a, str):
                if ":" in a:
                    kind, syns = a.split(":", 1)
                    kind = kind.replace(" tone", "")
                    out.append([f"the {s} {kind}".strip() for s in syns.split("/") if s])
                else:
                    out.append([f"the {a}"])
            else:
                out.append([str(p) for p in a])
        if not out[-1]:
            raise ValueError(f"attribute {a!r} has no prompt")
    return out


def _attribute_name(a: Any) -> str:
    if isinstance(a, dict):
        a = str(a["name"])
    if isinstance(a, str):
        return a.split(":", 1)[1].split("/")[0] if ":" in a else a
    return str(a[0])


class DynRefer(nn.Module):
    """DynRefer. Build with ``DynRefer(config, t5_tokenizer, tag_list, text_encoder, ...)``.

    Args:
        config: a :class:`DynReferConfig` (or a preset name).
        t5_tokenizer: the LLM's tokenizer (e.g. :func:`dynrefer.model.text.build_t5_tokenizer` or a T5 directory's;
            for a causal LLM its tokenizer, e.g. :func:`dynrefer.model.text.build_causal_tokenizer`).
        tag_list: the tag names (RAM's 4585 officially).
        text_encoder: a frozen text encoder (:class:`TextEncoder`, a BERT, or
            :class:`~dynrefer.model.clip_text.EVACLIPTextEncoder`; embeds tags, prompts and, in training, captions).
        classes: category names for region recognition (optional).
        attributes: attribute definitions for attribute detection (optional; see :func:`attribute_prompts`).
        t5_model: a ``T5ForConditionalGeneration`` (default: built from ``config.t5``, random weights).
        embed_cache_dir: on-disk cache of the text embeddings.
        llm_model: with ``config.llm.kind == "causal"``, the causal LM (default: built from ``config.llm.config``,
            random weights); LoRA is applied here when ``config.llm.lora``.
    """

    decoder: LanguageDecoder
    # created by the decoder (see dynrefer.model.decoders): the T5 or the causal LM, their tokenizers, projections
    t5_model: Any
    t5_tokenizer: Any
    t5_proj: nn.Linear
    llm_model: Any
    llm_tokenizer: Any
    llm_proj: nn.Linear
    cem_memory: nn.Parameter
    clip_embeds: Tensor
    att_embeds: Tensor
    ov_embeds: Tensor

    def __init__(self, config: Union[DynReferConfig, str], t5_tokenizer: Any, tag_list: Iterable[object],
                 text_encoder: FrozenTextEncoder, classes: Iterable[object] = (), attributes: Iterable[Any] = (),
                 t5_model: Any = None, embed_cache_dir: Optional[str] = None, llm_model: Any = None) -> None:
        super().__init__()
        if isinstance(config, str):
            config = DynReferConfig.from_preset(config)
        if config.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {config.num_views}")
        self.config = cfg = config
        vc, qc, hc = cfg.vision, cfg.qformer, cfg.head
        C = vc.width
        self.num_views = cfg.num_views
        # vision
        self.visual_encoder = build_vision_encoder(vc)
        self.ln_vision = nn.LayerNorm(C)
        # contextual visual embedding
        self.cvem_align = DeformableAlign(C, group=cfg.align_group)
        self.cvem_mlp = nn.Sequential(nn.Linear(C * cfg.num_views, C), nn.ReLU(), nn.Linear(C, C))
        # Q-Former
        self.query_tokens = nn.Parameter(torch.zeros(1, qc.num_query_tokens, qc.hidden_size))
        nn.init.normal_(self.query_tokens, std=0.02)
        self.Qformer = QFormer(qc, C)
        # D_llm's language decoder (T5 or causal); its modules live on this model under the official names
        kind = cfg.llm.kind
        if kind == "t5" and llm_model is not None:
            raise ValueError("llm_model is for config.llm.kind 'causal'; pass a T5 as t5_model")
        if kind != "t5" and t5_model is not None:
            raise ValueError("t5_model is for config.llm.kind 't5'; pass a causal LM as llm_model")
        self.decoder = DECODERS[kind](self)
        d_model = self.decoder.attach(t5_tokenizer, t5_model if kind == "t5" else llm_model, qc.hidden_size)
        self.cem_memory = nn.Parameter(torch.zeros(d_model))
        # text embeddings
        if not isinstance(text_encoder, FrozenTextEncoder):
            raise TypeError("text_encoder must be a dynrefer.model.text.FrozenTextEncoder (TextEncoder or "
                            "EVACLIPTextEncoder)")
        self.text_encoder = text_encoder
        self.tag_list = [str(t) for t in tag_list]
        if not self.tag_list:
            raise ValueError("tag_list must not be empty")
        self.classes = [str(c) for c in classes]
        self.attributes = list(attributes)
        self.attribute_names = [_attribute_name(a) for a in self.attributes]
        prompts = attribute_prompts(self.attributes)
        self.att_len_synonyms = [len(p) for p in prompts]
        E = int(getattr(text_encoder, "width"))
        emb = lambda texts: (text_encoder.embed(texts, embed_cache_dir) if texts else torch.zeros(0, E))  # noqa
        self.register_buffer("clip_embeds", emb(self.tag_list))
        self.register_buffer("att_embeds", emb([p for ps in prompts for p in ps]))
        self.register_buffer("ov_embeds", emb(class_prompts(self.classes)))
        # D_tag
        H = hc.hidden_size
        self.tag_head = CrossDecoder(hc)
        self.tag_vision_proj = nn.Linear(qc.hidden_size, H)
        self.tag_text_proj = nn.Linear(E, H)
        self.tag_fc = nn.Linear(H, 1)
        self.tag_loss_function = AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
        # D_rtc (the bilinear read-out has no decoder of its own)
        if cfg.rtc_head == "cross":
            self.attr_head = CrossDecoder(hc)
        self.attr_text_proj = nn.Linear(E, H)
        self.attr_vision_proj = nn.Linear(qc.hidden_size, H)
        if cfg.rtc_head == "cross":
            self.attr_fc = nn.Linear(H, 1)
        self.attr_t = nn.Parameter(torch.tensor(math.log(10.0)))
        self.attr_b = nn.Parameter(torch.tensor(-10.0))
        self.decoder.finalize()
        self.apply_trainable_split()

    # ------------------------------------------------------------------------------------------- bookkeeping
    @staticmethod
    def is_trainable_name(name: str) -> bool:
        return name.split(".", 1)[0].startswith(TRAINABLE_PREFIXES) or ".lora_" in name

    @property
    def llm_kind(self) -> str:
        """"t5" or "causal": the kind of D_llm's language decoder."""
        return self.decoder.kind

    @property
    def llm_name(self) -> str:
        """The attribute holding the LLM: "t5_model" or "llm_model"."""
        return self.decoder.llm_attr

    @property
    def llm(self) -> Any:
        return self.decoder.llm

    @property
    def llm_projection(self) -> nn.Linear:
        return self.decoder.proj

    @property
    def tokenizer(self) -> Any:
        """The LLM's tokenizer."""
        return self.decoder.tokenizer

    def apply_trainable_split(self) -> None:
        """The official split: train cvem*, cem*, tag*, attr*, Qformer*, t5_proj* / llm_proj* and LoRA adapters;
        freeze everything else. ``config.train_llm`` trains the whole LLM too, unless LoRA is on (then only its
        adapters train)."""
        prefix = self.llm_name + "."
        whole_llm = self.config.train_llm and not self.config.llm.lora
        for name, p in self.named_parameters():
            p.requires_grad_(self.is_trainable_name(name) or (whole_llm and name.startswith(prefix)))

    def external_llm_keys(self) -> Set[str]:
        """State-dict keys of a frozen causal LLM loaded from ``config.llm.path``: model bundles leave them out and
        reload them from that directory (empty for a T5 or an LLM built from ``config.llm.config``)."""
        return self.decoder.external_keys()

    def trainable_state_dict(self) -> Dict[str, Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def train(self, mode: bool = True) -> DynRefer:
        super().train(mode)
        for name in _FROZEN_MODULES:  # frozen modules always run as in inference (no dropout)
            getattr(self, name).eval()
        if not (self.config.train_llm or self.config.llm.lora or self.config.llm_train_mode):
            self.llm.eval()  # llm_train_mode (official): the frozen LLM runs in train mode, its dropout on
        return self

    def head_autocast(self) -> Any:
        """The autocast D_tag, D_rtc and D_llm's projection run under (``config.head_precision``; officially bf16
        on CUDA)."""
        return autocast(self.device, self.config.head_precision, self.config.cpu_autocast)

    @property
    def device(self) -> torch.device:
        return self.query_tokens.device

    @property
    def num_tags(self) -> int:
        return len(self.tag_list)

    # ------------------------------------------------------------------------------------------- encoders
    def encode_views(self, views: Tensor, boxes: Tensor) -> Tensor:
        """views [R, n, 3, S, S], boxes [R, n, 4] → the Q-Former output x_v [R, Q, hidden]."""
        if views.dim() != 5 or views.shape[2] != 3:
            raise ValueError(f"views must be [R, n, 3, S, S], got {list(views.shape)}")
        R, n, _, S, S2 = views.shape
        if n != self.num_views:
            raise ValueError(f"views has {n} views per region; the model was built for {self.num_views}")
        if S != S2 or S != self.config.vision.image_size:
            raise ValueError(f"views must be {self.config.vision.image_size}x{self.config.vision.image_size}, "
                             f"got {S}x{S2}")
        if tuple(boxes.shape) != (R, n, 4):
            raise ValueError(f"boxes must be [{R}, {n}, 4], got {list(boxes.shape)}")
        frozen = not any(p.requires_grad for p in self.visual_encoder.parameters()) and \
            not any(p.requires_grad for p in self.ln_vision.parameters())
        images = views.reshape(R * n, 3, S, S).to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen), \
                autocast(images.device, self.config.vit_precision, self.config.cpu_autocast):
            embeds = self.ln_vision(self.visual_encoder(images))
        embeds = embeds.float() if embeds.dtype == torch.float16 else embeds
        visual = self.cvem_forward(embeds, boxes.reshape(R * n, 4).to(embeds.device, embeds.dtype), R, n)
        queries = self.query_tokens.expand(R, -1, -1)
        return self.Qformer(queries, visual)

    def cvem_forward(self, embeds: Tensor, boxes: Tensor, R: int, n: int) -> Tensor:
        """Per-view ViT tokens [R·n, 1+g², C] → RoI features, aligned to the tight view, fused → [R, 1+g², C]."""
        vc = self.config.vision
        g, C = vc.grid, embeds.shape[-1]
        cls = embeds[:, :1]
        spatial = embeds[:, 1:].reshape(R * n, g, g, C).permute(0, 3, 1, 2)
        ids = torch.arange(R * n, device=embeds.device, dtype=embeds.dtype)[:, None]
        rois = torch.cat([ids, boxes], dim=1)
        feats = backend.roi_align(spatial.contiguous(), rois, (g, g), 1.0 / vc.patch_size,
                                  self.config.roi_sampling_ratio, False)
        feats = feats.reshape(R, n, C, g, g)
        if n > 1:
            ref = feats[:, :1].expand(R, n - 1, C, g, g).reshape(-1, C, g, g)
            aligned = self.cvem_align(ref, feats[:, 1:].reshape(-1, C, g, g)).reshape(R, n - 1, C, g, g)
            feats = torch.cat([feats[:, :1], aligned], dim=1)
        tokens = feats.flatten(3).transpose(2, 3)  # [R, n, g², C]
        tokens = torch.cat([cls.reshape(R, n, 1, C), tokens], dim=2)  # [R, n, 1+g², C]
        tokens = tokens.permute(0, 2, 1, 3).reshape(R, 1 + g * g, n * C)  # views concatenated along channels
        return self.cvem_mlp(tokens)

    # ------------------------------------------------------------------------------------------- decoders
    def tag_logits(self, x_v: Tensor) -> Tensor:
        """x_v [R, Q, hidden] → tag logits [R, T]."""
        R = x_v.shape[0]
        vis = self.tag_vision_proj(x_v)
        txt = self.tag_text_proj(self.clip_embeds.to(vis.dtype)).unsqueeze(0).expand(R, -1, -1)
        return self.tag_fc(self.tag_head(txt, vis)).squeeze(-1)

    def rtc_similarity(self, text_embeds: Tensor, vis: Tensor) -> Tensor:
        """Similarity of every (vision, text) pair: text_embeds [Lt, H], vis [Rv, Q, H] → [Rv, Lt].

        ``config.rtc_head`` "cross" (official): each text attends to the region's tokens through ``attr_head`` and
        ``attr_fc`` reads the normalised result (a cosine-like score). "bilinear": Σ_q ⟨vis_q, text⟩ / √H, a score
        in which the region and the text interact linearly. The cross read-out's text query and region enter
        additively (query + attention over the region's tokens); when the region's tokens are alike — as in a small
        Q-Former trained from scratch — only its layer norms and MLP let a text read the region differently from
        another, and the tiny preset's categories do not emerge."""
        if self.config.rtc_head == "bilinear":
            return torch.einsum("rqh,lh->rl", vis, text_embeds.to(vis.dtype)) / math.sqrt(vis.shape[-1])
        q = text_embeds.unsqueeze(0).expand(vis.shape[0], -1, -1)
        return self.attr_fc(F.normalize(self.attr_head(q, vis), dim=-1)).squeeze(-1)

    def prompt_similarity(self, prompt_embeds: Tensor, vis: Tensor) -> Tensor:
        """D_rtc's similarity of regions ``vis`` [R, Q, H] (``attr_vision_proj`` of x_v) to frozen prompt embeddings
        [L, E] (``ov_embeds`` for the classes, ``att_embeds`` for the attribute prompts) → [R, L]."""
        return self.rtc_similarity(self.attr_text_proj(prompt_embeds.to(vis.dtype)), vis)

    def rtc_logits(self, sim: Tensor) -> Tensor:
        return sim * self.attr_t.exp() + self.attr_b

    def rtc_loss(self, x_v: Tensor, captions: Iterable[str]) -> Tensor:
        """Pairwise sigmoid loss between regions and their captions, negatives from every process (gathered with
        their gradient, or without it as LAVIS's ``concat_all_gather`` when ``config.rtc_gather_grad`` is off)."""
        B = x_v.shape[0]
        vis = self.attr_vision_proj(x_v)
        txt = self.attr_text_proj(self.text_encoder.encode_memo(list(captions)).to(vis.device, vis.dtype))
        gather = _dist.all_gather_with_grad if self.config.rtc_gather_grad else _dist.all_gather_no_grad
        vis_all = gather(vis)
        txt_all = gather(txt)
        off = _dist.rank() * B
        sim_i2t = self.rtc_similarity(txt, vis_all).t()   # [B texts, B_all regions]
        sim_t2i = self.rtc_similarity(txt_all, vis)       # [B regions, B_all texts]
        l_i2t = pairwise_sigmoid_loss(self.rtc_logits(sim_i2t), off)
        l_t2i = pairwise_sigmoid_loss(self.rtc_logits(sim_t2i), off)
        return (l_i2t + l_t2i) / 2

    def category_loss(self, x_v: Tensor, labels: Any) -> Tensor:
        """D_rtc read against the class prompts (as :meth:`describe` reads categories), trained on category
        labels ``labels`` [R] (indices into ``classes``, -1: none): −Σ_c log σ(z_c · logit_c) over the labelled
        regions, divided by their number (z = +1 for the region's class, −1 for the others; the pairwise sigmoid
        loss of :meth:`rtc_loss` with the class prompts as texts). 0 when no region has a label."""
        labels = torch.as_tensor(labels, device=x_v.device).long().reshape(-1)
        if labels.numel() != x_v.shape[0]:
            raise ValueError(f"samples['category'] has {labels.numel()} labels for {x_v.shape[0]} regions")
        if bool((labels >= len(self.classes)).any()):
            raise ValueError(f"category label {int(labels.max())} but the model has {len(self.classes)} classes")
        keep = labels >= 0
        if not bool(keep.any()):
            return x_v.new_zeros(())
        vis = self.attr_vision_proj(x_v[keep])
        logits = self.rtc_logits(self.prompt_similarity(self.ov_embeds, vis))
        z = -torch.ones_like(logits)
        z[torch.arange(logits.shape[0], device=logits.device), labels[keep]] = 1
        return -F.logsigmoid(z * logits).sum() / logits.shape[0]

    def _tag_targets(self, tags: Any, R: int) -> Tensor:
        tags = torch.as_tensor(tags, device=self.device)
        T = self.num_tags
        if tags.dim() != 2 or tags.shape[0] != R or tags.shape[1] not in (T, 2 * T):
            raise ValueError(f"samples['tags'] must be [{R}, {T}] or [{R}, {2 * T}], got {list(tags.shape)}")
        if tags.shape[1] == 2 * T:
            tags = tags[:, :T] + tags[:, T:]
        return (tags > 0).float()

    def training_control_words(self, targets: Tensor) -> List[str]:
        """Control sentences from the tag targets: drop all with p=full_drop_ratio, else keep each tag with
        p=1-drop_ratio, shuffled; "w1,w2,…|". Random draws come from torch's generator (seedable)."""
        out = []
        for row in targets.cpu():
            words = [self.tag_list[i] for i in torch.nonzero(row).flatten().tolist()]
            if not words or float(torch.rand(())) < self.config.full_drop_ratio:
                out.append("|")
                continue
            keep = torch.rand(len(words)) > self.config.drop_ratio
            kept = [w for w, k in zip(words, keep.tolist()) if k]
            kept = [kept[i] for i in torch.randperm(len(kept)).tolist()]
            out.append(",".join(kept) + "|")
        return out

    def llm_loss(self, x_v: Tensor, control_words: Sequence[str], captions: Sequence[str]) -> Tensor:
        """D_llm's captioning loss (see :mod:`dynrefer.model.decoders`)."""
        return self.decoder.caption_loss(x_v, control_words, captions)

    # ------------------------------------------------------------------------------------------- training
    def forward(self, samples: Mapping[str, Any]) -> Dict[str, Tensor]:
        if "turns" in samples:
            return self.chat_loss(samples)
        for key in ("views", "boxes", "text_output", "tags"):
            if key not in samples:
                raise KeyError(f"samples lacks {key!r} (needs views, boxes, text_output, tags)")
        captions = list(samples["text_output"])
        R = samples["views"].shape[0]
        if len(captions) != R:
            raise ValueError(f"{len(captions)} captions for {R} regions")
        x_v = self.encode_views(samples["views"], samples["boxes"])
        targets = self._tag_targets(samples["tags"], R)
        control = samples.get("control_words", samples.get("control"))
        if control is None:
            control = self.training_control_words(targets) if self.training else ["|"] * R
        with self.head_autocast():
            loss_tag = self.tag_loss_function(self.tag_logits(x_v).float(), targets)
            loss_rtc = self.rtc_loss(x_v, captions).float()
            loss_llm = self.llm_loss(x_v, control, captions).float()
            with_cat = self.config.category_weight > 0 and samples.get("category") is not None
            loss_cat = self.category_loss(x_v, samples["category"]).float() if with_cat else None
        loss = loss_llm + self.config.tag_weight * loss_tag + self.config.rtc_weight * loss_rtc
        out = {"loss_llm": loss_llm.detach(), "loss_tag": loss_tag.detach(), "loss_rtc": loss_rtc.detach()}
        if loss_cat is not None:  # D_rtc under the heads' autocast, as the other head losses
            loss = loss + self.config.category_weight * loss_cat
            out["loss_cat"] = loss_cat.detach()
        return {"loss": loss, **out}

    # ------------------------------------------------------------------------------------------- referring chat
    def _require_causal(self, what: str) -> None:
        if not self.decoder.supports_chat:
            raise ValueError(f"{what} needs a decoder-only LLM (config.llm.kind 'causal'); this model's D_llm is a "
                             "T5")

    def region_controls(self, x_v: Tensor) -> List[str]:
        """Control sentences of regions in a conversation: the tags the tag decoder predicts (sigmoid above
        ``generation.tag_threshold``), most confident first; in training dropped and shuffled as caption controls
        are (:meth:`training_control_words`)."""
        with torch.no_grad():
            probs = torch.sigmoid(self.tag_logits(x_v).float())
        pred = probs > self.config.generation.tag_threshold
        if self.training:
            return self.training_control_words(pred.float())
        out = []
        for i in range(probs.shape[0]):
            idx = torch.nonzero(pred[i]).flatten()
            idx = idx[torch.argsort(probs[i, idx], descending=True)]
            out.append(",".join(self.tag_list[j] for j in idx.tolist()) + "|")
        return out

    def chat_loss(self, samples: Mapping[str, Any]) -> Dict[str, Tensor]:
        """The LLM loss of a conversation batch (see the module docstring) → {"loss", "loss_llm"}."""
        self._require_causal("conversation training")
        for key in ("views", "boxes", "turns", "region_index"):
            if key not in samples:
                raise KeyError(f"samples lacks {key!r} (a conversation batch needs views, boxes, turns, region_index)")
        turns, index = samples["turns"], samples["region_index"]
        if len(turns) != len(index):
            raise ValueError(f"{len(turns)} conversations but {len(index)} region_index entries")
        x_v = self.encode_views(samples["views"], samples["boxes"])
        dec = cast("CausalDecoder", self.decoder)
        proj = dec.proj(x_v)
        ctrl = dec.control_ids(self.region_controls(x_v))
        seqs = []
        for conv, idx in zip(turns, index):
            idx = [int(i) for i in idx]
            seqs.append(dec.chat_sequence(conv, proj[idx], [ctrl[i] for i in idx]))
        loss = dec.sequence_loss(seqs)
        return {"loss": loss, "loss_llm": loss.detach()}

    @torch.no_grad()
    def chat_views(self, views: Any, boxes: Any, question: str,
                   history: Optional[Iterable[Tuple[str, str]]] = None, **gen: Any) -> str:
        """Answer ``question`` about the regions given by their views ([R, n, 3, S, S]) and boxes ([R, n, 4]);
        see :meth:`chat`."""
        from dynrefer.model.placeholders import split_placeholders

        self._require_causal("chat")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        turns = [(str(q), str(a)) for q, a in (history or [])] + [(question, None)]
        views, boxes = torch.as_tensor(views).float(), torch.as_tensor(boxes).float()
        R = views.shape[0]
        if R == 0:
            raise ValueError("chat needs at least one region")
        if not any(isinstance(p, int) for q, _ in turns for p in split_placeholders(q)):
            # no turn names a region: the question is about all of them
            turns[-1] = (" ".join(f"<region{k + 1}>" for k in range(R)) + " " + question, None)
        was_training = self.training
        self.eval()
        try:
            x_v = self.encode_views(views, boxes)
            dec = cast("CausalDecoder", self.decoder)
            seq = dec.chat_sequence(turns, dec.proj(x_v), dec.control_ids(self.region_controls(x_v)))
            texts, _ = dec.generate_sequences([seq], **gen)
        finally:
            self.train(was_training)
        return texts[0]

    @torch.no_grad()
    def chat(self, image: Any, regions: Any, question: str, history: Optional[Iterable[Tuple[str, str]]] = None,
             prior: str = "image", seed: Optional[int] = None, **gen: Any) -> str:
        """Answer a question about regions of an image (referring reasoning; needs a causal LLM).

        Args:
            image: an HxWx3 uint8 array or PIL image.
            regions: [R, 4] xyxy pixel boxes; ``<regionK>`` in the question (1-based) names the K-th. A question
                that names no region (nor does any earlier turn) is asked about all of them, in order.
            question: the user's text.
            history: earlier turns as (question, answer) pairs about the same regions.
            prior: view selection, as in :meth:`describe` ("image", "task", "none").
            seed: makes the call deterministic; ``gen`` overrides generation settings (``max_new_tokens``, …).
        Returns the answer string.
        """
        import numpy as np

        from dynrefer.views import NestedViews

        if prior not in ("image", "task", "none"):
            raise ValueError(f"prior must be 'image', 'task' or 'none', got {prior!r}")
        boxes = np.asarray(regions, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            raise ValueError("chat needs at least one region")
        vc = self.config.vision
        nv = NestedViews(size=vc.image_size, num_views=self.num_views, prior=prior, task="caption", seed=seed)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            v = nv(np.asarray(image), boxes, rng=np.random.default_rng(seed))
            return self.chat_views(torch.from_numpy(v["views"]), torch.from_numpy(v["boxes"]), question,
                                   history=history, **gen)

    # ------------------------------------------------------------------------------------------- inference
    def generation_kwargs(self, **overrides: Any) -> Dict[str, Any]:
        """Generation settings from ``config.generation``, with ``overrides``."""
        return self.decoder.generation_kwargs(**overrides)

    @torch.no_grad()
    def generate_captions(self, x_v: Tensor, control_words: Sequence[str],
                          **gen: Any) -> Tuple[List[str], List[float]]:
        """(captions, exp(sequence score)) of regions ``x_v`` under their control sentences."""
        return self.decoder.generate_captions(x_v, control_words, **gen)

    @torch.no_grad()
    def describe_views(self, views: Any, boxes: Any, coeffs: Any = None,
                       tasks: Iterable[str] = ("category", "attribute", "tag", "caption"),
                       control_words: Optional[Sequence[str]] = None, **gen: Any) -> List[_Region]:
        """Describe regions given their views ([R,n,3,S,S]) and boxes ([R,n,4]); see :meth:`describe`."""
        tasks = tuple(tasks)
        bad = set(tasks) - {"category", "attribute", "tag", "caption"}
        if bad:
            raise ValueError(f"unknown tasks {sorted(bad)}; choose from category, attribute, tag, caption")
        was_training = self.training
        self.eval()
        views = torch.as_tensor(views)
        boxes = torch.as_tensor(boxes)
        R = views.shape[0]
        results = []
        chunk = max(1, int(self.config.generation.chunk_size))
        try:
            for s in range(0, R, chunk):
                x_v = self.encode_views(views[s:s + chunk].float(), boxes[s:s + chunk].float())
                results.extend(self._describe_chunk(x_v, tasks,
                                                    None if control_words is None else control_words[s:s + chunk],
                                                    gen))
        finally:
            self.train(was_training)
        if coeffs is not None:
            for r, c in zip(results, torch.as_tensor(coeffs).tolist()):
                r["view_coeffs"] = [round(float(x), 6) for x in c]
        return results

    def _describe_chunk(self, x_v: Tensor, tasks: Sequence[str], control_words: Optional[Sequence[str]],
                        gen: Dict[str, Any]) -> List[_Region]:
        with self.head_autocast():
            return self._describe_chunk_heads(x_v, tasks, control_words, gen)

    def _rtc_scores(self, sim: Tensor, kind: str) -> Tensor:
        """Inference scores from D_rtc similarities: ``config.rtc_scores`` "official" gives categories the raw
        similarity and attributes sigmoid(similarity) (dynrefer_t5's ov_forward / att_forward); "calibrated"
        gives both sigmoid(similarity · e^t + b), the logits the region-text loss trains."""
        sim = sim.float()
        if self.config.rtc_scores == "official":
            return sim if kind == "category" else torch.sigmoid(sim)
        return torch.sigmoid(self.rtc_logits(sim))

    def _describe_chunk_heads(self, x_v: Tensor, tasks: Sequence[str], control_words: Optional[Sequence[str]],
                              gen: Dict[str, Any]) -> List[_Region]:
        n = x_v.shape[0]
        res: List[_Region] = [dict() for _ in range(n)]
        thr = self.config.generation.tag_threshold
        tag_probs = torch.sigmoid(self.tag_logits(x_v).float())
        tag_lists = []
        for i in range(n):
            idx = torch.nonzero(tag_probs[i] > thr).flatten()
            idx = idx[torch.argsort(tag_probs[i, idx], descending=True)]
            tag_lists.append([(self.tag_list[j], float(tag_probs[i, j])) for j in idx.tolist()])
            if "tag" in tasks:
                res[i]["tags"] = tag_lists[-1]
        vis: Any = self.attr_vision_proj(x_v) if ("category" in tasks or "attribute" in tasks) else None
        if "category" in tasks and self.classes:
            prob = self._rtc_scores(self.prompt_similarity(self.ov_embeds, vis), "category")
            best = prob.argmax(-1)
            for i in range(n):
                res[i]["category"] = self.classes[int(best[i])]
                res[i]["category_score"] = float(prob[i, best[i]])
                res[i]["category_scores"] = prob[i].float().cpu().tolist()
        if "attribute" in tasks and self.attributes:
            prob = self._rtc_scores(self.prompt_similarity(self.att_embeds, vis), "attribute")
            per_attr = torch.stack([p.max(-1).values for p in prob.split(self.att_len_synonyms, dim=1)], dim=1)
            for i in range(n):
                res[i]["attributes"] = [(name, float(sc)) for name, sc in
                                        zip(self.attribute_names, per_attr[i].tolist())]
        if "caption" in tasks:
            if control_words is None:
                control_words = [",".join(t for t, _ in tags) + "|" for tags in tag_lists]
            caps, scores = self.generate_captions(x_v, control_words, **gen)
            for i in range(n):
                res[i]["caption"] = caps[i]
                res[i]["caption_score"] = float(scores[i])
        return res

    @torch.no_grad()
    def describe(self, images: Any, boxes: Any, prior: str = "image",
                 tasks: Iterable[str] = ("category", "attribute", "tag", "caption"), seed: Optional[int] = None,
                 task: Optional[str] = None, **gen: Any) -> List[Any]:
        """Describe every box of every image.

        Args:
            images: an HxWx3 uint8 array / PIL image, or a list of them.
            boxes: per image an [R, 4] xyxy pixel box array (a single array when ``images`` is one image).
            prior: view selection at inference: "image" (pHash search, default), "task" (the paper's table,
                ``dynrefer.views.TASK_PRIOR``: for ``task`` when given, else captions and tags from the caption
                prior's views and categories and attributes from the attribute prior's, as the evaluation reads
                them; ``view_coeffs_attribute`` then holds the second set), "none" (random views; seeded by
                ``seed``). ``task`` also picks the view prior of "image" and "none" (default: "attribute" when the
                first of ``tasks`` is attribute or category, else "caption").
            tasks: any of "category", "attribute", "tag", "caption" ("category" needs the model built with
                ``classes`` and "attribute" with ``attributes``; without them those fields are left out).
            seed: makes the whole call deterministic (view sampling and any randomness in generation).
        Returns a list (per image) of lists (per region) of dicts with ``box``, ``view_coeffs``, and per task
        ``category``/``category_score``, ``attributes`` [(name, score)], ``tags`` [(name, score)],
        ``caption``/``caption_score`` (exp of the beam's sequence score).
        """
        import numpy as np

        from dynrefer.views import NestedViews

        if prior not in ("image", "task", "none"):
            raise ValueError(f"prior must be 'image', 'task' or 'none', got {prior!r}")
        single = not isinstance(images, (list, tuple))
        if single:
            images, boxes = [images], [boxes]
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
        tasks = tuple(tasks)
        # which views each answer is read from: with prior="task" (and no explicit task) captions and the tags that
        # steer them come from the caption prior's views, categories and attributes from the attribute prior's —
        # as the evaluation reads them (dynrefer.app.schemes); other priors choose views once for every task
        groups: List[Tuple[Tuple[str, ...], str]]
        if task is None and prior == "task":
            groups = [(g, t) for g, t in ((("tag", "caption"), "caption"), (("category", "attribute"), "attribute"))
                      if any(x in tasks for x in g)]
            groups = [(tuple(x for x in tasks if x in g), t) for g, t in groups]
        else:
            if task is None:   # the first task's view prior: little context for attributes and categories
                task = {"attribute": "attribute", "category": "attribute"}.get(tasks[0] if tasks else "", "caption")
            groups = [(tasks, task)]
        vc = self.config.vision
        nvs = [NestedViews(size=vc.image_size, num_views=self.num_views, prior=prior, task=t, seed=seed)
               for _, t in groups]
        rng = np.random.default_rng(seed)
        devices = [self.device] if self.device.type == "cuda" else []
        out: List[Any] = []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            for img, bx in zip(images, boxes):
                bx = np.asarray(bx, dtype=np.float32).reshape(-1, 4)
                if len(bx) == 0:
                    out.append([])
                    continue
                regs: Any = None
                for (group, vtask), nv in zip(groups, nvs):
                    v = nv(np.asarray(img), bx, rng=rng)
                    part = self.describe_views(torch.from_numpy(v["views"]), torch.from_numpy(v["boxes"]),
                                               coeffs=v["coeffs"], tasks=group, **gen)
                    if regs is None:
                        regs = part
                    else:
                        for r, p in zip(regs, part):
                            if p.get("view_coeffs") != r.get("view_coeffs"):
                                p[f"view_coeffs_{vtask}"] = p.pop("view_coeffs")
                            else:
                                p.pop("view_coeffs", None)
                            r.update(p)
                for r, b in zip(regs, bx.tolist()):
                    r["box"] = [float(x) for x in b]
                out.append(regs)
        return out[0] if single else out


def format_blocks(results: Iterable[_Region], top_attributes: int = 3, top_tags: int = 5,
                  attribute_threshold: Optional[float] = None) -> str:
    """A short block per region for people: box and views, category with its score, the attributes (those above
    ``attribute_threshold`` when given, else the ``top_attributes`` best), the ``top_tags`` best tags (and how
    many more passed the tag threshold), and the complete caption with its score."""
    out = []
    for i, r in enumerate(results):
        head = f"[{i}]"
        if "box" in r:
            head += " box " + ",".join(f"{x:.0f}" for x in r["box"])
        views = [f"t = {', '.join(f'{c:.1f}' for c in r['view_coeffs'])}"] if "view_coeffs" in r else []
        views += [f"{k[len('view_coeffs_'):]}: t = {', '.join(f'{c:.1f}' for c in v)}" for k, v in r.items()
                  if k.startswith("view_coeffs_")]
        if views:
            head += "  (views " + "; ".join(views) + ")"
        lines = [head]
        if "category" in r:
            lines.append(f"    category    {r['category']} {r['category_score']:.2f}")
        if r.get("attributes"):
            ranked = sorted(r["attributes"], key=lambda t: -t[1])
            shown = ([a for a in ranked if a[1] >= attribute_threshold] if attribute_threshold is not None
                     else ranked[:top_attributes])
            lines.append("    attributes  " + (", ".join(f"{n} {s:.2f}" for n, s in shown) or "-"))
        if "tags" in r:
            tags = r["tags"]
            more = f" (+{len(tags) - top_tags} more)" if len(tags) > top_tags else ""
            lines.append("    tags        " + (", ".join(f"{n} {s:.2f}" for n, s in tags[:top_tags]) or "-") + more)
        if "caption" in r:
            lines.append(f"    caption     {r['caption'] or '-'} ({r['caption_score']:.2f})")
        out.append("\n".join(lines))
    return "\n".join(out)


def format_descriptions(results: Iterable[_Region], top_attributes: int = 3) -> str:
    """One line per region: box, category, top attributes, tags, caption, view coefficients."""
    lines = []
    for i, r in enumerate(results):
        parts = [f"[{i}]"]
        if "box" in r:
            parts.append("box=(" + ",".join(f"{x:.0f}" for x in r["box"]) + ")")
        if "category" in r:
            parts.append(f"category={r['category']} ({r['category_score']:.2f})")
        if r.get("attributes"):
            top = sorted(r["attributes"], key=lambda t: -t[1])[:top_attributes]
            parts.append("attributes=" + ", ".join(f"{n} ({s:.2f})" for n, s in top))
        if "tags" in r:
            parts.append("tags=" + (", ".join(f"{n} ({s:.2f})" for n, s in r["tags"]) or "-"))
        if "caption" in r:
            parts.append(f'caption="{r["caption"]}" ({r["caption_score"]:.2f})')
        if "view_coeffs" in r:
            parts.append("views=" + ",".join(f"{c:.1f}" for c in r["view_coeffs"]))
        lines.append(" | ".join(parts))
    return "\n".join(lines)
