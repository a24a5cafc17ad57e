"""dynrefer.train: a model-agnostic training engine (LAVIS config layout; one process, torchrun/DDP, CPU or GPU).

Entry point (what ``dynrefer train CONFIG`` calls)::

    from dynrefer.train import load_config, run_training

    cfg = load_config("train.yaml", ["run.max_epoch=2", "run.output_dir=out/vg"])
    summary = run_training(cfg, build_model, build_datasets, evaluate=None)

``run_training(cfg, build_model, build_datasets, evaluate=None) -> dict``

* ``cfg``: a ``Config`` (from ``load_config``), a YAML path, or a dict with ``model`` / ``datasets`` / ``run``
  sections (a file may list ``base:`` files to merge first, as the official DynRefer configs do; the official
  run files load unchanged). ``run`` keys and defaults: ``dynrefer.train.config.RUN_SCHEMA`` (LAVIS names: ``init_lr``,
  ``min_lr``, ``warmup_lr``, ``warmup_steps``, ``weight_decay``, ``max_epoch``, ``batch_size_train``,
  ``accum_grad_iters``, ``amp``, ``seed``, ``output_dir``, ``resume_ckpt_path``, ``train_splits``,
  ``valid_splits``, ``test_splits``, ``evaluate``, ...).
* ``build_model(cfg) -> torch.nn.Module`` whose ``forward(samples: dict)`` returns ``{"loss": scalar tensor,
  ...}``; other scalar entries (loss terms) are averaged and logged. Only parameters with ``requires_grad`` are
  optimised and (by default) checkpointed.
* ``build_datasets(cfg) -> {split: Dataset}``: map-style datasets. The collate function is the dataset's
  ``collater`` (LAVIS) or ``collate_fn`` attribute, else PyTorch's default collate.
* ``evaluate(model, split) -> dict`` (optional): called on every rank, in eval mode under ``torch.no_grad``,
  after each epoch for ``run.valid_splits`` and at the end for ``run.test_splits`` (with the best checkpoint's
  weights when ``run.best_metric`` is set); rank 0's result is logged. ``run.best_metric`` (``"split/key"``)
  selects ``checkpoint_best.pt``.

Returns a summary dict: ``output_dir``, ``world_size``, ``device``, ``amp``, ``step``, ``epoch``,
``total_steps``, ``interrupted``, ``eval`` (split -> metrics), ``best``, ``last_train`` (the last JSONL
training record), ``checkpoint``.

Outputs in ``run.output_dir`` (rank 0 writes, every file atomically): ``config.yaml`` (resolved config),
``metrics.jsonl`` (one record per ``run.log_freq`` steps: loss terms, ``lr``, ``grad_norm``,
``samples_per_s``, ``steps_per_s``, ``mem_mb``; one per evaluation), ``latest.pt``, ``checkpoint_{epoch}.pt``,
``checkpoint_best.pt``.

Semantics:

* Optimiser: AdamW (beta2 0.999, weight decay 0.05 except biases, norms and 1-D parameters); learning rate set
  per optimiser step: linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine to ``min_lr``.
  ``accum_grad_iters`` micro-batches per step (the last step of an epoch may average fewer), ``max_grad_norm``
  clipping, ``amp``: ``bf16`` autocast (CPU or GPU) or ``fp16`` autocast + GradScaler (GPU).
* Seeds: python/NumPy/torch seeded with ``seed + rank`` before the model is built; the data order is a function of
  ``(seed, epoch)``; each sample's random augmentation a function of ``(seed, epoch, index)``.
* ``run.load_ckpt_path``: model weights to start from (fine-tuning, or the weights to evaluate with
  ``run.evaluate``); trainable tensors it lacks keep their initialisation (logged).
* Resume (``run.resume_ckpt_path``: a path, or ``auto`` for ``output_dir/latest.pt``): model, optimiser,
  schedule position, scaler, every rank's RNG states and the sampler position are restored, and training
  continues mid-epoch from the next micro-batch: the per-step losses equal (bitwise on the CPU) those of an
  uninterrupted run. ``run.stop_after_steps`` ends an invocation early (after a checkpoint); a signal in
  ``run.stop_signals`` (default SIGTERM, SIGUSR1: a scheduler's preemption notice) makes the run write
  ``latest.pt`` at the end of the current step (every 10th step when distributed, all ranks together) and
  return with ``interrupted: True``.
* Distributed: launched by ``torchrun`` (env://, NCCL on GPUs, gloo on the CPU) or inside an already initialised
  process group; DistributedSampler-equivalent sharding (global batch = world size x ``batch_size_train``),
  DDP, rank-0 logging and checkpoints, metrics averaged over ranks, barriers around checkpoints.
"""
from __future__ import annotations

from typing import Any

from dynrefer.train.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "run_training", "Runner"]


def __getattr__(name: str) -> Any:
    # the runner imports torch; the config alone does not
    if name in ("run_training", "Runner"):
        from dynrefer.train import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'dynrefer.train' has no attribute {name!r}")
