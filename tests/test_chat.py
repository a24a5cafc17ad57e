"""Referring reasoning: the LLaVA / Osprey conversation reader and its errors, the conversation dataset and
collate, instruction fine-tuning through the training engine (the loss falls), model.chat on an image, the
`dynrefer chat` / `dynrefer train` (conversations) / `dynrefer ferret-bench` commands, and the Ferret-Bench
answer format."""
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the model needs transformers (pip install dynrefer[train])")

import torch  # noqa: E402

from _llm_data import ANSWERS, LLAMA, build_causal, write_conversations  # noqa: E402
from _model_data import TAGS  # noqa: E402
from conftest import rle_encode  # noqa: E402
from dynrefer.cli import main  # noqa: E402
from dynrefer.data.conversations import AnnotationError, load_conversations, parse_record, split_placeholders  # noqa
from dynrefer.app.ferret_bench import FerretBenchError, question_regions, read_questions  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rec(**kw):
    base = {"id": "r7", "image": "a.png", "boxes": [[0, 0, 10, 10], [5, 5, 20, 20]],
            "conversations": [{"from": "human", "value": "what is <region1> ?"}, {"from": "gpt", "value": "a car"}]}
    base.update(kw)
    return base


# ------------------------------------------------------------------------------------------------ reader
def test_reader_formats(tmp_path):
    path, img_dir, _ = write_conversations(str(tmp_path / "a"))
    assert load_conversations(path)[0].image_path == str(tmp_path / "a" / "0.png")  # default: the file's folder
    recs = load_conversations(path, image_root=img_dir)
    assert len(recs) == 2 and recs[0].id == "conv0" and recs[0].image_path == os.path.join(img_dir, "0.png")
    assert recs[0].boxes == [(2.0, 3.0, 30.0, 40.0), (28.0, 6.0, 60.0, 44.0)] and recs[0].image_size == (64, 48)
    assert len(recs[0].turns) == 3 and recs[0].turns[0][1] in ANSWERS
    assert "<image>" not in recs[0].turns[0][0]
    # Osprey style: annotation with a polygon and a COCO bbox give the same boxes
    path2, _, _ = write_conversations(str(tmp_path / "b"), fmt="osprey")
    assert [r.boxes for r in load_conversations(path2)] == [r.boxes for r in recs]
    # an RLE mask: its bounding box, end exclusive
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 1
    r = parse_record(_rec(boxes=None, annotation=[{"segmentation": {"size": [8, 10], "counts": rle_encode(mask)}}],
                          conversations=[{"from": "user", "value": "<region1>?"}, {"from": "assistant", "value": "x"}]))
    assert r.boxes == [(3.0, 2.0, 7.0, 5.0)]
    # JSON lines, multi-turn, roles human/gpt
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps(_rec(id=i)) for i in range(3)) + "\n")
    assert [r.id for r in load_conversations(jl, image_root="/imgs")] == [0, 1, 2]
    assert load_conversations(jl, image_root="/imgs")[0].image_path == "/imgs/a.png"
    # gzip-compressed JSON lines
    import gzip

    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(_rec(id=i)) for i in range(3)) + "\n")
    assert [r.id for r in load_conversations(tmp_path / "c.jsonl.gz", image_root="/imgs")] == [0, 1, 2]
    assert split_placeholders("a <region2> b<region1>") == ["a ", 2, " b", 1]


def test_answers_name_regions_in_words():
    """The LLM cannot emit region features: a placeholder in a gpt turn is learned and written as words."""
    from dynrefer.data.conversations import answer_text, conversation_texts

    assert answer_text("<region2> is left of <region1>.") == "region 2 is left of region 1."
    r = parse_record(_rec(conversations=[{"from": "human", "value": "where is <region1>?"},
                                         {"from": "gpt", "value": "next to <region2>"}]))
    assert conversation_texts([r]) == ["where is  ?", "next to region 2"]


