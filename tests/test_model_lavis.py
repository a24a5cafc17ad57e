"""dynrefer.lavis: the registration contract, config and sample-key mapping (a test double stands in for LAVIS)."""
import pytest
import torch

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")

from _model_data import CAPTIONS, TAGS, batch  # noqa: E402
from dynrefer.lavis import LAVIS_NAME, config_from_lavis, register  # noqa: E402


class FakeRegistry:
    """A registry with LAVIS's decorator API (register_<kind>(name)(cls)) and look-ups."""

    def __init__(self):
        self.mapping = {k: {} for k in ("model", "processor", "builder", "task")}

    def _register(self, kind, name):
        def wrap(cls):
            assert name not in self.mapping[kind]
            self.mapping[kind][name] = cls
            return cls

        return wrap

    def register_model(self, name):
        return self._register("model", name)

    def register_processor(self, name):
        return self._register("processor", name)

    def register_builder(self, name):
        return self._register("builder", name)

    def register_task(self, name):
        return self._register("task", name)

    def get_model_class(self, name):
        return self.mapping["model"].get(name)

    def get_builder_class(self, name):
        return self.mapping["builder"].get(name)

    @property
    def models(self):
        return self.mapping["model"]


def test_config_mapping_of_the_official_yaml():
    official = {"arch": "dynrefer_t5", "num_views": 3, "vit_model": "eva_clip_g", "img_size": 224,
                "vit_precision": "fp16", "num_query_token": 32, "tag_thr": 0.7, "max_txt_len": 32, "num_beams": 2,
                "max_new_tokens": 20, "min_length": 1, "length_penalty": 0, "repetition_penalty": 1.5}
    cfg = config_from_lavis(official)
    assert cfg.num_views == 3 and cfg.vision.width == 1408 and cfg.vision.depth == 39
    g = cfg.generation
    assert (g.num_beams, g.max_new_tokens, g.length_penalty, g.repetition_penalty) == (2, 20, 0.0, 1.5)
    assert config_from_lavis({"vit_model": "clip_L"}).vision.arch == "clip"
    with pytest.raises(ValueError, match="vit_model"):
        config_from_lavis({"vit_model": "resnet"})


def test_register_build_train_and_predict(tmp_path):
    reg = FakeRegistry()
    cls = register(reg).model
    assert reg.models[LAVIS_NAME] is cls and register(reg).model is cls   # idempotent
    (tmp_path / "tags.txt").write_text("\n".join(TAGS) + "\n")
    torch.manual_seed(0)
    model = cls.from_config({"vit_model": "tiny", "num_views": 2, "tag_list": str(tmp_path / "tags.txt"),
                             "texts": CAPTIONS, "num_beams": 1, "max_new_tokens": 4})
    assert model.num_tags == len(TAGS) and model.config.generation.num_beams == 1
    s = batch(model, torch.Generator().manual_seed(0), regions=3)
    lavis_batch = {"cascade_region_images": s["views"], "cascade_region_bboxes": s["boxes"],
                   "caps": s["text_output"], "tags": torch.cat([s["tags"], s["tags"]], 1), "ids": [7, 8, 9]}
    out = model(lavis_batch)
    assert set(out) == {"loss", "loss_llm", "loss_tag", "loss_rtc"}
    pred = model.predict_answers(lavis_batch)
    assert [p["id"] for p in pred] == [7, 8, 9]
    assert all(isinstance(p["caption"], str) and 0 < p["score"] <= 1 for p in pred)
    with pytest.raises(ValueError, match="tag_list"):
        cls.from_config({"vit_model": "tiny"})
    with pytest.raises(TypeError, match="register_model"):
        register(object())
    taken = FakeRegistry()
    taken.register_model(LAVIS_NAME)(torch.nn.Module)
    with pytest.raises(KeyError, match="already has a model named"):
        register(taken)


def test_from_config_loads_weight_files_through_the_factory(tmp_path):
    """LAVIS's weight keys (plus ``vit_checkpoint`` for the eva_vit_g.pth LAVIS downloads itself) reach the
    factory: each file is loaded in LAVIS's order with a report, an absent one is named with its key."""
    cls = register(FakeRegistry()).model
    (tmp_path / "tags.txt").write_text("\n".join(TAGS) + "\n")
    base = {"vit_model": "tiny", "num_views": 2, "tag_list": str(tmp_path / "tags.txt"), "texts": CAPTIONS}
    src = cls.from_config(dict(base, seed=3))
    sd = src.state_dict()
    torch.save({k[len("visual_encoder."):]: v + 1 for k, v in sd.items() if k.startswith("visual_encoder.")},
               tmp_path / "eva_vit_g.pth")
    torch.save({"model": {k: v + 1 for k, v in sd.items() if k.startswith(("Qformer.", "query_tokens"))}},
               tmp_path / "blip2.pth")
    c = config_from_lavis(dict(base, vit_checkpoint="v.pth", pretrained="p.pth", finetuned="f.pth",
                               t5_model="t5dir", clip_text_weights="c.pt"))
    assert (c.vit_checkpoint, c.pretrained, c.finetuned, c.llm.path, c.text_encoder.weights) == \
        ("v.pth", "p.pth", "f.pth", "t5dir", "c.pt")
    assert config_from_lavis(dict(base, finetuned="f.pth", load_finetuned=False)).finetuned is None
    m = cls.from_config(dict(base, seed=4, vit_checkpoint=str(tmp_path / "eva_vit_g.pth"),
                             pretrained=str(tmp_path / "blip2.pth")))
    assert [r.key for r in m.load_reports if r.key] == ["vit_checkpoint", "pretrained"]
    got = m.state_dict()
    for k in ("visual_encoder.pos_embed", "Qformer.bert.encoder.layer.0.attention.self.query.weight", "query_tokens"):
        assert torch.equal(got[k], sd[k] + 1), k
    with pytest.raises(FileNotFoundError, match="finetuned.*absent.pth"):
        cls.from_config(dict(base, finetuned=str(tmp_path / "absent.pth")))
