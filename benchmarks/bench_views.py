"""Nested views: the official per-region data pipeline vs dynrefer, in one process on the same photo and regions.

    python benchmarks/bench_views.py [--device cpu|cuda] [--quick] [--image PATH] [--regions N]

(a) the evaluation-time processor for R regions of one COCO photo: pHash (OpenCV gray, resize, DCT) of the tight
    view and 10 candidates per region, the greedy Eq. 1 selection, then PIL crop + torchvision v2 Resize (bicubic)
    + ToImage + ConvertImageDtype + Normalize of the 3 chosen views with their boxes — written as the official
    processor does it, per region and per view — vs ``NestedViews(prior="image")``, which does the same work as
    three batched kernel calls;
(b) ``imagehash.phash`` on PIL crops of the same 11·R view boxes vs ``dynrefer.ops.phash(method="imagehash")``.
Both sides produce the same results (tests/test_views.py). Prints one table with the ratio official / dynrefer.
"""
import argparse
import glob
import os
import sys

# Neither side calls BLAS; numpy's OpenBLAS threads would only spin after its first call and take the cores from
# whichever side runs next.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench, fmt_ms, table  # noqa: E402

from dynrefer.ops import phash  # noqa: E402
from dynrefer.ops.views import CLIP_MEAN, CLIP_STD  # noqa: E402
from dynrefer.views import CANDIDATES, NestedViews, view_boxes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def default_image():
    files = sorted(glob.glob(os.path.join(HERE, "..", "..", "shared", "data", "images", "COCO_*.jpg")))
    if not files:
        sys.exit("no image: pass --image PATH (the shared COCO photos are looked up in ../shared/data/images)")
    return files[0]


def regions_of(w, h, n, seed=0):
    g = np.random.default_rng(seed)
    xy = g.uniform(0, 1, (n, 2)) * [w * 0.8, h * 0.8]
    wh = g.uniform(0.05, 0.4, (n, 2)) * [w, h]
    b = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
    return b.astype(np.float32)


