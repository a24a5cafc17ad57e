"""Describe regions of your own image with a trained DynRefer bundle.

    dynrefer demo                                  # once: trains the tiny model, writes dynrefer-demo/model.pt
    python examples/describe_your_image.py IMAGE x1,y1,x2,y2 [x1,y1,x2,y2 ...] [--checkpoint PATH]

Prints one line per region (category, attributes, tags, caption, chosen view coefficients) and writes a PNG per
region with the nested views the image prior chose and the answers with their scores. The same as `dynrefer
describe`, written out with the API.
"""
import argparse

import numpy as np
from PIL import Image

from dynrefer.app.bundle import build_bundle_model, load_bundle
from dynrefer.app.describe import answer_labels
from dynrefer.model import format_descriptions
from dynrefer.views import NestedViews, plot_views


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("boxes", nargs="+", help="x1,y1,x2,y2")
    ap.add_argument("--checkpoint", default="dynrefer-demo/model.pt")
    args = ap.parse_args()
    img = np.asarray(Image.open(args.image).convert("RGB"))
    boxes = np.array([[float(v) for v in b.split(",")] for b in args.boxes], np.float32)
    model = build_bundle_model(load_bundle(args.checkpoint))
    # which views the image prior picks (the model's describe() makes the same choice internally)
    views = NestedViews(size=model.config.vision.image_size, num_views=model.config.num_views, prior="image")
    coeffs = views.choose(img, boxes)
    results = model.describe(img, boxes, prior="image", seed=0)
    print(format_descriptions(results))
    for k, (box, r) in enumerate(zip(boxes, results)):
        # a PIL image (shown inline in a notebook); path= also writes it
        plot_views(img, box, path=f"region_{k}.png", chosen=coeffs[k], labels=answer_labels(r))
        print("wrote", f"region_{k}.png")


if __name__ == "__main__":
    main()
