"""dynrefer.lavis against a stand-in LAVIS package (tests/_fake_lavis.py, LAVIS 1.0.2's registry and base-class
API): registration on import, the packaged configs resolved as LAVIS resolves them, the model's LAVIS API, the
processor, the builder on official-format files, and the task's hooks calling dynrefer.eval. The same flow
against the real salesforce-lavis is tests/test_lavis_real.py (skipped where LAVIS is not installed)."""
import glob
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")
pytest.importorskip("yaml")

import _fake_lavis  # noqa: E402
from dynrefer.data.synthetic import generate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_yaml(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A working directory with the synthetic benchmark at data/synthetic, where the tiny configs point."""
    root = tmp_path_factory.mktemp("lavis_cwd")
    generate(str(root / "data" / "synthetic"), seed=3, splits={"train": 4, "val": 2})
    return root


@pytest.fixture
def lavis(monkeypatch, synth_root):
    """The fake LAVIS installed, dynrefer.lavis freshly imported against it, the cwd at the synthetic data."""
    before = {n for n in sys.modules if n.startswith("dynrefer.lavis")}
    mods = _fake_lavis.install(monkeypatch)
    monkeypatch.chdir(synth_root)
    import dynrefer.lavis as dl

    yield mods, dl
    for n in [n for n in sys.modules if n.startswith("dynrefer.lavis") and n not in before]:
        del sys.modules[n]


def _config(mods, rel, **options):
    import dynrefer.lavis as dl

    return mods["lavis.common.config"].Config(dl.config_path(rel), options)


def test_import_registers_everything(lavis):
    mods, dl = lavis
    reg = mods["lavis.common.registry"].registry
    BaseModel = mods["lavis.models.base_model"].BaseModel
    model = reg.get_model_class("dynrefer_t5")
    from dynrefer.model import DynRefer

    assert issubclass(model, BaseModel) and issubclass(model, DynRefer)
    assert issubclass(reg.get_processor_class("dynrefer"), mods["lavis.processors.base_processor"].BaseProcessor)
    assert issubclass(reg.get_task_class("dynrefer"), mods["lavis.tasks.base_task"].BaseTask)
    base_builder = mods["lavis.datasets.builders.base_dataset_builder"].BaseDatasetBuilder
    for name in ["dynrefer", *dl.DATASET_CONFIGS]:
        assert issubclass(reg.get_builder_class(name), base_builder), name
    # idempotent; the classes are what registered() reports
    c = dl.register()
    assert c.model is model and dl.registered() == c
    # a name already taken by someone else's class is an error naming it
    other = _fake_lavis.build()
    taken = other["lavis.common.registry"].registry
    taken.register_task("dynrefer")(other["lavis.tasks.base_task"].BaseTask)
    with pytest.raises(KeyError, match="already has a task named 'dynrefer'"):
        dl.register(taken)
    assert taken.get_model_class("dynrefer_t5") is None   # nothing registered half-way


def test_model_api_from_packaged_configs(lavis):
    mods, dl = lavis
    reg = mods["lavis.common.registry"].registry
    cls = reg.get_model_class("dynrefer_t5")
    for t in dl.MODEL_TYPES:   # overridden: the packaged files, not LAVIS's library root
        assert os.path.isfile(cls.default_config_path(t)) and cls.default_config_path(t).startswith(dl.config_path())
    with pytest.raises(ValueError, match="unknown model_type"):
        cls.default_config_path("vicuna7b")

    model = mods["lavis.models"].load_model("dynrefer_t5", "tiny")   # from_pretrained → default_config_path
    assert isinstance(model, mods["lavis.models.base_model"].BaseModel) and model.num_views == 2
    names = set(model.state_dict())
    assert {"cvem_align.value_proj.weight", "cem_memory", "t5_proj.weight", "attr_t"} <= names   # official names
    vis, txt = mods["lavis.models"].load_preprocess(dl.load_config("projects/train/tiny_synthetic.yaml")["preprocess"])
    assert vis["eval"].image_size == 32 and txt["train"]("A Dog.") == "a dog."

    cfg = _config(mods, "projects/train/tiny_synthetic.yaml")
    assert cfg.model_cfg["vit_model"] == "tiny" and cfg.datasets_cfg["dynrefer_synthetic"]["build_info"]["seed"] == 0
    task = reg.get_task_class(cfg.run_cfg["task"]).setup_task(cfg=cfg)
    datasets = task.build_datasets(cfg)["dynrefer_synthetic"]
    model = task.build_model(cfg)
    train = datasets["train"]
    batch = train.collater([train[i] for i in range(4)])
    torch.manual_seed(0)
    out = model(batch)
    assert set(out) == {"loss", "loss_llm", "loss_tag", "loss_rtc"} and torch.isfinite(out["loss"])
    loss = task.train_step(model, batch)
    assert loss.dim() == 0
    loss.backward()
    assert model.cvem_mlp[0].weight.grad is not None and model.visual_encoder.patch_embed.proj.weight.grad is None

    val = datasets["val"]
    batch = val.collater([val[0]])
    model.eval()
    caps = model.generate(batch, num_beams=1, max_length=4)
    assert len(caps) == len(batch["ids"]) and all(isinstance(c, str) for c in caps)
    pred = model.predict_answers(batch, max_len=4)
    assert [p["id"] for p in pred] == batch["ids"]
    p = pred[0]
    assert set(p) == {"id", "caption", "score", "tag_set1", "tag_set2", "attr", "cls"}
    assert len(p["cls"]) == len(model.classes) and len(p["attr"]) == len(model.attributes) and 0 < p["score"] <= 1
    with pytest.raises(ValueError, match="local files only"):
        model.load_checkpoint("https://example.org/model.pth")


def test_processor_on_a_photo(lavis, shared_data):
    from PIL import Image

    from dynrefer.views import CANDIDATES, NestedViews

    mods, _ = lavis
    proc = mods["lavis.common.registry"].registry.get_processor_class("dynrefer").from_config({"image_size": 48})
    proc.num_views = 3   # what the dataset sets, as officially
    path = sorted(glob.glob(os.path.join(shared_data, "images", "COCO_*.jpg")))[0]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    segs = [[[10, 20, 10, 140, 110, 140, 110, 20]],            # polygon rings (the official segmentation)
            [30.0, 40.0, w - 5.0, h - 9.0]]                     # a plain xyxy box
    out = proc(img, segs)
    assert out["cascade_region_images"].shape == (2, 3, 3, 48, 48)
    assert out["cascade_region_bboxes"].shape == (2, 3, 4) and out["cascade_region_ratios"].dtype == torch.float64
    boxes = np.array([[10, 20, 110, 140], [30, 40, w - 5, h - 9]], np.float32)
    ref = NestedViews(size=48, num_views=3, prior="image").official(np.asarray(img), boxes)
    for k in ref:   # eval split: the image prior, identical to NestedViews
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
    proc.split = "train"   # training: random context views among the candidates
    r = proc(img, segs, rng=np.random.default_rng(0))["cascade_region_ratios"]
    assert (r[:, 0] == 0).all() and np.isclose(r[:, 1:].numpy()[..., None], CANDIDATES, atol=1e-6).any(-1).all()
    with pytest.raises(ValueError, match=r"segs\[0\]"):
        proc(img, [[["a", "b"]]])


def test_builder_on_official_files(lavis, synth_root):
    mods, dl = lavis
    reg = mods["lavis.common.registry"].registry
    d = str(synth_root / "data" / "synthetic")
    cfg = dl.load_config("projects/train/tiny_synthetic.yaml")["datasets"]["dynrefer_synthetic"]
    builder = reg.get_builder_class("dynrefer")(cfg)
    sets = builder.build_datasets()
    assert set(sets) == {"train", "val"}
    train, val = sets["train"], sets["val"]
    caption = _read_json(os.path.join(d, "train_caption.json"))
    assert len(train) == len(caption["annotations"])     # obj_lvl: one region per training item
    assert len(val) == 2                                  # evaluation: one image per item
    assert train.vis_processor.num_views == 2 and train.vis_processor.split == "train"
    item = train[0]
    ann = next(a for a in caption["annotations"] if a["id"] == item["ids"][0])
    T = train.num_tags
    tags = item["tags"][0]
    assert tags.shape == (2 * T,) and tags.dtype == torch.long
    ps = ann["extra_info"]["parser_result"]
    assert set(torch.nonzero(tags[:T]).flatten().tolist()) == set(ps.get("tag_set1", []))
    assert set(torch.nonzero(tags[T:]).flatten().tolist()) == set(ps.get("tag_set2", []))
    assert item["caps"] == [ann["caption"].lower().strip()]     # the text processor ran
    assert item["cascade_region_images"].shape == (1, 2, 3, 32, 32) and "cap_control_words" in item
    b = val.collater([val[0], val[1]])
    n = len(b["ids"])
    assert b["cascade_region_images"].shape[0] == n == b["tags"].shape[0] == len(b["caps"]) == len(b["batch_idx"])
    assert "cap_control_words" not in b    # at inference the control words come from the predicted tags
    # a builder from the packaged default config (LAVIS's no-argument form) and from a file path
    assert reg.get_builder_class("vg1.2")().config["build_info"]["num_views"] == 3
    assert reg.get_builder_class("dynrefer")(dl.config_path("datasets/ovad/ovad.yaml")).config["build_info"][
        "annotations"]["train"] == []
    one = dict(cfg, build_info=dict(cfg["build_info"], max_imgs="1", annotations={"train": [], "val": cfg[
        "build_info"]["annotations"]["val"]}))
    sets = reg.get_builder_class("dynrefer")(one).build_datasets()
    assert set(sets) == {"val"} and len(sets["val"]) == 1
    files = ["data/synthetic/train_caption.json", "data/synthetic/val_caption.json"]   # several files, one split
    two = dict(cfg, build_info=dict(cfg["build_info"], annotations={"train": files}))
    both = reg.get_builder_class("dynrefer")(two).build_datasets()["train"]
    val_regions = len(_read_json(os.path.join(d, "val_caption.json"))["annotations"])
    assert len(both) == len(train) + val_regions and both[len(both) - 1]["ids"][0] in {
        a["id"] for a in _read_json(os.path.join(d, "val_caption.json"))["annotations"]}


def test_task_hooks_call_dynrefer_eval(lavis, synth_root, monkeypatch, tmp_path):
    import dynrefer.eval

    mods, dl = lavis
    reg = mods["lavis.common.registry"].registry
    cfg = _config(mods, "projects/eval/tiny_synthetic.yaml")
    task = reg.get_task_class("dynrefer").setup_task(cfg=cfg)
    datasets = task.build_datasets(cfg)["dynrefer_synthetic"]
    model = task.build_model(cfg).eval()
    val = datasets["val"]
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=val.collater)
    task.before_evaluation(model=model, dataset=val)
    preds = task.evaluation(model, loader, cuda_enabled=False)
    assert sorted(p["id"] for p in preds) == sorted(r for i in range(len(val)) for r in val[i]["ids"])

    calls = []

    def spy(kind, predictions, annotations, **options):
        calls.append((kind, predictions, annotations, options))
        return {"CIDEr": 12.5}

    monkeypatch.setattr(dynrefer.eval, "evaluate", spy)
    reg.register_path("result_dir", str(tmp_path / "result"))
    m = task.after_evaluation(val_result=preds, split_name="val", epoch=0)
    assert m == {"CIDEr": 12.5, "agg_metrics": 12.5}
    kind, res, gts, options = calls[0]
    assert kind == "caption" and options == {"metrics": ("CIDEr",)} and set(res) == set(gts)
    saved = _read_json(tmp_path / "result" / "val_predictions.json")
    assert [p["id"] for p in saved] == [p["id"] for p in preds]
    monkeypatch.undo()   # the real dynrefer.eval for the two benchmarks that need no Java

    d = synth_root / "data" / "synthetic"
    ovad = task.report_metrics(preds, annotations=str(d / "val_attribute.json"), benchmark="ovad")
    assert {"all", "head", "agg_metrics"} <= set(ovad) and ovad["agg_metrics"] == ovad["all"]
    coco = task.report_metrics(preds, annotations=str(d / "val_category.json"), benchmark="coco")
    assert 0 <= coco["acc"] <= 100 and coco["agg_metrics"] == coco["acc"]
    task.report_metric = False
    assert task.after_evaluation(val_result=preds, split_name="val") == {"agg_metrics": 0.0}
    from dynrefer.lavis.task import benchmark_of

    assert [benchmark_of(n) for n in ("vg1.2", "vg_reg", "refcocog", "ovad", "coco", "dynrefer_synthetic")] == [
        "densecap", "caption", "caption", "ovad", "coco", None]


def test_packaged_configs():
    import yaml

    import dynrefer.lavis as dl
    from dynrefer.lavis.model import config_from_lavis

    files = sorted(glob.glob(os.path.join(dl.config_path(), "**", "*.yaml"), recursive=True))
    assert len(files) >= 4 + 8 + 10
    # the wheel carries them: every file matches the package-data globs of pyproject.toml
    import fnmatch
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["dynrefer.lavis"]
    for p in files:
        rel = os.path.relpath(p, os.path.dirname(dl.config_path()))
        assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel
    known = {"num_views", "vit_model", "img_size", "vit_precision", "num_query_token", "max_txt_len", "tag_thr",
             "num_beams", "max_new_tokens", "min_length", "length_penalty", "repetition_penalty", "split_size",
             "full_drop_ratio", "drop_ratio", "tag_bert_config", "finetune_llm", "tag_list", "ov_file", "ovad_file",
             "texts", "t5_model", "pretrained", "finetuned", "load_finetuned", "vit_checkpoint", "clip_text_weights",
             "seed", "embed_cache_dir",
             *dl.IGNORED_MODEL_KEYS}
    for t, rel in dl.MODEL_TYPES.items():
        y = _read_yaml(dl.config_path(rel))
        assert y["model"]["arch"] == "dynrefer_t5" and y["model"]["model_type"] == t
        assert set(y["model"]) <= known, set(y["model"]) - known
        assert y["preprocess"]["vis_processor"]["eval"]["name"] == "dynrefer"
        c = config_from_lavis(dict(y["model"], tag_bert_config=None))   # files: test_official_vocabularies
        assert c.vision.image_size == y["preprocess"]["vis_processor"]["eval"]["image_size"]
    official = config_from_lavis(dict(_read_yaml(dl.config_path(dl.MODEL_TYPES["flant5xl"]))["model"],
                                      tag_bert_config=None))
    assert (official.vision.depth, official.vision.width, official.num_views) == (39, 1408, 3)
    assert (official.generation.num_beams, official.generation.repetition_penalty) == (2, 1.5)
    assert config_from_lavis({"vit_model": "clip_L"}).vision.arch == "clip"
    for name, rel in dl.DATASET_CONFIGS.items():
        ds = _read_yaml(dl.config_path(rel))["datasets"]
        assert list(ds) == [name]
        info = ds[name]["build_info"]
        assert {"num_views", "with_seg", "max_imgs", "max_objs", "obj_lvl", "tag_list", "annotations"} <= set(info)
    projects = sorted(glob.glob(dl.config_path("projects/*/*.yaml")))
    assert len(projects) >= 10
    for p in projects:
        c = dl.load_config(p)
        assert c["run"]["task"] == "dynrefer" and c["run"]["eval_dataset_name"] in c["datasets"], p
        assert c["run"]["evaluate"] == ("/eval/" in p), p
    c = dl.load_config("projects/train/refcocog_ft.yaml")
    assert (c["model"]["tag_thr"], c["run"]["max_epoch"], c["model"]["vit_model"]) == (0.76, 3, "eva_clip_g")
    assert dl.load_config("projects/eval/vg_reg.yaml")["model"]["tag_thr"] == 0.8
    c = dl.load_config("projects/train/vg1.2_5e.yaml", {"run": {"max_epoch": 1}})
    assert c["run"]["max_epoch"] == 1 and c["datasets"]["vg1.2"]["build_info"]["annotations"]["val"] == [
        "data/vg/dynrefer/vg1.2/test.json"]
    with pytest.raises(ValueError, match="model_type"):
        dl.load_config("projects/train/vg1.2_5e.yaml", {"model": {"model_type": "vicuna7b"}})


def test_official_vocabularies(shared_data, tmp_path, monkeypatch):
    """The flant5xl config's vocabulary paths (data/vocab/...) name the files of the shared data layout."""
    import yaml

    import dynrefer.lavis as dl
    from dynrefer.lavis.model import config_from_lavis, read_attributes, read_class_names

    os.symlink(shared_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    m = _read_yaml(dl.config_path(dl.MODEL_TYPES["flant5xl"]))["model"]
    c = config_from_lavis(m)
    assert (c.head.num_layers, c.head.num_heads, c.head.hidden_size) == (2, 4, 256)
    assert len(read_class_names(m["ov_file"])) == 80 and len(read_attributes(m["ovad_file"])) == 117
    with open(m["tag_list"], encoding="utf-8") as f:
        assert sum(1 for t in f if t.strip()) == 4585


def test_missing_vocabularies_are_named(lavis, tmp_path, monkeypatch):
    """A model type whose vocabularies are not there says which file, from where, and how to get it."""
    mods, dl = lavis
    monkeypatch.chdir(tmp_path)      # no data/ here
    with pytest.raises(FileNotFoundError) as e:
        mods["lavis.models"].load_model("dynrefer_t5", "tiny")
    msg = str(e.value)
    assert "model.tag_list" in msg and "'data/synthetic/tags.txt'" in msg and str(tmp_path) in msg
    assert "python -m dynrefer.data synthetic data/synthetic" in msg
    from dynrefer.lavis.model import vocabulary_file

    m = _read_yaml(dl.config_path(dl.MODEL_TYPES["flant5xl"]))["model"]
    for key in ("tag_list", "ov_file", "ovad_file"):
        with pytest.raises(FileNotFoundError, match=f"model.{key} .*data/vocab/ holds the official vocabularies"):
            vocabulary_file(m, key)
    # the command the message names makes the tiny model load
    from dynrefer.data.__main__ import main as data_main

    assert data_main(["synthetic", "data/synthetic", "--train", "2", "--val", "1", "--test", "1"]) == 0
    assert mods["lavis.models"].load_model("dynrefer_t5", "tiny").num_views == 2


def _gather_worker(rank, world, init, out):
    import torch.distributed as dist

    from dynrefer.lavis.task import _gather_predictions

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        # a DistributedSampler pads the last batch by repeating samples: region 3 appears on both ranks
        mine = [{"id": 1, "caption": "a"}, {"id": 3, "caption": "c"}] if rank == 0 else \
            [{"id": 2, "caption": "b"}, {"id": 3, "caption": "c"}]
        merged, is_main = _gather_predictions(mine)
        with open(os.path.join(out, f"{rank}.json"), "w", encoding="utf-8") as f:
            json.dump({"ids": [p["id"] for p in merged], "main": is_main}, f)
    finally:
        dist.destroy_process_group()


def test_evaluation_gathers_predictions_across_processes(tmp_path):
    """Every process's predictions are scored (once each) on the main process; the others score nothing."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rdzv'}"
    mp.spawn(_gather_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    with open(tmp_path / "0.json", encoding="utf-8") as f:
        r0 = json.load(f)
    with open(tmp_path / "1.json", encoding="utf-8") as f:
        r1 = json.load(f)
    assert r0 == {"ids": [1, 3, 2], "main": True}
    assert r1["main"] is False and sorted(r1["ids"]) == [1, 2, 3]


def test_missing_predictions_raise():
    from dynrefer.lavis.task import _require

    _require({1: {}, 2: {}}, [1, 2])
    with pytest.raises(ValueError, match="no prediction for 1 evaluated regions"):
        _require({1: {}}, [1, 2])
