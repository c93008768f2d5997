"""Optimiser, learning-rate schedule and gradient clipping, built from `TrainConfig`.

Schedules are one pure function, `lr_factor(schedule, it, total, ...)`: the multiplier of each
group's base lr for the step taken after `it` steps (0-based), which is what LambdaLR applies when
it is stepped once per iteration.

    poly           (1 - it/total)^power                                        PIFS, MiB, SDR
    cosine         0.5 (1 + cos(pi it/total))                                  GFSS
    constant_poly  1 while it < warmup, then (1 - it/total)^power, `it`        WILSON's "warmup"
                   counted from 0 (no re-normalisation after the plateau)
    warmup_poly    w(it) (1 - it/total)^power with the linear warm-up           detectron2's
                   w = f (1 - it/warmup) + it/warmup for it < warmup, else 1     WarmupPolyLR
    constant       1

`it` is clamped to `total`, so a schedule never goes negative (or complex) past its end.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from ifss.config import OPTIMIZERS, SCHEDULES, WARMUP_SCHEDULES, TrainConfig
from ifss.errors import IfssError, unknown


def lr_factor(schedule: str, it: int, total: int, power: float = 0.9, warmup: int = 0,
              warmup_factor: float = 0.001) -> float:
    """The multiplier of the base learning rate for the step after `it` steps of `total`."""
    if schedule not in SCHEDULES:
        raise unknown("schedule", schedule, SCHEDULES, "in train.schedule")
    if schedule == "constant" or total <= 0:
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
    # the poly expression exactly as the engine always wrote it: resumed runs reproduce bit for bit
    poly = (1 - min(it, total) / total) ** power
    if schedule == "poly":
        return poly
    if schedule == "constant_poly":
        return 1.0 if it < warmup else poly
    if it >= warmup:  # warmup_poly
        return poly
    alpha = it / warmup
    return (warmup_factor * (1 - alpha) + alpha) * poly


def build_optimizer(groups: list[dict], train: TrainConfig) -> torch.optim.Optimizer | None:
    """SGD or AdamW over the groups that train; None when none does.

    `groups` are `{"name", "params", "lr_mult"}`; `train.lr_mult` overrides a group's multiplier by
    name. A group with multiplier 0 stops taking gradients and stays out of the optimiser; every
    other group takes gradients and gets `lr = train.lr * multiplier`.
    """
    names = [g["name"] for g in groups]
    for name in train.lr_mult:
        if name not in names:
            raise unknown("parameter group", name, names, "in train.lr_mult")
    if train.optimizer not in OPTIMIZERS:
        raise unknown("optimizer", train.optimizer, OPTIMIZERS, "in train.optimizer")
    active = []
    for group in groups:
        mult = train.lr_mult.get(group["name"], group["lr_mult"])
        trainable = mult > 0
        for p in group["params"]:
            p.requires_grad_(trainable)
        if trainable and group["params"]:
            active.append({"params": group["params"], "lr": train.lr * mult, "name": group["name"]})
    if not active:
        return None
    if train.optimizer == "adamw":
        return torch.optim.AdamW(active, lr=train.lr, betas=tuple(train.betas),
                                 weight_decay=train.weight_decay)
    return torch.optim.SGD(
        active, lr=train.lr, momentum=train.momentum,
        nesterov=train.nesterov and train.momentum > 0, weight_decay=train.weight_decay,
    )


def build_schedule(optimizer: torch.optim.Optimizer, train: TrainConfig,
                   total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_factor`, to be stepped once per iteration; its state_dict resumes it."""
    if train.schedule in WARMUP_SCHEDULES and train.warmup_iterations > total:
        raise IfssError(f"train.warmup_iterations={train.warmup_iterations} exceeds the run's "
                        f"{total} iterations; lower train.warmup_iterations")
    schedule, power = train.schedule, train.lr_power
    warmup, factor = train.warmup_iterations, train.warmup_factor
    lr_factor(schedule, 0, total, power, warmup, factor)  # an unknown name fails here, by name

    def factor_at(it: int) -> float:
        return lr_factor(schedule, it, total, power, warmup, factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor_at)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor | None:
    """Clip the global 2-norm of the gradients to `max_norm` (> 0); the norm before clipping.

    With a GradScaler, call `scaler.unscale_(optimizer)` first so the norm is the true one.
    """
    if max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
