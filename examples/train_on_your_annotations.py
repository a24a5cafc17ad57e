"""Train DynRefer on your own regions.

    python examples/train_on_your_annotations.py annotations.json images/ OUT_DIR

`annotations.json` is COCO-style: {"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id",
"image_id", "bbox": [x, y, w, h], "caption": "..."}]}. The script converts it to the official format (tags parsed
from the captions with the built-in rules, the vocabulary taken from your captions), writes the files
`dynrefer train` reads, trains the tiny model and saves a bundle that `dynrefer describe --checkpoint` loads. For a
bigger model pass --preset medium (or official, with local EVA / BLIP-2 / FlanT5 weights).
"""
import argparse
import json
import os
import shutil

from dynrefer.data.readers import write_json
from dynrefer.data.convert import make_annotation
from dynrefer.data.tags import TagExtractor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("annotations")
    ap.add_argument("images")
    ap.add_argument("out")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    src = json.load(open(args.annotations, encoding="utf-8"))
    data = os.path.join(args.out, "data")
    os.makedirs(os.path.join(data, "images"), exist_ok=True)
    for im in src["images"]:
        shutil.copy(os.path.join(args.images, im["file_name"]), os.path.join(data, "images", im["file_name"]))
    words = sorted({w for a in src["annotations"] for w in a["caption"].lower().replace(",", " ").split() if w.isalpha()
                    and len(w) > 2})
    tagger = TagExtractor(words)
    anns = []
    for a in src["annotations"]:
        x, y, w, h = a["bbox"]
        anns.append(make_annotation(a["id"], a["image_id"], (x, y, x + w, y + h), a["caption"], tagger=tagger))
    write_json(os.path.join(data, "train_caption.json"),
               {"dataset": {"name": "mine", "image_root": "images", "tag_list": "tags.txt"}, "images": src["images"],
                "annotations": anns})
    with open(os.path.join(data, "tags.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    write_json(os.path.join(data, "classes.json"), [])
    write_json(os.path.join(data, "attributes.json"), [])
    cfg = os.path.join(args.out, "train.yaml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(f"model:\n  preset: {args.preset}\n  views:\n    prior: stochastic\n"
                f"datasets:\n  root: {data}\nrun:\n  output_dir: {os.path.join(args.out, 'run')}\n"
                f"  max_epoch: {args.epochs}\n  batch_size_train: {min(16, len(anns))}\n")
    from dynrefer.cli import main as cli

    raise SystemExit(cli(["train", cfg]))


if __name__ == "__main__":
    main()
