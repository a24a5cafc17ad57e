"""plot_views: the figure of a region's nested views (and `dynrefer describe`'s answers) as a PIL image — its layout
(no blank band, the region drawn over the tight view's frame and clipped to the image, the thumbnails equal to
the views the crop op makes), saving, and the errors for bad arguments. Runs on real photos where the shared
data is present and on random images everywhere."""
import glob
import os

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from dynrefer.app.describe import answer_labels  # noqa: E402
from dynrefer.ops import crop_resize  # noqa: E402
from dynrefer.views import _VIEW_COLOURS, REGION_COLOUR, NestedViews, plot_views  # noqa: E402

WHITE = (255, 255, 255)
GAP = 6   # the white gap between the image and the thumbnails


def _photo(shared_data, k=0):
    paths = sorted(glob.glob(os.path.join(shared_data, "images", "*.jpg")))
    if len(paths) <= k:
        pytest.skip("no photos in the shared data")
    with Image.open(paths[k]) as im:
        return np.asarray(im.convert("RGB"))


def _result(rng):
    """A region's answers as DynRefer.describe returns them (random scores)."""
    attrs = [(n, float(s)) for n, s in zip(["red", "striped", "large", "wooden", "round"], rng.random(5))]
    attrs[0] = ("red", 0.93)
    return {"category": "chair", "category_score": float(rng.random()), "attributes": attrs,
            "tags": [(f"tag{i}", float(s)) for i, s in enumerate(sorted(rng.random(9), reverse=True))],
            "caption": "a red wooden chair next to a small round table by the window in the living room",
            "caption_score": 0.31}


