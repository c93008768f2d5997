"""The training loop and the dense evaluation loop.

train(): SGD with momentum, weight decay and learning-rate multipliers per parameter group, poly
schedule stepped every iteration, autocast on CUDA, DDP when the runtime is distributed, a resume
checkpoint written atomically every `checkpoint_every` iterations (model, optimiser, schedule,
method state, RNG) from which a rerun continues, TensorBoard scalars for every named loss term.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ifss.atomic import torch_save
from ifss.config import RunConfig
from ifss.data.batches import ResumableBatches
from ifss.data.segmentation import SegmentationSet, pad_collate
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.metrics import ConfusionMatrix, summarize
from ifss.models.norm import fix_norm_statistics

log = logging.getLogger("ifss")
RESUME_FILE = "resume.pt"


def to_device(batch: dict, runtime: Runtime) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(runtime.device, non_blocking=True)
            if key == "image" and runtime.channels_last:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def build_optimizer(groups: list[dict], cfg: RunConfig):
    """Frozen groups (multiplier 0) stop taking gradients and stay out of the optimiser."""
    active = []
    for group in groups:
        trainable = group["lr_mult"] > 0
        for p in group["params"]:
            p.requires_grad_(trainable)
        if trainable and group["params"]:
            active.append({"params": group["params"], "lr": cfg.train.lr * group["lr_mult"],
                           "name": group["name"]})
    if not active:
        return None
    t = cfg.train
    return torch.optim.SGD(
        active, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
        weight_decay=t.weight_decay,
    )


def poly_schedule(optimizer, total: int, power: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: (1 - min(it, total) / total) ** power
    )


def total_iterations(cfg: RunConfig, batches: ResumableBatches) -> int:
    if cfg.train.iterations >= 0:
        return cfg.train.iterations
    return cfg.train.epochs * batches.per_epoch


def _rng_state(runtime: Runtime) -> dict:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def _set_rng_state(state: dict, runtime: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def train(
    model: nn.Module,
    method,
    dataset: SegmentationSet,
    cfg: RunConfig,
    runtime: Runtime,
    run_dir: Path,
    writer=None,
) -> int:
    """Train `model` in place; returns the number of iterations of the schedule."""
    batches = ResumableBatches(len(dataset), cfg.data.batch_size, cfg.seed, runtime.rank, runtime.world)
    total = total_iterations(cfg, batches)
    if total == 0:
        return 0
    optimizer = build_optimizer(method.param_groups(model, cfg.train), cfg)
    if optimizer is None:
        raise IfssError(f"method {cfg.method} trains no parameter but train.iterations={total}; "
                        "set train.iterations=0")
    scheduler = poly_schedule(optimizer, total, cfg.train.lr_power)
    scaler = torch.amp.GradScaler(enabled=runtime.device.type == "cuda" and runtime.amp == "fp16")
    start = _resume(run_dir / RESUME_FILE, model, optimizer, scheduler, scaler, method, runtime)

    net = model
    if runtime.distributed:
        net = DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    # The loader's own generator: drawing worker seeds from the global RNG would shift the
    # random stream of a resumed run (augmentations are seeded per sample anyway).
    loader = DataLoader(
        dataset, batch_sampler=batches.span(start, total), num_workers=cfg.data.workers,
        collate_fn=pad_collate, pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed + start),
    )
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # training crops have one size
    model.train()
    if cfg.train.fix_bn:
        fix_norm_statistics(model)
    old = method.old_model
    bar = tqdm(total=total, initial=start, disable=not (sys.stderr.isatty() and runtime.is_main),
               desc=f"{cfg.method} step {cfg.step}", dynamic_ncols=True)
    it = start
    for batch in loader:
        batch = to_device(batch, runtime)
        with runtime.autocast():
            out = net(batch["image"])
            old_out = None
            if old is not None:
                with torch.no_grad():
                    old_out = old(batch["image"])
            terms = method.loss(batch, out, old_out)
            loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        it += 1
        bar.update()
        if it % cfg.train.log_every == 0 or it == total:
            _log_terms(terms, loss, optimizer, it, total, writer, runtime)
        if runtime.is_main and cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0 \
                and it < total:
            _save_resume(run_dir / RESUME_FILE, it, model, optimizer, scheduler, scaler, method, runtime)
    bar.close()
    return total


def _log_terms(terms, loss, optimizer, it, total, writer, runtime) -> None:
    values = {name: float(t.detach()) for name, t in terms.items()}
    values["total"] = float(loss.detach())
    if not math.isfinite(values["total"]):
        raise IfssError(f"the loss became {values['total']} at iteration {it}; lower train.lr")
    if not runtime.is_main:
        return
    lr = optimizer.param_groups[0]["lr"]
    log.info("iter %d/%d  %s  lr %.2e", it, total,
             "  ".join(f"{k} {v:.4f}" for k, v in values.items()), lr)
    if writer is not None:
        for name, value in values.items():
            writer.add_scalar(f"loss/{name}", value, it)
        writer.add_scalar("lr", lr, it)


def _save_resume(path, it, model, optimizer, scheduler, scaler, method, runtime) -> None:
    torch_save({
        "iteration": it,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "method": method.state_dict(),
        "rng": _rng_state(runtime),
    }, path)


def _resume(path, model, optimizer, scheduler, scaler, method, runtime) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=runtime.device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    method.load_state_dict(state["method"])
    _set_rng_state({k: v.cpu() for k, v in state["rng"].items()}, runtime)
    log.info("resumed from %s at iteration %d", path, state["iteration"])
    return state["iteration"]


@torch.no_grad()
def evaluate_dense(
    model: nn.Module, dataset: SegmentationSet, num_base: int, runtime: Runtime,
    batch_size: int, workers: int = 0,
) -> dict:
    """Per-class IoU and base / novel / all / HM over the test set (sharded over ranks)."""
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
        matrix.update(logits.argmax(1), batch["label"])
    matrix.all_reduce()
    return summarize(matrix.mat, num_base)
