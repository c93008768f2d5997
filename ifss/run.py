"""One step of one run: config + previous checkpoint -> trained model, metrics, run directory.

The run directory gets model.pt, config.yaml, log.txt, tb/ and, last, metrics.json; a stale
metrics.json is removed first, so a directory only looks complete once the run has finished.
Every input (config, previous checkpoint, dataset, a resume.pt left by a killed run, the run
directory's place) is checked before the first write to the run directory, so a bad rerun leaves
a finished run exactly as it was.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import ifss
from ifss import atomic, engine
from ifss.builder import (ResolvedRun, build_method, build_step_models, model_from_checkpoint,
                          place, resolve)
from ifss.config import DataConfig, RunConfig, dump_yaml, to_dict
from ifss.data.build import build_step_data
from ifss.data.layout import layout_for
from ifss.distributed import Runtime, setup, teardown
from ifss.errors import IfssError
from ifss.models import convert_sync_norm
from ifss.metrics import percent_text, weakshot_classes, weakshot_summary
from ifss.tasks import Task

log = logging.getLogger("ifss")
CHECKPOINT_FORMAT = 1


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Held(logging.Handler):
    """Keeps the records logged before the run directory may be written, for its log.txt."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextmanager
def run_logging(runtime: Runtime):
    """Log to stderr (main process only); yields `to_file(run_dir)`, which adds run_dir/log.txt,
    with what was logged before, once the run directory may be written."""
    logger = logging.getLogger("ifss")
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = []
    held = _Held()

    def add(handler):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        handlers.append(handler)

    def to_file(run_dir: Path) -> None:
        if not runtime.is_main:
            return
        handler = logging.FileHandler(run_dir / "log.txt", mode="a")
        handler.setFormatter(fmt)
        for record in held.records:
            handler.handle(record)
        logger.removeHandler(held)
        add(handler)

    if runtime.is_main:
        add(logging.StreamHandler())
        add(held)
    try:
        yield to_file
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def ensure_dataset(cfg: RunConfig) -> None:
    """Real datasets must be downloaded. The synthetic benchmark is generated on first use only
    at the default data.root, and says so; any other root must hold it already, so a typo in
    data.root is refused instead of silently becoming a new dataset."""
    root = Path(cfg.data.root)
    if cfg.dataset == "synthetic" and not (root / "meta.json").is_file():
        default = Path(DataConfig().root)
        if root.resolve() != default.resolve():
            raise IfssError(
                f"data root {root} holds no synthetic dataset (no meta.json); make it with "
                f"`ifss synth --out {root}` or correct data.root (only the default {default} "
                "is generated on first use)")
        from ifss.data.synthetic import generate

        log.warning("data.root is the default %s and holds no dataset: generating the synthetic "
                    "benchmark there (`ifss synth --out %s` with its defaults)", root, root)
        generate(root)
    layout_for(cfg.dataset, root).check()


