"""D_llm's language decoder behind one interface: the official T5 encoder-decoder, or a decoder-only (causal) LM.

A decoder is a plain object over modules the :class:`~dynrefer.model.dynrefer.DynRefer` owns under the official
names — ``t5_model`` / ``t5_proj`` (T5) or ``llm_model`` / ``llm_proj`` (causal, the names of the official Vicuna
variant), and ``cem_memory`` — so checkpoints keep their keys. :meth:`LanguageDecoder.attach` creates those
modules on the model; the model then asks its decoder for

    caption_loss(x_v, control_words, captions)   the captioning loss of a batch of regions
    generate_captions(x_v, control_words, **gen) (captions, exp(sequence score)) per region

and, for referring conversations (causal decoders only, ``supports_chat``), for :meth:`CausalDecoder.chat_sequence`,
:meth:`CausalDecoder.sequence_loss` and :meth:`CausalDecoder.generate_sequences`.

The sequences (``x_v``: the Q-Former's region tokens):

    T5       encoder [t5_proj(x_v) ; embed(control sentence) + memory], decoder → caption
    causal   [llm_proj(x_v) ; <s> ; embed(control sentence) + memory ; prompt ; caption </s>]   (loss on the caption)
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, ContextManager, Dict, List, Optional, Sequence, Set, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dynrefer.model import causal as _causal
from dynrefer.model.placeholders import answer_text, split_placeholders
from dynrefer.model.text import normalize_text

if TYPE_CHECKING:
    from dynrefer.model.config import DynReferConfig, T5Config
    from dynrefer.model.dynrefer import DynRefer

_Captions = Tuple[List[str], List[float]]

__all__ = ["LanguageDecoder", "T5Decoder", "CausalDecoder", "DECODERS", "autocast", "build_t5", "untie_lm_head",
           "set_t5_activation"]

_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def autocast(device: torch.device, precision: str, cpu: bool = False) -> ContextManager[Any]:
    """torch.autocast for ``precision`` ("fp16", "bf16", "fp32") on CUDA; on the CPU nothing, unless ``cpu``
    (``config.cpu_autocast``) and the precision is bf16."""
    dt = _PRECISION[precision]
    if dt is None:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=dt)
    if device.type == "cpu" and cpu and dt is torch.bfloat16:
        return torch.autocast("cpu", dtype=dt)
    return contextlib.nullcontext()


class LanguageDecoder:
    """The interface; see the module docstring. ``model`` is the DynRefer that owns the modules."""

    kind: str = ""
    llm_attr: str = ""   # the model's attribute names
    proj_attr: str = ""
    tokenizer_attr: str = ""
    supports_chat: bool = False

    def __init__(self, model: DynRefer) -> None:
        self.model = model

    @property
    def config(self) -> DynReferConfig:
        return self.model.config

    @property
    def llm(self) -> Any:
        return getattr(self.model, self.llm_attr)

    @property
    def proj(self) -> nn.Linear:
        return getattr(self.model, self.proj_attr)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, self.tokenizer_attr)

    def attach(self, tokenizer: Any, llm: Any, width: int) -> int:
        """Create the LLM, its tokenizer and the projection from ``width``-wide region tokens on the model;
        returns the LLM's hidden size (the memory vector's length)."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Called once the model is complete (before its trainable split): adapters and the like."""

    def external_keys(self) -> Set[str]:
        """State-dict keys a model bundle leaves out because they are reloaded from elsewhere."""
        return set()

    def generation_kwargs(self, **overrides: Any) -> Dict[str, Any]:
        """Generation settings from ``config.generation``, with ``overrides``."""
        g = self.config.generation
        kw = dict(num_beams=g.num_beams, max_new_tokens=g.max_new_tokens, min_length=g.min_length,
                  length_penalty=g.length_penalty, repetition_penalty=g.repetition_penalty, do_sample=False)
        kw.update(overrides)
        if kw.get("num_beams", 1) <= 1:  # greedy search has no length penalty
            kw.pop("length_penalty", None)
        return kw

    def caption_loss(self, x_v: Tensor, control_words: Sequence[str], captions: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def generate_captions(self, x_v: Tensor, control_words: Sequence[str], **gen: Any) -> _Captions:
        raise NotImplementedError


class T5Decoder(LanguageDecoder):
    """The official D_llm: a frozen FlanT5 whose encoder reads the projected region tokens and the control
    sentence (plus the memory vector)."""

    kind = "t5"
    llm_attr, proj_attr, tokenizer_attr = "t5_model", "t5_proj", "t5_tokenizer"

    def attach(self, tokenizer: Any, llm: Any, width: int) -> int:
        m = self.model
        m.t5_tokenizer = tokenizer
        m.t5_model = llm if llm is not None else build_t5(self.config.t5, tokenizer)
        if self.config.t5.dense_act_fn is not None:
            set_t5_activation(m.t5_model, self.config.t5.dense_act_fn)
        d_model = m.t5_model.config.d_model
        m.t5_proj = nn.Linear(width, d_model)
        return d_model

    def finalize(self) -> None:
        if self.config.llm_weights_bf16:  # LAVIS stores the frozen FlanT5 in bfloat16
            for p in self.llm.parameters():
                p.data = p.data.to(torch.bfloat16)

    def _inputs(self, x_v: Tensor, control_words: Sequence[str]) -> Tuple[Tensor, Tensor]:
        m = self.model
        tok = self.tokenizer(list(control_words), padding="longest", truncation=True,
                             max_length=self.config.max_txt_len, return_tensors="pt").to(x_v.device)
        ctrl = self.llm.get_input_embeddings()(tok.input_ids) + m.cem_memory
        inputs = self.proj(x_v)
        ctrl = ctrl.to(inputs.dtype)
        mask = torch.cat([torch.ones(inputs.shape[:2], dtype=torch.long, device=x_v.device), tok.attention_mask],
                         dim=1)
        return torch.cat([inputs, ctrl], dim=1), mask

    def caption_loss(self, x_v: Tensor, control_words: Sequence[str], captions: Sequence[str]) -> Tensor:
        embeds, mask = self._inputs(x_v, control_words)
        out = self.tokenizer([normalize_text(c) for c in captions], padding="longest", truncation=True,
                             max_length=self.config.max_txt_len, return_tensors="pt").to(x_v.device)
        labels = out.input_ids.masked_fill(out.input_ids == self.tokenizer.pad_token_id, -100)
        with autocast(x_v.device, self.config.llm_precision, self.config.cpu_autocast):
            res = self.llm(inputs_embeds=embeds, attention_mask=mask, decoder_attention_mask=out.attention_mask,
                           labels=labels, return_dict=True)
        return res.loss.float()

    def generate_captions(self, x_v: Tensor, control_words: Sequence[str], **gen: Any) -> _Captions:
        embeds, mask = self._inputs(x_v, control_words)
        kw = self.generation_kwargs(**gen)
        with autocast(x_v.device, self.config.llm_precision, self.config.cpu_autocast):
            out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, output_scores=True,
                                    return_dict_in_generate=True, **kw)
        seqs = out.sequences
        if getattr(out, "sequences_scores", None) is not None:
            scores = out.sequences_scores.float()
        else:  # greedy: the sequence score is the summed token log-probability (length_penalty 0)
            trans = self.llm.compute_transition_scores(seqs, out.scores, normalize_logits=True)
            scores = trans.float().sum(-1)
        caps = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return [c.strip() for c in caps], torch.exp(scores).cpu().tolist()


