"""The training loop: one process or many (torchrun / DDP), resumable to the iteration."""
from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import random
import time
from typing import Any, Callable, ContextManager, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader
from torch.utils.data._utils.collate import default_collate

from dynrefer.train import checkpoint as ckpt_mod
from dynrefer.train.config import Config, load_config
from dynrefer.train.data import ResumableBatchSampler, SeededDataset
from dynrefer.train.dist import all_gather_object, all_reduce_sum, barrier, setup_distributed
from dynrefer.train.metrics import Console, MetricsWriter, TensorBoard, logger, plot_metrics, progress_bar
from dynrefer.train.optim import LinearWarmupCosineLR, build_optimizer

__all__ = ["Runner", "run_training", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed python, NumPy (global) and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(obj: Any, device: Union[torch.device, str], non_blocking: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device, non_blocking) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_device(v, device, non_blocking) for v in obj)
    return obj


def _batch_len(batch: Any, default: int) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else default
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim:
                return v.shape[0]
            if isinstance(v, (list, tuple)):
                return len(v)
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0], default)
    return default


def _collate_of(dataset: Any) -> Callable[..., Any]:
    for name in ("collater", "collate_fn"):
        fn = getattr(dataset, name, None)
        if callable(fn):
            return fn
    if isinstance(dataset, ConcatDataset) and dataset.datasets:
        return _collate_of(dataset.datasets[0])
    return default_collate


