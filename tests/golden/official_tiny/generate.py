"""Make the official-parity goldens (tests/golden/official_tiny/) by running the official DynRefer model.

Not part of the test suite and not importable from the package: it runs in a separate environment holding the
official code, which the repository does not contain.

    # LAVIS 1.0.2 (salesforce-lavis) with transformers 4.26.1, timm 0.4.12, torch 2.14.1 (CPU), numpy 1.26
    # the official DynRefer sources (github.com/callsys/DynRefer, commit 2200c5b), exported outside the repository
    # (the generator reads shared/data beside the repository: images and vocabularies):
    git --git-dir=<clone>/.git archive 2200c5b dynrefer configs | tar x -C /tmp/dynrefer-official
    (cd /tmp/dynrefer-official/dynrefer/models && unzip -o model_configs.zip)
    PYTHONHASHSEED=0 /tmp/lavis-env/bin/python tests/golden/official_tiny/generate.py \
        --official /tmp/dynrefer-official --out tests/golden/official_tiny

What runs is the official ``DynReferT5`` (its ``__init__``, ``predict_answers``, ``forward``, ``tag_forward``,
``att_forward``, ``ov_forward``, ``llm_forward``, ``parse_sentence``, ``roi_align`` / ``cvem_forward``) on top of
LAVIS's ``Blip2T5.__init__``, EVA ViT, Q-Former and T5. Only what cannot run here is replaced, before the model is
built:

- the pretrained-weight readers (EVA ViT-g, bert-base-uncased, flan-t5-xl, EVA-CLIP) build the same classes at
  scaled-down sizes instead (ViT 64 wide, 2 blocks, 4 heads, patch 8, 48 px; Q-Former 32 wide, 2 layers, 2 heads,
  4 queries; FlanT5 layout, gated GELU, 32 wide, 1+1 layers, 4 heads, the model's ``dense_act_fn = "gelu"`` left
  as LAVIS sets it; EVA-CLIP text tower 32 wide, 1 block, 2 heads, 77 tokens, projection to 48); the tag and
  attribute decoders keep the official 256 width with one layer (``num_hidden_layers`` 1 in their BERT config);
- the T5 tokenizer is a word-level ``tokenizers`` tokenizer with T5's special ids (saved as t5_tokenizer.json);
- ``encode_text`` and ``build_clip_text_encoder`` without their ``.to("cuda")``;
- DCNv4's CUDA ``DCNv4Function`` by the float64 NumPy formula reference of the project's tests
  (tests/reference_dcn.py), cast to float32;
- ``textblob``, ``peft``, ``matplotlib`` (imported, unused) and ``pkg_resources`` (a version check) by stubs
  (TextBlob raises, so the official ``parse_sentence`` takes its own fallback, control words from the tags and an
  empty word; LoRA is off); the OVAD prompt templates are read from the official ``ovad/misc.py`` without its
  evaluator imports;
- the T5 is kept in float32 (LAVIS casts it to bfloat16): the goldens are fp32 references; the T5 loss and the
  captions are then recorded once more with the T5 cast to bfloat16 as LAVIS does ("bf16_*").

Every float parameter is then redrawn (seed 0) as an int8 code times a power of two (LayerNorm weights 1 + …),
so the stored codes give the weights exactly; the text tower's token embedding is zero except on the ids the
texts use. The tag, attribute-prompt and class embeddings are recomputed by the official ``build_*_embeds``.
"""
import argparse
import gzip
import json
import math
import os
import random
import sys
import types

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))

IMAGES = ["COCO_val2014_000000000073.jpg", "COCO_val2014_000000000139.jpg"]
BOXES = [[[10.0, 40.0, 300.0, 400.0], [320.0, 150.0, 600.0, 420.0]],
         [[0.0, 180.0, 250.0, 470.0], [380.0, 200.0, 450.0, 320.0]]]