class CausalDecoder(LanguageDecoder):
    """A decoder-only LLM (Vicuna-7B in the paper's Tables 5–6; any local Hugging Face causal LM) behind D_llm,
    frozen or with LoRA adapters; it also carries referring conversations."""

    kind = "causal"
    llm_attr, proj_attr, tokenizer_attr = "llm_model", "llm_proj", "llm_tokenizer"
    supports_chat = True

    def attach(self, tokenizer: Any, llm: Any, width: int) -> int:
        m, cfg = self.model, self.config
        m.llm_tokenizer = tokenizer
        _causal.special_ids(tokenizer)  # checks there is an eos
        if llm is None:
            if not cfg.llm.config:
                raise ValueError("config.llm.kind 'causal' needs llm_model, or config.llm.config to build one "
                                 "(build_dynrefer loads config.llm.path)")
            llm = _causal.build_causal_lm(cfg.llm.config, tokenizer)
        m.llm_model = llm
        d_model = _causal.hidden_size(llm)
        m.llm_proj = nn.Linear(width, d_model)
        return d_model

    def finalize(self) -> None:
        if self.config.llm.lora:
            self.model.llm_model = _causal.apply_lora(self.model.llm_model, self.config.llm)

    def external_keys(self) -> Set[str]:
        """A frozen LLM loaded from ``config.llm.path`` is reloaded from there (its trainable adapters are kept)."""
        if not self.config.llm.path:
            return set()
        m = self.model
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        return {k for k in m.state_dict() if k.startswith(self.llm_attr + ".") and k not in trainable}

    # ---- sequences
    def control_ids(self, control_words: Sequence[str]) -> List[List[int]]:
        return _causal.text_ids(self.tokenizer, list(control_words), self.config.max_txt_len)

    def region_segments(self, proj: Tensor, ctrl_ids: Sequence[int]) -> List[_causal.Segment]:
        """A region in a sequence: its projected tokens, then its control sentence plus the memory."""
        return [_causal.Segment(embeds=proj), _causal.Segment(ids=ctrl_ids, add=self.model.cem_memory)]

    def caption_sequences(self, x_v: Tensor, control_words: Sequence[str],
                          captions: Optional[Sequence[str]] = None) -> List[List[_causal.Segment]]:
        """[llm_proj(x_v) ; <s> ; control + memory ; prompt ; caption </s>] per region (caption omitted for
        generation)."""
        tok, lc = self.tokenizer, self.config.llm
        bos, eos, _ = _causal.special_ids(tok)
        proj = self.proj(x_v)
        ctrl = self.control_ids(control_words)
        prompt = _causal.text_ids(tok, [lc.prompt])[0] if lc.prompt else []
        answers = None
        if captions is not None:
            answers = _causal.text_ids(tok, [normalize_text(c) for c in captions], lc.max_answer_len)
        seqs = []
        for i in range(x_v.shape[0]):
            seq = [_causal.Segment(embeds=proj[i])]
            if bos is not None:
                seq.append(_causal.Segment(ids=[bos]))
            seq.append(_causal.Segment(ids=ctrl[i], add=self.model.cem_memory))
            seq.append(_causal.Segment(ids=prompt))
            if answers is not None:
                seq.append(_causal.Segment(ids=answers[i] + [eos], target=True))
            seqs.append(seq)
        return seqs

    def chat_sequence(self, turns: Sequence[Tuple[str, Any]], proj: Tensor,
                      ctrl: Sequence[Sequence[int]]) -> List[_causal.Segment]:
        """One conversation as segments: [<s> ; system ; per turn USER: question ASSISTANT: answer </s>], each
        ``<regionK>`` of a question replaced by region K's tokens and control; the last answer may be None (to be
        generated). Answers are the targets."""
        tok, lc = self.tokenizer, self.config.llm
        bos, eos, _ = _causal.special_ids(tok)
        ids = lambda text: _causal.text_ids(tok, [text])[0]  # noqa: E731
        seq = [_causal.Segment(ids=[bos])] if bos is not None else []
        if lc.system:
            seq.append(_causal.Segment(ids=ids(lc.system)))
        for t, (question, answer) in enumerate(turns):
            seq.append(_causal.Segment(ids=ids(lc.user)))
            for piece in split_placeholders(question):
                if isinstance(piece, int):
                    if not 1 <= piece <= len(proj):
                        raise ValueError(f"<region{piece}> in turn {t + 1} but the conversation has {len(proj)} "
                                         f"region{'s' if len(proj) != 1 else ''}")
                    seq += self.region_segments(proj[piece - 1], ctrl[piece - 1])
                elif piece.strip():
                    seq.append(_causal.Segment(ids=ids(piece.strip())))
            seq.append(_causal.Segment(ids=ids(lc.assistant)))
            if answer is None:
                if t != len(turns) - 1:
                    raise ValueError(f"turn {t + 1} has no answer but is not the last")
                break
            ans = _causal.text_ids(tok, [answer_text(answer)], lc.max_answer_len)[0]
            seq.append(_causal.Segment(ids=ans + [eos], target=True))
        return seq

    # ---- loss and generation over sequences
    def sequence_loss(self, seqs: Sequence[List[_causal.Segment]]) -> Tensor:
        """Cross-entropy on the target segments of right-padded sequences."""
        batch = _causal.pack(seqs, self.llm.get_input_embeddings(), side="right", max_len=self.config.llm.max_len)
        labels = batch.pop("labels")
        with autocast(batch["inputs_embeds"].device, self.config.llm_precision, self.config.cpu_autocast):
            out = self.llm(**batch, return_dict=True)
        logits = out.logits[:, :-1].float()
        targets = labels[:, 1:]
        if not bool((targets != -100).any()):  # every answer truncated away: nothing to learn from this batch
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    def generate_sequences(self, seqs: Sequence[List[_causal.Segment]], **gen: Any) -> _Captions:
        """Generate after each sequence (left-padded batch); returns (texts, exp(sequence score))."""
        tok = self.tokenizer
        bos, eos, pad = _causal.special_ids(tok)
        batch = _causal.pack(seqs, self.llm.get_input_embeddings(), side="left")
        kw = self.generation_kwargs(**gen)
        kw.setdefault("eos_token_id", eos)
        kw.setdefault("pad_token_id", pad)
        if bos is not None:
            kw.setdefault("bos_token_id", bos)
        with autocast(batch["inputs_embeds"].device, self.config.llm_precision, self.config.cpu_autocast), \
                warnings.catch_warnings():
            # the repetition penalty sees the generated tokens only (the prompt is embeddings), as officially
            warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds")
            out = self.llm.generate(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                                    output_scores=True, return_dict_in_generate=True, **kw)
        seqs_out = out.sequences
        if getattr(out, "sequences_scores", None) is not None:
            scores = out.sequences_scores.float()
        else:
            trans = self.llm.compute_transition_scores(seqs_out, out.scores, normalize_logits=True)
            keep = torch.ones_like(trans, dtype=torch.bool)
            if seqs_out.shape[1] > 1:  # tokens after the first </s> are padding
                done = (seqs_out == eos).long().cumsum(1)
                keep = (done == 0) | ((done == 1) & (seqs_out == eos))
            scores = (trans.float() * keep).sum(-1)
        texts = tok.batch_decode(seqs_out, skip_special_tokens=True)
        return [t.strip() for t in texts], torch.exp(scores).cpu().tolist()

    def caption_loss(self, x_v: Tensor, control_words: Sequence[str], captions: Sequence[str]) -> Tensor:
        return self.sequence_loss(self.caption_sequences(x_v, control_words, captions))

    def generate_captions(self, x_v: Tensor, control_words: Sequence[str], **gen: Any) -> _Captions:
        return self.generate_sequences(self.caption_sequences(x_v, control_words), **gen)


