"""One step of one run: config + previous checkpoint -> trained model, metrics, run directory.

The run directory gets model.pt, config.yaml, log.txt, tb/ and, last, metrics.json; a stale
metrics.json is removed first, so a directory only looks complete once the run has finished.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import ifss
from ifss import atomic, engine
from ifss.builder import (ResolvedRun, build_method, build_step_models, model_from_checkpoint,
                          resolve)
from ifss.config import RunConfig, dump_yaml, to_dict
from ifss.data.build import build_step_data
from ifss.data.layout import layout_for
from ifss.distributed import Runtime, setup, teardown
from ifss.models import convert_sync_norm
from ifss.tasks import Task

log = logging.getLogger("ifss")
CHECKPOINT_FORMAT = 1


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def run_logging(run_dir: Path, runtime: Runtime):
    """Log to stderr and run_dir/log.txt (main process only)."""
    logger = logging.getLogger("ifss")
    logger.setLevel(logging.INFO)
    handlers = []
    if runtime.is_main:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(run_dir / "log.txt", mode="a"), logging.StreamHandler()):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
            handlers.append(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def ensure_dataset(cfg: RunConfig) -> None:
    """The synthetic benchmark is made on first use; real datasets must be downloaded."""
    root = Path(cfg.data.root)
    if cfg.dataset == "synthetic" and not (root / "meta.json").is_file():
        from ifss.data.synthetic import generate

        log.info("generating the synthetic dataset in %s", root)
        generate(root)
    layout_for(cfg.dataset, root).check()


def versions() -> dict:
    import torchvision

    return {"ifss": ifss.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def class_names(cfg: RunConfig, task: Task) -> list[str]:
    """The dataset's own names (the synthetic benchmark names its classes in classes.json)."""
    names_file = Path(cfg.data.root) / "classes.json"
    if cfg.dataset == "synthetic" and names_file.is_file():
        return task.class_names(cfg.step, tuple(json.loads(names_file.read_text())["names"]))
    return task.class_names(cfg.step)


def metrics_record(run: ResolvedRun, summary: dict, extra: dict) -> dict:
    cfg, task = run.cfg, run.task
    return {
        "dataset": cfg.dataset, "task": cfg.task, "method": cfg.method,
        "label": cfg.label or cfg.method, "base_method": run.info.base,
        "step": cfg.step, "num_steps": task.num_steps, "nshot": cfg.nshot, "ishot": cfg.ishot,
        "classes": class_names(cfg, task), "class_ids": list(task.order(cfg.step)),
        "num_base": task.num_base, **summary, "config": to_dict(cfg), "versions": versions(),
        "seed": cfg.seed, **extra,
    }


def save_model(path: Path, model, run: ResolvedRun, method) -> None:
    cfg, task = run.cfg, run.task
    atomic.torch_save({
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "modules": {name: m.state_dict() for name, m in method.modules().items()},
        "method": method.state_dict(),
        "meta": {"classes_per_step": task.classes_per_step(cfg.step),
                 "class_ids": list(task.order(cfg.step)), "dataset": cfg.dataset,
                 "task": cfg.task, "step": cfg.step, "method": cfg.method,
                 "label": cfg.label or cfg.method,
                 "config": json.dumps(to_dict(cfg))},
    }, path)


def evaluate(model, data, cfg: RunConfig, runtime: Runtime) -> dict:
    """Dense mIoU on the step's test set (base / novel / all / HM)."""
    return engine.evaluate_dense(model, data.test, data.task.num_base, runtime,
                                 cfg.eval.batch_size, cfg.data.workers)


def train_run(cfg: RunConfig, run_dir: str | Path) -> dict:
    """Train and evaluate one step; returns the metrics record."""
    run = resolve(cfg)
    run_dir = Path(run_dir)
    runtime = setup(run.cfg.train.device, run.cfg.train.amp, run.cfg.train.channels_last)
    try:
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.json").unlink(missing_ok=True)
        with run_logging(run_dir, runtime):
            return _train(run, run_dir, runtime)
    finally:
        teardown()


def _train(run: ResolvedRun, run_dir: Path, runtime: Runtime) -> dict:
    cfg = run.cfg
    started = time.time()
    if runtime.is_main:
        ensure_dataset(cfg)
        atomic.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    if runtime.distributed:
        torch.distributed.barrier()
    log.info("%s %s %s step %d (nshot %d, ishot %d) on %s", cfg.method, cfg.dataset, cfg.task,
             cfg.step, cfg.nshot, cfg.ishot, runtime.device)
    seed_everything(cfg.seed)
    data = build_step_data(cfg, run.task, image_labels="image_labels" in run.method_cls.needs)
    model, old_model, ckpt = build_step_models(run, runtime)
    method = build_method(run, runtime, model, ckpt)
    if runtime.distributed and runtime.device.type == "cuda":
        model = convert_sync_norm(model)  # keeps the activations NormAct carries
    model.to(runtime.device)
    for module in method.modules().values():
        module.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    method.prepare(model, old_model, data)
    writer = None
    if runtime.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    try:
        iterations = engine.train(model, method, data.train, cfg, runtime, run_dir, writer,
                                  method.extra_phases(model, data))
        method.finish(model, data)
        summary = evaluate(model, data, cfg, runtime)
    finally:
        if writer is not None:
            writer.close()
    record = metrics_record(run, summary, {
        "iterations": iterations, "train_images": len(data.train),
        "device": str(runtime.device), "world_size": runtime.world,
        "wall_time_s": round(time.time() - started, 2),
    })
    if runtime.is_main:
        save_model(run_dir / "model.pt", model, run, method)
        atomic.write_json(run_dir / "metrics.json", record)
        (run_dir / engine.RESUME_FILE).unlink(missing_ok=True)
        log.info("mIoU base %s novel %s all %s HM %s", *(_pct(record[k]) for k in
                 ("miou_base", "miou_novel", "miou_all", "hm")))
    return record


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def eval_run(checkpoint: str | Path, overrides: dict, out_dir: str | Path) -> dict:
    """Evaluate a saved model on its task's test set (evaluation only)."""
    run, model, ckpt = model_from_checkpoint(checkpoint, overrides)
    cfg = run.cfg
    out_dir = Path(out_dir)
    runtime = setup(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        started = time.time()
        ensure_dataset(cfg)
        data = build_step_data(cfg, run.task)
        model.to(runtime.device)
        summary = evaluate(model, data, cfg, runtime)
        record = metrics_record(run, summary, {
            "checkpoint": str(checkpoint), "device": str(runtime.device),
            "wall_time_s": round(time.time() - started, 2),
        })
        if runtime.is_main:
            atomic.write_json(out_dir / "metrics.json", record)
        return record
    finally:
        teardown()
