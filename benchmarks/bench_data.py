"""Data pipeline throughput: the annotation reader (vs pycocotools' COCO index on the same file), RLE decoding
(vs pycocotools.mask.decode), tag extraction, control words, the synthetic benchmark's generation, and
RegionDataset items through a DataLoader.

    python benchmarks/bench_data.py [--ovad ../shared/data/ovad/ovad2000.json.gz] [--workers 2]

All on CPU; times are medians of repeats after a warm-up (see _timing.py). The reader does more than
pycocotools' COCO() (it validates every field and builds typed records with boxes, categories and attribute
vectors), so the ratio is the price of that, not a like-for-like speed-up.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import bench, table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OVAD = os.path.join(os.path.dirname(ROOT), "shared", "data", "ovad", "ovad2000.json.gz")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ovad", default=DEFAULT_OVAD)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from dynrefer.data import TagExtractor, decode_rle, load_annotations, read_json, write_json
    from dynrefer.data.control import sample_control_words
    from dynrefer.data.synthetic import generate

    rows = []
    tmp = tempfile.mkdtemp(prefix="dynrefer_bench_data_")

    if os.path.isfile(args.ovad):
        plain = os.path.join(tmp, "ovad.json")
        write_json(plain, read_json(args.ovad))
        n = len(load_annotations(plain))
        t_ours = bench(lambda: load_annotations(plain), min_repeats=3, max_repeats=5, budget_s=10)
        try:
            import contextlib
            import io

            from pycocotools.coco import COCO

            def peer():
                with contextlib.redirect_stdout(io.StringIO()):
                    COCO(plain)
            t_peer = bench(peer, min_repeats=3, max_repeats=5, budget_s=10)
            peer_s, ratio = f"{t_peer * 1e3:.0f} ms", f"{t_peer / t_ours:.2f}x"
        except ImportError:
            peer_s, ratio = "-", "-"
        rows.append([f"read OVAD ({n} boxes, plain JSON)", "pycocotools COCO()", peer_s, f"{t_ours * 1e3:.0f} ms",
                     ratio])
    else:
        print(f"(OVAD file not found at {args.ovad}: reader row skipped)")

    rng = np.random.default_rng(0)
    mask = np.asfortranarray((rng.random((480, 640)) > 0.995).astype(np.uint8))
    mask[100:300, 200:500] = 1
    try:
        import pycocotools.mask as mu
        enc = mu.encode(mask)
        rle = {"size": enc["size"], "counts": enc["counts"].decode()}
        t_peer = bench(lambda: mu.decode(enc))
        t_ours = bench(lambda: decode_rle(rle))
        rows.append(["RLE decode 480x640 (compressed string)", "pycocotools mask.decode", f"{t_peer * 1e3:.2f} ms",
                     f"{t_ours * 1e3:.2f} ms", f"{t_peer / t_ours:.2f}x"])
    except ImportError:
        pass

    vocab_path = os.path.join(os.path.dirname(ROOT), "shared", "data", "vocab", "ram_tags.txt")
    if os.path.isfile(vocab_path):
        from dynrefer.data import load_tag_vocab
        vocab = load_tag_vocab(vocab_path)
    else:
        from dynrefer.data.synthetic import TAGS
        vocab = list(TAGS)
    t_build = bench(lambda: TagExtractor(vocab), min_repeats=3, budget_s=2)
    ex = TagExtractor(vocab)
    caps = ["a man in a red t-shirt riding a bicycle down the city street", "white clouds in the blue sky",
            "two dogs playing with a frisbee on the grass", "the glasses on the wooden table"] * 250
    t = bench(lambda: [ex.extract(c) for c in caps], min_repeats=3, budget_s=3)
    rows.append([f"TagExtractor build ({len(vocab)} tags)", "-", "-", f"{t_build * 1e3:.1f} ms", "-"])
    rows.append(["tag extraction, 1000 captions", "-", "-", f"{t * 1e3:.1f} ms ({len(caps) / t:.0f}/s)", "-"])
    words = [f"w{i}" for i in range(8)]
    g = np.random.default_rng(0)
    t = bench(lambda: [sample_control_words(words, g) for _ in range(1000)], min_repeats=3, budget_s=2)
    rows.append(["control sentences, 1000 regions", "-", "-", f"{t * 1e3:.1f} ms", "-"])

    out = os.path.join(tmp, "synthetic")
    t0 = time.perf_counter()
    m = generate(out, seed=0)
    t_gen = time.perf_counter() - t0
    rows.append([f"synthetic benchmark, default splits ({m['regions']} regions, PNG + JSON)", "-", "-",
                 f"{t_gen:.2f} s ({m['regions'] / t_gen:.0f} regions/s)", "-"])

    try:
        import torch

        from dynrefer.data.dataset import RegionDataset, collate_regions

        def views(image, boxes, rng=None):
            R = len(boxes)
            return {"views": np.zeros((R, 3, 3, 224, 224), np.float32), "boxes": np.zeros((R, 3, 4), np.float32),
                    "coeffs": np.zeros((R, 3), np.float32)}
        ds = RegionDataset(os.path.join(out, m["files"]["train"]["caption"]), views, training=True, seed=0)
        dl = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=args.workers, collate_fn=collate_regions)
        for _ in dl:      # warm (workers start, pages cached)
            break
        t0 = time.perf_counter()
        n = sum(len(b["text_output"]) for b in dl)
        t = time.perf_counter() - t0
        rows.append([f"RegionDataset + collate, {args.workers} workers (image decode, targets; 3x224 zero views)",
                     "-", "-", f"{n / t:.0f} regions/s", "-"])
        try:
            from dynrefer.data.dataset import nested_views
            for training in (True, False):
                ds = RegionDataset(os.path.join(out, m["files"]["train"]["caption"]), nested_views(training),
                                   training=training, seed=0)
                dl = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=args.workers,
                                                 collate_fn=collate_regions)
                for _ in dl:
                    break
                t0 = time.perf_counter()
                n = sum(len(b["text_output"]) for b in dl)
                t = time.perf_counter() - t0
                prior = "stochastic" if training else "image (pHash search)"
                rows.append([f"RegionDataset + NestedViews(3x224, {prior}), {args.workers} workers", "-", "-",
                             f"{n / t:.0f} regions/s", "-"])
        except ImportError:
            pass
    except ImportError:
        pass

    print(table(rows, ["what", "peer", "peer time", "dynrefer", "peer/dynrefer"]))


if __name__ == "__main__":
    main()
