"""The state a method's own step-0 run hands to its step 1 (model.pt's "method" and "modules":
importance weights, prototypes, a memory, DWI's generator), made in memory for the benchmark as
the workflow makes it, and the run config the benchmark trains with."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
from pathlib import Path

import torch

from ifss import engine
from ifss.bench.sizes import Sizes
from ifss.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from ifss.data.build import build_step_data
from ifss.distributed import Runtime
from ifss.methods.registry import MethodInfo, method_info


def run_config(name: str, sizes: Sizes, runtime: Runtime, root: Path, step: int = 1,
               iterations: int | None = None, train: dict | None = None) -> RunConfig:
    """The run config the benchmark trains with (the paper model at the benchmark size);
    `train`: TrainConfig keys on top (a timed variant such as a bf16 teacher)."""
    return RunConfig(
        dataset="synthetic", task=sizes.task, step=step, nshot=sizes.nshot, ishot=0,
        method=name, seed=0,
        data=DataConfig(root=str(root), crop_size=sizes.crop, batch_size=sizes.batch,
                        workers=0),
        model=ModelConfig(backbone=sizes.backbone, head_channels=sizes.head_channels,
                          output_stride=sizes.output_stride, norm=sizes.norm,
                          activation=sizes.activation),
        # lr 1e-3: the papers' few-shot steps (at 1e-2 ILT's loss diverges from random weights)
        train=TrainConfig(iterations=iterations or sizes.method_iterations, checkpoint_every=0,
                          lr=1e-3, device=runtime.device.type, amp=runtime.amp,
                          channels_last=runtime.channels_last, **(train or {})),
        eval=EvalConfig(batch_size=sizes.eval_batch),
        params=dict(sizes.method_params.get(name, {})),
    )


def load_matching(model: torch.nn.Module, state: dict) -> None:
    """Load the entries of `state` whose name and shape the model has (a step-0 checkpoint's body
    and head; an embedding classifier's head output differs and keeps its own init)."""
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items()
                           if k in own and own[k].shape == v.shape}, strict=False)


def seeded_step(run, runtime: Runtime, base: dict | None):
    """(step data, model) of a resolved run, after seeding as `ifss train` does; the model holds
    the entries of the "step-0" weights `base` that fit it."""
    from ifss.run import seed_everything

    seed_everything(run.cfg.seed)
    data = build_step_data(run.cfg, run.task, needs=run.method_cls.data_needs(run.cfg))
    model = run.model()
    if base:
        load_matching(model, base)
    return data, model


def own_step0(info: MethodInfo) -> bool:
    """Whether a method's step 1 starts from a step-0 run of its own (not another method's)."""
    return bool(info.step0_from) or (info.step0 and info.base == info.name)


def carries_state(method_cls) -> bool:
    """Whether a method hands anything besides the model to its next step: it overrides the
    method contract's `state_dict` (model.pt's "method") or `build_modules` ("modules")."""
    from ifss.methods.base import Method

    return (method_cls.state_dict is not Method.state_dict
            or method_cls.build_modules is not Method.build_modules)


def shortened(phase: engine.Phase, iterations: int) -> engine.Phase:
    """`phase` cut to at most `iterations` iterations (its batch source included: an extra
    phase's source may yield its full length whatever the phase's count says)."""
    if phase.iterations <= iterations:
        return phase
    source = phase.batches
    return dataclasses.replace(
        phase, iterations=iterations,
        batches=lambda start: itertools.islice(source(start), max(0, iterations - start)))


class Step0Error(RuntimeError):
    """A method's in-memory step-0 run failed (so its step 1 has nothing to start from)."""


def _on_cpu(value):
    """A copy of a (nested) state with every tensor on the CPU: what torch.load of model.pt
    (map_location="cpu") gives."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def carried_state(name: str, sizes: Sizes, runtime: Runtime, root: Path, run_dir: Path,
                  base: dict | None = None, iterations: int | None = None) -> dict | None:
    """What method `name`'s own step-0 run hands to its step 1, as model.pt holds it:
    `{"method": method.state_dict(), "modules": {name: module.state_dict()}}` (CPU tensors).

    Made as the workflow makes it, in memory: the step-0 run set up as `ifss train` would (from
    the "step-0" weights `base`, which stand in for the pretrained body and, for a `step0_from`
    method, the step-0 model it starts from, also as the frozen previous model when it asks for
    one), `engine.train` over `iterations` (default `sizes.step0_iterations`) of its main phase
    and at most as many of each of its extra phases, then `finish`. None when the method has
    no step-0 run of its own or carries nothing (FT, COS, RT, SPN)."""
    from ifss.builder import build_method, place, resolve

    info = method_info(name)
    if not own_step0(info):
        return None
    iterations = max(1, sizes.step0_iterations if iterations is None else iterations)
    run = resolve(run_config(name, sizes, runtime, root, step=0, iterations=iterations),
                  training=False)
    if not carries_state(run.method_cls):
        return None
    cfg = run.cfg
    data, model = seeded_step(run, runtime, base)
    old = None
    if run.method_cls.uses_old_model and info.step0_from:  # the step-0 model it starts from
        old = run.model()
        old.load_state_dict(model.state_dict())
        old.to(runtime.device).eval().requires_grad_(False)
    method = build_method(run, runtime, model, None)
    place(model, method, runtime)
    method.prepare(model, old, data)
    phases = [shortened(p, iterations) for p in method.extra_phases(model, data)]
    with contextlib.redirect_stderr(io.StringIO()):
        engine.train(model, method, data.train, cfg, runtime, run_dir, None, phases)
    method.finish(model, data)
    return _on_cpu({"method": method.state_dict(),
                    "modules": {k: m.state_dict() for k, m in method.modules().items()}})
