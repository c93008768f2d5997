"""The training loop and the dense evaluation loop.

A step trains in phases: the method's main training, then any extra phase the method asks for
(DWI's generator cool-down). Every phase runs through the same loop: optimiser, schedule and
gradient clipping from its TrainConfig (ifss.optim), autocast on CUDA, DDP when the runtime is
distributed, the method's hooks, TensorBoard scalars for every named loss term, and a resume
checkpoint written atomically every `checkpoint_every` iterations (model, the method's own
modules and state, optimiser, schedule, RNG, phase and iteration) from which a rerun continues.
A resume checkpoint records what it was made for (ifss.builder.made_for: the resolved config
minus the keys that may change, and the previous checkpoint's content) and is used only by a run
that matches.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ifss import optim
from ifss.atomic import torch_save
from ifss.builder import load_failure, made_for
from ifss.config import RunConfig, TrainConfig
from ifss.data.batches import ResumableBatches
from ifss.data.segmentation import SegmentationSet, pad_collate
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.metrics import ConfusionMatrix, predicted_classes, summarize
from ifss.models.state_fit import state_misfit

log = logging.getLogger("ifss")
RESUME_FILE = "resume.pt"
MAIN = "train"  # the name of the method's main phase (its log and TensorBoard tags stay bare)


@dataclass
class Phase:
    """One training loop of a step."""

    name: str
    iterations: int
    groups: list[dict]  # {"name", "params", "lr_mult"}: what the optimiser trains
    train: TrainConfig  # optimiser, schedule and clipping of this phase
    batches: Callable[[int], Iterable[dict]]  # first iteration -> host batches from there on
    loss: Callable[[dict, nn.Module | None], dict[str, torch.Tensor]]  # batch, net -> terms
    train_mode: Callable[[], None]  # puts each part of the model in train or eval mode
    forward: nn.Module | None = None  # what `loss` runs forward: wrapped in DDP under torchrun
    rng: torch.Generator | None = None  # the batch source's generator, kept in resume.pt
    autocast: bool = True  # False: the loss manages precision itself
    before_step: Callable[[int, int], None] | None = None  # (iteration, total)
    after_backward: Callable[[int], None] | None = None
    after_step: Callable[[int], None] | None = None
    unused_parameters: bool = False  # some iterations leave parts of `forward` without gradient


def to_device(batch: dict, runtime: Runtime) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(runtime.device, non_blocking=True)
            if key == "image" and runtime.channels_last:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def total_iterations(cfg: RunConfig, batches: ResumableBatches) -> int:
    if cfg.train.iterations >= 0:
        return cfg.train.iterations
    return cfg.train.epochs * batches.per_epoch


def main_phase(model: nn.Module, method, dataset: SegmentationSet, cfg: RunConfig,
               runtime: Runtime) -> Phase:
    """The method's own training: its loss on the step's batches, with its hooks."""
    batches = method.batch_source(dataset, cfg, runtime)
    total = total_iterations(cfg, batches) if method.trains else 0
    if not method.trains and cfg.train.iterations > 0:
        log.info("%s takes no gradient step; train.iterations=%d is not used", cfg.method,
                 cfg.train.iterations)

    def loader(start: int):
        # The loader's own generator: drawing worker seeds from the global RNG would shift the
        # random stream of a resumed run (augmentations are seeded per sample anyway).
        return DataLoader(
            dataset, batch_sampler=batches.span(start, total), num_workers=cfg.data.workers,
            collate_fn=pad_collate, pin_memory=runtime.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed + start),
        )

    # only a method that asks for logits at the features' size passes the keyword: a model
    # given in a test may not take it
    options = {} if method.upsample_logits else {"upsample": False}

    def loss(batch: dict, net: nn.Module) -> dict[str, torch.Tensor]:
        out = net(batch["image"], **options)
        old_out = None
        if method.old_model is not None:
            old_out = teacher_forward(method.old_model, batch["image"], options,
                                      cfg.train.teacher_precision)
        return method.loss(batch, out, old_out)

    return Phase(MAIN, total, method.param_groups(model, cfg.train), cfg.train, loader, loss,
                 lambda: method.train_mode(model), forward=model,
                 before_step=method.before_step, after_backward=method.after_backward,
                 after_step=method.after_step, unused_parameters=method.unused_parameters)


def teacher_forward(teacher: nn.Module, image: torch.Tensor, options: dict,
                    precision: str) -> dict:
    """The frozen previous model's outputs, without gradients. precision `bf16`
    (train.teacher_precision) runs the forward under bf16 autocast on the image's device and
    hands the method float32 tensors, so the losses keep their precision; `same` leaves the
    precision to the caller's context (train.amp's autocast on CUDA)."""
    with torch.no_grad():
        if precision != "bf16":
            return teacher(image, **options)
        with torch.autocast(image.device.type, dtype=torch.bfloat16):
            out = teacher(image, **options)
    return _as_float32(out)


def _as_float32(value):
    """Floating tensors in nested dicts / lists / tuples as float32; anything else as it is."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(v) for v in value)
    return value


