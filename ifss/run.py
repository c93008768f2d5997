"""One step of one run: config + previous checkpoint -> trained model, metrics, run directory.

The run directory gets model.pt, config.yaml, log.txt, tb/ and, last, metrics.json; a stale
metrics.json is removed first, so a directory only looks complete once the run has finished.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import ifss
from ifss import atomic, engine
from ifss.config import RunConfig, dump_yaml, from_dict, to_dict
from ifss.data.build import build_step_data
from ifss.data.layout import layout_for
from ifss.distributed import Runtime, setup, teardown
from ifss.errors import IfssError
from ifss.methods.registry import get_method_class, method_info
from ifss.models import build_model, convert_sync_norm
from ifss.tasks import Task, get_task

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


def resolve(cfg: RunConfig, training: bool = True):
    """Validate names and fill in the method's hyper-parameters explicitly; `training` also
    checks that the run has the model it starts from."""
    task = get_task(cfg.dataset, cfg.task)
    task.check_step(cfg.step)
    info = method_info(cfg.method)
    method_cls = get_method_class(cfg.method)
    params = from_dict(method_cls.Params, cfg.params, prefix="params.")
    cfg = dataclasses.replace(cfg.resolved(), params=dataclasses.asdict(params))
    if not training:
        return cfg, task, info, method_cls, params
    if cfg.step == 0 and not info.step0:
        raise IfssError(
            f"method {info.name} has no step-0 training; its step 1 starts from the step-0 run of "
            f"method {info.base} (train that with method={info.base})"
        )
    if cfg.step > 0 and not cfg.previous:
        raise IfssError(f"step {cfg.step} needs the model of step {cfg.step - 1}: set previous=PATH/model.pt")
    if cfg.step == 0 and info.step0_from and not cfg.previous:
        raise IfssError(f"step 0 of {info.name} starts from the step-0 model of {info.step0_from}: "
                        "set previous=PATH/model.pt")
    return cfg, task, info, method_cls, params


def ensure_dataset(cfg: RunConfig) -> None:
    """The synthetic benchmark is made on first use; real datasets must be downloaded."""
    root = Path(cfg.data.root)
    if cfg.dataset == "synthetic" and not (root / "meta.json").is_file():
        from ifss.data.synthetic import generate

        log.info("generating the synthetic dataset in %s", root)
        generate(root)
    layout_for(cfg.dataset, root).check()


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise IfssError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise IfssError(f"checkpoint {path} cannot be read ({err})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise IfssError(f"checkpoint {path} is not an ifss model.pt (no model/meta entries)")
    return ckpt


def check_classes(ckpt: dict, path, task: Task, step: int) -> None:
    """The checkpoint must hold exactly the classes of `step` of `task`, in the same order."""
    meta = ckpt["meta"]
    have, want = list(meta["classes_per_step"]), task.classes_per_step(step)
    if have != want:
        raise IfssError(
            f"checkpoint {path} has {sum(have)} classes {have} per step, but step {step} of task "
            f"{task.name} needs {sum(want)} {want}; give the checkpoint of this task's step {step}"
        )
    if list(meta["class_ids"]) != list(task.order(step)):
        raise IfssError(
            f"checkpoint {path} was trained on the classes of {meta['task']} step {meta['step']}, "
            f"not those of {task.name} step {step}; give the checkpoint of this task's step {step}"
        )


def check_base(ckpt: dict, path, cfg: RunConfig, info) -> None:
    """The previous model must come from the run this method starts from: at step 1 the step-0
    run of its base method, at step 0 the run of its `step0_from`, later its own previous step.
    (Checkpoints without a recorded method are not checked.)"""
    trained_by = ckpt["meta"].get("method")
    if trained_by is None or (cfg.step == 0 and not info.step0_from):
        return
    if cfg.step <= 1:
        want = info.step0_from if cfg.step == 0 else info.base
        if trained_by != want:
            raise IfssError(
                f"method {cfg.method} starts from the step-0 model of {want}, but {path} was "
                f"trained by {trained_by}; give the {want} step-0 model.pt"
            )
        return
    label, trained_as = cfg.label or cfg.method, ckpt["meta"].get("label", trained_by)
    if (trained_by, trained_as) != (cfg.method, label):
        raise IfssError(
            f"step {cfg.step} of method {label} continues its step-{cfg.step - 1} model, but "
            f"{path} was trained by {trained_as}; give the {label} step-{cfg.step - 1} model.pt"
        )


def load_previous(model, ckpt: dict, path) -> None:
    """Old steps' weights; only the new step's classifier may be missing from the file."""
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    new_step = len(model.classifier.convs) - 1
    allowed = {k for k in model.state_dict() if k.startswith(f"classifier.convs.{new_step}.")}
    bad = [k for k in missing if k not in allowed] + list(unexpected)
    if bad:
        raise IfssError(f"checkpoint {path} does not fit this model (first keys: {bad[:3]}); "
                        "was it trained with another backbone or model config?")


def build_previous_models(cfg: RunConfig, task: Task, info, runtime: Runtime, method_cls):
    """The model of this step (old weights loaded) and, if the method needs it, a frozen copy of
    the previous step's model."""
    step_for_file = cfg.step - 1 if cfg.step > 0 else 0
    ckpt = load_checkpoint(cfg.previous) if cfg.previous else None
    options = method_cls.model_options(cfg, ckpt["model"] if ckpt else None)
    model = build_model(cfg.model, task.classes_per_step(cfg.step), info.classifier, **options)
    if ckpt is None:
        return model, None, None
    check_classes(ckpt, cfg.previous, task, step_for_file)
    check_base(ckpt, cfg.previous, cfg, info)
    if cfg.step > 0:
        load_previous(model, ckpt, cfg.previous)
    else:
        model.load_state_dict(ckpt["model"])
    old = None
    if method_cls.uses_old_model:
        old = build_model(cfg.model, task.classes_per_step(step_for_file), info.classifier,
                          **options)
        old.load_state_dict(ckpt["model"])
        old.to(runtime.device).eval().requires_grad_(False)
    return model, old, ckpt.get("method", {})


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