DECODERS: Dict[str, Type[LanguageDecoder]] = {"t5": T5Decoder, "causal": CausalDecoder}


def build_t5(tc: T5Config, tokenizer: Any) -> Any:
    """A randomly initialised T5 encoder-decoder from a :class:`~dynrefer.model.config.T5Config`; its
    ``dense_act_fn``, when set, replaces the activation Hugging Face derives from ``feed_forward_proj`` (LAVIS
    sets exact "gelu" on FlanT5 where Hugging Face's gated-gelu means the tanh approximation "gelu_new")."""
    from transformers import T5Config as HFT5Config
    from transformers import T5ForConditionalGeneration

    vocab = max(tc.vocab_size, len(tokenizer))
    hc = HFT5Config(vocab_size=vocab, d_model=tc.d_model, d_kv=tc.d_kv, d_ff=tc.d_ff, num_layers=tc.num_layers,
                    num_decoder_layers=tc.num_decoder_layers, num_heads=tc.num_heads,
                    feed_forward_proj=tc.feed_forward_proj, tie_word_embeddings=tc.tie_word_embeddings,
                    dropout_rate=tc.dropout_rate, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id)
    if tc.dense_act_fn is not None:
        hc.dense_act_fn = tc.dense_act_fn
    t5 = T5ForConditionalGeneration(hc)
    if not tc.tie_word_embeddings:
        untie_lm_head(t5)
    return t5


