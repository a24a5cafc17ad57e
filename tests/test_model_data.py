"""The model on batches from dynrefer.data (synthetic scenes → RegionDataset + NestedViews → collate_regions)."""
import json
import os

import pytest
import torch

pytest.importorskip("transformers", reason="the model tests need transformers (pip install dynrefer[train])")


def test_training_and_description_on_the_data_pipeline(tmp_path):
    from dynrefer.data.dataset import RegionDataset, collate_regions
    from dynrefer.data.synthetic import generate
    from dynrefer.model import DynReferConfig, build_dynrefer
    from dynrefer.views import NestedViews

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate(str(tmp_path), seed=0, splits={"train": 2}, size_range=(224, 224), num_objects=(2, 3))
        tags = [t.strip() for t in open(tmp_path / "tags.txt") if t.strip()]
        classes = json.load(open(tmp_path / "classes.json"))
        attributes = json.load(open(tmp_path / "attributes.json"))
        cfg = DynReferConfig.from_preset("tiny")
        S, n = cfg.vision.image_size, cfg.num_views
        ds = RegionDataset(os.path.join(tmp_path, "train_caption.json"),
                           NestedViews(size=S, num_views=n, prior="stochastic", seed=0), training=True, seed=0,
                           num_tags=len(tags))
        batch = collate_regions([ds[i] for i in range(len(ds))])
        model = build_dynrefer(cfg, texts=batch["text_output"], tag_list=tags, classes=classes,
                               attributes=attributes, seed=0)
        assert len(model.attribute_names) == len(attributes)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        model.train()
        losses = []
        for _ in range(8):
            out = model(batch)  # uses the batch's sampled control sentences ("control")
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"].detach()))
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
        first = ds._items[0]  # the regions of the first item, and its image
        img = ds.image_loader(first[0].image_path)
        boxes = batch["region_boxes"][:1].numpy()
        res = model.describe(img, boxes, prior="image", seed=0)
        assert len(res) == 1 and res[0]["category"] in classes and "caption" in res[0]
        assert res == model.describe(img, boxes, prior="image", seed=0)
    finally:
        torch.set_num_threads(n_threads)


def test_training_engine_runs_the_model(tmp_path):
    """dynrefer.train.run_training drives DynRefer (its forward(samples) → {"loss", ...} contract); the engine's
    checkpoint loads back with the DynRefer loader."""
    from dynrefer.data.dataset import RegionDataset, collate_regions
    from dynrefer.data.synthetic import generate
    from dynrefer.model import DynReferConfig, build_dynrefer
    from dynrefer.model.loading import load_dynrefer_checkpoint
    from dynrefer.train import run_training
    from dynrefer.views import NestedViews

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = tmp_path / "data"
        generate(str(data), seed=1, splits={"train": 2}, size_range=(224, 224), num_objects=(2, 3))
        tags = [t.strip() for t in open(data / "tags.txt") if t.strip()]
        cfg = DynReferConfig.from_preset("tiny")
        ds = RegionDataset(os.path.join(data, "train_caption.json"),
                           NestedViews(size=cfg.vision.image_size, num_views=cfg.num_views, prior="stochastic",
                                       seed=0), training=True, seed=0, num_tags=len(tags))
        ds.collate_fn = collate_regions
        captions = [r.caption for recs in ds._items for r in recs if r.caption]
        assert captions
        built = []

        def build_model(_):
            built.append(build_dynrefer(cfg, texts=captions, tag_list=tags, seed=0))
            return built[-1]

        run = {"output_dir": str(tmp_path / "out"), "max_epoch": 1, "batch_size_train": 3, "init_lr": 1e-3,
               "warmup_steps": 1, "log_freq": 1, "progress_bar": False, "seed": 0}
        summary = run_training({"model": {}, "datasets": {}, "run": run}, build_model, lambda _: {"train": ds})
        assert summary["step"] >= 1 and not summary["interrupted"]
        model = built[0]
        ckpt = summary["checkpoint"] or os.path.join(run["output_dir"], "latest.pt")
        fresh = build_dynrefer(cfg, texts=captions, tag_list=tags, seed=5)
        rep = load_dynrefer_checkpoint(fresh, ckpt, weights_only=False)
        assert rep.missing == [] and rep.unexpected == []
        for n, p in fresh.named_parameters():
            if p.requires_grad:
                assert torch.equal(p, model.state_dict()[n]), n
    finally:
        torch.set_num_threads(n_threads)
