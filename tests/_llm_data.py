"""A tiny LLaMA-architecture causal LM saved as a local Hugging Face directory, tiny DynRefers built on it, and
hand-made region conversations (LLaVA / Osprey style) for tests/test_model_causal.py and tests/test_chat.py."""
import json
import os

import numpy as np

from _model_data import ATTRIBUTES, CAPTIONS, CLASSES, TAGS

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}

QUESTIONS = ["what is <region1> ?", "what colour is <region1> ?", "is <region1> left of <region2> ?",
             "what is between <region1> and <region2> ?", "describe <region2> ."]
ANSWERS = ["it is a red car .", "the dog is white .", "yes , the car is left of the dog .",
           "a green tree stands between them .", "an old bus near the blue sky ."]


def chat_texts():
    return CAPTIONS + QUESTIONS + ANSWERS


def save_tiny_llama(path, seed=0):
    """A 2-layer LLaMA (width 32) and a word-level tokenizer (LLaMA's special ids) saved to ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dynrefer.model.config import LLMConfig
    from dynrefer.model.text import build_causal_tokenizer

    lc = LLMConfig()
    tok = build_causal_tokenizer(chat_texts() + TAGS + [lc.system, lc.user, lc.assistant])
    cfg = {k: v for k, v in LLAMA.items() if k != "model_type"}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3,
                                             **cfg))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def build_causal(llm_dir=None, seed=0, llm=None, **overrides):
    """The tiny preset with a causal D_llm: from ``llm_dir`` (a saved LLaMA) or from the LLAMA config dict."""
    from dynrefer.model import DynReferConfig, build_dynrefer

    spec = {"kind": "causal", **({"path": str(llm_dir)} if llm_dir else {"config": dict(LLAMA)}), **(llm or {})}
    overrides.setdefault("train_llm", False)
    cfg = DynReferConfig.from_preset("tiny", llm=spec, **overrides)
    return build_dynrefer(cfg, texts=chat_texts(), tag_list=TAGS, classes=CLASSES, attributes=ATTRIBUTES, seed=seed)


def write_conversations(root, n_images=2, size=(64, 48), fmt="boxes"):
    """Images and a conversation file under ``root``; returns (json path, image folder, records)."""
    from PIL import Image

    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    w, h = size
    records = []
    for i in range(n_images):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(os.path.join(img_dir, f"{i}.png"))
        boxes = [[2 + i, 3, 30, 40], [28, 6 + i, 60, 44]]
        conv = []
        for k in range(len(QUESTIONS)):
            j = (k + i) % len(QUESTIONS)
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + QUESTIONS[j]},
                     {"from": "gpt", "value": ANSWERS[j]}]
        rec = {"id": f"conv{i}", "image": f"{i}.png", "width": w, "height": h, "conversations": conv[:6]}
        if fmt == "boxes":
            rec["boxes"] = boxes
        else:  # Osprey: annotation with a polygon and a COCO bbox
            x1, y1, x2, y2 = boxes[0]
            rec["annotation"] = [{"segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]},
                                 {"bbox": [boxes[1][0], boxes[1][1], boxes[1][2] - boxes[1][0],
                                           boxes[1][3] - boxes[1][1]]}]
        records.append(rec)
    path = os.path.join(root, "conversations.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path, img_dir, records