def set_t5_activation(t5: Any, name: str) -> None:
    """Make every feed-forward block of ``t5`` use the activation ``name`` (a Hugging Face ``ACT2FN`` key), as
    LAVIS does when it sets ``dense_act_fn = "gelu"`` on a FlanT5 config before loading it."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"t5.dense_act_fn: unknown activation {name!r}")
    t5.config.dense_act_fn = name
    for mod in t5.modules():
        if hasattr(mod, "act") and (hasattr(mod, "wi") or hasattr(mod, "wi_0")):
            mod.act = ACT2FN[name]


def untie_lm_head(t5: Any) -> None:
    """Give a T5 its own ``lm_head`` weight (FlanT5 and T5 v1.1 keep it apart from ``shared``).

    Recent Hugging Face versions always build a T5 with ``lm_head`` tied to ``shared`` (they untie it only when a
    checkpoint holds two different matrices), so a state dict with separate weights would load one into both.
    The decoder output is not rescaled either way when the config was made with ``tie_word_embeddings=False``.
    """
    head, shared = t5.lm_head.weight, t5.shared.weight
    if head is shared or head.data_ptr() == shared.data_ptr():
        t5.lm_head.weight = nn.Parameter(shared.detach().clone(), requires_grad=head.requires_grad)
    tied = getattr(t5, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        tied.pop("lm_head.weight", None)
