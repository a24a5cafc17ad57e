"""RegionDataset + collate_regions on the synthetic benchmark: item contents, both groupings, seeded
randomness, the batch dict's shapes and dtypes, a DataLoader with 2 forked workers, and bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dynrefer.data import load_annotations  # noqa: E402
from dynrefer.data.dataset import RegionDataset, collate_regions  # noqa: E402
from dynrefer.data.synthetic import COLORS, generate  # noqa: E402

S, N_VIEWS = 16, 3


class CropViews:
    """A stand-in with the NestedViews interface: the tight crop plus n-1 random context views
    ``b(t) = b + t([0,0,W,H] - b)``, nearest-neighbour resized to S x S, scaled to [0, 1]."""

    def __init__(self, size=S, num_views=N_VIEWS):
        self.size, self.n = size, num_views

    def __call__(self, image, boxes, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        h, w = image.shape[:2]
        R = len(boxes)
        views = np.zeros((R, self.n, 3, self.size, self.size), np.float32)
        vb = np.zeros((R, self.n, 4), np.float32)
        coeffs = np.zeros((R, self.n), np.float32)
        for r, b in enumerate(np.asarray(boxes, np.float64)):
            ts = np.r_[0.0, np.sort(rng.choice(np.arange(1, 11) / 10, self.n - 1, replace=False))]
            coeffs[r] = ts
            for k, t in enumerate(ts):
                v = b + t * (np.array([0, 0, w, h]) - b)
                x1, y1, x2, y2 = np.clip(v, 0, [w, h, w, h]).astype(int)
                crop = image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
                yi = (np.arange(self.size) * crop.shape[0] // self.size)
                xi = (np.arange(self.size) * crop.shape[1] // self.size)
                views[r, k] = crop[yi][:, xi].transpose(2, 0, 1) / 255.0
                sx, sy = self.size / max(x2 - x1, 1), self.size / max(y2 - y1, 1)
                vb[r, k] = [(b[0] - x1) * sx, (b[1] - y1) * sy, (b[2] - x1) * sx, (b[3] - y1) * sy]
        return {"views": views, "boxes": vb, "coeffs": coeffs}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth_ds")
    m = generate(str(d), seed=11, splits={"train": 6, "val": 2})
    return str(d), m


def _path(synth, split="train", kind="caption"):
    d, m = synth
    return os.path.join(d, m["files"][split][kind])


def test_region_items(synth):
    ds = RegionDataset(_path(synth), CropViews(), training=True, seed=0)
    ann = ds.ann
    assert len(ds) == len(ann) and ds.num_tags == len(ann.tag_vocab)
    for i in (0, len(ds) // 2, len(ds) - 1):
        it = ds[i]
        rec = ann[i]
        assert it["views"].shape == (1, N_VIEWS, 3, S, S) and it["views"].dtype == np.float32
        assert it["boxes"].shape == (1, N_VIEWS, 4) and it["coeffs"].shape == (1, N_VIEWS)
        assert it["coeffs"][0, 0] == 0
        assert it["captions"] == [rec.caption] and it["region_ids"] == [rec.id] and it["image_id"] == rec.image_id
        np.testing.assert_array_equal(np.flatnonzero(it["tags"][0]), rec.tags)
        c = it["control"][0]
        assert c.endswith("|") and set(filter(None, c[:-1].split(","))) <= set(ann.tag_vocab[t] for t in rec.tags)
    # the tight view shows the object: its colour is the most common one in the crop
    it = ds[3]
    rec = ann[3]
    name = next(t for t in rec.caption.split() if t in COLORS)
    rgb = np.array(COLORS[name][0]) / 255.0
    tight = it["views"][0, 0].reshape(3, -1).T
    assert np.mean(np.all(np.abs(tight - rgb) < 1e-6, axis=1)) > 0.15
    # same seed, same epoch -> same item; another epoch -> other draws
    again = RegionDataset(_path(synth), CropViews(), training=True, seed=0)
    for i in range(5):
        a, b = ds[i], again[i]
        np.testing.assert_array_equal(a["coeffs"], b["coeffs"])
        assert a["control"] == b["control"]
    draws = {tuple(ds[0]["coeffs"][0])}
    for e in range(1, 8):
        ds.set_epoch(e)
        draws.add(tuple(ds[0]["coeffs"][0]))
    assert len(draws) > 1


def test_image_items_and_max_regions(synth):
    ann = load_annotations(_path(synth))
    ds = RegionDataset(ann, CropViews(), group="image")
    assert len(ds) == len(ann.images)
    it = ds[0]
    recs = ann.by_image()[next(iter(ann.images))]
    assert it["views"].shape[0] == len(recs) == len(it["captions"]) and it["control"] == ["|"] * len(recs)
    np.testing.assert_allclose(it["region_boxes"], [r.box for r in recs])
    sub = RegionDataset(ann, CropViews(), group="image", max_regions=2, seed=3)
    assert all(len(sub[i]["captions"]) <= 2 for i in range(len(sub)))
    full = RegionDataset(ann, CropViews(), control="all", seed=1)
    names = ann.tag_names(ann[0])
    assert full[0]["control"] == [",".join(dict.fromkeys(names[0] + names[1])) + "|"]


def test_collate_batch_dict(synth):
    ds = RegionDataset(_path(synth, "val", "attribute"), CropViews(), group="image", seed=0)
    items = [ds[0], ds[1]]
    b = collate_regions(items)
    R = sum(len(i["captions"]) for i in items)
    assert b["views"].shape == (R, N_VIEWS, 3, S, S) and b["views"].dtype == torch.float32
    assert b["boxes"].shape == (R, N_VIEWS, 4) and b["coeffs"].shape == (R, N_VIEWS)
    assert b["tags"].shape == (R, 19) and b["tags"].sum() == 0      # attribute file: tag list, but no tags
    assert b["att_vec"].shape == (R, 15) and b["att_vec"].dtype == torch.int8
    assert b["category"].dtype == torch.int64 and (b["category"] >= 0).all()
    assert len(b["text_output"]) == len(b["region_ids"]) == len(b["image_ids"]) == R
    n0, n1 = len(items[0]["captions"]), len(items[1]["captions"])
    np.testing.assert_array_equal(b["batch_idx"].numpy(), [0] * n0 + [1] * n1)
    np.testing.assert_array_equal(b["views"][: len(items[0]["captions"])].numpy(), items[0]["views"])
    with pytest.raises(ValueError, match="at least one"):
        collate_regions([])
    raw = RegionDataset(_path(synth), None)
    assert raw[0]["image"].dtype == np.uint8 and raw[0]["image"].ndim == 3
    with pytest.raises(ValueError, match="transform"):
        collate_regions([raw[0]])


def test_dataloader_two_workers(synth):
    ds = RegionDataset(_path(synth), CropViews(), training=True, seed=5)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=2, collate_fn=collate_regions,
                                     multiprocessing_context="fork")
    seen = []
    for b in dl:
        assert b["views"].shape[1:] == (N_VIEWS, 3, S, S)
        assert b["tags"].shape == (len(b["text_output"]), ds.num_tags)
        seen += b["region_ids"]
    assert seen == [r.id for r in ds.ann]
    # workers give the same items as the main process (per-index streams)
    first = next(iter(dl))
    ref = collate_regions([ds[i] for i in range(8)])
    torch.testing.assert_close(first["views"], ref["views"])
    assert first["control"] == ref["control"]


def test_bad_input(synth, tmp_path):
    with pytest.raises(ValueError, match="group"):
        RegionDataset(_path(synth), group="batch")
    with pytest.raises(ValueError, match="control"):
        RegionDataset(_path(synth), control="some")
    with pytest.raises(ValueError, match="max_regions"):
        RegionDataset(_path(synth), max_regions=0)
    with pytest.raises(TypeError, match="transform"):
        RegionDataset(_path(synth), transform=3)
    with pytest.raises(ValueError, match="num_tags"):
        RegionDataset(_path(synth), num_tags=2)
    with pytest.raises(ValueError, match="image_cache"):
        RegionDataset(_path(synth), image_cache=-1)
    ds = RegionDataset(_path(synth), lambda im, bx, rng=None: {"views": np.zeros((1, 2, 3, 4, 4)),
                                                               "boxes": np.zeros((1, 3, 4)),
                                                               "coeffs": np.zeros((1, 2))})
    with pytest.raises(ValueError, match="boxes of shape"):
        ds[0]
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(TypeError, match="transform must return a dict"):
        RegionDataset(_path(synth), lambda im, bx, rng=None: np.zeros(3))[0]
    ann = load_annotations(_path(synth), image_root=str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot load image"):
        RegionDataset(ann, CropViews())[0]


def test_import_without_torch():
    code = ("import sys, dynrefer.data as d, dynrefer.data.synthetic, dynrefer.data.convert;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_load_image_modes(tmp_path):
    from PIL import Image

    from dynrefer.data.dataset import load_image
    rgba = np.random.default_rng(0).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "g.png")
    a, g = load_image(str(tmp_path / "a.png")), load_image(str(tmp_path / "g.png"))
    assert a.shape == g.shape == (7, 9, 3) and a.dtype == g.dtype == np.uint8
    np.testing.assert_array_equal(a, rgba[..., :3])                    # alpha dropped, as convert("RGB")
    np.testing.assert_array_equal(g, np.repeat(rgba[..., :1], 3, axis=2))


def test_real_photos(shared_data, tmp_path):
    from PIL import Image

    from dynrefer.data import write_json
    img_dir = os.path.join(shared_data, "images")
    names = sorted(f for f in os.listdir(img_dir) if f.startswith("COCO_"))[:3]
    images, anns = [], []
    for k, fn in enumerate(names):
        with Image.open(os.path.join(img_dir, fn)) as im:
            w, h = im.size
        images.append({"id": k, "file_name": fn, "width": w, "height": h})
        for j, box in enumerate(([10, 20, 110, 140], [w / 2, h / 3, w - 1, h - 1])):
            x1, y1, x2, y2 = box
            anns.append({"id": 10 * k + j, "image_id": k, "caption": f"region {j}",
                         "segmentation": [[x1, y1, x1, y2, x2, y2, x2, y1]]})
    p = tmp_path / "photos.json"
    write_json(str(p), {"dataset": {"image_root": img_dir}, "images": images, "annotations": anns})
    ds = RegionDataset(str(p), CropViews(size=32), group="image", seed=0)
    b = collate_regions([ds[i] for i in range(len(ds))])
    assert b["views"].shape == (6, N_VIEWS, 3, 32, 32)
    # the tight view of region 0 is the nearest-neighbour resample of the photo's pixels in its box
    photo = np.asarray(Image.open(os.path.join(img_dir, names[0])).convert("RGB"))
    crop = photo[20:140, 10:110]
    yi, xi = np.arange(32) * crop.shape[0] // 32, np.arange(32) * crop.shape[1] // 32
    np.testing.assert_allclose(b["views"][0, 0].numpy(), crop[yi][:, xi].transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_with_nested_views(synth):
    pytest.importorskip("dynrefer.views")
    from dynrefer.data.dataset import nested_views, load_image
    train = RegionDataset(_path(synth), nested_views(training=True), training=True, seed=4)
    dl = torch.utils.data.DataLoader(train, batch_size=4, num_workers=2, collate_fn=collate_regions,
                                     multiprocessing_context="fork")
    b = next(iter(dl))
    assert b["views"].shape == (4, 3, 3, 224, 224) and b["views"].dtype == torch.float32
    assert b["boxes"].shape == (4, 3, 4) and b["view_boxes"].shape == (4, 3, 4)
    assert (b["coeffs"][:, 0] == 0).all() and ((b["coeffs"][:, 1:] >= 0.1) & (b["coeffs"][:, 1:] <= 1.0)).all()
    # the worker's item is what the transform gives for that index's stream
    nv = nested_views(training=True)
    rec = train.ann[0]
    ref = nv(load_image(rec.image_path), np.array([rec.box], np.float32), rng=train._rng(0).spawn(2)[0])
    np.testing.assert_array_equal(b["views"][0].numpy(), ref["views"][0])
    np.testing.assert_array_equal(b["coeffs"][0].numpy(), ref["coeffs"][0])
    # the tight view's box covers (almost) the whole 224 x 224 frame
    np.testing.assert_allclose(b["boxes"][:, 0].numpy(), np.tile([0, 0, 224, 224], (4, 1)), atol=1.0)
    # evaluation: image prior, deterministic without a seed
    ev = RegionDataset(_path(synth, "val"), nested_views(training=False), group="image")
    a1, a2 = ev[0], ev[0]
    np.testing.assert_array_equal(a1["coeffs"], a2["coeffs"])
    np.testing.assert_array_equal(a1["views"], a2["views"])
    assert a1["control"] == ["|"] * len(a1["captions"])


def test_image_cache(synth):
    calls = []

    def loader(path):
        calls.append(path)
        from dynrefer.data.dataset import load_image
        return load_image(path)
    cached = RegionDataset(_path(synth), CropViews(), seed=2, image_loader=loader)
    plain = RegionDataset(_path(synth), CropViews(), seed=2, image_cache=0)
    n = 12
    for i in range(n):
        a, b = cached[i], plain[i]
        np.testing.assert_array_equal(a["views"], b["views"])
    assert len(calls) == len({cached.ann[i].image_path for i in range(n)}) < n   # one decode per image
    raw = RegionDataset(_path(synth), None)
    img = raw[0]["image"]
    assert not img.flags.writeable and raw[1]["image"] is img