class OfficialProcessor:
    """The official evaluation-time processor, step for step (select_regions + cascade_region_process)."""

    def __init__(self, size=224, num_views=3, split="eval"):
        import torchvision.transforms.v2 as T
        from torchvision.transforms.functional import InterpolationMode

        self.tf = T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC), T.ToImage(),
                             T.ConvertImageDtype(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        self.num_views = num_views
        self.split = split

    @staticmethod
    def phash(image_arr, bbox, res=224):
        import cv2

        x1, y1, x2, y2 = bbox.astype(np.int64)
        region = cv2.dct(cv2.resize(image_arr[y1:y2, x1:x2], (res, res)))[0:8, 0:8]
        bar = region.mean()
        return np.array([1 if p > bar else 0 for p in region.ravel()], dtype=np.int8)

    def select_regions(self, image, org_bboxes):
        import cv2

        image_arr = cv2.cvtColor(np.array(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
        w, h = image.size
        oowh = np.array([0, 0, w, h]).astype(np.float32)
        basic = [np.array(b).astype(np.float32) for b in org_bboxes]
        basic_codes = [self.phash(image_arr, b) for b in basic]
        weights = [(i + 1) / 10 for i in range(10)]
        sel_boxes, sel_ratios = [], []
        for i, b in enumerate(basic):
            cand = [b + (oowh - b) * t for t in weights]
            codes = np.stack([self.phash(image_arr, c) for c in cand])
            if self.split == "train":  # random candidates; the official code hashes them all the same
                import random

                idx = random.sample(range(10), self.num_views - 1)
                sel_boxes.append(np.array(cand)[idx])
                sel_ratios.append(list(np.array(weights)[idx]))
                continue
            diff = np.zeros(10) + (basic_codes[i][None] ^ codes).sum(-1) / np.array(weights)
            ind_list = []
            boxes, ratios = [], []
            for _ in range(self.num_views - 1):
                ind = diff.argmax()
                ind_list.append(ind)
                ratios.append(weights[ind])
                boxes.append(cand[ind])
                diff[np.array(ind_list).astype(np.int64)] = 0
            sel_boxes.append(np.array(boxes))
            sel_ratios.append(ratios)
        cascade = np.concatenate([np.array(basic)[None], np.array(sel_boxes).transpose(1, 0, 2)], 0)
        return cascade, sel_ratios

    def cascade_region_process(self, image, cascade_bboxes):
        import torch
        from PIL import Image
        from torchvision import tv_tensors

        w, h = image.size
        cb = torch.from_numpy(cascade_bboxes)
        cb[..., 0] = cb[..., 0].clip(min=0, max=w)
        cb[..., 1] = cb[..., 1].clip(min=0, max=h)
        cb[..., 2] = cb[..., 2].clip(min=0, max=w)
        cb[..., 3] = cb[..., 3].clip(min=0, max=h)
        cb = cb.to(torch.int64)
        target_bboxes = cb[0]
        out_images, out_boxes = [], []
        for bboxes in cb:
            imgs, bxs = [], []
            for bbox, target in zip(bboxes, target_bboxes):
                x1, y1, x2, y2 = bbox
                region = Image.fromarray(np.array(image)[y1:y2, x1:x2])
                wr, hr = region.size
                rb = target - torch.LongTensor([x1, y1, x1, y1])
                t = {"boxes": tv_tensors.BoundingBoxes(rb[None], format="XYXY", canvas_size=(hr, wr))}
                v, t = self.tf(region, t)
                imgs.append(v)
                bxs.append(t["boxes"].data.to(torch.float32)[0])
            out_images.append(torch.stack(imgs, 0))
            out_boxes.append(torch.stack(bxs, 0))
        return torch.stack(out_images, 0), torch.stack(out_boxes, 0)

    def __call__(self, image, boxes):
        cascade, ratios = self.select_regions(image, boxes)
        return self.cascade_region_process(image, cascade)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--image", default=None)
    ap.add_argument("--regions", type=int, default=32)
    args = ap.parse_args()
    import imagehash
    import torch
    from PIL import Image

    pil = Image.open(args.image or default_image()).convert("RGB")
    arr = np.asarray(pil)
    w, h = pil.size
    n = 8 if args.quick else args.regions
    boxes = regions_of(w, h, n)
    budget = 1.0 if args.quick else 3.0
    rows = []

    official = OfficialProcessor()
    nv = NestedViews(prior="image")
    img_dev = arr if args.device == "cpu" else torch.from_numpy(arr).to(args.device)
    t_off = bench(lambda: official(pil, boxes), min_repeats=2, max_repeats=5, budget_s=budget)
    t_our = bench(lambda: nv(img_dev, boxes), device=args.device, budget_s=budget)
    rows.append([f"(a) processor, {n} regions x 3 views ({w}x{h})", fmt_ms(t_off), fmt_ms(t_our), f"{t_off / t_our:.1f}x"])

    vb = view_boxes(boxes, (0.0,) + CANDIDATES, w, h).reshape(-1, 4)
    crops = vb.astype(np.int64)

    def ih():
        return [str(imagehash.phash(Image.fromarray(arr[y1:y2, x1:x2]))) for x1, y1, x2, y2 in crops]

    vb_dev = vb if args.device == "cpu" else torch.from_numpy(vb).to(args.device)
    t_ih = bench(ih, min_repeats=2, max_repeats=5, budget_s=budget)
    t_our_ih = bench(lambda: phash(img_dev, vb_dev, method="imagehash"), device=args.device, budget_s=budget)
    rows.append([f"(b) imagehash pHash, {len(vb)} views", fmt_ms(t_ih), fmt_ms(t_our_ih), f"{t_ih / t_our_ih:.1f}x"])
    t_dyn = bench(lambda: phash(img_dev, vb_dev, method="dynrefer"), device=args.device, budget_s=budget)
    import cv2

    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY).astype(np.float32)
    t_off_h = bench(lambda: [OfficialProcessor.phash(gray, b) for b in vb], min_repeats=2, max_repeats=5, budget_s=budget)
    rows.append([f"    official pHash (OpenCV), {len(vb)} views", fmt_ms(t_off_h), fmt_ms(t_dyn), f"{t_off_h / t_dyn:.1f}x"])
    import dynrefer

    print(f"device {args.device}, dynrefer threads {dynrefer.get_num_threads()}")
    print(table(rows, ["case", "official / peer", "dynrefer", "ratio"]))


if __name__ == "__main__":
    main()