@pytest.mark.parametrize("change, message", [
    (dict(conversations=[{"from": "human", "value": "is <region3> red ?"}, {"from": "gpt", "value": "no"}]),
     "<region3> but the record has 2 regions"),
    (dict(conversations=[{"from": "human", "value": "is <region> red ?"}, {"from": "gpt", "value": "no"}]),
     "bad region placeholder '<region>'"),
    (dict(conversations=[{"from": "human", "value": "is <region0> red ?"}, {"from": "gpt", "value": "no"}]),
     "<region0> but the record has 2"),
    (dict(conversations=[{"from": "gpt", "value": "hi"}, {"from": "human", "value": "no"}]), "expected 'human'"),
    (dict(conversations=[{"from": "human", "value": "hi"}]), "must pair up"),
    (dict(conversations=[{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]), "empty answer"),
    (dict(conversations=[]), "non-empty 'conversations'"),
    (dict(boxes=None), "has no regions"),
    (dict(boxes=[[0, 0, 10, 10], [5, 5, 5, 20]]), "region 2 has an empty box"),
    (dict(boxes=[[0, 0, 10]]), "boxes[0] must be four"),
    (dict(boxes=None, annotation=[{"segmentation": [[1, 2, 3]]}]), "annotation[0].segmentation"),
    (dict(boxes=None, annotation=[{"area": 3}]), "neither 'bbox' nor 'segmentation'"),
    (dict(image=None), "needs 'image'"),
])
def test_reader_errors_name_the_record(change, message):
    with pytest.raises(AnnotationError) as e:
        parse_record(_rec(**change), 4, source="convs.json")
    assert "convs.json: record #4 (id 'r7')" in str(e.value) and message in str(e.value)


def test_reader_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_conversations(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"x": 1}')
    with pytest.raises(AnnotationError, match="list of conversation records"):
        load_conversations(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    with pytest.raises(AnnotationError, match="line 2"):
        load_conversations(tmp_path / "bad.jsonl")


# ------------------------------------------------------------------------------------------------ dataset
def test_dataset_and_collate(tmp_path):
    from dynrefer.data.conversation_dataset import ConversationDataset, collate_conversations
    from dynrefer.views import NestedViews

    path, img_dir, _ = write_conversations(str(tmp_path))
    ds = ConversationDataset(path, NestedViews(size=32, num_views=2, prior="stochastic"), image_root=img_dir, seed=0)
    assert len(ds) == 2 and ds.collate_fn is collate_conversations
    a, b = ds[0], ds[1]
    assert a["views"].shape == (2, 2, 3, 32, 32) and a["boxes"].shape == (2, 2, 4)
    assert np.array_equal(ds[0]["views"], a["views"])  # seeded
    batch = collate_conversations([a, b])
    assert batch["views"].shape == (4, 2, 3, 32, 32) and batch["region_index"] == [[0, 1], [2, 3]]
    assert batch["turns"][1] == b["turns"] and batch["ids"] == ["conv0", "conv1"]
    with pytest.raises(ValueError, match="max_regions"):
        ConversationDataset(path, NestedViews(size=32, num_views=2), max_regions=1)
    recs = load_conversations(path, image_root=img_dir)
    recs[0].boxes = [(100, 100, 120, 120)] + recs[0].boxes[1:]
    with pytest.raises(ValueError, match="region 1 .* lies outside"):
        ConversationDataset(recs, NestedViews(size=32, num_views=2))[0]


# ------------------------------------------------------------------------------------------------ training
def _chat_config(tmp_path, extra_run="", lora=False):
    path, img_dir, _ = write_conversations(str(tmp_path / "data"))
    tags = tmp_path / "tags.txt"
    tags.write_text("\n".join(TAGS) + "\n")
    llm = "    kind: causal\n    config:\n" + "".join(f"      {k}: {v}\n" for k, v in LLAMA.items())
    if lora:
        llm += "    lora: true\n    lora_r: 4\n    lora_alpha: 8\n"
    cfg = tmp_path / "chat.yaml"
    cfg.write_text(f"model:\n  preset: tiny\n  num_views: 2\n  train_llm: true\n  llm:\n{llm}"
                   f"datasets:\n  conversations:\n    train: {path}\n    image_root: {img_dir}\n    tags: {tags}\n"
                   f"run:\n  output_dir: {tmp_path / 'run'}\n  max_epoch: 20\n  batch_size_train: 2\n  init_lr: 1e-2\n"
                   f"  min_lr: 1e-4\n  warmup_steps: 2\n  log_freq: 1\n  progress_bar: false\n  seed: 0\n"
                   f"  save_epoch_ckpts: false\n"
                   + extra_run)
    return cfg, img_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`dynrefer train` on the conversations (a tiny LLaMA built from a config dict, trained end to end)."""
    tmp = tmp_path_factory.mktemp("chat")
    cfg, img_dir = _chat_config(tmp)
    assert main(["train", str(cfg)]) == 0
    return tmp, img_dir


def test_training_reduces_the_loss(trained):
    tmp, _ = trained
    recs = [json.loads(l) for l in open(tmp / "run" / "metrics.jsonl") if '"train"' in l]
    losses = [r["loss"] for r in recs]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert (tmp / "run" / "model.pt").is_file()


def test_chat_api_on_the_trained_model(trained):
    from dynrefer.data.dataset import load_image
    from dynrefer.app.bundle import build_bundle_model, load_bundle

    tmp, img_dir = trained
    model = build_bundle_model(load_bundle(str(tmp / "run" / "model.pt")))
    img = load_image(os.path.join(img_dir, "0.png"))
    boxes = [[2, 3, 30, 40], [28, 6, 60, 44]]
    a = model.chat(img, boxes, "is <region1> left of <region2> ?", seed=0, max_new_tokens=12)
    assert isinstance(a, str) and a
    assert model.chat(img, boxes, "is <region1> left of <region2> ?", seed=0, max_new_tokens=12) == a
    # the model learned the answers of its training conversations
    words = lambda text: set(re.findall(r"[a-z]+", text))  # noqa: E731
    assert words(a) <= words(" ".join(ANSWERS)), a
    with pytest.raises(ValueError, match="at least one region"):
        model.chat(img, np.zeros((0, 4)), "what ?")


def test_chat_command(trained, capsys):
    tmp, img_dir = trained
    img = os.path.join(img_dir, "1.png")
    bundle = str(tmp / "run" / "model.pt")
    rc = main(["chat", img, "--box", "2,3,30,40", "--box", "28,6,60,44", "--question",
               "what is between <region1> and <region2> ?", "--checkpoint", bundle, "--max-new-tokens", "10"])
    assert rc == 0
    out = capsys.readouterr().out.strip()
    assert out and "\n" not in out
    for argv, msg in [(["--box", "2,3,30", "--question", "q"], "four numbers"),
                      (["--box", "2,3,30,40", "--question", "is <region2> red ?"], "<region2>"),
                      (["--box", "200,3,300,40", "--question", "q"], "outside"),
                      (["--box", "2,3,30,40", "--question", " "], "must not be empty"),
                      (["--box", "2,3,30,40", "--question", "q", "--max-new-tokens", "0"], "--max-new-tokens"),
                      (["--box", "2,3,30,40", "--question", "q", "--num-beams", "0"], "--num-beams"),
                      (["--box", "2,3,30,40", "--question", "q", "--threads", "0"], "--threads")]:
        assert main(["chat", img, *argv, "--checkpoint", bundle]) == 2
        assert msg in capsys.readouterr().err
    assert main(["chat", img, "--box", "2,3,30,40", "--question", "q", "--checkpoint", str(tmp / "no.pt")]) == 2
    assert "no model bundle" in capsys.readouterr().err


def test_chat_command_refuses_a_t5_bundle(tmp_path, capsys):
    from _model_data import CAPTIONS, build_tiny
    from dynrefer.app.bundle import save_bundle

    m = build_tiny(seed=0)
    path = save_bundle(m, str(tmp_path / "t5.pt"), CAPTIONS, m.tag_list, [], [], {"num_views": 2, "size": 32})
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "i.png")
    assert main(["chat", str(tmp_path / "i.png"), "--box", "1,1,9,9", "--question", "q", "--checkpoint", path]) == 2
    assert "decoder-only LLM" in capsys.readouterr().err


def test_bundle_of_a_model_with_an_llm_directory(tmp_path):
    """A bundle leaves out the frozen LLM loaded from llm.path and reloads it from there."""
    from _llm_data import save_tiny_llama
    from dynrefer.data.dataset import load_image
    from dynrefer.app.bundle import build_bundle_model, load_bundle, save_bundle

    path, img_dir, _ = write_conversations(str(tmp_path))
    llm_dir = save_tiny_llama(tmp_path / "llm")
    m = build_causal(llm_dir, num_views=2).eval()
    from _llm_data import chat_texts
    from _model_data import ATTRIBUTES, CLASSES

    bundle = save_bundle(m, str(tmp_path / "m.pt"), chat_texts(), TAGS, CLASSES, ATTRIBUTES,
                         {"num_views": 2, "size": 32})
    saved = torch.load(bundle, weights_only=True)["model"]
    assert m.external_llm_keys() and not any(k.startswith("llm_model.") for k in saved)
    assert "llm_proj.weight" in saved and "cem_memory" in saved
    again = build_bundle_model(load_bundle(bundle))
    for k, v in m.state_dict().items():
        if not k.endswith("_embeds"):
            assert torch.equal(v, again.state_dict()[k]), k
    img = load_image(os.path.join(img_dir, "0.png"))
    q = "what is <region1> ?"
    assert m.chat(img, [[2, 3, 30, 40]], q, seed=0, max_new_tokens=4) == \
        again.chat(img, [[2, 3, 30, 40]], q, seed=0, max_new_tokens=4)


def test_train_command_errors(tmp_path, capsys):
    cfg, _ = _chat_config(tmp_path)
    text = cfg.read_text()
    cfg.write_text(text.replace("    kind: causal\n", "    kind: t5\n"))
    assert main(["train", str(cfg)]) == 2
    assert "model.llm.kind" in capsys.readouterr().err
    cfg.write_text(text.replace(f"    tags: {tmp_path / 'tags.txt'}\n", ""))
    assert main(["train", str(cfg)]) == 2
    assert "datasets.conversations.tags" in capsys.readouterr().err
    bad = tmp_path / "data" / "conversations.json"
    recs = json.loads(bad.read_text())
    recs[1]["conversations"][0]["value"] = "where is <region9> ?"
    bad.write_text(json.dumps(recs))
    cfg.write_text(text)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "record #1 (id 'conv1')" in err and "<region9>" in err


def test_lora_training_through_the_engine(tmp_path):
    """LoRA fine-tuning: checkpoints hold the trainable tensors (adapters included) and the LLM's base weights do
    not move."""
    pytest.importorskip("peft", reason="LoRA needs peft (pip install dynrefer[llm])")
    from dynrefer.app.referring import train_conversations
    from dynrefer.train import load_config

    cfg, _ = _chat_config(tmp_path, lora=True)
    model, summary, _ = train_conversations(load_config(str(cfg), ["run.max_epoch=3"]), log=lambda *_: None)
    assert summary["step"] == 3
    ck = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["model"]
    params = dict(model.named_parameters())
    saved = [k for k in ck if k in params]
    assert any(".lora_" in k for k in saved) and not any(".base_layer." in k for k in saved)
    assert all(params[k].requires_grad for k in saved)
    # the model as it started (the same build, seed and vocabulary)
    from dynrefer.data.conversations import conversation_texts
    from dynrefer.model import build_dynrefer
    from dynrefer.app.referring import conversation_model_config

    c = load_config(str(cfg))
    texts = conversation_texts(load_conversations(c.datasets["conversations"]["train"]))
    fresh = build_dynrefer(conversation_model_config(c.model), texts=texts, tag_list=TAGS, seed=0)
    base = {k: v for k, v in fresh.state_dict().items() if k.startswith("llm_model.") and ".lora_" not in k}
    assert not torch.equal(fresh.llm_proj.weight, model.llm_proj.weight)  # trained
    now = model.state_dict()
    assert base and all(torch.equal(now[k], v) for k, v in base.items())


# ------------------------------------------------------------------------------------------------ Ferret-Bench
def test_question_regions():
    text, boxes = question_regions("What is the object [0.500, 0.250, 0.750, 1.000] near [0.0, 0.0, 0.1, 0.2]?",
                                   200, 100)
    assert text == "What is the object <region1> near <region2>?"
    assert boxes == [[100.0, 25.0, 150.0, 100.0], [0.0, 0.0, 20.0, 20.0]]
    text, boxes = question_regions("the box [10, 20, 50, 60] and [see below]", 200, 100)
    assert text == "the box <region1> and [see below]" and boxes == [[10.0, 20.0, 50.0, 60.0]]
    with pytest.raises(ValueError, match="empty"):
        question_regions("[0.5, 0.5, 0.5, 0.9]", 200, 100)


def test_ferret_bench_export(trained, tmp_path, capsys):
    tmp, img_dir = trained
    qs = [{"question_id": 3, "image": "0.png", "category": "refer_reason",
           "text": "What is the purpose of the object [0.047, 0.062, 0.469, 0.833]?"},
          {"question_id": 1, "image": "coco/1.png", "category": "refer_desc",
           "text": "What is the relationship between the object [0.031, 0.063, 0.469, 0.833] and object "
                   "[0.438, 0.125, 0.938, 0.917]?"},
          {"question_id": 7, "image": "1.png", "category": "ground_conv", "text": "What is in the picture?"}]
    qfile = tmp_path / "question.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    out = tmp_path / "answers" / "dynrefer_answer.jsonl"
    rc = main(["ferret-bench", str(qfile), "--images", img_dir, "--checkpoint", str(tmp / "run" / "model.pt"),
               "--out", str(out), "--model-id", "dynrefer-tiny", "--max-new-tokens", "8"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "GPT-4" in printed and "not run" in printed
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["question_id"] for l in lines] == [3, 1, 7]  # the question file's order (the review zips by line)
    for l, q in zip(lines, qs):
        assert set(l) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert l["prompt"] == q["text"] and isinstance(l["text"], str) and l["model_id"] == "dynrefer-tiny"
        assert l["metadata"]["category"] == q["category"] and l["metadata"]["image"] == q["image"]
    expect = [[round(v * s, 2) for v, s in zip(b, (64, 48, 64, 48))]
              for b in ([0.031, 0.063, 0.469, 0.833], [0.438, 0.125, 0.938, 0.917])]
    assert lines[1]["metadata"]["boxes"] == expect
    assert lines[2]["metadata"]["boxes"] == [[0.0, 0.0, 64.0, 48.0]]  # no box: the whole image
    assert len({l["answer_id"] for l in lines}) == 3
    # errors: a missing image, a malformed file
    (tmp_path / "q2.jsonl").write_text(json.dumps({"question_id": 9, "image": "nope.png", "text": "x"}) + "\n")
    assert main(["ferret-bench", str(tmp_path / "q2.jsonl"), "--images", img_dir, "--checkpoint",
                 str(tmp / "run" / "model.pt"), "--out", str(out)]) == 2
    assert "question_id 9" in capsys.readouterr().err
    assert main(["ferret-bench", str(qfile), "--images", img_dir, "--checkpoint", str(tmp / "run" / "model.pt"),
                 "--out", str(out), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    (tmp_path / "q3.jsonl").write_text('{"question_id": 1, "image": "a.png"}\n')
    with pytest.raises(FerretBenchError, match="lacks 'text'"):
        read_questions(tmp_path / "q3.jsonl")


def test_example_config_validates():
    from dynrefer.app.referring import conversation_model_config
    from dynrefer.train import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "dynrefer", "configs", "referring_vicuna_lora.yaml"))
    mc = conversation_model_config(cfg.model)
    assert mc.llm.kind == "causal" and mc.llm.lora and (mc.llm.lora_r, mc.llm.lora_alpha) == (64, 128)
    assert mc.vision.width == 1408 and cfg.datasets["conversations"]["tags"]
