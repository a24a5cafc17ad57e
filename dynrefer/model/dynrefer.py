"""The DynRefer model: nested views → frozen ViT → RoI-Align + align + fuse (cvem) → Q-Former → three decoders.

Parameter names follow the official implementation so its checkpoints load by name:
    visual_encoder, ln_vision           frozen ViT and its LayerNorm (BLIP-2 names)
    cvem_align, cvem_mlp                contextual visual embedding: DCNv4 align module, fusion MLP
    query_tokens, Qformer               BLIP-2 Q-Former (the learned queries stay frozen, as officially)
    t5_proj, t5_model, cem_memory       D_llm: projection, frozen T5, control-embedding memory
    tag_head, tag_vision_proj, tag_text_proj, tag_fc                            D_tag
    attr_head, attr_vision_proj, attr_text_proj, attr_fc, attr_t, attr_b        D_rtc (region–text contrast)
    clip_embeds, att_embeds, ov_embeds  frozen text embeddings of tags, attribute prompts, class prompts (buffers)
    text_encoder                        the frozen text encoder that made them (and embeds captions in training)
Trainable: parameters whose top-level name starts with cvem, cem, tag, attr, Qformer or t5_proj.

Training batch (``forward(samples)``), R regions of n views each:
    samples["views"]        float [R, n, 3, S, S]  normalised views, the tight view first
    samples["boxes"]        float [R, n, 4]        the referred box (xyxy) in each view's S×S frame
    samples["text_output"]  list of R captions
    samples["tags"]         0/1 [R, T] or [R, 2T]  multi-hot tag targets over ``tag_list`` (two tag sets are OR-ed)
    samples["control_words"] optional list of R control sentences ("w1,w2|"; also read from "control", the key
                            of dynrefer.data.collate_regions); default: drawn from the tags with torch's RNG
    Other keys (coeffs, category, att_vec, ids, …) are ignored.
→ {"loss", "loss_llm", "loss_tag", "loss_rtc"} (the components detached).
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dynrefer.model import _dist
from dynrefer.model.config import DynReferConfig
from dynrefer.model.losses import AsymmetricLoss, pairwise_sigmoid_loss
from dynrefer.model.qformer import CrossDecoder, QFormer
from dynrefer.model.text import TextEncoder, normalize_text
from dynrefer.model.vision import build_vision_encoder
from dynrefer.nn import backend
from dynrefer.nn.align import DeformableAlign

__all__ = ["DynRefer", "TRAINABLE_PREFIXES", "attribute_prompts", "class_prompts", "format_descriptions"]

log = logging.getLogger("dynrefer.model")

TRAINABLE_PREFIXES = ("cvem", "cem", "tag", "attr", "Qformer", "t5_proj")
_FROZEN_MODULES = ("visual_encoder", "ln_vision", "t5_model", "text_encoder")
_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def class_prompts(classes):
    """The official open-vocabulary prompt: "the {class}"."""
    return [f"the {normalize_text(c)}" for c in classes]


def attribute_prompts(attributes):
    """Prompts per attribute. An attribute is a list of prompts, or OVAD's "type:syn1/syn2" name (or an OVAD
    attribute record with that ``name``), which gives "the {syn} {type}" per synonym (max over synonyms at
    inference)."""
    out = []
    for a in attributes:
        if isinstance(a, dict):  # an OVAD attribute record
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


def _attribute_name(a):
    if isinstance(a, dict):
        a = str(a["name"])
    if isinstance(a, str):
        return a.split(":", 1)[1].split("/")[0] if ":" in a else a
    return str(a[0])


def _autocast(device, precision):
    dt = _PRECISION[precision]
    if dt is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dt)


class DynRefer(nn.Module):
    """DynRefer. Build with ``DynRefer(config, t5_tokenizer, tag_list, text_encoder, ...)``.

    Args:
        config: a :class:`DynReferConfig` (or a preset name).
        t5_tokenizer: the LLM's tokenizer (e.g. :func:`dynrefer.model.text.build_t5_tokenizer` or a T5 directory's).
        tag_list: the tag names (RAM's 4585 officially).
        text_encoder: a frozen :class:`TextEncoder` (embeds tags, prompts and, in training, captions).
        classes: category names for region recognition (optional).
        attributes: attribute definitions for attribute detection (optional; see :func:`attribute_prompts`).
        t5_model: a ``T5ForConditionalGeneration`` (default: built from ``config.t5``, random weights).
        embed_cache_dir: on-disk cache of the text embeddings.
    """

    def __init__(self, config, t5_tokenizer, tag_list, text_encoder, classes=(), attributes=(), t5_model=None,
                 embed_cache_dir=None):
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
        # LLM
        self.t5_tokenizer = t5_tokenizer
        if t5_model is None:
            t5_model = _build_t5(cfg.t5, t5_tokenizer)
        self.t5_model = t5_model
        d_model = t5_model.config.d_model
        self.t5_proj = nn.Linear(qc.hidden_size, d_model)
        self.cem_memory = nn.Parameter(torch.zeros(d_model))
        # text embeddings
        if not isinstance(text_encoder, TextEncoder):
            raise TypeError("text_encoder must be a dynrefer.model.text.TextEncoder")
        self.text_encoder = text_encoder
        self.tag_list = [str(t) for t in tag_list]
        if not self.tag_list:
            raise ValueError("tag_list must not be empty")
        self.classes = [str(c) for c in classes]
        self.attributes = list(attributes)
        self.attribute_names = [_attribute_name(a) for a in self.attributes]
        prompts = attribute_prompts(self.attributes)
        self.att_len_synonyms = [len(p) for p in prompts]
        E = text_encoder.width
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
        # D_rtc
        self.attr_head = CrossDecoder(hc)
        self.attr_text_proj = nn.Linear(E, H)
        self.attr_vision_proj = nn.Linear(qc.hidden_size, H)
        self.attr_fc = nn.Linear(H, 1)
        self.attr_t = nn.Parameter(torch.tensor(math.log(10.0)))
        self.attr_b = nn.Parameter(torch.tensor(-10.0))
        self.apply_trainable_split()

    # ------------------------------------------------------------------------------------------- bookkeeping
    @staticmethod
    def is_trainable_name(name):
        return name.split(".", 1)[0].startswith(TRAINABLE_PREFIXES)

    def apply_trainable_split(self):
        """The official split: train cvem*, cem*, tag*, attr*, Qformer*, t5_proj*; freeze everything else."""
        for name, p in self.named_parameters():
            p.requires_grad_(self.is_trainable_name(name)
                             or (self.config.train_llm and name.startswith("t5_model.")))

    def trainable_state_dict(self):
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def train(self, mode=True):
        super().train(mode)
        for name in _FROZEN_MODULES:  # frozen modules always run as in inference (no dropout)
            if not (name == "t5_model" and self.config.train_llm):
                getattr(self, name).eval()
        return self

    @property
    def device(self):
        return self.query_tokens.device

    @property
    def num_tags(self):
        return len(self.tag_list)

    # ------------------------------------------------------------------------------------------- encoders
    def encode_views(self, views, boxes):
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
                _autocast(images.device, self.config.vit_precision):
            embeds = self.ln_vision(self.visual_encoder(images))
        embeds = embeds.float() if embeds.dtype == torch.float16 else embeds
        visual = self.cvem_forward(embeds, boxes.reshape(R * n, 4).to(embeds.device, embeds.dtype), R, n)
        queries = self.query_tokens.expand(R, -1, -1)
        return self.Qformer(queries, visual)

    def cvem_forward(self, embeds, boxes, R, n):
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
    def tag_logits(self, x_v):
        """x_v [R, Q, hidden] → tag logits [R, T]."""
        R = x_v.shape[0]
        vis = self.tag_vision_proj(x_v)
        txt = self.tag_text_proj(self.clip_embeds.to(vis.dtype)).unsqueeze(0).expand(R, -1, -1)
        return self.tag_fc(self.tag_head(txt, vis)).squeeze(-1)

    def rtc_similarity(self, text_embeds, vis):
        """Cosine-like similarity of every (vision, text) pair: text_embeds [Lt, H], vis [Rv, Q, H] → [Rv, Lt]."""
        q = text_embeds.unsqueeze(0).expand(vis.shape[0], -1, -1)
        return self.attr_fc(F.normalize(self.attr_head(q, vis), dim=-1)).squeeze(-1)

    def rtc_logits(self, sim):
        return sim * self.attr_t.exp() + self.attr_b

    def rtc_loss(self, x_v, captions):
        """Pairwise sigmoid loss between regions and their captions, negatives from every process."""
        B = x_v.shape[0]
        vis = self.attr_vision_proj(x_v)
        txt = self.attr_text_proj(self.text_encoder.encode_memo(list(captions)).to(vis.device, vis.dtype))
        vis_all = _dist.all_gather_with_grad(vis)
        txt_all = _dist.all_gather_with_grad(txt)
        off = _dist.rank() * B
        sim_i2t = self.rtc_similarity(txt, vis_all).t()   # [B texts, B_all regions]
        sim_t2i = self.rtc_similarity(txt_all, vis)       # [B regions, B_all texts]
        l_i2t = pairwise_sigmoid_loss(self.rtc_logits(sim_i2t), off)
        l_t2i = pairwise_sigmoid_loss(self.rtc_logits(sim_t2i), off)
        return (l_i2t + l_t2i) / 2

    def _tag_targets(self, tags, R):
        tags = torch.as_tensor(tags, device=self.device)
        T = self.num_tags
        if tags.dim() != 2 or tags.shape[0] != R or tags.shape[1] not in (T, 2 * T):
            raise ValueError(f"samples['tags'] must be [{R}, {T}] or [{R}, {2 * T}], got {list(tags.shape)}")
        if tags.shape[1] == 2 * T:
            tags = tags[:, :T] + tags[:, T:]
        return (tags > 0).float()

    def training_control_words(self, targets):
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

    def _llm_inputs(self, x_v, control_words):
        tok = self.t5_tokenizer(list(control_words), padding="longest", truncation=True,
                                max_length=self.config.max_txt_len, return_tensors="pt").to(x_v.device)
        ctrl = self.t5_model.get_input_embeddings()(tok.input_ids) + self.cem_memory
        inputs = self.t5_proj(x_v)
        ctrl = ctrl.to(inputs.dtype)
        mask = torch.cat([torch.ones(inputs.shape[:2], dtype=torch.long, device=x_v.device), tok.attention_mask],
                         dim=1)
        return torch.cat([inputs, ctrl], dim=1), mask

    def llm_loss(self, x_v, control_words, captions):
        embeds, mask = self._llm_inputs(x_v, control_words)
        out = self.t5_tokenizer([normalize_text(c) for c in captions], padding="longest", truncation=True,
                                max_length=self.config.max_txt_len, return_tensors="pt").to(x_v.device)
        labels = out.input_ids.masked_fill(out.input_ids == self.t5_tokenizer.pad_token_id, -100)
        with _autocast(x_v.device, self.config.llm_precision):
            res = self.t5_model(inputs_embeds=embeds, attention_mask=mask,
                                decoder_attention_mask=out.attention_mask, labels=labels, return_dict=True)
        return res.loss.float()

    # ------------------------------------------------------------------------------------------- training
    def forward(self, samples):
        for key in ("views", "boxes", "text_output", "tags"):
            if key not in samples:
                raise KeyError(f"samples lacks {key!r} (needs views, boxes, text_output, tags)")
        captions = list(samples["text_output"])
        R = samples["views"].shape[0]
        if len(captions) != R:
            raise ValueError(f"{len(captions)} captions for {R} regions")
        x_v = self.encode_views(samples["views"], samples["boxes"])
        targets = self._tag_targets(samples["tags"], R)
        loss_tag = self.tag_loss_function(self.tag_logits(x_v).float(), targets)
        loss_rtc = self.rtc_loss(x_v, captions).float()
        control = samples.get("control_words", samples.get("control"))
        if control is None:
            control = self.training_control_words(targets) if self.training else ["|"] * R
        loss_llm = self.llm_loss(x_v, control, captions)
        loss = loss_llm + self.config.tag_weight * loss_tag + self.config.rtc_weight * loss_rtc
        return {"loss": loss, "loss_llm": loss_llm.detach(), "loss_tag": loss_tag.detach(),
                "loss_rtc": loss_rtc.detach()}

    # ------------------------------------------------------------------------------------------- inference
    def generation_kwargs(self, **overrides):
        g = self.config.generation
        kw = dict(num_beams=g.num_beams, max_new_tokens=g.max_new_tokens, min_length=g.min_length,
                  length_penalty=g.length_penalty, repetition_penalty=g.repetition_penalty, do_sample=False)
        kw.update(overrides)
        if kw.get("num_beams", 1) <= 1:  # greedy search has no length penalty
            kw.pop("length_penalty", None)
        return kw

    @torch.no_grad()
    def generate_captions(self, x_v, control_words, **gen):
        embeds, mask = self._llm_inputs(x_v, control_words)
        kw = self.generation_kwargs(**gen)
        with _autocast(x_v.device, self.config.llm_precision):
            out = self.t5_model.generate(inputs_embeds=embeds, attention_mask=mask, output_scores=True,
                                         return_dict_in_generate=True, **kw)
        seqs = out.sequences
        if getattr(out, "sequences_scores", None) is not None:
            scores = out.sequences_scores.float()
        else:  # greedy: the sequence score is the summed token log-probability (length_penalty 0)
            trans = self.t5_model.compute_transition_scores(seqs, out.scores, normalize_logits=True)
            scores = trans.float().sum(-1)
        caps = self.t5_tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return [c.strip() for c in caps], torch.exp(scores).cpu().tolist()

    @torch.no_grad()
    def describe_views(self, views, boxes, coeffs=None, tasks=("category", "attribute", "tag", "caption"),
                       control_words=None, **gen):
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

    def _describe_chunk(self, x_v, tasks, control_words, gen):
        n = x_v.shape[0]
        res = [dict() for _ in range(n)]
        thr = self.config.generation.tag_threshold
        tag_probs = torch.sigmoid(self.tag_logits(x_v).float())
        tag_lists = []
        for i in range(n):
            idx = torch.nonzero(tag_probs[i] > thr).flatten()
            idx = idx[torch.argsort(tag_probs[i, idx], descending=True)]
            tag_lists.append([(self.tag_list[j], float(tag_probs[i, j])) for j in idx.tolist()])
            if "tag" in tasks:
                res[i]["tags"] = tag_lists[-1]
        vis = self.attr_vision_proj(x_v) if ("category" in tasks or "attribute" in tasks) else None
        if "category" in tasks and self.classes:
            prob = torch.sigmoid(self.rtc_logits(self.rtc_similarity(self.attr_text_proj(self.ov_embeds), vis)))
            best = prob.argmax(-1)
            for i in range(n):
                res[i]["category"] = self.classes[int(best[i])]
                res[i]["category_score"] = float(prob[i, best[i]])
                res[i]["category_scores"] = prob[i].float().cpu().tolist()
        if "attribute" in tasks and self.attributes:
            prob = torch.sigmoid(self.rtc_logits(self.rtc_similarity(self.attr_text_proj(self.att_embeds), vis)))
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
    def describe(self, images, boxes, prior="image", tasks=("category", "attribute", "tag", "caption"), seed=None,
                 task=None, **gen):
        """Describe every box of every image.

        Args:
            images: an HxWx3 uint8 array / PIL image, or a list of them.
            boxes: per image an [R, 4] xyxy pixel box array (a single array when ``images`` is one image).
            prior: view selection at inference: "image" (pHash search, default), "task" (the paper's table,
                ``dynrefer.views.TASK_PRIOR``, for ``task``: by default "attribute" when the first of ``tasks`` is
                attribute or category, else "caption"), "none" (random views; seeded by ``seed``).
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
        if task is None:  # the view prior of the first task: little context for attributes and categories
            task = {"attribute": "attribute", "category": "attribute"}.get(tasks[0] if tasks else "", "caption")
        vtask = task
        vc = self.config.vision
        nv = NestedViews(size=vc.image_size, num_views=self.num_views, prior=prior, task=vtask, seed=seed)
        rng = np.random.default_rng(seed)
        devices = [self.device] if self.device.type == "cuda" else []
        out = []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            for img, bx in zip(images, boxes):
                bx = np.asarray(bx, dtype=np.float32).reshape(-1, 4)
                if len(bx) == 0:
                    out.append([])
                    continue
                v = nv(np.asarray(img), bx, rng=rng)
                regs = self.describe_views(torch.from_numpy(v["views"]), torch.from_numpy(v["boxes"]),
                                           coeffs=v["coeffs"], tasks=tasks, **gen)
                for r, b in zip(regs, bx.tolist()):
                    r["box"] = [float(x) for x in b]
                out.append(regs)
        return out[0] if single else out


def format_descriptions(results, top_attributes=3):
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


def _build_t5(tc, tokenizer):
    from transformers import T5Config as HFT5Config
    from transformers import T5ForConditionalGeneration

    vocab = max(tc.vocab_size, len(tokenizer))
    hc = HFT5Config(vocab_size=vocab, d_model=tc.d_model, d_kv=tc.d_kv, d_ff=tc.d_ff, num_layers=tc.num_layers,
                    num_decoder_layers=tc.num_decoder_layers, num_heads=tc.num_heads,
                    feed_forward_proj=tc.feed_forward_proj, tie_word_embeddings=tc.tie_word_embeddings,
                    dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id)
    return T5ForConditionalGeneration(hc)