class Runner:
    """Trains ``build_model(cfg)`` on ``build_datasets(cfg)[split]`` for the splits in ``run.train_splits``.

    See :func:`run_training` for the contract of the three callables."""

    # set up by run() (None before, or when there is nothing to train)
    ctx: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    ddp: Any
    train_set: Any
    best: Optional[Dict[str, Any]]
    last_train: Optional[Dict[str, Any]]
    _resumed_step: Optional[int]
    _resumed_interval: Any
    _interval: Tuple[Dict[str, Any], int, int]

    def __init__(self, cfg: Union[Config, str, dict], build_model: Callable[[Config], torch.nn.Module],
                 build_datasets: Callable[[Config], Dict[str, Any]],
                 evaluate: Optional[Callable[..., Any]] = None) -> None:
        self.cfg = cfg if isinstance(cfg, Config) else load_config(cfg)
        for name, fn in (("build_model", build_model), ("build_datasets", build_datasets)):
            if not callable(fn):
                raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
        if evaluate is not None and not callable(evaluate):
            raise TypeError(f"evaluate: expected a callable or None, got {type(evaluate).__name__}")
        self.build_model, self.build_datasets, self.evaluate_fn = build_model, build_datasets, evaluate
        self.run_cfg = self.cfg.run
        self._interval = ({}, 0, 0)      # the metric record being accumulated: sums, steps, samples
        self._resumed_interval = None

    # ------------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        r = self.run_cfg
        self.ctx = setup_distributed(r)
        ctx = self.ctx
        self.out_dir = os.path.abspath(r["output_dir"])
        if ctx.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            ckpt_mod.remove_stale_temps(self.out_dir)
            self.cfg.dump(os.path.join(self.out_dir, "config.yaml"))
        barrier(ctx)
        self.writer = MetricsWriter(os.path.join(self.out_dir, "metrics.jsonl"), enabled=ctx.is_main)

        amp = r["amp"]
        if amp is True:
            amp = "fp16" if ctx.device.type == "cuda" else "bf16"
        if amp == "fp16" and ctx.device.type != "cuda":
            raise ValueError("run.amp: 'fp16' needs a CUDA device (use 'bf16' on the CPU)")
        self.amp = amp or None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[self.amp]

        seed_everything(r["seed"] + ctx.rank)
        model = self.build_model(self.cfg)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"build_model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model.to(ctx.device)

        datasets = self.build_datasets(self.cfg)
        if not isinstance(datasets, dict):
            raise TypeError(f"build_datasets: expected a dict split -> Dataset, got {type(datasets).__name__}")
        self.datasets = datasets
        wanted = [] if r["evaluate"] else r["train_splits"]
        missing = [s for s in wanted if s not in datasets]
        if missing:
            raise ValueError(f"run.train_splits: split(s) {missing} not among the built datasets {sorted(datasets)}")
        self.train_set = None
        if wanted:
            parts = [datasets[s] for s in wanted]
            self.train_set = parts[0] if len(parts) == 1 else ConcatDataset(parts)
            if len(self.train_set) == 0:
                raise ValueError(f"run.train_splits: the training set {wanted} is empty")
            self.sampler = ResumableBatchSampler(len(self.train_set), r["batch_size_train"], ctx.world_size, ctx.rank,
                                                 r["shuffle"], r["seed"], r["drop_last"])
            self.batches_per_epoch = self.sampler.batches_per_epoch()
            if self.batches_per_epoch == 0:
                raise ValueError(f"run.batch_size_train: {r['batch_size_train']} x {ctx.world_size} process(es) is "
                                 f"larger than the training set ({len(self.train_set)}) with drop_last")
            self.steps_per_epoch = -(-self.batches_per_epoch // r["accum_grad_iters"])
        else:
            self.batches_per_epoch = self.steps_per_epoch = 0
        self.total_steps = self.steps_per_epoch * r["max_epoch"]

        self.optimizer = build_optimizer(self.model, r) if self.train_set is not None else None
        self.scheduler = LinearWarmupCosineLR(
            self.optimizer, self.total_steps, r["init_lr"], r["min_lr"], r["warmup_steps"], r["warmup_lr"],
            cosine=r["lr_sched"] == "linear_warmup_cosine_lr",
            epoch_steps=self.steps_per_epoch if r["lr_decay"] == "epoch" else 0) if self.optimizer is not None else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=True) if self.amp == "fp16" else None
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

        self.epoch = self.epoch_step = self.step = 0
        self.best = None
        self._resumed_step = None
        self._resume()
        main = ctx.is_main
        self.tb = TensorBoard(os.path.join(self.out_dir, "tensorboard"), main and r["tensorboard"],
                              purge_step=self._resumed_step)
        self.console = Console(main and r["console"], self.total_steps)

        self.ddp = None
        if ctx.distributed and self.train_set is not None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            kw: Dict[str, Any] = {"device_ids": [ctx.device.index]} if ctx.device.type == "cuda" else {}
            self.ddp = DDP(self.model, find_unused_parameters=r["find_unused_parameters"], **kw)

    def _resume(self) -> None:
        r, ctx = self.run_cfg, self.ctx
        path = r["resume_ckpt_path"]
        if path == "auto":
            path = os.path.join(self.out_dir, "latest.pt")
            if not os.path.isfile(path):
                path = None
        if not path:
            if r["load_ckpt_path"]:
                ck = ckpt_mod.load_checkpoint(r["load_ckpt_path"], key="run.load_ckpt_path")
                skipped: list = []
                missing = ckpt_mod.load_model_state(self.model, ck["model"], require_trainable=False, skipped=skipped)
                if skipped and ctx.is_main:
                    logger.warning("run.load_ckpt_path: %d tensors of %s that this model does not have (or has "
                                   "with another shape) are not loaded: %s", len(skipped), r["load_ckpt_path"],
                                   skipped[:8])
                if missing and ctx.is_main:
                    logger.warning("run.load_ckpt_path: %d trainable tensors not in %s start from their "
                                   "initialisation: %s", len(missing), r["load_ckpt_path"], missing[:8])
            return
        ck = ckpt_mod.load_checkpoint(path)
        ckpt_mod.load_model_state(self.model, ck["model"])
        self.resumed_from = path
        if r["evaluate"] or self.optimizer is None:
            return
        if ck.get("optimizer") is not None:
            self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if "version" in ck:
            self.epoch = int(ck.get("epoch", 0))
            self.epoch_step = int(ck.get("epoch_step", 0))
            self.step = int(ck.get("step", 0))
        else:
            # a LAVIS checkpoint: written at the end of epoch ck["epoch"]; continue with the next one
            self.epoch = int(ck.get("epoch", -1)) + 1
            self.epoch_step, self.step = 0, self.epoch * self.steps_per_epoch
        if ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        else:
            self.scheduler.step_index = self.step
        self.best = ck.get("best")
        samp = ck.get("sampler") or {}
        if self.epoch_step and samp.get("world_size", ctx.world_size) != ctx.world_size:
            raise ValueError(f"run.resume_ckpt_path: {path} stopped mid-epoch with world size {samp['world_size']}; "
                             f"resuming mid-epoch needs the same world size (got {ctx.world_size})")
        if samp.get("seed", r["seed"]) != r["seed"]:
            raise ValueError(f"run.seed: {r['seed']} differs from the checkpoint's {samp['seed']}; "
                             "the data order would not continue")
        interval = ck.get("log_interval") or []
        if self.epoch_step and ctx.rank < len(interval) and interval[ctx.rank] is not None:
            # the partial sums of the metric record the interrupted run was accumulating
            self._resumed_interval = interval[ctx.rank]
        rng = ck.get("rng") or []
        if ctx.rank < len(rng) and rng[ctx.rank] is not None:
            ckpt_mod.set_rng_state(rng[ctx.rank])
        else:
            seed_everything(r["seed"] + ctx.rank + 7919 * (self.step + 1))
        self.writer.truncate_after(self.step)
        self._resumed_step = self.step
        logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    # ------------------------------------------------------------------------------------------- checkpoints
    def _payload(self) -> Optional[dict]:
        r = self.run_cfg
        rng = all_gather_object(self.ctx, ckpt_mod.get_rng_state())
        sums, n_steps, n_samples = self._interval
        interval = all_gather_object(self.ctx, {"sums": {k: float(v) for k, v in sums.items()}, "n_steps": n_steps,
                                                "n_samples": n_samples})
        if not self.ctx.is_main:
            return None
        return {
            "model": ckpt_mod.model_state(self.model, r["save_all_params"]),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "sampler": {"epoch": self.epoch,
                        "start_batch": min(self.epoch_step * r["accum_grad_iters"], self.batches_per_epoch),
                        "seed": r["seed"], "world_size": self.ctx.world_size},
            "rng": rng,
            "log_interval": interval,
            "best": self.best,
            "config": self.cfg.to_dict(),
            "version": ckpt_mod.CHECKPOINT_VERSION,
        }

    def save(self, names: Iterable[str]) -> None:
        """Write the current state to each file name in ``names`` (rank 0; all ranks meet at barriers)."""
        barrier(self.ctx)
        payload: Any = self._payload()  # a dict on rank 0
        if self.ctx.is_main:
            buf = io.BytesIO()
            torch.save(ckpt_mod.seal(payload), buf)
            data = buf.getvalue()
            for name in names:
                ckpt_mod.atomic_write_bytes(os.path.join(self.out_dir, name), data)
        barrier(self.ctx)

    # ------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, split: str, epoch: Union[int, str, None]) -> Any:
        if self.evaluate_fn is None:
            return None
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                result = self.evaluate_fn(model, split)
        finally:
            model.train(was_training)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise TypeError(f"evaluate: expected a dict of metrics for split {split!r}, got {type(result).__name__}")
        result = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in result.items()}
        record = {"type": "eval", "split": split, "epoch": epoch, "step": self.step, **result}
        self.writer.write(record)
        if self.ctx.is_main:
            logger.info("eval %s epoch %s: %s", split, epoch, result)
            self.tb.write(record)
            self.console.evaluation(split, epoch, result)
        return result

    def _update_best(self, results: Any, epoch: int) -> bool:
        key = self.run_cfg["best_metric"]
        if not key:
            return False
        if "/" in key:
            split, name = key.split("/", 1)
        else:
            split, name = self.run_cfg["valid_splits"][0], key
        if split not in results or results[split] is None or name not in results[split]:
            raise KeyError(f"run.best_metric: {key!r} is not among the evaluated metrics "
                           f"{ {s: sorted(v) for s, v in results.items() if v} }")
        value = float(results[split][name])
        better = (self.best is None or (value > self.best["value"] if self.run_cfg["best_metric_mode"] == "max"
                                        else value < self.best["value"]))
        if better:
            self.best = {"metric": key, "value": value, "epoch": epoch}
        return better

    # ------------------------------------------------------------------------------------------- training
    def _autocast(self) -> ContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        r, ctx = self.run_cfg, self.ctx
        self.sampler.set_epoch(epoch, start_batch)
        g = torch.Generator()
        g.manual_seed((r["seed"] * 1_000_003 + epoch * 1009 + ctx.rank) % 2**63)
        return DataLoader(SeededDataset(self.train_set, r["seed"], r["seed_per_sample"]), batch_sampler=self.sampler,
                          num_workers=r["num_workers"], collate_fn=_collate_of(self.train_set),
                          pin_memory=ctx.device.type == "cuda", generator=g)

    def _forward(self, batch: Any) -> Any:
        model = self.ddp if self.ddp is not None else self.model
        with self._autocast():
            out = model(batch)
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError("model.forward: expected a dict with a 'loss' entry, got "
                            f"{type(out).__name__}{' with keys ' + str(sorted(out)) if isinstance(out, dict) else ''}")
        loss = out["loss"]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise TypeError("model.forward: 'loss' must be a scalar tensor that requires grad")
        return out

    def _train_epoch(self, epoch: int) -> bool:
        r, ctx = self.run_cfg, self.ctx
        accum = r["accum_grad_iters"]
        nb = self.batches_per_epoch
        start_batch = min(self.epoch_step * accum, nb)
        loader = self._loader(epoch, start_batch)
        bar = progress_bar(self.steps_per_epoch, f"epoch {epoch}", r["progress_bar"] and ctx.is_main,
                           initial=self.epoch_step)
        self.console.start(self.step, bar_shown=type(bar).__name__ != "_NullBar")
        sums: Dict[str, Any] = {}
        n_steps, n_samples = 0, 0
        saved = self._resumed_interval
        if saved is not None:  # resumed mid-interval: the record averages the same steps as without the stop
            self._resumed_interval = None
            sums = {k: torch.tensor(v, dtype=torch.float64, device=ctx.device) for k, v in saved["sums"].items()}
            n_steps, n_samples = int(saved["n_steps"]), int(saved["n_samples"])
        self._interval = (sums, n_steps, n_samples)
        t0 = time.perf_counter()
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        try:
            for batch_idx, batch in enumerate(loader, start=start_batch):
                pos = batch_idx % accum
                gsize = min(accum, nb - (batch_idx - pos))
                last = pos == gsize - 1
                n_samples += _batch_len(batch, r["batch_size_train"])
                batch = _to_device(batch, ctx.device, non_blocking=ctx.device.type == "cuda")
                sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
                with sync:
                    out = self._forward(batch)
                    scaled = out["loss"] / gsize
                    if self.scaler is not None:
                        self.scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.numel() == 1:
                        v = v.detach().reshape(()).double()
                    elif isinstance(v, (int, float)) and not isinstance(v, bool):
                        v = torch.tensor(float(v), dtype=torch.float64, device=ctx.device)
                    else:
                        continue
                    sums[k] = sums[k] + v / gsize if k in sums else v / gsize
                if not last:
                    continue
                lr = self.scheduler.apply()
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                gnorm = self._grad_norm(r["max_grad_norm"])
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.advance()
                self.step += 1
                self.epoch_step += 1
                n_steps += 1
                sums["grad_norm"] = sums.get("grad_norm", 0) + gnorm.detach().double()
                bar.update(1)
                if self.step % r["log_freq"] == 0 or self.epoch_step == self.steps_per_epoch:
                    self._log_train(sums, n_steps, n_samples, time.perf_counter() - t0, lr, epoch, bar)
                    sums, n_steps, n_samples, t0 = {}, 0, 0, time.perf_counter()
                self._interval = (sums, n_steps, n_samples)
                if r["ckpt_freq_steps"] and self.step % r["ckpt_freq_steps"] == 0:
                    self.save(["latest.pt"])
                if r["stop_after_steps"] is not None and self.step >= r["stop_after_steps"]:
                    return False
                if self._stop_requested():
                    logger.warning("stop signal received: checkpointing at step %d and stopping", self.step)
                    return False
        finally:
            bar.close()
        return True

    # ------------------------------------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        """Make run.stop_signals set a flag (main thread only); the previous handlers come back at the end."""
        import signal
        import threading

        self._stop_flag = False
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            self._stop_flag = True

        for name in self.run_cfg["stop_signals"]:
            sig = getattr(signal, name)
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        import signal

        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)
        self._old_handlers = {}

    def _stop_requested(self) -> bool:
        """True on every rank once any rank got a stop signal (distributed: checked every 10 steps with one tiny
        all-reduce, so that all ranks stop at the same step)."""
        if not self.run_cfg["stop_signals"]:
            return False
        if not self.ctx.distributed:
            return self._stop_flag
        if self.step % 10:
            return False
        flag = torch.tensor([1.0 if self._stop_flag else 0.0], dtype=torch.float64)
        return bool(all_reduce_sum(self.ctx, flag)[0] > 0)

    def _grad_norm(self, max_norm: Optional[float]) -> torch.Tensor:
        """Global L2 norm of the gradients (before clipping); clips to ``max_norm`` when set."""
        if max_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.ctx.device)
        if hasattr(torch.nn.utils, "get_total_norm"):
            return torch.nn.utils.get_total_norm(grads)
        return torch.nn.utils.clip_grad_norm_(self.trainable, math.inf)

    def _log_train(self, sums: Dict[str, Any], n_steps: int, n_samples: int, elapsed: float, lr: float, epoch: int,
                   bar: Any) -> None:
        ctx = self.ctx
        keys = sorted(sums)
        vec = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).to(ctx.device) for k in keys]
                          + [torch.tensor(float(n_samples), dtype=torch.float64, device=ctx.device)])
        totals = all_reduce_sum(ctx, vec.cpu()).tolist()
        record = {"type": "train", "epoch": epoch, "step": self.step, "lr": lr}
        for k, v in zip(keys, totals[:-1]):
            record[k] = v / (n_steps * ctx.world_size)
        record["samples_per_s"] = totals[-1] / max(elapsed, 1e-9)
        record["steps_per_s"] = n_steps / max(elapsed, 1e-9)
        if ctx.device.type == "cuda":
            record["mem_mb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
        else:
            import resource

            record["mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.last_train = record
        self.writer.write(record)
        if ctx.is_main:
            self.tb.write(record)
            self.console.interval(record)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}")

    def run(self) -> dict:
        self.ctx = None
        self.last_train = None
        self._install_signals()
        try:
            self._setup()
            r, ctx = self.run_cfg, self.ctx
            summary = {"output_dir": self.out_dir, "world_size": ctx.world_size, "device": str(ctx.device),
                       "amp": self.amp, "interrupted": False, "eval": {}}
            if r["evaluate"]:
                for split in r["valid_splits"] + r["test_splits"]:
                    summary["eval"][split] = self._evaluate(split, None)
                summary.update(step=self.step, epoch=self.epoch)
                return summary
            self.model.train()
            if r["stop_after_steps"] is not None and self.step >= r["stop_after_steps"]:
                summary["interrupted"] = True
            while not summary["interrupted"] and self.epoch < r["max_epoch"]:
                epoch = self.epoch
                finished = self._train_epoch(epoch)
                if not finished:
                    self.save(["latest.pt"])
                    summary["interrupted"] = True
                    break
                if self.last_train is not None and ctx.is_main:
                    self.console.epoch_end(epoch, self.last_train)
                results = {s: self._evaluate(s, epoch) for s in r["valid_splits"]}
                improved = self._update_best(results, epoch) if results else False
                self.epoch, self.epoch_step = epoch + 1, 0
                names = ["latest.pt"] + ([f"checkpoint_{epoch}.pt"] if r["save_epoch_ckpts"] else [])
                if improved:
                    names.append("checkpoint_best.pt")
                self.save(names)
                summary["eval"].update({f"{s}@{epoch}": v for s, v in results.items()})
            if not summary["interrupted"] and r["test_splits"]:
                best_path = os.path.join(self.out_dir, "checkpoint_best.pt")
                if self.best is not None and os.path.isfile(best_path):
                    barrier(ctx)
                    ckpt_mod.load_model_state(self.model, ckpt_mod.load_checkpoint(best_path)["model"])
                    summary["test_checkpoint"] = best_path
                for split in r["test_splits"]:
                    summary["eval"][split] = self._evaluate(split, "test")
            summary.update(step=self.step, epoch=self.epoch, total_steps=self.total_steps, best=self.best,
                           last_train=self.last_train, checkpoint=os.path.join(self.out_dir, "latest.pt"))
            if ctx.is_main and r["plot"]:
                summary["plot"] = plot_metrics(os.path.join(self.out_dir, "metrics.jsonl"),
                                               os.path.join(self.out_dir, "metrics.png"))
            return summary
        finally:
            self._restore_signals()
            tb = getattr(self, "tb", None)
            if tb is not None:
                tb.close()
            if self.ctx is not None:
                self.ctx.close()


def run_training(cfg: Union[Config, str, dict], build_model: Callable[[Config], torch.nn.Module],
                 build_datasets: Callable[[Config], Dict[str, Any]],
                 evaluate: Optional[Callable[..., Any]] = None) -> dict:
    """Train (or, with ``run.evaluate``, only evaluate) as the config says; see the ``dynrefer.train`` docstring."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    if evaluate is not None:
        try:
            inspect.signature(evaluate).bind(None, "split")
        except TypeError:
            raise TypeError("evaluate: must accept (model, split)") from None
        except ValueError:
            pass
    return Runner(cfg, build_model, build_datasets, evaluate).run()