def metrics_record(cfg: RunConfig, task: Task, info, summary: dict, extra: dict) -> dict:
    return {
        "dataset": cfg.dataset, "task": cfg.task, "method": cfg.method,
        "label": cfg.label or cfg.method, "base_method": info.base,
        "step": cfg.step, "num_steps": task.num_steps, "nshot": cfg.nshot, "ishot": cfg.ishot,
        "classes": class_names(cfg, task), "class_ids": list(task.order(cfg.step)),
        "num_base": task.num_base, **summary, "config": to_dict(cfg), "versions": versions(),
        "seed": cfg.seed, **extra,
    }


def save_model(path: Path, model, task: Task, cfg: RunConfig, method) -> None:
    atomic.torch_save({
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "method": method.state_dict(),
        "meta": {"classes_per_step": task.classes_per_step(cfg.step),
                 "class_ids": list(task.order(cfg.step)), "dataset": cfg.dataset,
                 "task": cfg.task, "step": cfg.step, "method": cfg.method,
                 "label": cfg.label or cfg.method,
                 "config": json.dumps(to_dict(cfg))},
    }, path)


def train_run(cfg: RunConfig, run_dir: str | Path) -> dict:
    """Train and evaluate one step; returns the metrics record."""
    cfg, task, info, method_cls, params = resolve(cfg)
    run_dir = Path(run_dir)
    runtime = setup(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.json").unlink(missing_ok=True)
        with run_logging(run_dir, runtime):
            return _train(cfg, task, info, method_cls, params, run_dir, runtime)
    finally:
        teardown()


def _train(cfg, task, info, method_cls, params, run_dir: Path, runtime: Runtime) -> dict:
    started = time.time()
    if runtime.is_main:
        ensure_dataset(cfg)
        atomic.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    if runtime.distributed:
        torch.distributed.barrier()
    log.info("%s %s %s step %d (nshot %d, ishot %d) on %s", cfg.method, cfg.dataset, cfg.task,
             cfg.step, cfg.nshot, cfg.ishot, runtime.device)
    seed_everything(cfg.seed)
    data = build_step_data(cfg, task)
    method = method_cls(params, cfg, runtime)
    model, old_model, method_state = build_previous_models(cfg, task, info, runtime, method_cls)
    if method_state:
        method.load_state_dict(method_state)
    if runtime.distributed and runtime.device.type == "cuda":
        model = convert_sync_norm(model)  # keeps the activations NormAct carries
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    method.prepare(model, old_model, data)
    writer = None
    if runtime.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    try:
        iterations = engine.train(model, method, data.train, cfg, runtime, run_dir, writer)
        method.finish(model, data)
        summary = method.evaluate(model, data)
    finally:
        if writer is not None:
            writer.close()
    record = metrics_record(cfg, task, info, summary, {
        "iterations": iterations, "train_images": len(data.train),
        "device": str(runtime.device), "world_size": runtime.world,
        "wall_time_s": round(time.time() - started, 2),
    })
    if runtime.is_main:
        save_model(run_dir / "model.pt", model, task, cfg, method)
        atomic.write_json(run_dir / "metrics.json", record)
        (run_dir / engine.RESUME_FILE).unlink(missing_ok=True)
        log.info("mIoU base %s novel %s all %s HM %s", *(_pct(record[k]) for k in
                 ("miou_base", "miou_novel", "miou_all", "hm")))
    return record


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def eval_run(checkpoint: str | Path, overrides: dict, out_dir: str | Path) -> dict:
    """Evaluate a saved model on its task's test set (evaluation only)."""
    from ifss.config import merge

    ckpt = load_checkpoint(checkpoint)
    saved = json.loads(ckpt["meta"]["config"])
    cfg = from_dict(RunConfig, merge(saved, overrides))
    cfg, task, info, method_cls, params = resolve(cfg, training=False)
    check_classes(ckpt, checkpoint, task, cfg.step)
    out_dir = Path(out_dir)
    runtime = setup(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        started = time.time()
        ensure_dataset(cfg)
        data = build_step_data(cfg, task)
        model = build_model(cfg.model, task.classes_per_step(cfg.step), info.classifier,
                            **method_cls.model_options(cfg, ckpt["model"]))
        model.load_state_dict(ckpt["model"])
        model.to(runtime.device)
        method = method_cls(params, cfg, runtime)
        method.load_state_dict(ckpt.get("method", {}))
        summary = method.evaluate(model, data)
        record = metrics_record(cfg, task, info, summary, {
            "checkpoint": str(checkpoint), "device": str(runtime.device),
            "wall_time_s": round(time.time() - started, 2),
        })
        if runtime.is_main:
            atomic.write_json(out_dir / "metrics.json", record)
        return record
    finally:
        teardown()
