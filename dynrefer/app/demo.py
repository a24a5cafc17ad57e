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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dynrefer.app.bundle import read_vocab, save_bundle
from dynrefer.app.schemes import evaluate_scheme, train_scheme

__all__ = ["SCHEMES", "run_demo", "markdown_table", "summarize"]

# name, training views (NestedViews keyword arguments), inference schemes [(prior label, kwargs)]
SCHEMES: List[Tuple[str, Dict[str, Any], List[Tuple[str, Dict[str, Any]]]]] = [
    ("cropped region", dict(prior="fixed", fixed_coeffs=(0.0,)), [("—", dict(prior="fixed", fixed_coeffs=(0.0,)))]),
    ("single view + RoI-Align", dict(prior="fixed", fixed_coeffs=(1.0,)),
     [("—", dict(prior="fixed", fixed_coeffs=(1.0,)))]),
    ("fixed 2 views (t = 0, 1)", dict(prior="fixed", fixed_coeffs=(0.0, 1.0)),
     [("—", dict(prior="fixed", fixed_coeffs=(0.0, 1.0)))]),
    ("stochastic 3 views", dict(prior="stochastic", num_views=3),
     [("none", dict(prior="none", num_views=3)), ("image", dict(prior="image", num_views=3)),
      ("task", dict(prior="task", num_views=3))]),
]


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[Any]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _log(msg: str) -> None:
    print(msg, flush=True)


