"""A procedurally generated region benchmark that exercises every DynRefer task without downloads.

Each scene (224-320 px a side, a smooth noisy background) holds 3-6 non-overlapping objects. An object has a
**category** (its shape: circle, square, triangle, star, ring, hexagon), a **colour**, a fine **texture**
(plain, striped, dotted or checkered, with a period of 4-6 px: visible in a tight view, blurred away in a view
of the whole image) and a **size** (small, medium, large). The three tasks then need different views:

* category — the object itself (its outline);
* attributes (colour / texture / size) — fine detail of the object;
* caption — context: it names the object *and its nearest neighbour* with their relation
  (``"a large red striped circle left of a blue square"``), so a tight crop alone cannot produce it.

:func:`generate` writes, for each split, PNG images plus three annotation files in the official format
(:mod:`dynrefer.data.readers` reads them; :mod:`dynrefer.eval` scores against them):

* ``<split>_caption.json`` — ``caption`` and ``extra_info.parser_result`` (tags from the caption by
  :class:`~dynrefer.data.tags.TagExtractor` over the benchmark's own tag list: ``tag_set1`` the object's,
  ``tag_set2`` the neighbour's);
* ``<split>_category.json`` — COCO-style ``categories`` and ``category_id`` (and ``coco_result.category``);
* ``<split>_attribute.json`` — OVAD-style ``attributes`` (``id``, ``name`` = ``"type:value"``, ``type``,
  ``parent_type``, ``is_has_att``, ``freq_set``) and ``att_vec`` (1 / 0 / -1: a whole attribute type is left
  unlabelled for about one object in ten, as OVAD leaves some unlabelled);

and beside them the vocabularies: ``tags.txt``, ``classes.json`` (class names in category order),
``attributes.json``; and ``synthetic.json`` (the generation settings and file list). The same region ids are
used in all three files of a split. Everything is a deterministic function of the seed (each image draws from
its own stream ``SeedSequence([seed, split, index])``), so splits and images are reproducible independently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .convert import make_annotation
from .readers import write_json
from .tags import TagExtractor

__all__ = ["SHAPES", "COLORS", "TEXTURES", "SIZES", "ATTRIBUTES", "TAGS", "SceneObject", "render_scene",
           "generate", "DEFAULT_SPLITS"]

SHAPES = ("circle", "square", "triangle", "star", "ring", "hexagon")
COLORS = {   # name: (RGB, sampling weight)
    "red": ((220, 30, 30), 0.22), "blue": ((35, 70, 225), 0.20), "green": ((30, 165, 50), 0.18),
    "yellow": ((240, 215, 30), 0.12), "purple": ((140, 40, 180), 0.10), "orange": ((245, 135, 20), 0.08),
    "pink": ((250, 120, 185), 0.06), "cyan": ((30, 210, 220), 0.04),
}
TEXTURES = {"plain": 0.4, "striped": 0.25, "dotted": 0.2, "checkered": 0.15}
SIZES = {"small": (10, 16), "medium": (17, 26), "large": (27, 40)}    # radius range in pixels
_SIZE_WEIGHTS = (0.35, 0.4, 0.25)
_FREQ = {"red": "head", "blue": "head", "green": "head", "yellow": "medium", "purple": "medium",
         "orange": "tail", "pink": "tail", "cyan": "tail", "plain": "head", "striped": "medium",
         "dotted": "medium", "checkered": "tail", "small": "head", "medium": "head", "large": "medium"}


def _attribute_list() -> List[dict]:
    out: List[dict] = []
    for typ, values in (("color", COLORS), ("pattern", TEXTURES), ("size", SIZES)):
        for v in values:
            out.append({"id": len(out), "name": f"{typ}:{v}", "type": typ, "parent_type": typ,
                        "is_has_att": "is", "freq_set": _FREQ[v]})
    return out


ATTRIBUTES = _attribute_list()
#: The benchmark's tag vocabulary: what captions mention (shapes, colours, textures, size words).
TAGS = tuple(SHAPES) + tuple(COLORS) + ("striped", "dotted", "checkered", "small", "large")
DEFAULT_SPLITS = {"train": 48, "val": 12, "test": 12}
_TEXTURE_WORD = {"plain": "", "striped": "striped", "dotted": "dotted", "checkered": "checkered"}
_SIZE_WORD = {"small": "small", "medium": "", "large": "large"}


@dataclass
class SceneObject:
    shape: str
    color: str
    texture: str
    size: str
    center: Tuple[float, float]
    radius: float
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)     # tight xyxy (x2, y2 exclusive), set when drawn
    caption: str = ""

    def noun_phrase(self) -> str:
        words = [_SIZE_WORD[self.size], self.color, _TEXTURE_WORD[self.texture], self.shape]
        return " ".join(w for w in words if w)


# ---- drawing ----------------------------------------------------------------------------------------------------

def _polygon_radius(theta: np.ndarray, n: int, r_out: float, r_in: float, rot: float) -> np.ndarray:
    """Boundary radius of a star polygon (n points, outer r_out, inner r_in) along each angle; with
    r_in = r_out·cos(pi/n) it is the regular n-gon."""
    alpha = math.pi / n
    phi = np.mod(theta - rot, 2 * alpha)
    phi = np.where(phi > alpha, 2 * alpha - phi, phi)
    # the edge from (r_out, 0) to (r_in cos a, r_in sin a); ray t (cos phi, sin phi) meets it at t = n.p0 / n.d
    p1x, p1y = r_in * math.cos(alpha), r_in * math.sin(alpha)
    nx, ny = -(p1y - 0.0), (p1x - r_out)            # a normal of the edge
    num = nx * r_out
    den = nx * np.cos(phi) + ny * np.sin(phi)
    return num / den


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, rot: float) -> np.ndarray:
    d = np.hypot(dx, dy)
    if shape == "circle":
        return d <= r
    if shape == "ring":
        return (d <= r) & (d >= r * 0.55)
    theta = np.arctan2(dy, dx)
    if shape == "square":
        return d <= _polygon_radius(theta, 4, r, r * math.cos(math.pi / 4), rot + math.pi / 4)
    if shape == "triangle":
        return d <= _polygon_radius(theta, 3, r, r * 0.5, rot - math.pi / 2)
    if shape == "hexagon":
        return d <= _polygon_radius(theta, 6, r, r * math.cos(math.pi / 6), rot)
    if shape == "star":
        return d <= _polygon_radius(theta, 5, r, r * 0.45, rot - math.pi / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, xs: np.ndarray, ys: np.ndarray, period: int, angle: float) -> np.ndarray:
    if texture == "plain":
        return np.zeros(np.broadcast(xs, ys).shape, bool)
    if texture == "striped":
        u = xs * math.cos(angle) + ys * math.sin(angle)
        return np.mod(np.floor(u / (period / 2.0)), 2) == 1
    if texture == "dotted":
        fx = np.mod(xs, period) - period / 2.0 + 0.5
        fy = np.mod(ys, period) - period / 2.0 + 0.5
        return fx * fx + fy * fy <= (period * 0.3) ** 2
    if texture == "checkered":
        q = max(2, period // 2)
        return np.mod(np.floor(xs / q) + np.floor(ys / q), 2) == 1
    raise ValueError(f"unknown texture {texture!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(90, 200, size=3).astype(np.float32)
    gx, gy = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    base = base * 0.6 + 0.4 * base.mean()                       # muted colours: objects stand out
    gx, gy = gx * 0.6 + 0.4 * gx.mean(), gy * 0.6 + 0.4 * gy.mean()
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None]
    noise = rng.standard_normal(size=(h, w, 1), dtype=np.float32) * 6
    return (base + gx * xx + gy * yy) + noise


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def render_scene(rng: np.random.Generator, width: int, height: int,
                 num_objects: Tuple[int, int] = (3, 6)) -> Tuple[np.ndarray, List[SceneObject]]:
    """Draw one scene: ``(image [H, W, 3] uint8, objects)``; objects carry their tight box and caption."""
    img = _background(rng, height, width)
    n_target = int(rng.integers(num_objects[0], num_objects[1] + 1))
    color_names = list(COLORS)
    color_p = np.array([COLORS[c][1] for c in color_names])
    tex_names = list(TEXTURES)
    tex_p = np.array([TEXTURES[t] for t in tex_names])
    size_names = list(SIZES)
    objs: List[SceneObject] = []
    for _ in range(n_target):
        size = size_names[int(rng.choice(len(size_names), p=_SIZE_WEIGHTS))]
        lo, hi = SIZES[size]
        r = min(float(rng.uniform(lo, hi)), (min(width, height) - 6) / 2.0)  # small canvases: the object fits
        for _try in range(40):
            cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
            if all(math.hypot(cx - o.center[0], cy - o.center[1]) > r + o.radius + 6 for o in objs):
                break
        else:
            continue
        objs.append(SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=color_names[int(rng.choice(len(color_names), p=color_p / color_p.sum()))],
            texture=tex_names[int(rng.choice(len(tex_names), p=tex_p / tex_p.sum()))],
            size=size, center=(float(cx), float(cy)), radius=r))
    for o in objs:
        rot = float(rng.uniform(0, 2 * math.pi)) if o.shape not in ("circle", "ring") else 0.0
        period = int(rng.integers(4, 7))
        angle = float(rng.uniform(0, math.pi))
        cx, cy, r = o.center[0], o.center[1], o.radius
        x0, x1 = max(0, math.floor(cx - r - 1)), min(width, math.ceil(cx + r + 2))
        y0, y1 = max(0, math.floor(cy - r - 1)), min(height, math.ceil(cy + r + 2))
        xs = np.arange(x0, x1, dtype=np.float64)[None, :]
        ys = np.arange(y0, y1, dtype=np.float64)[:, None]
        m = _shape_mask(o.shape, xs + 0.5 - o.center[0], ys + 0.5 - o.center[1], o.radius, rot)
        t = _texture_mask(o.texture, xs - x0, ys - y0, period, angle) & m
        rgb = np.array(COLORS[o.color][0], dtype=np.float32)
        # the pattern: a darker shade of the object's colour (white on dark colours keeps it visible)
        alt = rgb * 0.35 if rgb.mean() > 110 else np.full(3, 245.0, np.float32)
        win = img[y0:y1, x0:x1]
        win[m] = rgb
        win[t] = alt
        rows, cols = np.nonzero(m)
        o.box = (x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1)
    for o in objs:
        others = [p for p in objs if p is not o]
        if others:
            nb = min(others, key=lambda p: math.hypot(p.center[0] - o.center[0], p.center[1] - o.center[1]))
            o.caption = f"a {o.noun_phrase()} {_relation(o, nb)} a {nb.color} {nb.shape}"
        else:
            o.caption = f"a {o.noun_phrase()}"
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objs


# ---- the benchmark on disk ----------------------------------------------------------------------------------------

def generate(out_dir: str, *, seed: int = 0, splits: Optional[Mapping[str, int]] = None,
             size_range: Tuple[int, int] = (224, 320), num_objects: Tuple[int, int] = (3, 6),
             unlabelled_rate: float = 0.1) -> Dict[str, Any]:
    """Write the benchmark to ``out_dir`` (see the module docstring); returns the manifest (also written to
    ``synthetic.json``) with the paths of every file. ``splits``: images per split (default
    :data:`DEFAULT_SPLITS`: 48 / 12 / 12 images, about 320 regions)."""
    from PIL import Image

    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name, n in splits.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"splits[{name!r}] must be a non-negative integer, got {n!r}")
    lo, hi = (int(v) for v in size_range)
    if not (64 <= lo <= hi):
        raise ValueError(f"size_range must be (lo, hi) with 64 <= lo <= hi, got {size_range!r}")
    if not (1 <= num_objects[0] <= num_objects[1]):
        raise ValueError(f"num_objects must be (lo, hi) with 1 <= lo <= hi, got {num_objects!r}")
    if not (0.0 <= unlabelled_rate < 1.0):
        raise ValueError(f"unlabelled_rate must be in [0, 1), got {unlabelled_rate!r}")

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    tagger = TagExtractor(TAGS)
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    cat_id = {s: k + 1 for k, s in enumerate(SHAPES)}
    attr_index = {a["name"]: a["id"] for a in ATTRIBUTES}
    types = {"color": [a["id"] for a in ATTRIBUTES if a["type"] == "color"],
             "pattern": [a["id"] for a in ATTRIBUTES if a["type"] == "pattern"],
             "size": [a["id"] for a in ATTRIBUTES if a["type"] == "size"]}

    with open(os.path.join(out_dir, "tags.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(TAGS) + "\n")
    write_json(os.path.join(out_dir, "classes.json"), list(SHAPES))
    write_json(os.path.join(out_dir, "attributes.json"), ATTRIBUTES, indent=1)

    manifest: Dict[str, Any] = {"seed": int(seed), "splits": splits, "size_range": [lo, hi],
                                   "num_objects": list(num_objects), "unlabelled_rate": unlabelled_rate,
                                   "tags": "tags.txt", "classes": "classes.json", "attributes": "attributes.json",
                                   "files": {}}
    dataset = {"image_root": "images", "tag_list": "tags.txt"}
    next_region = 1
    for s_idx, (split, n_images) in enumerate(splits.items()):
        images, cap_anns, cat_anns, att_anns = [], [], [], []
        for k in range(int(n_images)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), s_idx, k]))
            w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            img, objs = render_scene(rng, w, h, num_objects)
            image_id = s_idx * 1_000_000 + k + 1
            fn = f"{split}_{k:05d}.png"
            Image.fromarray(img).save(os.path.join(out_dir, "images", fn), compress_level=1)
            images.append({"id": image_id, "file_name": fn, "width": w, "height": h})
            for o in objs:
                rid = next_region
                next_region += 1
                box = o.box
                cap_anns.append(make_annotation(rid, image_id, box, o.caption, tagger=tagger))
                cat_anns.append(make_annotation(rid, image_id, box, o.shape, category_id=cat_id[o.shape],
                                                extra={"coco_result": {"category": o.shape}}))
                vec = np.zeros(len(ATTRIBUTES), dtype=np.int64)
                vec[attr_index[f"color:{o.color}"]] = 1
                vec[attr_index[f"pattern:{o.texture}"]] = 1
                vec[attr_index[f"size:{o.size}"]] = 1
                for ids in types.values():
                    if rng.random() < unlabelled_rate:
                        vec[ids] = -1
                a = make_annotation(rid, image_id, box, o.noun_phrase(), category_id=cat_id[o.shape],
                                    extra={"ovad_result": {"att_vec": vec.tolist()}})
                a["att_vec"] = vec.tolist()
                att_anns.append(a)
        files = {}
        for kind, anns, extra_top in (
                ("caption", cap_anns, {}),
                ("category", cat_anns, {"categories": categories}),
                ("attribute", att_anns, {"categories": categories, "attributes": ATTRIBUTES})):
            path = os.path.join(out_dir, f"{split}_{kind}.json")
            write_json(path, {"dataset": dict(dataset, name=f"synthetic_{split}_{kind}"), "images": images,
                              "annotations": anns, **extra_top})
            files[kind] = os.path.basename(path)
        manifest["files"][split] = files
    manifest["regions"] = next_region - 1
    with open(os.path.join(out_dir, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest
