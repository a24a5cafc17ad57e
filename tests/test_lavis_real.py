"""dynrefer.lavis with the real salesforce-lavis (skipped where it is not installed; it pins transformers <4.27,
opencv-python-headless 4.5.5.64 and needs numpy <2, so it lives in its own virtual environment — see the README).

LAVIS's Config resolves a packaged project file, its task builds datasets and model, one epoch runs through
LAVIS's own training loop, optimiser grouping and scheduler, and its evaluation loop feeds the task's metrics.
LAVIS's RunnerBase itself needs CUDA (its PrefetchLoader creates a CUDA stream), so the epoch is driven by hand
here, as RunnerBase.train would drive it.
"""
import argparse
import json
import os
import warnings

import pytest

lavis = pytest.importorskip("lavis", reason="salesforce-lavis is not installed")

import torch  # noqa: E402

from dynrefer.data.synthetic import generate  # noqa: E402


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_lavis")
    generate(str(root / "data" / "synthetic"), seed=5, splits={"train": 4, "val": 2})
    return root


def test_train_and_evaluate_with_lavis(cwd, monkeypatch):
    warnings.filterwarnings("ignore")
    monkeypatch.chdir(cwd)
    import dynrefer.lavis as dl
    import lavis.common.optims  # noqa: F401  (registers the LR schedulers, as LAVIS's train.py imports them)
    import lavis.tasks as tasks
    from lavis.common.config import Config
    from lavis.common.registry import registry
    from lavis.models import load_model_and_preprocess
    from lavis.runners.runner_base import RunnerBase

    assert registry.get_model_class("dynrefer_t5") is dl.registered().model
    model, vis, txt = load_model_and_preprocess("dynrefer_t5", "tiny")
    assert vis["eval"].image_size == 32 and txt["eval"]("A Dog.") == "a dog"

    args = argparse.Namespace(cfg_path=dl.config_path("projects/train/tiny_synthetic.yaml"),
                              options=["run.max_epoch=1", f"run.output_dir={cwd / 'out'}"])
    cfg = Config(args)
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner = RunnerBase(cfg=cfg, job_id="test", task=task, model=model, datasets=datasets)
    runner._wrapped_model = runner._model   # LAVIS 1.0.2 sets it only when it moves the model to a device
    sched = registry.get_lr_scheduler_class(cfg.run_cfg.lr_sched)(
        optimizer=runner.optimizer, max_epoch=1, min_lr=cfg.run_cfg.min_lr, init_lr=cfg.run_cfg.init_lr,
        warmup_steps=cfg.run_cfg.warmup_steps, warmup_start_lr=-1)   # -1: start at init_lr (one step here)
    ds = datasets["dynrefer_synthetic"]
    loader = torch.utils.data.DataLoader(ds["train"], batch_size=8, shuffle=True, drop_last=True,
                                         collate_fn=ds["train"].collater)
    before = model.cvem_mlp[0].weight.detach().clone()
    model.train()
    stats = task.train_epoch(epoch=0, model=model, data_loader=loader, optimizer=runner.optimizer,
                             lr_scheduler=sched, scaler=None, cuda_enabled=False, log_freq=10, accum_grad_iters=1)
    assert float(stats["loss"]) > 0 and not torch.equal(before, model.cvem_mlp[0].weight)

    model.eval()
    val = torch.utils.data.DataLoader(ds["val"], batch_size=8, collate_fn=ds["val"].collater)
    task.before_evaluation(model=model, dataset=ds["val"])
    res = task.evaluation(model, val, cuda_enabled=False)
    assert res and {"id", "caption", "score", "attr", "cls"} <= set(res[0])
    try:
        metrics = task.after_evaluation(val_result=res, split_name="val", epoch=0)
    except Exception as e:  # CIDEr tokenises with pycocoevalcap's Java PTB tokenizer
        if type(e).__name__ == "JavaUnavailableError":
            pytest.skip(f"no Java for the caption metrics: {e}")
        raise
    assert "CIDEr" in metrics and metrics["agg_metrics"] == metrics["CIDEr"]
    saved = _read_json(os.path.join(registry.get_path("result_dir"), "val_predictions.json"))
    assert len(saved) == len(res)