def check_run_dir(run_dir: Path, what: str = "run directory") -> None:
    """The output folder can be made and written: not a file, not under a file, not read-only
    (checked before anything is built; a failure at the first write is still one sentence)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise IfssError(f"{what} {run_dir} is a file; give --out a folder (or move the file "
                        "away)")
    existing = run_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise IfssError(f"{what} {run_dir} cannot be made: {existing} is a file; give --out a "
                        "path under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise IfssError(f"{what} {run_dir} cannot be written: {existing} is on a read-only "
                            "file system; give --out a folder on a writable one")
        raise IfssError(f"{what} {run_dir} cannot be written: {existing} is not writable for "
                        "you; make it writable or give --out another folder")


def versions() -> dict:
    import torchvision

    return {"ifss": ifss.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def class_names(cfg: RunConfig, task: Task, step: int | None = None) -> list[str]:
    """The names of the classes of `step` (default: the run's), in the dataset's own names (the
    synthetic benchmark names its classes in classes.json)."""
    step = cfg.step if step is None else step
    names_file = Path(cfg.data.root) / "classes.json"
    if cfg.dataset == "synthetic" and names_file.is_file():
        return task.class_names(step, tuple(json.loads(names_file.read_text())["names"]))
    return task.class_names(step)


def metrics_record(run: ResolvedRun, summary: dict, extra: dict,
                   tests: dict | None = None) -> dict:
    """`summary` of the main test; `tests`: split -> summary of each extra test (a "tests" key
    only when there are some)."""
    cfg, task = run.cfg, run.task
    return {
        "dataset": cfg.dataset, "task": cfg.task, "method": cfg.method,
        "label": cfg.label or cfg.method, "base_method": run.info.base,
        "step": cfg.step, "num_steps": task.num_steps, "nshot": cfg.nshot, "ishot": cfg.ishot,
        "classes": class_names(cfg, task), "class_ids": list(task.order(cfg.step)),
        "num_base": task.num_base, **summary, **({"tests": tests} if tests else {}),
        "config": to_dict(cfg), "versions": versions(), "seed": cfg.seed, **extra,
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


def evaluate(model, data, cfg: RunConfig, runtime: Runtime) -> tuple[dict, dict]:
    """Dense mIoU (base / novel / all / HM) on the step's test set, and split -> the same on each
    of the dataset's extra test splits. A weak-shot run's summaries also hold "weakshot":
    SimFormer's numbers (`ifss.metrics.weakshot_summary` over `weakshot_classes`)."""
    weakshot = cfg.data.protocol == "weakshot"

    def on(dataset):
        summary, matrix = engine.evaluate_dense(model, dataset, data.task.num_base, runtime,
                                                cfg.eval.batch_size, cfg.data.workers,
                                                return_matrix=True)
        if weakshot:
            summary["weakshot"] = weakshot_summary(matrix, *weakshot_classes(data.task))
        return summary

    return on(data.test), {split: on(dataset) for split, dataset in data.extra_tests.items()}


def log_summaries(summary: dict, tests: dict) -> None:
    for split, found in {"": summary, **tests}.items():
        where = f"{split}: " if split else ""
        log.info("%smIoU base %s novel %s all %s HM %s", where, *_pcts(found))
        if "weakshot" in found:
            log.info("%sweak-shot: mIoU base %s novel %s all %s HM %s, fwIoU %s, mACC %s, "
                     "pACC %s", where, *_pcts(found["weakshot"], (
                         "miou_base", "miou_novel", "miou_all", "hm", "fwiou", "macc", "pacc")))


def train_run(cfg: RunConfig, run_dir: str | Path) -> dict:
    """Train and evaluate one step; returns the metrics record."""
    run = resolve(cfg)
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    runtime = setup(run.cfg.train.device, run.cfg.train.amp, run.cfg.train.channels_last)
    try:
        with run_logging(runtime) as log_to_file:
            return _train(run, run_dir, runtime, log_to_file)
    finally:
        teardown()


def _train(run: ResolvedRun, run_dir: Path, runtime: Runtime, log_to_file) -> dict:
    cfg = run.cfg
    started = time.time()
    # -- every input, before the first write to run_dir ----------------------------------------
    if runtime.is_main:
        ensure_dataset(cfg)
    if runtime.distributed:
        torch.distributed.barrier()
    log.info("%s %s %s step %d (nshot %d, ishot %d) on %s", cfg.method, cfg.dataset, cfg.task,
             cfg.step, cfg.nshot, cfg.ishot, runtime.device)
    seed_everything(cfg.seed)
    data = build_step_data(cfg, run.task, needs=run.method_cls.data_needs(cfg))
    model, old_model, ckpt = build_step_models(run, runtime)
    method = build_method(run, runtime, model, ckpt)
    engine.check_resume(run_dir / engine.RESUME_FILE, cfg, model)
    if runtime.distributed and runtime.device.type == "cuda":
        model = convert_sync_norm(model)  # keeps the activations NormAct carries
    place(model, method, runtime)
    method.prepare(model, old_model, data)
    # -- the run directory: a finished run's metrics.json goes first --------------------------
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
        log_to_file(run_dir)
        atomic.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    if runtime.distributed:
        torch.distributed.barrier()
    writer = None
    if runtime.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    try:
        iterations = engine.train(model, method, data.train, cfg, runtime, run_dir, writer,
                                  method.extra_phases(model, data))
        method.finish(model, data)
        summary, tests = evaluate(model, data, cfg, runtime)
    finally:
        if writer is not None:
            writer.close()
    record = metrics_record(run, summary, {
        "iterations": iterations, "train_images": len(data.train),
        "device": str(runtime.device), "world_size": runtime.world,
        "threads": torch.get_num_threads(), "wall_time_s": round(time.time() - started, 2),
    }, tests)
    if runtime.is_main:
        save_model(run_dir / "model.pt", model, run, method)
        atomic.write_json(run_dir / "metrics.json", record)
        (run_dir / engine.RESUME_FILE).unlink(missing_ok=True)
        log_summaries(summary, tests)
    return record


def _pcts(summary: dict, keys=("miou_base", "miou_novel", "miou_all", "hm")) -> list[str]:
    return [percent_text(summary[k]) for k in keys]


def eval_run(checkpoint: str | Path, overrides: dict, out_dir: str | Path) -> dict:
    """Evaluate a saved model (evaluation only): on its task's test set (eval.protocol dense),
    or, for a fold's step-0 model, on few-shot episodes (eval.protocol episodic)."""
    run, model, ckpt = model_from_checkpoint(checkpoint, overrides)
    cfg = run.cfg
    out_dir = Path(out_dir)
    check_run_dir(out_dir, "output folder")
    if cfg.eval.protocol == "episodic":
        return _eval_episodic(run, model, checkpoint, out_dir)
    runtime = setup(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        started = time.time()
        ensure_dataset(cfg)
        # the test sets only: a retrained weak-shot model's pseudo-label folder need not be there
        data = build_step_data(
            dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_labels="")),
            run.task)
        model.to(runtime.device)
        summary, tests = evaluate(model, data, cfg, runtime)
        record = metrics_record(run, summary, {
            "checkpoint": str(checkpoint), "device": str(runtime.device),
            "wall_time_s": round(time.time() - started, 2),
        }, tests)
        if runtime.is_main:
            atomic.write_json(out_dir / "metrics.json", record)
            log_summaries(summary, tests)
        return record
    finally:
        teardown()