def train(model: nn.Module, method, dataset: SegmentationSet, cfg: RunConfig, runtime: Runtime,
          run_dir: Path, writer=None, extra_phases: Iterable[Phase] = ()) -> int:
    """Train `model` (and the method's own modules) in place through the main phase and then
    `extra_phases`; returns the number of iterations of the main phase."""
    phases = [main_phase(model, method, dataset, cfg, runtime), *extra_phases]
    resume = _load_resume(run_dir / RESUME_FILE, runtime, [p.name for p in phases], cfg)
    for index, phase in enumerate(phases):
        if resume is not None and index < resume["phase_index"]:
            continue  # finished before the kill: its result is in the resume state
        state = resume if resume is not None and index == resume["phase_index"] else None
        _run_phase(phase, index, model, method, cfg, runtime, run_dir, writer, state)
    return phases[0].iterations


def _run_phase(phase: Phase, index: int, model, method, cfg: RunConfig, runtime: Runtime,
               run_dir: Path, writer, resume: dict | None) -> None:
    total = phase.iterations
    if total == 0:
        return
    optimizer = optim.build_optimizer(phase.groups, phase.train)
    if optimizer is None:
        raise IfssError(f"{cfg.method}'s phase {phase.name!r} has no parameter to train with "
                        f"{total} iterations; every one of its groups has lr multiplier 0")
    scheduler = optim.build_schedule(optimizer, phase.train, total)
    scaler = torch.amp.GradScaler(enabled=runtime.device.type == "cuda" and runtime.amp == "fp16")
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    start = 0
    if resume is not None:
        start = _restore(resume, model, method, optimizer, scheduler, scaler, phase, runtime)
    net = phase.forward
    if net is not None and runtime.distributed:
        net = DistributedDataParallel(
            net, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=phase.unused_parameters)
    # DDP averages the gradients of what runs through it; the engine averages the rest.
    covered = {id(p) for p in net.parameters()} if isinstance(net, DistributedDataParallel) else set()
    unsynced = [p for p in trained if id(p) not in covered]
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # training crops have one size
    phase.train_mode()
    desc = f"{cfg.method} step {cfg.step}" + ("" if phase.name == MAIN else f" {phase.name}")
    bar = tqdm(total=total, initial=start, disable=not (sys.stderr.isatty() and runtime.is_main),
               desc=desc, dynamic_ncols=True)
    it = start
    for batch in phase.batches(start):
        if phase.before_step is not None:
            phase.before_step(it, total)
        batch = to_device(batch, runtime)
        with runtime.autocast() if phase.autocast else contextlib.nullcontext():
            terms = phase.loss(batch, net)
            loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if runtime.distributed and unsynced:
            _average_gradients(unsynced, runtime)
        if phase.after_backward is not None:
            phase.after_backward(it)
        if phase.train.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            optim.clip_gradients(trained, phase.train.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        if phase.after_step is not None:
            phase.after_step(it)
        scheduler.step()
        it += 1
        bar.update()
        if it % cfg.train.log_every == 0 or it == total:
            _log_terms(phase.name, terms, loss, optimizer, it, total, writer, runtime)
        if runtime.is_main and cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0 \
                and it < total:
            _save_resume(run_dir / RESUME_FILE, index, phase, it, model, method, optimizer,
                         scheduler, scaler, runtime, cfg)
    bar.close()


def _average_gradients(params: list[torch.Tensor], runtime: Runtime) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= runtime.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _log_terms(phase: str, terms, loss, optimizer, it, total, writer, runtime) -> None:
    values = {name: float(t.detach()) for name, t in terms.items()}
    values["total"] = float(loss.detach())
    where = "" if phase == MAIN else f" in phase {phase!r}"
    if not math.isfinite(values["total"]):
        raise IfssError(f"the loss became {values['total']} at iteration {it}{where}; lower "
                        "the learning rate (train.lr, or the phase's own lr parameter)")
    if not runtime.is_main:
        return
    lr = optimizer.param_groups[0]["lr"]
    prefix = "" if phase == MAIN else f"{phase} "
    log.info("%siter %d/%d  %s  lr %.2e", prefix, it, total,
             "  ".join(f"{k} {v:.4f}" for k, v in values.items()), lr)
    if writer is not None:
        tag = "" if phase == MAIN else f"{phase}/"
        for name, value in values.items():
            writer.add_scalar(f"{tag}loss/{name}", value, it)
        writer.add_scalar(f"{tag}lr", lr, it)


def _rng_state(runtime: Runtime) -> dict:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def _set_rng_state(state: dict, runtime: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def _show(value) -> str:
    if isinstance(value, str):
        if value.startswith("sha256:"):
            return f"sha256:{value[7:19]}"
        return value or "''"
    return json.dumps(value)


def _check_made_for(state: dict, path: Path, cfg: RunConfig) -> None:
    fix = f"delete {path} to start afresh, or rerun with the old settings"
    if not isinstance(state.get("made_for"), str):
        raise IfssError(f"{path} does not record the settings it was made for (an older ifss "
                        f"wrote it); delete {path} to start afresh")
    have, want = json.loads(state["made_for"]), made_for(cfg)
    unset = object()
    diffs = [f"{key} {_show(have.get(key, '(unset)'))} -> {_show(want.get(key, '(unset)'))}"
             for key in sorted(set(have) | set(want))
             if have.get(key, unset) != want.get(key, unset)]
    if diffs:
        more = f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise IfssError(f"{path} was left by a run with other settings "
                        f"({'; '.join(diffs[:6])}{more}); {fix}")


def _save_resume(path, index, phase, it, model, method, optimizer, scheduler, scaler,
                 runtime, cfg: RunConfig) -> None:
    torch_save({
        "made_for": json.dumps(made_for(cfg), sort_keys=True),
        "phase": phase.name,
        "phase_index": index,
        "iteration": it,
        "model": model.state_dict(),
        "modules": {name: m.state_dict() for name, m in method.modules().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "method": method.state_dict(),
        "rng": _rng_state(runtime),
        "batch_rng": phase.rng.get_state() if phase.rng is not None else None,
    }, path)


def _read_resume(path: Path, map_location, mmap: bool = False) -> dict:
    """resume.pt's contents (weights only: pickled code is refused, never run); a file that
    cannot be read is one sentence naming it."""
    try:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not (mmap and "mmap can only be used" in str(err)):
                raise
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch raises, the fix is the same
        raise IfssError(f"{path} cannot be read ({load_failure(err, path)}); delete {path} to "
                        "start afresh") from None
    if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
        raise IfssError(f"{path} is not a resume checkpoint of ifss (no iteration entry); "
                        f"delete {path} to start afresh")
    return state


def check_resume(path: Path, cfg: RunConfig, model: nn.Module | None = None) -> None:
    """Refuse, before the run writes anything, a resume.pt that cannot be read, was made for
    other settings or does not fit `model` (memory-mapped: the weights themselves are not read)."""
    if path.is_file():
        state = _read_resume(path, "cpu", mmap=True)
        _check_made_for(state, path, cfg)
        if model is not None:
            _check_fit(state, path, model)


def _check_fit(state: dict, path: Path, model: nn.Module) -> None:
    saved = state.get("model") if isinstance(state.get("model"), dict) else {}
    misfit = state_misfit(model.state_dict(), saved, lambda key: False)
    if misfit:
        raise IfssError(f"{path} does not fit this run's model ({misfit}); delete {path} to "
                        "start afresh")


def _load_resume(path: Path, runtime: Runtime, phases: list[str],
                 cfg: RunConfig | None = None) -> dict | None:
    """The resume state in `path` (None without one), checked against what this run is: made
    for `cfg` (when given) and written in one of its `phases`."""
    if not path.is_file():
        return None
    state = _read_resume(path, runtime.device)
    if cfg is not None:
        _check_made_for(state, path, cfg)
    if state.get("phase", MAIN) not in phases:
        raise IfssError(f"{path} was written in phase {state.get('phase')!r}, which this run does "
                        f"not have (phases: {', '.join(phases)}); delete it to start afresh")
    state["phase_index"] = phases.index(state.get("phase", MAIN))
    state["path"] = path
    return state


def _restore(state, model, method, optimizer, scheduler, scaler, phase, runtime) -> int:
    path = state["path"]
    _check_fit(state, path, model)
    try:
        model.load_state_dict(state["model"])
        modules = method.modules()
        for name, module_state in state.get("modules", {}).items():
            modules[name].load_state_dict(module_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        method.load_state_dict(state["method"])
        _set_rng_state({k: v.cpu() for k, v in state["rng"].items()}, runtime)
        if phase.rng is not None and state.get("batch_rng") is not None:
            phase.rng.set_state(state["batch_rng"].cpu())
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        raise IfssError(f"{path} does not fit this run ({load_failure(err)}); delete {path} to "
                        "start afresh") from None
    where = "" if phase.name == MAIN else f" of phase {phase.name!r}"
    log.info("resumed from %s at iteration %d%s", path, state["iteration"], where)
    return state["iteration"]


@torch.no_grad()
def evaluate_dense(
    model: nn.Module, dataset: SegmentationSet, num_base: int, runtime: Runtime,
    batch_size: int, workers: int = 0, return_matrix: bool = False,
) -> dict | tuple[dict, torch.Tensor]:
    """Per-class IoU and base / novel / all / HM over the test set (sharded over ranks);
    `return_matrix`: (that, the confusion matrix summed over ranks)."""
    model.eval()
    indices = list(range(runtime.rank, len(dataset), runtime.world))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
        collate_fn=pad_collate, pin_memory=runtime.device.type == "cuda",
    )
    matrix = ConfusionMatrix(dataset.num_classes, runtime.device)
    for batch in loader:
        batch = to_device(batch, runtime)
        with runtime.autocast():
            logits = model(batch["image"])["logits"]
        matrix.update(predicted_classes(logits), batch["label"])
    matrix.all_reduce()
    summary = summarize(matrix.mat, num_base)
    return (summary, matrix.mat) if return_matrix else summary
