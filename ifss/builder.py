"""One place that turns a config (and a checkpoint) into what a run needs: the resolved config,
the task, the method and its model. `ifss train`, `ifss eval`, the figures and the benchmark all
build through here, so a model is always built and loaded the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ifss.config import PROTOCOLS, RunConfig, from_dict, merge
from ifss.data.incremental import check_weakshot_step
from ifss.distributed import Runtime
from ifss.download import file_hash
from ifss.errors import IfssError
from ifss.methods.registry import (MethodInfo, get_method_class, method_info, method_params,
                                   weakshot_methods)
from ifss.models import build_model
from ifss.tasks import Task, get_task


@dataclass
class ResolvedRun:
    cfg: RunConfig  # resolved: derived values and the method's params written out
    task: Task
    info: MethodInfo
    method_cls: type
    params: object  # the method's Params dataclass

    def model(self, step: int | None = None, state: dict | None = None) -> nn.Module:
        """A fresh model with the classes of steps 0..`step` (default: this run's step); `state`
        is the checkpoint's model state when there is one (SPN reads its vector width there)."""
        step = self.cfg.step if step is None else step
        options = self.method_cls.model_options(self.cfg, state)
        return build_model(self.cfg.model, self.task.classes_per_step(step), self.info.classifier,
                           **options)

    def method(self, runtime: Runtime):
        return self.method_cls(self.params, self.cfg, runtime)


def resolve(cfg: RunConfig, training: bool = True) -> ResolvedRun:
    """Validate names and fill in the method's hyper-parameters explicitly; `training` also
    checks that the run has the model it starts from, and that a weak-shot method and the
    weak-shot protocol go together (step 1 of a two-step task, from ImageNet weights: no
    previous model)."""
    task = get_task(cfg.dataset, cfg.task)
    task.check_step(cfg.step)
    info = method_info(cfg.method)
    params = method_params(cfg.method, cfg.params)
    cfg = dataclasses.replace(cfg.resolved(), params=dataclasses.asdict(params))
    run = ResolvedRun(cfg, task, info, get_method_class(cfg.method), params)
    if not training:
        return run
    if check_weakshot(cfg, task, info):
        return run
    if cfg.step == 0 and not info.step0:
        raise IfssError(
            f"method {info.name} has no step-0 training; its step 1 starts from the step-0 run of "
            f"method {info.base} (train that with method={info.base})"
        )
    if cfg.step > 0 and info.step0_only:
        raise IfssError(f"method {info.name} pre-trains the step-0 model only and has no step "
                        f"{cfg.step}; evaluate its model.pt with a few-shot method")
    if cfg.step > 0 and not cfg.previous:
        raise IfssError(f"step {cfg.step} needs the model of step {cfg.step - 1}: "
                        "set previous=PATH/model.pt")
    if cfg.step == 0 and info.step0_from and not cfg.previous:
        raise IfssError(f"step 0 of {info.name} starts from the step-0 model of {info.step0_from}: "
                        "set previous=PATH/model.pt")
    return run


def check_weakshot(cfg: RunConfig, task: Task, info: MethodInfo) -> bool:
    """Whether `cfg` is a weak-shot run, refused unless it is a complete one: a weak-shot method
    under data.protocol=weakshot (and no other method or protocol), step 1 of a two-step task,
    no previous model (it starts from ImageNet weights, model.pretrained)."""
    weak = cfg.data.protocol == "weakshot"
    if info.weakshot and not weak:
        others = [p for p in PROTOCOLS if p != "weakshot"]
        raise IfssError(
            f"method {info.name} is a weak-shot method and trains under data.protocol=weakshot "
            f"only, not {cfg.data.protocol}; set data.protocol=weakshot (the protocols "
            f"{', '.join(others)} take the other methods)")
    if weak and not info.weakshot:
        raise IfssError(
            f"data.protocol=weakshot trains a weak-shot method ({', '.join(weakshot_methods())}), "
            f"and {info.name} is not one; set method={weakshot_methods()[0]} or choose another "
            "data.protocol")
    if not weak:
        return False
    check_weakshot_step(task, cfg.step)
    if cfg.previous:
        raise IfssError(
            f"a weak-shot run starts from ImageNet weights (model.pretrained), not from a previous "
            f"model, but previous={cfg.previous}; leave previous empty and set model.pretrained")
    return True


def load_failure(err: BaseException, path: str | Path | None = None) -> str:
    """Why torch.load (weights only) of `path` failed, in a clause: torch's own messages run to
    paragraphs, and on a file that is not torch's zip archive they say nothing useful."""
    text = str(err)
    code = re.search(r"unsupported GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if code:
        return f"it holds pickled code ({code.group(1)}), which is never run"
    if path is not None and Path(path).is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            return "it is empty"
        if head != b"PK\x03\x04":
            return "it is not a file written by torch.save"
        if not zipfile.is_zipfile(path):
            return "it is truncated or corrupt"
    if isinstance(err, EOFError) or "central directory" in text or "unexpected pos" in text:
        return "it is truncated or corrupt"
    if isinstance(err, pickle.UnpicklingError):
        return "it is not a file written by torch.save"
    if isinstance(err, OSError):
        return (err.strerror or text).lower()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
        lines = lines[1:]  # torch's first line only names the class
    first = lines[0] if lines else type(err).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise IfssError(f"checkpoint {path} is a folder; give the model.pt inside it")
    if not path.is_file():
        raise IfssError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise IfssError(f"checkpoint {path} cannot be read ({load_failure(err, path)}); give the "
                        "model.pt of a finished run") from None
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


def check_base(ckpt: dict, path, cfg: RunConfig, info: MethodInfo) -> None:
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


def build_step_models(run: ResolvedRun, runtime: Runtime):
    """The model of this step with the previous step's weights loaded, the frozen previous model
    when the method asks for one, and the previous checkpoint (None at a fresh step 0 and at a
    weak-shot step 1, which start from the model's own initialisation, ImageNet weights when
    model.pretrained is set)."""
    cfg = run.cfg
    previous_step = max(cfg.step - 1, 0)
    ckpt = load_checkpoint(cfg.previous) if cfg.previous else None
    state = ckpt["model"] if ckpt else None
    model = run.model(state=state)
    if ckpt is None:
        return model, None, None
    check_classes(ckpt, cfg.previous, run.task, previous_step)
    check_base(ckpt, cfg.previous, cfg, run.info)
    if cfg.step > 0:
        model.load_previous_step(state, str(cfg.previous))
    else:
        model.load_state_dict(state)
    old = None
    if run.method_cls.uses_old_model:
        old = run.model(previous_step, state)
        old.load_state_dict(state)
        old.to(runtime.device).eval().requires_grad_(False)
    return model, old, ckpt


def build_method(run: ResolvedRun, runtime: Runtime, model: nn.Module, ckpt: dict | None):
    """The method with its own modules made for `model` and, from the previous checkpoint, the
    state and module weights that travel between steps."""
    method = run.method(runtime)
    method.attach(model)
    if ckpt is not None:
        if ckpt.get("method"):
            method.carry(ckpt["method"])
        method.load_modules(ckpt.get("modules", {}), str(run.cfg.previous))
    return method


def saved_config(ckpt: dict, overrides: dict | None = None) -> RunConfig:
    """The config a checkpoint was trained with, with `overrides` (a nested dict) on top."""
    return from_dict(RunConfig, merge(json.loads(ckpt["meta"]["config"]), overrides or {}))


def model_from_checkpoint(path: str | Path, overrides: dict | None = None):
    """(resolved run, model with the checkpoint's weights, checkpoint) of a saved model.pt;
    `overrides` may move the data root or change evaluation settings."""
    ckpt = load_checkpoint(path)
    run = resolve(saved_config(ckpt, overrides), training=False)
    check_classes(ckpt, path, run.task, run.cfg.step)
    model = run.model(state=ckpt["model"])
    model.load_state_dict(ckpt["model"])
    return run, model, ckpt


# Keys of the resolved config that a resume.pt need not match: they change how a run is carried
# out (device, memory layout, loader processes, logging, checkpoint spacing) or what happens after
# training (evaluation), not the state training reaches. Everything else must match: the task,
# the method and its params, the data, model and training settings, the seed, the label, and the
# previous checkpoint, compared by content (sha256), so a moved results tree still resumes.
RESUME_FREE_KEYS = ("train.checkpoint_every", "train.log_every", "train.device",
                    "train.channels_last", "data.workers", "eval.")
_SECTIONS = ("data", "model", "train", "eval", "params")


def made_for(cfg: RunConfig) -> dict:
    """What a resume checkpoint of a run with `cfg` (resolved) is made for, as dotted keys
    (ifss.engine keeps it in resume.pt and compares it with the rerun's)."""
    flat = {}
    for key, value in dataclasses.asdict(cfg).items():
        if key in _SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    flat = {k: v for k, v in flat.items() if not k.startswith(RESUME_FREE_KEYS)}
    flat["previous"] = _file_identity(cfg.previous) if cfg.previous else ""
    if cfg.data.train_labels:  # a regenerated pseudo-label folder has another manifest
        flat["data.train_labels"] = _file_identity(
            str(Path(cfg.data.train_labels) / "manifest.json"))
    return json.loads(json.dumps(flat, sort_keys=True))  # tuples -> lists, as stored


def _file_identity(path: str) -> str:
    path = Path(path)
    try:
        return "sha256:" + file_sha256(path)
    except OSError:
        return f"missing:{path}"


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, cached while its size and mtime stay."""
    path = Path(path)
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size, mtime: the cache key only
    return file_hash(path, "sha256")


def place(model: nn.Module, method, runtime: Runtime) -> None:
    """The model and the method's own modules on the run's device (channels_last on CUDA)."""
    model.to(runtime.device)
    for module in method.modules().values():
        module.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