VIEW_SCALES = [0.0, 0.6]          # view i: the box enlarged by scale·(image - box) towards the image borders
CAPTIONS = ["a red motorcycle parked on the street", "a man standing next to a wall",
            "a wooden table with a vase", "a person watching the television"]
NUM_TAGS = 40
SIZE, PATCH = 48, 8


def stub_modules(official):
    sys.path.insert(0, official)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    # packages of the official tree without their heavy __init__ (datasets, runners, ... are not needed)
    for name in ["dynrefer", "dynrefer.models", "dynrefer.common", "dynrefer.common.evaluation",
                 "dynrefer.common.evaluation.ovad", "dynrefer.models.tagging_heads", "dynrefer.models.eva_clip"]:
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(official, *name.split("."))]
        sys.modules[name] = mod
    tb = types.ModuleType("textblob")

    class TextBlob:  # noqa: D401 - the NLTK tagger data is not available: official fallback path
        def __init__(self, text):
            raise RuntimeError("TextBlob unavailable")
    tb.TextBlob = TextBlob
    sys.modules["textblob"] = tb
    for name in ("matplotlib", "matplotlib.pyplot"):   # imported, unused, not installed
        sys.modules[name] = types.ModuleType(name)
    if "pkg_resources" not in sys.modules:        # eva_clip/clip.py imports it for a version check
        import packaging.version
        pr = types.ModuleType("pkg_resources")
        pr.packaging = packaging
        sys.modules["pkg_resources"] = pr
    peft = types.ModuleType("peft")
    peft.LoraConfig = peft.get_peft_model = None
    sys.modules["peft"] = peft
    from reference_dcn import dcnv4_ref

    class DCNv4Function:
        @staticmethod
        def apply(x, om, kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, offset_scale, step, remove_center):
            out = dcnv4_ref(x.detach().double().numpy(), om.detach().double().numpy(), (kh, kw), (sh, sw),
                            (ph, pw), (dh, dw), group, offset_scale, bool(remove_center))
            return torch.from_numpy(out).to(x.dtype)
    dcn, fn = types.ModuleType("DCNv4"), types.ModuleType("DCNv4.functions")
    fn.DCNv4Function = DCNv4Function
    dcn.functions = fn
    sys.modules["DCNv4"], sys.modules["DCNv4.functions"] = dcn, fn
    # the official ovad misc imports an evaluator we do not need
    misc = types.ModuleType("dynrefer.common.evaluation.ovad.misc")
    src = open(os.path.join(official, "dynrefer/common/evaluation/ovad/misc.py")).read()
    start = src.index("object_attribute_templates")
    exec(compile(src[start:].split("\ndef ")[0], "misc", "exec"), misc.__dict__)
    misc.ovad_validate = None
    sys.modules["dynrefer.common.evaluation.ovad.misc"] = misc


def word_tokenizer(texts):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts) + [", |"],
                            trainer=trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok, PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=512)