def _largest_blank(a, height, width):
    """Whether the image ``a`` (H x W x 3) holds an all-white window of ``height x width`` pixels."""
    ink = (a != 255).any(-1).astype(np.int64)
    sat = np.pad(ink.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    if a.shape[0] < height or a.shape[1] < width:
        return False
    win = sat[height:, width:] - sat[:-height, width:] - sat[height:, :-width] + sat[:-height, :-width]
    return bool((win == 0).any())


def _image_width(a):
    """Width of the image part of a side-by-side figure: the first all-white column (the gap before the thumbs)."""
    white_cols = np.flatnonzero((a == 255).all(-1).all(0))
    return int(white_cols[0])


def _check_layout(fig, w, h, box, chosen):
    a = np.asarray(fig.convert("RGB"))
    H, W = a.shape[:2]
    # no blank band: no white window a fifth of the figure wide and half as tall (what is left beside short lines
    # of text is smaller), and the image and the text beside it both reach the bottom
    assert not _largest_blank(a, H // 2, W // 5), (W, H)
    sw = _image_width(a)
    text_bottom = 1 + int(np.flatnonzero((a[:, sw + GAP:] != 255).any(-1).any(-1))[-1])
    assert H - text_bottom <= 24, (H, text_bottom)
    sh = 1 + int(np.flatnonzero((a[:, :sw] != 255).any(-1).any(-1))[-1])
    assert abs(sh / sw - h / w) < 0.02 and H - sh <= 2      # the image keeps its aspect, as tall as the figure
    assert (a[:, sw:sw + GAP] == 255).all()
    sx, sy = sw / w, sh / h
    # the region over the tight view's frame: its 2-pixel red outline outermost, the frame's colour inside it
    x1, y1, x2, y2 = (int(round(v)) for v in (max(0, box[0]) * sx, max(0, box[1]) * sy, min(w, box[2]) * sx,
                                              min(h, box[3]) * sy))
    x2, y2 = min(x2, sw - 1), min(y2, sh - 1)
    ym, xm = (y1 + y2) // 2, (x1 + x2) // 2
    tight = _VIEW_COLOURS[list(chosen).index(0.0)]
    for y, x, dy, dx in ((ym, x1, 0, 1), (ym, x2, 0, -1), (y1, xm, 1, 0), (y2, xm, -1, 0)):
        assert tuple(a[y, x]) == REGION_COLOUR and tuple(a[y + dy, x + dx]) == REGION_COLOUR, (x, y)
        assert tuple(a[y + 2 * dy, x + 2 * dx]) == tight and tuple(a[y + 4 * dy, x + 4 * dx]) == tight, (x, y)
    return a, sw


def test_describe_figure_on_a_photo(shared_data, rng, tmp_path):
    img = _photo(shared_data)
    h, w = img.shape[:2]
    box = [0.2 * w, 0.3 * h, 0.55 * w, 0.8 * h]
    chosen = NestedViews(prior="image").choose(img, [box])[0]
    res = _result(rng)
    labels = answer_labels(res, attribute_threshold=0.5)
    fig = plot_views(img, box, str(tmp_path / "out" / "fig.png"), chosen=chosen, labels=labels)
    assert isinstance(fig, Image.Image) and fig.mode == "RGB"
    with Image.open(tmp_path / "out" / "fig.png") as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved), np.asarray(fig))
    a, sw = _check_layout(fig, w, h, box, [float(c) for c in chosen])
    # the tight view's thumbnail shows the view the crop op makes (inside its frame)
    x0 = sw + GAP
    th = int(np.flatnonzero((a[1, x0:] != _VIEW_COLOURS[0]).any(-1))[0])
    assert 64 <= th and 3 * th + 2 * GAP <= 720
    want = crop_resize(img, np.asarray([box], np.float32), th, mean=(0, 0, 0), std=(1, 1, 1))[0]
    want = (np.clip(want, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(a[4:th - 4, x0 + 4:x0 + th - 4], want[4:th - 4, 4:th - 4])
    # the answers: attributes from the threshold up only
    above = sorted([a for a in res["attributes"] if a[1] >= 0.5], key=lambda a: -a[1])
    assert dict(labels)["attributes"] == ", ".join(f"{n} {s:.2f}" for n, s in above)
    low = dict(answer_labels(res, attribute_threshold=0.99))["attributes"]
    assert low == "none from 0.99 up (best: red 0.93)"
    assert "(+4 more)" in dict(labels)["tags"] and dict(labels)["caption"].endswith("(0.31)")


def test_region_clipped_to_the_image(shared_data):
    img = _photo(shared_data, 1)
    h, w = img.shape[:2]
    box = [-30.0, 0.25 * h, w + 40.0, 0.6 * h]     # reaches past both sides
    fig = plot_views(img, box, chosen=[0.0, 0.5])
    a, sw = _check_layout(fig, w, h, box, [0.0, 0.5])
    ym = int(0.4 * h * sw / w)
    assert tuple(a[ym, 0]) == REGION_COLOUR and tuple(a[ym, sw - 1]) == REGION_COLOUR


@pytest.mark.parametrize("shape", [(240, 320), (60, 80), (128, 128), (500, 300)])
def test_layout_of_random_images(rng, shape, tmp_path):
    h, w = shape
    img = rng.integers(0, 256, (h, w, 3), np.uint8)
    x1, y1 = rng.uniform(0, 0.5 * w), rng.uniform(0, 0.5 * h)
    box = [x1, y1, x1 + rng.uniform(0.2, 0.5) * w, y1 + rng.uniform(0.2, 0.5) * h]
    chosen = [0.0, *sorted(rng.choice([0.1, 0.3, 0.5, 0.8], 2, replace=False).tolist())]
    labels = answer_labels(_result(rng))
    fig = plot_views(img, box, chosen=chosen, labels=labels)
    _check_layout(fig, w, h, box, chosen)
    # the same figure every time; a path also writes it
    again = plot_views(img, box, str(tmp_path / "f.png"), chosen=chosen, labels=labels)
    assert np.array_equal(np.asarray(fig), np.asarray(again))
    with Image.open(tmp_path / "f.png") as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(fig))


def test_wide_image_puts_the_thumbnails_under_it(rng):
    img = rng.integers(0, 256, (90, 900, 3), np.uint8)
    fig = plot_views(img, [100, 10, 300, 70], chosen=[0.0, 0.2, 0.6], labels=answer_labels(_result(rng)))
    a = np.asarray(fig)
    H, W = a.shape[:2]
    assert W <= 1280 and H < W
    assert not _largest_blank(a, H // 2, W // 5)
    assert (a[-24:] != 255).any(-1).any(-1).any()   # the text reaches the bottom
    # the image on top, full width: its rows are not white at the right end
    assert not (a[:5, W - 10:] == 255).all()


def test_arguments(rng):
    img = rng.integers(0, 256, (40, 50, 3), np.uint8)
    fig = plot_views(img, [5, 5, 20, 30])            # defaults: the tight view only
    assert isinstance(fig, Image.Image)
    # a PIL image and a CPU tensor give the same figure
    assert np.array_equal(np.asarray(plot_views(Image.fromarray(img), [5, 5, 20, 30])), np.asarray(fig))
    with pytest.raises(ValueError, match="box"):
        plot_views(img, [5, 5, 5, 30])
    with pytest.raises(ValueError, match="box"):
        plot_views(img, [5, 5, float("nan"), 30])
    with pytest.raises(ValueError, match="chosen"):
        plot_views(img, [5, 5, 20, 30], chosen=[0.0, 1.5])
    with pytest.raises(ValueError, match="size"):
        plot_views(img, [5, 5, 20, 30], size=2)
    with pytest.raises(ValueError, match="image"):
        plot_views(np.zeros((40, 50), np.uint8), [5, 5, 20, 30])
    torch = pytest.importorskip("torch")
    assert np.array_equal(np.asarray(plot_views(torch.from_numpy(img), torch.tensor([5.0, 5, 20, 30]))),
                          np.asarray(fig))
