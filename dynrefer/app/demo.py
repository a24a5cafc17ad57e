"""The built-in main job: a miniature of the paper's Table 7 on the synthetic benchmark, from real runs.

    dynrefer demo [--out DIR] [--quick] [--seed S] [--epochs E]

1. Generate the synthetic benchmark (``dynrefer.data.synthetic``): scenes of textured, coloured shapes whose
   captions name a neighbour ("a red striped circle left of a blue square"), so captions need context, attributes
   need fine detail and categories need the object.
2. Train the tiny DynRefer once per view scheme of Table 7 with the training engine (``dynrefer.train``):
   the cropped region alone (one view, t = 0); the whole image with RoI-Align of the region (one view, t = 1); a fixed
   pair (t = 0, 1); and stochastic nested views (the tight view + 2 random candidates per region and step).
3. Evaluate on the validation split: region-caption CIDEr, attribute mAP (OVAD protocol) and category accuracy;
   the stochastic model once per inference prior (none = random views, image = pHash search, task = the paper's
   per-task table).
4. Print the table and keep the stochastic model as a bundle (``model.pt``) that ``dynrefer describe`` loads.

Everything is local: no download, no GPU needed, ~6 minutes on 2 CPU cores (``--quick``: ~1 minute).
"""
from __future__ import annotations

import os
import time

from dynrefer.app.bundle import read_vocab, save_bundle
from dynrefer.app.schemes import evaluate_scheme, train_scheme

__all__ = ["SCHEMES", "run_demo", "markdown_table"]

# name, training views (NestedViews keyword arguments), inference schemes [(prior label, kwargs)]
SCHEMES = [
    ("cropped region", dict(prior="fixed", fixed_coeffs=(0.0,)), [("—", dict(prior="fixed", fixed_coeffs=(0.0,)))]),
    ("single view + RoI-Align", dict(prior="fixed", fixed_coeffs=(1.0,)),
     [("—", dict(prior="fixed", fixed_coeffs=(1.0,)))]),
    ("fixed 2 views (t = 0, 1)", dict(prior="fixed", fixed_coeffs=(0.0, 1.0)),
     [("—", dict(prior="fixed", fixed_coeffs=(0.0, 1.0)))]),
    ("stochastic 3 views", dict(prior="stochastic", num_views=3),
     [("none", dict(prior="none", num_views=3)), ("image", dict(prior="image", num_views=3)),
      ("task", dict(prior="task", num_views=3))]),
]


def markdown_table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _log(msg):
    print(msg, flush=True)


def run_demo(out="dynrefer-demo", *, quick=False, seed=0, epochs=None, log=_log, threads=1):
    """Run the miniature Table 7; returns the rows and writes ``table7.md`` and ``model.pt`` under ``out``."""
    import torch

    t_start = time.time()
    data_dir = os.path.join(out, "data")
    splits = {"train": 16, "val": 6} if quick else {"train": 96, "val": 32}
    epochs = epochs or (6 if quick else 24)
    # the tiny model's ops are too small to split across threads: one torch thread is several times faster than
    # two on a 2-core machine (the C kernels keep their own pool for the views)
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(out, data_dir, splits, epochs, seed, log, t_start)
    finally:
        torch.set_num_threads(prev_threads)


def _run(out, data_dir, splits, epochs, seed, log, t_start):
    from dynrefer.data.readers import load_annotations
    from dynrefer.data.synthetic import generate
    from dynrefer.model import DynReferConfig

    log(f"== synthetic benchmark → {data_dir} (seed {seed}, {splits})")
    generate(data_dir, seed=seed, splits=splits)
    tags, classes, attributes = read_vocab(data_dir)
    texts = [r.caption for r in load_annotations(os.path.join(data_dir, "train_caption.json")).records if r.caption]
    log(f"   {len(texts)} training regions, {len(classes)} categories, {len(attributes)} attributes, "
        f"{len(tags)} tags")
    rows = []
    final_model = None
    for name, train_views, evals in SCHEMES:
        n = len(train_views.get("fixed_coeffs", ())) or train_views.get("num_views", 3)
        cfg = DynReferConfig.from_preset("tiny", num_views=n)
        t0 = time.time()
        log(f"== train: {name} ({n} view{'s' if n > 1 else ''}, {epochs} epochs)")
        model, summary = train_scheme(cfg, data_dir, os.path.join(out, "runs", name.split()[0] + f"_{n}"),
                                      train_views, texts, tags, classes, attributes, epochs, seed,
                                      batch_size=16, preset="tiny", run_extra={"console": False})
        loss = summary.get("last_train", {}).get("loss")
        log(f"   {summary['step']} steps in {time.time() - t0:.0f} s, last loss {loss if loss is None else round(loss, 3)}")
        for prior, ev in evals:
            m, _ = evaluate_scheme(model, data_dir, "val", ev, cfg.vision.image_size, seed=seed)
            rows.append([name, str(n), prior, f"{m['CIDEr']:.1f}", f"{m['attr_mAP']:.1f}", f"{m['acc']:.1f}"])
            log(f"   prior {prior}: CIDEr {m['CIDEr']:.1f}  attribute mAP {m['attr_mAP']:.1f}  "
                f"accuracy {m['acc']:.1f}")
        final_model = model
    bundle = save_bundle(final_model, os.path.join(out, "model.pt"), texts, tags, classes, attributes,
                         {"num_views": 3, "size": final_model.config.vision.image_size})
    header = ["view scheme", "views", "inference prior", "CIDEr", "attribute mAP", "accuracy"]
    table = markdown_table(rows, header)
    with open(os.path.join(out, "table7.md"), "w", encoding="utf-8") as f:
        f.write(f"Miniature Table 7 (synthetic benchmark, seed {seed}, tiny DynRefer, {epochs} epochs)\n\n")
        f.write(table + "\n")
    log("")
    log(f"Miniature Table 7 — synthetic benchmark, tiny DynRefer, validation split ({time.time() - t_start:.0f} s)")
    log(table)
    log(f"\nmodel bundle: {bundle}  (try: dynrefer describe IMAGE --box x1,y1,x2,y2 --checkpoint {bundle})")
    return rows
