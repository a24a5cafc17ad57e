"""CPU time of crop_resize's Pillow path on the shapes that stress its two passes, one thread.

    python benchmarks/bench_crop_resize.py [--repeats N] [--image PATH]

Reports the smallest process CPU time of N calls per case (CPU time, not wall time: it stays steady on a machine
shared with other jobs). Cases: 96 random view boxes of a COCO photo to 224 and to 32 (packed RGB, and the same
photo as RGBA: the gathered layout), a 2000 x 2000 crop to 8 and to 224 (horizontal pass first, 64-row blocks) and
a 300 x 2000 crop to 224 (vertical pass first, image rows combined in place).
"""
import argparse
import glob
import os
import sys
import time

import numpy as np
from PIL import Image

import dynrefer._C as C
from dynrefer.ops import crop_resize

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--image", default=None)
    args = ap.parse_args()
    found = sorted(glob.glob(os.path.join(HERE, "..", "..", "shared", "data", "images", "COCO_*.jpg")))
    if not args.image and not found:
        sys.exit("no image: pass --image PATH (the shared COCO photos are looked up in ../shared/data/images)")
    path = args.image or found[0]
    C.set_num_threads(1)
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = img.shape[:2]
    g = np.random.default_rng(0)
    xy = g.uniform(0, 1, (96, 2)) * [w * 0.8, h * 0.8]
    wh = g.uniform(0.05, 0.6, (96, 2)) * [w, h]
    b = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)
    big = np.random.default_rng(1).integers(0, 256, (2000, 2000, 3), np.uint8)
    tall = np.ascontiguousarray(big[:, :300])
    rgba = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], 2)
    whole = np.array([[0, 0, 2000, 2000]], np.float32)
    cases = {"photo, 96 views -> 224": (img, b, 224), "photo, 96 views -> 32": (img, b, 32),
             "RGBA photo, 96 views -> 224": (rgba, b, 224), "2000 x 2000 -> 8": (big, whole, 8),
             "2000 x 2000 -> 224": (big, whole, 224),
             "300 x 2000 -> 224 (vertical first)": (tall, np.array([[0, 0, 300, 2000]], np.float32), 224)}
    for name, (im, bb, size) in cases.items():
        crop_resize(im, bb, size)
        ts = []
        for _ in range(args.repeats):
            t = time.process_time()
            crop_resize(im, bb, size)
            ts.append(time.process_time() - t)
        print(f"{name:36s} {min(ts) * 1e3:8.2f} ms CPU")


if __name__ == "__main__":
    main()
