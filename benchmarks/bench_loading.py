"""Time and peak memory of building the official preset and of loading it from full-size official-format files.

    python benchmarks/bench_loading.py meta                 the official preset on the meta device (shapes only)
    python benchmarks/bench_loading.py write DIR            full-size random files with the official keys and
                                                            shapes (about 9.6 GB): eva_vit_g.pth (fp16, as released),
                                                            blip2_pretrained_flant5xl.pth, eva_clip_psz14.pt (text.*),
                                                            vg1.2_5e.pth (trainable tensors + AdamW state, LAVIS's
                                                            layout) and flan-t5-xl/ (bf16 safetensors shards)
    python benchmarks/bench_loading.py bundle FILE          load_bundle_model of a bundle (e.g. `dynrefer convert`'s
                                                            of those files)
    python benchmarks/bench_loading.py load DIR [--tags N]  build_dynrefer with the config naming those files;
                                                            --tags N: the first N tags (N / 4 attributes, N classes)
                                                            instead of the official vocabularies, whose 5139 text
                                                            embeddings are compute, not loading

Each run is one process: the peak RSS it prints is that process's (``ru_maxrss``), the RSS the current one.
Vocabularies from ``../shared/data/vocab`` (the RAM tags, COCO classes, OVAD attributes).
"""
import argparse
import json
import os
import resource
import sys
import time

VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "vocab")


def rss():
    """(current, peak) resident set in GB."""
    with open("/proc/self/statm") as f:
        cur = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    return cur, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # ru_maxrss: KiB


def vocab(n=None):
    with open(os.path.join(VOCAB, "ram_tags.txt"), encoding="utf-8") as f:
        tags = [t.strip() for t in f if t.strip()]
    with open(os.path.join(VOCAB, "coco_classes.json"), encoding="utf-8") as f:
        classes = json.load(f)
    with open(os.path.join(VOCAB, "ovad_attributes.json"), encoding="utf-8") as f:
        attrs = json.load(f)
    if n:
        tags, classes, attrs = tags[:n], classes[:n], attrs[:max(n // 4, 1)]
    return tags, classes, attrs


def write(out):
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config

    from dynrefer.model import build_dynrefer
    from dynrefer.model.text import build_t5_tokenizer

    os.makedirs(out, exist_ok=True)
    tags, classes, attrs = vocab()
    m = build_dynrefer("official", tag_list=tags, classes=classes, attributes=attrs, device="meta")
    meta = m.state_dict()
    gen = torch.Generator().manual_seed(0)

    def rnd(shape, dtype):
        t = torch.empty(shape)
        t.normal_(0, 0.02, generator=gen) if len(shape) else t.fill_(1.0)
        return t.to(dtype)

    def part(prefix, dtype, strip=True, skip=()):
        return {(k[len(prefix):] if strip else k): rnd(tuple(v.shape), dtype) for k, v in meta.items()
                if k.startswith(prefix) and k not in skip}

    torch.save(part("visual_encoder.", torch.float16), os.path.join(out, "eva_vit_g.pth"))
    b = {}
    for p in ("ln_vision.", "query_tokens", "Qformer.", "t5_proj."):
        b.update(part(p, torch.float32, strip=False))
    b["Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    torch.save({"model": b}, os.path.join(out, "blip2_pretrained_flant5xl.pth"))
    del b
    c = {"text." + k: v for k, v in part("text_encoder.", torch.float32, skip=("text_encoder.logit_scale",)).items()}
    c["logit_scale"] = torch.tensor(4.6052)
    torch.save(c, os.path.join(out, "eva_clip_psz14.pt"))
    del c
    tr = {n: rnd(tuple(p.shape), torch.float32) for n, p in m.named_parameters() if m.is_trainable_name(n)}
    opt = {"state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(v),
                         "exp_avg_sq": torch.zeros_like(v)} for i, v in enumerate(tr.values())},
           "param_groups": [{"lr": 1e-5, "weight_decay": 0.05, "params": list(range(len(tr)))}]}
    torch.save({"model": tr, "optimizer": opt, "config": {"model": {"arch": "dynrefer_t5"}}, "epoch": 4},
               os.path.join(out, "vg1.2_5e.pth"))
    del tr, opt
    d = os.path.join(out, "flan-t5-xl")
    os.makedirs(d, exist_ok=True)
    T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0,
             eos_token_id=1, decoder_start_token_id=0).save_pretrained(d)
    build_t5_tokenizer(tags).save_pretrained(d)
    keys = [k for k in meta if k.startswith("t5_model.") and ".embed_tokens." not in k]   # tied to shared
    shards, cur, size = [], {}, 0
    for i, k in enumerate(keys):
        t = rnd(tuple(meta[k].shape), torch.bfloat16)
        cur[k[len("t5_model."):]] = t
        size += t.numel() * 2
        if size > 2e9 or i == len(keys) - 1:   # ~2 GB shards, written as they fill
            shards.append(list(cur))
            save_file(cur, os.path.join(d, f"shard{len(shards)}.tmp"))
            cur, size = {}, 0
    weight_map = {}
    for i, names in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.replace(os.path.join(d, f"shard{i}.tmp"), os.path.join(d, name))
        weight_map.update({k: name for k in names})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("meta", "write", "load", "bundle"))
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--tags", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    t = time.time()
    import torch

    from dynrefer.model import DynReferConfig, build_dynrefer

    torch.set_num_threads(a.threads)
    print(f"imports {time.time() - t:.1f} s, RSS {rss()[0]:.2f} GB", flush=True)
    if a.mode == "write":
        t = time.time()
        write(a.dir)
        print(f"written in {time.time() - t:.0f} s, peak RSS {rss()[1]:.2f} GB")
        return
    tags, classes, attrs = vocab(a.tags)
    t = time.time()
    if a.mode == "bundle":
        from dynrefer.app.bundle import load_bundle_model

        _, m = load_bundle_model(a.dir)
    elif a.mode == "meta":
        m = build_dynrefer("official", tag_list=tags, classes=classes, attributes=attrs, device="meta")
    else:
        import logging

        logging.basicConfig(level=logging.INFO, format="  %(relativeCreated)7.0f ms  %(message)s", stream=sys.stdout)
        d = a.dir
        cfg = DynReferConfig.from_preset(
            "official", vit_checkpoint=f"{d}/eva_vit_g.pth", pretrained=f"{d}/blip2_pretrained_flant5xl.pth",
            finetuned=f"{d}/vg1.2_5e.pth", text_encoder={"weights": f"{d}/eva_clip_psz14.pt"},
            llm={"path": f"{d}/flan-t5-xl", "dtype": "bf16"})
        m = build_dynrefer(cfg, tag_list=tags, classes=classes, attributes=attrs, seed=0)
    dt = time.time() - t
    sd = m.state_dict()
    n = sum(v.numel() for v in sd.values())
    nbytes = sum(v.numel() * v.element_size() for v in sd.values() if not v.is_meta)
    cur, peak = rss()
    print(f"{a.mode}: build {dt:.1f} s; RSS {cur:.2f} GB, peak RSS {peak:.2f} GB; {len(sd)} tensors, {n / 1e9:.2f} B "
          f"values, {nbytes / 1e9:.2f} GB of weights held by the model")


if __name__ == "__main__":
    main()