def _job(args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """Train one view scheme with one seed and evaluate it under each of its inference priors (in a worker
    process: one torch thread, one kernel thread, so that jobs side by side do not compete)."""
    import torch

    import dynrefer
    from dynrefer.model import DynReferConfig

    name, train_views, evals, seed, data_dir, run_dir, epochs, vocab, keep = args
    torch.set_num_threads(1)
    dynrefer.set_num_threads(1)
    texts, tags, classes, attributes = vocab
    n = len(train_views.get("fixed_coeffs", ())) or train_views.get("num_views", 3)
    cfg = DynReferConfig.from_preset("tiny", num_views=n)
    t0 = time.time()
    model, summary = train_scheme(cfg, data_dir, run_dir, train_views, texts, tags, classes, attributes, epochs,
                                  seed, batch_size=16, preset="tiny",
                                  run_extra={"console": False, "tensorboard": False, "plot": False})
    metrics = {}
    for prior, ev in evals:
        m, _ = evaluate_scheme(model, data_dir, "val", ev, cfg.vision.image_size, seed=seed)
        metrics[prior] = m
    if keep:
        save_bundle(model, keep, texts, tags, classes, attributes, {"num_views": n, "size": cfg.vision.image_size})
    return name, seed, n, metrics, summary["step"], time.time() - t0, (summary.get("last_train") or {}).get("loss")


def summarize(results: Any, seeds: Sequence[int]) -> Tuple[List[List[str]], List[str]]:
    """Rows of mean ± standard deviation over the seeds, and the pairs of rows whose CIDEr, attribute mAP or
    accuracy differ by more than twice the standard error of the difference (the rest is within the seeds'
    spread)."""
    import numpy as np

    rows: List[List[str]] = []
    stats: List[Dict[str, Any]] = []
    for name, _, evals in SCHEMES:
        views = results[(name, seeds[0])]["views"]
        for prior, _ in evals:
            vals = [results[(name, s)][prior] for s in seeds]
            rec: Dict[str, Any] = {"scheme": name, "prior": prior}
            cells = []
            for key in ("CIDEr", "attr_mAP", "acc"):
                x = np.array([v[key] for v in vals], dtype=np.float64)
                mean, sd = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
                rec[key] = (mean, sd, len(x))
                cells.append(f"{mean:.1f} ± {sd:.1f}" if len(x) > 1 else f"{mean:.1f}")
            rows.append([name, str(views), prior] + cells)
            stats.append(rec)
    findings = []
    for key, label in (("CIDEr", "CIDEr"), ("attr_mAP", "attribute mAP"), ("acc", "accuracy")):
        for i in range(len(stats)):
            for j in range(i + 1, len(stats)):
                (mi, si, n_i), (mj, sj, n_j) = stats[i][key], stats[j][key]
                se = (si * si / n_i + sj * sj / n_j) ** 0.5
                if n_i > 1 and abs(mi - mj) > 2 * se and abs(mi - mj) > 0.05:
                    hi, lo = (stats[i], stats[j]) if mi > mj else (stats[j], stats[i])
                    findings.append(f"{label}: {hi['scheme']} ({hi['prior']}) > {lo['scheme']} ({lo['prior']}) by "
                                    f"{abs(mi - mj):.1f} (2 standard errors: {2 * se:.1f})")
    return rows, findings


def run_demo(out: str = "dynrefer-demo", *, quick: bool = False, seed: int = 0, epochs: Optional[int] = None,
             log: Callable[[str], None] = _log, threads: Optional[int] = 1, seeds: int = 3,
             jobs: Optional[int] = None) -> List[List[str]]:
    """Run the miniature Table 7: every view scheme trained with ``seeds`` seeds (``seed``, ``seed`` + 1, ...) on
    the same data, evaluated under each inference prior; prints and writes ``table7.md`` (mean ± standard deviation
    over the seeds, and which differences exceed their spread) and ``model.pt`` (the stochastic model of the first
    seed). ``jobs`` trainings run side by side in worker processes (default: one per CPU, at most 4); ``threads``:
    torch threads of a job run in this process (``jobs=1``). Returns the rows."""
    import torch

    t_start = time.time()
    data_dir = os.path.join(out, "data")
    splits = {"train": 16, "val": 6} if quick else {"train": 96, "val": 32}
    epochs = epochs or (6 if quick else 24)
    seed_list = list(range(seed, seed + max(1, int(seeds))))
    if jobs is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        jobs = max(1, min(4, cpus))
    # the tiny model's ops are too small to split across threads: one torch thread per job is fastest
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(out, data_dir, splits, epochs, seed, seed_list, jobs, log, t_start)
    finally:
        torch.set_num_threads(prev_threads)


def _run(out: str, data_dir: str, splits: Dict[str, int], epochs: int, seed: int, seeds: List[int], jobs: int,
         log: Callable[[str], None], t_start: float) -> List[List[str]]:
    from dynrefer.data.readers import load_annotations
    from dynrefer.data.synthetic import generate

    log(f"== synthetic benchmark → {data_dir} (seed {seed}, {splits})")
    generate(data_dir, seed=seed, splits=splits)
    tags, classes, attributes = read_vocab(data_dir)
    texts = [r.caption for r in load_annotations(os.path.join(data_dir, "train_caption.json")).records if r.caption]
    log(f"   {len(texts)} training regions, {len(classes)} categories, {len(attributes)} attributes, "
        f"{len(tags)} tags")
    vocab = (texts, tags, classes, attributes)
    bundle = os.path.join(out, "model.pt")
    work = []
    for name, train_views, evals in SCHEMES:
        n = len(train_views.get("fixed_coeffs", ())) or train_views.get("num_views", 3)
        for s in seeds:
            keep = bundle if (train_views.get("prior") == "stochastic" and s == seeds[0]) else None
            run_dir = os.path.join(out, "runs", f"{name.split()[0]}_{n}_seed{s}")
            work.append((name, train_views, evals, s, data_dir, run_dir, epochs, vocab, keep))
    log(f"== {len(SCHEMES)} view schemes x {len(seeds)} seeds ({', '.join(map(str, seeds))}), {epochs} epochs each, "
        f"{jobs} at a time")
    results: Dict[Tuple[str, int], Dict[str, Any]] = {}

    def record(res: Tuple[Any, ...]) -> None:
        name, s, n, metrics, steps, secs, loss = res
        results[(name, s)] = {"views": n, **metrics}
        scores = "; ".join(f"{p}: CIDEr {m['CIDEr']:.1f}, mAP {m['attr_mAP']:.1f}, acc {m['acc']:.1f}"
                           for p, m in metrics.items())
        log(f"   {name}, seed {s}: {steps} steps in {secs:.0f} s, last loss "
            f"{'-' if loss is None else round(loss, 3)} | {scores}")

    if jobs <= 1:
        for w in work:
            record(_job(w))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            for res in pool.imap_unordered(_job, work):
                record(res)
    rows, findings = summarize(results, seeds)
    header = ["view scheme", "views", "inference prior", "CIDEr", "attribute mAP", "accuracy"]
    table = markdown_table(rows, header)
    spread = ("\n".join(f"- {f}" for f in findings) if findings else
              "- no difference between rows exceeds twice its standard error")
    text = (f"Miniature Table 7 (synthetic benchmark, tiny DynRefer, {epochs} epochs; mean ± standard deviation over "
            f"seeds {', '.join(map(str, seeds))})\n\n{table}\n\nDifferences larger than twice their standard "
            f"error:\n{spread}\n")
    with open(os.path.join(out, "table7.md"), "w", encoding="utf-8") as f:
        f.write(text)
    log("")
    log(f"Miniature Table 7 — synthetic benchmark, tiny DynRefer, validation split, {len(seeds)} seeds "
        f"({time.time() - t_start:.0f} s)")
    log(table)
    log("\nDifferences larger than twice their standard error:\n" + spread)
    log(f"\nmodel bundle: {bundle}  (try: dynrefer describe IMAGE --box x1,y1,x2,y2 --checkpoint {bundle})")
    return rows