def make_views():
    from PIL import Image

    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    views, boxes = [], []
    for name, bxs in zip(IMAGES, BOXES):
        img = Image.open(os.path.join(DATA, "images", name)).convert("RGB")
        W, H = img.size
        for b in bxs:
            b = [min(max(b[0], 0.0), W - 2), min(max(b[1], 0.0), H - 2), min(b[2], W), min(b[3], H)]
            rv, rb = [], []
            for t in VIEW_SCALES:
                x0, y0, x1, y1 = b[0] * (1 - t), b[1] * (1 - t), b[2] + t * (W - b[2]), b[3] + t * (H - b[3])
                crop = img.resize((SIZE, SIZE), Image.BICUBIC, box=(x0, y0, x1, y1))
                arr = (np.asarray(crop, np.float32) / 255.0 - mean) / std
                rv.append(arr.transpose(2, 0, 1))
                sx, sy = SIZE / (x1 - x0), SIZE / (y1 - y0)
                rb.append([(b[0] - x0) * sx, (b[1] - y0) * sy, (b[2] - x0) * sx, (b[3] - y0) * sy])
            views.append(rv)
            boxes.append(rb)
    return torch.tensor(np.array(views)), torch.tensor(np.array(boxes, np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", default="/tmp/dynrefer-official")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stub_modules(os.path.abspath(args.official))
    torch.manual_seed(0)
    np.random.seed(0)

    import lavis.models.blip2_models.blip2 as blip2
    import lavis.models.blip2_models.blip2_t5 as blip2_t5
    from functools import partial
    from lavis.models.eva_vit import VisionTransformer
    from lavis.models.blip2_models.Qformer import BertConfig as QBertConfig, BertLMHeadModel
    from lavis.models.blip2_models.modeling_t5 import T5Config, T5ForConditionalGeneration

    tags = [t.strip() for t in open(os.path.join(DATA, "vocab", "ram_tags.txt"))][:NUM_TAGS]
    classes = json.load(open(os.path.join(DATA, "vocab", "coco_classes.json")))
    attributes = json.load(open(os.path.join(DATA, "vocab", "ovad_attributes.json")))
    work = os.path.join("/tmp", "official-parity-inputs")
    os.makedirs(work, exist_ok=True)
    open(os.path.join(work, "tags.txt"), "w").write("\n".join(tags))
    json.dump(classes, open(os.path.join(work, "coco.json"), "w"))
    json.dump({"attributes": attributes}, open(os.path.join(work, "ovad.json"), "w"))
    bert_cfg = json.load(open(os.path.join(DATA, "vocab", "tag_decoder_bert_config.json")))
    bert_cfg["num_hidden_layers"] = 1
    json.dump(bert_cfg, open(os.path.join(work, "tag_bert.json"), "w"))

    hf_tok_raw, t5_tok = word_tokenizer(CAPTIONS + tags + classes)

    blip2.create_eva_vit_g = lambda img_size, dpr, ckpt, prec: VisionTransformer(
        img_size=img_size, patch_size=PATCH, use_mean_pooling=False, embed_dim=64, depth=2, num_heads=4,
        mlp_ratio=4.3637, qkv_bias=True, drop_path_rate=dpr, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    blip2.Blip2Base.init_tokenizer = classmethod(lambda cls: None)

    class TinyBertConfig(QBertConfig):
        @classmethod
        def from_pretrained(cls, name, **kw):
            return QBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                               layer_norm_eps=1e-12, max_position_embeddings=64)

    class TinyQformer(BertLMHeadModel):
        @classmethod
        def from_pretrained(cls, name, config):
            return BertLMHeadModel(config)
    blip2.BertConfig, blip2.BertLMHeadModel = TinyBertConfig, TinyQformer

    class TinyT5Config(T5Config):
        @classmethod
        def from_pretrained(cls, name, **kw):
            return T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                            num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                            dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

    class TinyT5(T5ForConditionalGeneration):
        @classmethod
        def from_pretrained(cls, name, config):
            return T5ForConditionalGeneration(config)

    class Tok:
        @staticmethod
        def from_pretrained(name):
            return t5_tok
    blip2_t5.T5TokenizerFast, blip2_t5.T5Config, blip2_t5.T5ForConditionalGeneration = Tok, TinyT5Config, TinyT5

    from dynrefer.models import dynrefer_t5 as off
    from dynrefer.models.eva_clip.clip import tokenize
    from dynrefer.models.eva_clip.eva_model import TextTransformer

    def build_clip_text_encoder(self):   # the official method without the checkpoint file and .to("cuda")
        self.text_encoder = TextTransformer(vocab_size=49408, width=32, layers=1, heads=2, context_length=77,
                                            embed_dim=48, act_layer=nn.GELU)
        self.text_tokenize = tokenize

    def encode_text(self, texts):       # the official method without .to("cuda")
        return self.text_encoder(self.text_tokenize(texts))
    off.DynReferT5.build_clip_text_encoder = build_clip_text_encoder
    off.DynReferT5.encode_text = encode_text

    kw = dict(vit_model="eva_clip_g", img_size=SIZE, drop_path_rate=0, use_grad_checkpoint=False,
              vit_precision="fp32", freeze_vit=True, num_query_token=4, t5_model="tiny", prompt="", max_txt_len=32,
              apply_lemmatizer=False, num_views=2, tag_bert_config=os.path.join(work, "tag_bert.json"),
              tag_list=os.path.join(work, "tags.txt"), ovad_file=os.path.join(work, "ovad.json"),
              ov_file=os.path.join(work, "coco.json"), tag_thr=0.7, num_beams=2, max_new_tokens=12, min_length=1,
              length_penalty=0, repetition_penalty=1.5, num_return_sequences=1, top_p=0.9, temperature=1,
              full_drop_ratio=0.0, drop_ratio=0.5)
    model = off.DynReferT5(**kw)
    model.t5_model.float()   # LAVIS casts the T5 to bfloat16; the goldens are float32
    model.eval()

    # ------------------------------------------------------------------ seeded weights, exactly representable
    gen = torch.Generator().manual_seed(0)
    texts_used = tags + CAPTIONS + [f"the {c.lower()}" for c in classes]
    texts_used += [p for ps in model.syn2template.values() for p in ps]
    used_ids = torch.unique(tokenize(texts_used)).tolist()
    codes, raw = {}, {}
    skip = {"clip_embeds", "att_embeds", "ov_embeds", "attr_t", "attr_b", "text_encoder.logit_scale"}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in skip or not p.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            is_norm = ("norm" in name.lower() or "ln_" in name or "LayerNorm" in name) and p.dim() == 1
            if is_norm and leaf == "weight":
                e, off_ = 5, 1.0
            elif p.dim() <= 1:
                e, off_ = 5, 0.0
            else:
                fan_in = p.shape[1] if p.dim() == 2 else int(np.prod(p.shape[1:]))
                if "embed" in name or "query_tokens" in name or "positional" in name or "shared" in name:
                    fan_in = 16
                e = int(round(math.log2(4 * math.sqrt(fan_in) / 1.5)))   # std ≈ 1.5/sqrt(fan_in)
                off_ = 0.0
            c = torch.randint(-7, 8, p.shape, generator=gen, dtype=torch.int8)
            if name == "text_encoder.token_embedding.weight":
                keep = torch.zeros(p.shape[0], dtype=torch.bool)
                keep[used_ids] = True
                c[~keep] = 0
            p.copy_(c.float() * 2.0 ** -e + off_)
            codes[name] = (c, e, off_)
        # the frozen embeddings from the new text tower, as the official constructor makes them
        model.build_tag_embeds()
        model.build_att_embeds()
        model.build_ov_embeds()
    for name in skip:
        raw[name] = model.state_dict()[name].clone()

    # ------------------------------------------------------------------ inference (predict_answers)
    views, boxes = make_views()
    R = views.shape[0]
    samples = {"cascade_region_images": views, "cascade_region_bboxes": boxes, "ids": list(range(R))}
    captured = {}
    t5_generate = model.t5_model.generate

    def generate(**k):
        out = t5_generate(**k)
        captured["sequences"] = out["sequences"].clone()
        return out
    model.t5_model.generate = generate
    with torch.no_grad():
        embeds = model.ln_vision(model.visual_encoder(views.reshape(-1, 3, SIZE, SIZE)))
        visual = model.cvem_forward(samples, embeds.float())
        q = model.Qformer.bert(query_embeds=model.query_tokens.expand(R, -1, -1), encoder_hidden_states=visual,
                               encoder_attention_mask=torch.ones(visual.shape[:-1], dtype=torch.long),
                               return_dict=True).last_hidden_state
        tag_logits = model.tag_fc(model.tag_head(
            encoder_embeds=model.tag_text_proj(model.clip_embeds).unsqueeze(0).repeat(R, 1, 1),
            encoder_hidden_states=model.tag_vision_proj(q),
            encoder_attention_mask=torch.ones(q.shape[:-1], dtype=torch.long), return_dict=False,
            mode="tagging")[0]).squeeze(-1)
        pred = model.predict_answers(dict(samples))
    fp32_tokens = captured["sequences"]
    control = None
    s2 = dict(samples)
    with torch.no_grad():
        model.tag_forward(s2, q)
        model.parse_sentence(s2)
        control = s2["cap_control_words"]

    # ------------------------------------------------------------------ training losses (dropout off)
    tag_targets = torch.zeros(R, 2 * NUM_TAGS, dtype=torch.long)
    tr_rng = np.random.default_rng(1)
    for i in range(R):
        tag_targets[i, tr_rng.choice(2 * NUM_TAGS, 3, replace=False)] = 1
    train_samples = dict(samples, caps=list(CAPTIONS), tags=tag_targets)
    model.training = True   # the training branches of the official methods; every submodule stays in eval
    np.random.seed(2)
    random.seed(2)      # parse_sentence shuffles the kept words with Python's random
    with torch.no_grad():
        losses = model.forward(train_samples)
    train_control = train_samples["cap_control_words"]

    # the same with the T5 in bfloat16 as LAVIS stores it (on the CPU LAVIS runs it so, without autocast)
    for p in model.t5_model.parameters():
        p.data = p.data.bfloat16()
    np.random.seed(2)
    random.seed(2)
    with torch.no_grad():
        losses_bf16 = model.forward(dict(samples, caps=list(CAPTIONS), tags=tag_targets))
    model.training = False
    with torch.no_grad():
        pred_bf16 = model.predict_answers(dict(samples))
    bf16_tokens = captured["sequences"]

    golden = {
        "codes": {k: v[0] for k, v in codes.items()}, "exponents": {k: v[1] for k, v in codes.items()},
        "offsets": {k: v[2] for k, v in codes.items()}, "raw": raw,
        "state_keys": list(model.state_dict().keys()),
        "views": views, "boxes": boxes, "vision_embeds": embeds, "cvem": visual, "qformer": q,
        "tag_scores": tag_logits.sigmoid(), "tag_threshold": kw["tag_thr"],
        "pred_tags": [p["tag_set1"] for p in pred], "control_words": control,
        "attribute_scores": torch.tensor([p["attr"] for p in pred]),
        "category_scores": torch.tensor([p["cls"] for p in pred]),
        "caption_tokens": fp32_tokens, "captions": [p["caption"] for p in pred],
        "caption_scores": torch.tensor([p["score"] for p in pred]),
        "generation": {k: kw[k] for k in ("num_beams", "max_new_tokens", "min_length", "length_penalty",
                                          "repetition_penalty")},
        "train_captions": list(CAPTIONS), "train_tags": tag_targets, "train_control_words": train_control,
        "loss": losses["loss"].detach(), "loss_llm": losses["loss_llm"], "loss_tag": losses["loss_tag"],
        "loss_att": losses["loss_att"], "tags": tags,
        "bf16_loss_llm": losses_bf16["loss_llm"].float(), "bf16_caption_tokens": bf16_tokens,
        "bf16_captions": [p["caption"] for p in pred_bf16],
        "versions": {"torch": str(torch.__version__), "transformers": __import__("transformers").__version__,
                     "lavis": "1.0.2", "official_commit": "2200c5b"},
    }
    with open(os.path.join(args.out, "golden.pt.gz"), "wb") as raw_f, \
            gzip.GzipFile(fileobj=raw_f, mode="wb", compresslevel=9, mtime=0) as f:
        torch.save(golden, f)
    hf_tok_raw.save(os.path.join(args.out, "t5_tokenizer.json"))
    print({k: (v if not torch.is_tensor(v) or v.numel() < 8 else tuple(v.shape)) for k, v in golden.items()
           if k not in ("codes", "exponents", "offsets", "raw", "state_keys")})


if __name__ == "__main__":
    main()