def _eval_episodic(run: ResolvedRun, model, checkpoint, out_dir: Path) -> dict:
    """Episodic (generalized) few-shot evaluation of a step-0 model (ifss.episodic); writes
    out_dir/metrics.json and out_dir/log.txt, only once every episode has been scored."""
    from ifss.episodic.evaluate import evaluate_episodic

    cfg, ev = run.cfg, run.cfg.eval
    runtime = setup(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        with run_logging(runtime) as log_to_file:
            started = time.time()
            ensure_dataset(cfg)
            model.to(runtime.device)
            last = run.task.num_steps - 1  # the names of the fold's base and novel classes
            names = dict(zip(run.task.order(last), class_names(cfg, run.task, last)))
            summary = evaluate_episodic(model, layout_for(cfg.dataset, cfg.data.root), run.task,
                                        cfg, runtime, names, str(checkpoint))
            record = {
                "protocol": "episodic", "dataset": cfg.dataset, "task": cfg.task,
                "method": cfg.method, "label": cfg.label or cfg.method, "nshot": cfg.nshot,
                "head": ev.head, "gamma": ev.gamma, "episodes": ev.episodes, "runs": ev.runs,
                **summary, "config": to_dict(cfg), "versions": versions(), "seed": ev.seed,
                "checkpoint": str(checkpoint), "device": str(runtime.device),
                "wall_time_s": round(time.time() - started, 2),
            }
            log.info("episodic %s %s %s, %s head, %d-shot, %d run(s) x %d episodes: novel mIoU "
                     "%s, FB-IoU %s, base mIoU %s", cfg.dataset, cfg.task, cfg.label or cfg.method,
                     ev.head, cfg.nshot, ev.runs, ev.episodes,
                     *_pcts(record, ("miou_novel", "fb_iou", "miou_base")))
            if runtime.is_main:
                out_dir.mkdir(parents=True, exist_ok=True)
                log_to_file(out_dir)
                atomic.write_json(out_dir / "metrics.json", record)
            return record
    finally:
        teardown()

