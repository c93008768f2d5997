"""Typed run configuration: dataclasses with a default for every key, YAML in and out.

Overrides are dotted keys (``train.lr=0.001``); an unknown key is an error that names it. Values
that other values determine (the ASPP test pooling window) are resolved once, explicitly, and the
resolved config is what a run saves. Every section checks the domain of its keys when it is
constructed (`from_dict` and direct construction alike), torch-free, so a bad value is one sentence
naming the dotted key before anything is built or written.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import yaml

from ifss.data.fewshot import check_split, check_stride
from ifss.errors import IfssError, closest, unknown

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine", "constant_poly", "warmup_poly", "constant")
WARMUP_SCHEDULES = ("constant_poly", "warmup_poly")
# The frozen previous model's forward (the teacher of LWF, MiB, SDR, PIFS, ...): `same` runs it in
# the training's precision (train.amp's autocast on CUDA, float32 on CPU); `bf16` under bf16
# autocast on any device, its outputs handed to the losses in float32
TEACHER_PRECISIONS = ("same", "bf16")
# The names the model builders accept (ifss.models keeps the builders; tests hold the two equal),
# here so that a run config is checked without importing torch.
ARCHITECTURE_NAMES = ("deeplabv3", "pspnet", "maskformer")
BACKBONE_NAMES = ("resnet_tiny", "resnet18", "resnet34", "resnet50", "resnet101")
NORM_NAMES = ("bn", "iabn", "brn")
ACTIVATION_NAMES = ("relu", "leaky_relu", "identity")
OUTPUT_STRIDES = (8, 16)
# How a step's training images are chosen and labelled (ifss.data.incremental): `fewshot` (nshot
# images per new class; test ignores unseen classes) or the continual-learning protocols of MiB /
# SDR (every image with a new class; test counts unseen classes as background), or `weakshot`
# (SimFormer: step 1 of a two-step task trained from ImageNet weights on every train image, base
# classes with pixel labels, novel classes with image-level labels only, their pixels void).
PROTOCOLS = ("fewshot", "disjoint", "overlap", "sequential", "weakshot")
SEED_LIMIT = 2**32  # numpy's seeds are 0 .. 2**32 - 1


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise IfssError(message)


def _check_finite(section, prefix: str) -> None:
    """Every float key of `section` is a finite number (YAML reads .inf and .nan as floats)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            _check(math.isfinite(value),
                   f"{prefix}{f.name}={value} must be a finite number; set a real value")


def _check_min(section, prefix: str, key: str, low: int, fix: str) -> None:
    value = getattr(section, key)
    _check(value >= low, f"{prefix}{key}={value} must be >= {low}; {fix}")


def check_data_config(data: "DataConfig") -> None:
    """The domain of each numeric data key; IfssError names the first bad one."""
    _check_finite(data, "data.")
    if data.protocol not in PROTOCOLS:
        raise unknown("protocol", data.protocol, PROTOCOLS, "in data.protocol")
    _check(not data.train_labels or data.protocol == "weakshot",
           f"data.train_labels={data.train_labels!r} replaces the train labels of a weak-shot "
           f"run only (SimFormer's retraining), not under data.protocol={data.protocol!r}; set "
           "data.protocol=weakshot or leave data.train_labels empty")
    _check_min(data, "data.", "batch_size", 1, "set the number of images per training batch")
    _check_min(data, "data.", "crop_size", 1, "set the side of the training crop in pixels")
    check_stride(data.fewshot_stride)
    _check_min(data, "data.", "workers", 0, "use 0 to load data in the training process")
    _check(data.scale_min > 0,
           f"data.scale_min={data.scale_min} must be > 0; set the smallest random rescaling "
           "factor, such as 0.5")
    _check(data.scale_min <= data.scale_max,
           f"data.scale_min={data.scale_min} exceeds data.scale_max={data.scale_max}; the random "
           "rescaling factor is drawn from [scale_min, scale_max], so set scale_min <= scale_max")


def check_model_config(model: "ModelConfig") -> None:
    """The names and numeric domains of the model keys; IfssError names the first bad one."""
    _check_finite(model, "model.")
    if model.arch not in ARCHITECTURE_NAMES:
        raise unknown("architecture", model.arch, ARCHITECTURE_NAMES, "in model.arch")
    for key, valid in (("backbone", BACKBONE_NAMES), ("norm", NORM_NAMES),
                       ("activation", ACTIVATION_NAMES)):
        value = getattr(model, key)
        _check(value in valid,
               f"model.{key}={value!r} is not known; valid values: {', '.join(valid)}")
    strides = OUTPUT_STRIDES + ((32,) if model.arch == "maskformer" else ())
    _check(model.output_stride in strides,
           f"model.output_stride={model.output_stride!r} is not supported for model.arch="
           f"{model.arch}; valid values: {', '.join(map(str, strides))}")
    # InPlace-ABN inverts its activation in the backward pass: it has no relu
    _check(not (model.norm == "iabn" and model.activation == "relu"),
           "model.norm=iabn cannot use model.activation=relu (InPlace-ABN has leaky_relu and "
           "identity); set model.activation=leaky_relu, or use model.norm=bn")
    _check_min(model, "model.", "head_channels", 1, "set the head's width, such as 256")
    _check_min(model, "model.", "pooling_size", 0,
               "use 0 for crop_size // output_stride, or a positive pooling window")
    bins = model.psp_bins
    _check(bool(bins) and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                              for b in bins),
           f"model.psp_bins={bins!r} must be a non-empty list of positive integers, such as "
           "[1, 2, 3, 6]")
    _check(0 <= model.dropout < 1,
           f"model.dropout={model.dropout} must be in [0, 1); use 0 for no dropout")
    for key, fix in (("num_queries", "set the mask-transformer's queries, such as 100"),
                     ("decoder_layers", "set the transformer decoder's layers, such as 6"),
                     ("attention_heads", "set the attention heads, such as 8"),
                     ("ffn_channels", "set the decoder's feed-forward width, such as 2048")):
        _check_min(model, "model.", key, 1, fix)
    if model.arch == "maskformer":
        _check(model.head_channels % 32 == 0 and model.head_channels % model.attention_heads == 0,
               f"model.head_channels={model.head_channels} must be a multiple of 32 (GroupNorm "
               f"groups) and of model.attention_heads={model.attention_heads} for maskformer; "
               "use 256 (or 64 for the tiny synthetic model)")


@dataclass
class DataConfig:
    root: str = "data/synthetic"  # dataset root (VOC devkit layout, converted COCO layout)
    protocol: str = "fewshot"  # fewshot | disjoint | overlap | sequential | weakshot (PROTOCOLS)
    # weakshot only: a pseudo-label folder (`ifss pseudo-labels`) whose labels replace the train
    # split's, every class kept (SimFormer's retraining); '' = the dataset's own labels
    train_labels: str = ""
    class_index: str = ""  # JSON from `ifss splits` ('' = cached beside the data)
    fewshot_lists: str = ""  # optional TSV of per-class image ids (PIFS exact protocol)
    fewshot_stride: int = 20  # split `ishot` takes images [ishot*stride, ishot*stride+nshot)
    crop_size: int = 64
    scale_min: float = 0.75  # the papers use 0.5..2.0 at 512 px; the 64 px synthetic default less
    scale_max: float = 1.5
    batch_size: int = 16
    workers: int = 0

    def __post_init__(self):
        check_data_config(self)


@dataclass
class ModelConfig:
    arch: str = "deeplabv3"  # deeplabv3 (ASPP head) | pspnet (pyramid pooling head)
    backbone: str = "resnet_tiny"  # resnet_tiny | resnet18 | resnet34 | resnet50 | resnet101
    output_stride: int = 8  # 16 or 8 (the papers: 16; 8 keeps 64 px synthetic objects visible);
    # maskformer also 32, its undilated body (SimFormer's)
    dilate_first_block: bool = False  # True: the InPlace-ABN/PIFS ResNets' dilation rule
    norm: str = "bn"  # bn | iabn (needs inplace-abn) | brn (batch renorm)
    activation: str = "relu"  # relu | leaky_relu (InPlace-ABN checkpoints use leaky_relu 0.01)
    head_channels: int = 64  # ASPP width (256 in the papers); PSPNet's bottleneck (512)
    psp_bins: list[int] = field(default_factory=lambda: [1, 2, 3, 6])  # PSPNet pyramid bins
    dropout: float = 0.1  # PSPNet: dropout before the classifier; maskformer: the transformer's
    pooling: bool = True  # ASPP image-pooling branch
    pooling_size: int = 0  # test-time pooling window; 0 = crop_size // output_stride
    pretrained: str = ""  # ImageNet weights file for the body ('' = random init)
    # maskformer only (body at output stride 32; head_channels = the decoder's width, 256)
    num_queries: int = 100
    decoder_layers: int = 6
    attention_heads: int = 8
    ffn_channels: int = 2048

    def __post_init__(self):
        check_model_config(self)


def check_train_config(train: "TrainConfig") -> None:
    """The domain of each optimiser, schedule, length and clipping key; IfssError names the first
    bad one."""
    _check_finite(train, "train.")
    _check(train.iterations >= -1,
           f"train.iterations={train.iterations} must be >= 0, or -1 to train for train.epochs; "
           "set an iteration count or -1")
    _check_min(train, "train.", "epochs", 0, "set the number of passes over the training images")
    _check_min(train, "train.", "checkpoint_every", 0,
               "set the iterations between resume checkpoints, or 0 for none")
    _check_min(train, "train.", "log_every", 1, "set the iterations between log lines")
    if train.optimizer not in OPTIMIZERS:
        raise unknown("optimizer", train.optimizer, OPTIMIZERS, "in train.optimizer")
    if train.schedule not in SCHEDULES:
        raise unknown("schedule", train.schedule, SCHEDULES, "in train.schedule")
    if train.teacher_precision not in TEACHER_PRECISIONS:
        raise unknown("teacher_precision", train.teacher_precision, TEACHER_PRECISIONS,
                      "in train.teacher_precision")
    _check(train.lr > 0, f"train.lr={train.lr} must be > 0; set a positive learning rate")
    _check(0 <= train.momentum < 1,
           f"train.momentum={train.momentum} must be in [0, 1); 0.9 is the usual value")
    _check(len(train.betas) == 2 and all(_number(b) and 0 <= b < 1 for b in train.betas),
           f"train.betas={train.betas} must be two numbers in [0, 1), such as [0.9, 0.999]")
    _check(train.weight_decay >= 0,
           f"train.weight_decay={train.weight_decay} must be >= 0; use 0 for none")
    _check(train.lr_power > 0,
           f"train.lr_power={train.lr_power} must be > 0; 0.9 is the usual value")
    _check(train.warmup_iterations >= 0,
           f"train.warmup_iterations={train.warmup_iterations} must be >= 0; use 0 for none")
    _check(0 <= train.warmup_factor <= 1,
           f"train.warmup_factor={train.warmup_factor} must be in [0, 1]; it is the lr fraction "
           "the warm-up starts from")
    _check(train.clip_grad_norm >= 0,
           f"train.clip_grad_norm={train.clip_grad_norm} must be >= 0; use 0 for no clipping")
    for key in ("lr_head", "lr_cls"):
        value = getattr(train, key)
        _check(value >= 0, f"train.{key}={value} must be >= 0; use 0 to freeze the group")
    for name, value in train.lr_mult.items():
        _check(_finite(value) and value >= 0,
               f"train.lr_mult.{name}={value!r} must be a number >= 0; use 0 to freeze the group")
    _check(train.schedule not in WARMUP_SCHEDULES or train.iterations <= 0
           or train.warmup_iterations <= train.iterations,
           f"train.warmup_iterations={train.warmup_iterations} exceeds train.iterations="
           f"{train.iterations}; lower train.warmup_iterations")


@dataclass
class TrainConfig:
    iterations: int = -1  # >= 0 fixes the iteration count (0: no gradient step); -1: epochs
    epochs: int = 30  # PIFS's step-0 schedule
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9  # SGD
    nesterov: bool = False  # SGD
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW
    weight_decay: float = 1e-4
    schedule: str = "poly"  # poly | cosine | constant_poly | warmup_poly | constant
    lr_power: float = 0.9  # poly schedules
    warmup_iterations: int = 0  # constant_poly: iterations at constant lr; warmup_poly: ramp
    warmup_factor: float = 0.001  # warmup_poly: the lr factor the linear ramp starts from
    clip_grad_norm: float = 0.0  # > 0: clip the global gradient norm of every trained parameter
    lr_head: float = 1.0  # multiplier of lr for the head
    lr_cls: float = 1.0  # multiplier of lr for the classifier
    lr_mult: dict = field(default_factory=dict)  # group name -> lr multiplier (wins over the
    # method's and lr_head / lr_cls; groups: body, head, classifier and a method's own modules)
    fix_bn: bool = False  # norm layers use and keep their running statistics (PIFS --fix_bn)
    checkpoint_every: int = 100  # iterations between resume checkpoints (0 = never)
    log_every: int = 10
    amp: str = "bf16"  # bf16 | fp16 | none; autocast on CUDA only
    # same | bf16 (TEACHER_PRECISIONS): bf16 also on CPU, where it pays with AVX512-BF16 or AMX
    # (`ifss bench` times it: method.SDR.teacher_bf16); it changes the distillation targets'
    # rounding, so it is part of a run's identity (resume, results)
    teacher_precision: str = "same"
    channels_last: bool = True  # CUDA only
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        check_train_config(self)


# How `ifss eval` scores a model (ifss.run.eval_run): `dense`, the step's test set with every
# class (what a training run reports), or `episodic`, few-shot episodes on a fold's step-0 model
# (ifss.episodic: PASCAL-5i / COCO-20i as in GFSS-Capstone).
EVAL_PROTOCOLS = ("dense", "episodic")
# Episodic heads: `binary` (2-way, FSS) or `generalized` ((B+2)-way from the base classifier, GFSS).
EPISODIC_HEADS = ("generalized", "binary")


def check_eval_config(ev: "EvalConfig") -> None:
    """The domain of each evaluation key; IfssError names the first bad one."""
    _check_finite(ev, "eval.")
    _check_min(ev, "eval.", "batch_size", 1, "set the number of images per evaluation batch")
    if ev.protocol not in EVAL_PROTOCOLS:
        raise unknown("protocol", ev.protocol, EVAL_PROTOCOLS, "in eval.protocol")
    if ev.head not in EPISODIC_HEADS:
        raise unknown("head", ev.head, EPISODIC_HEADS, "in eval.head")
    _check_min(ev, "eval.", "episodes", 1, "set the number of episodes per run, such as 20000")
    _check_min(ev, "eval.", "runs", 1, "set the number of runs, each with its own seed")
    _check(ev.gamma >= 0,
           f"eval.gamma={ev.gamma} must be >= 0; use 0 for no background distillation")
    _check_min(ev, "eval.", "inner_steps", 0,
               "set the SGD steps of each episode's head, such as 100")
    _check(ev.inner_lr > 0,
           f"eval.inner_lr={ev.inner_lr} must be > 0; set the head's learning rate, such as 0.1")
    _check_min(ev, "eval.", "episode_batch", 1,
               "set the number of episodes whose heads train at once, such as 64")
    _check_min(ev, "eval.", "min_class_pixels", 1,
               "set the pixels a class needs to count in an image, such as 2048")
    _check_min(ev, "eval.", "image_size", 0,
               "use 0 to keep the images' size, or the side of the padded square, such as 473")
    _check_min(ev, "eval.", "smoothing_group", 1,
               "set the number of runs averaged in one smoothed group, such as 4")
    _check(0 <= ev.seed < SEED_LIMIT,
           f"eval.seed={ev.seed} must be in [0, 2**32); set a non-negative seed such as 42")


@dataclass
class EvalConfig:
    batch_size: int = 16  # images per forward pass (dense test set; episodic: distinct images)
    protocol: str = "dense"  # dense | episodic (EVAL_PROTOCOLS above)
    # -- episodic only (a fold's step-0 model; the shot count is the run's nshot) ---------------
    episodes: int = 20000  # per run (GFSS-Capstone's test_num)
    runs: int = 1  # each run draws its own episodes with seed + run
    head: str = "generalized"  # generalized ((B+2)-way, GFSS) | binary (2-way, FSS)
    gamma: float = 0.0  # generalized: weight of the background-shift distillation (paper: 10)
    inner_steps: int = 100  # SGD steps of each episode's head
    inner_lr: float = 0.1
    episode_batch: int = 64  # episodes whose heads train at once (same metrics for any value)
    min_class_pixels: int = 2048  # 2*32*32: a class counts in an image from this many pixels
    # the longer side resized to it and the image padded to a square (mean colour, void labels);
    # 0 = no resize, every image padded to the largest of the val split
    image_size: int = 473
    # the original L2-normalises the query's features only (norm_q), not the support's or the
    # base image's: a head trained on raw features then scores normalised ones
    normalize_query: bool = True
    smoothing_group: int = 4  # runs per group of the "smoothed" summary
    seed: int = 42

    def __post_init__(self):
        check_eval_config(self)


def check_run_config(cfg: "RunConfig") -> None:
    """The top-level numeric keys, and nshot against the few-shot stride where splits use it."""
    _check_min(cfg, "", "step", 0, "use 0 for the base step and k >= 1 for incremental step k")
    _check(0 <= cfg.seed < SEED_LIMIT,
           f"seed={cfg.seed} must be in [0, 2**32); set a non-negative seed such as 42")
    # split `ishot` takes images [ishot * stride, ishot * stride + nshot) of each class's list
    # (ifss.data.fewshot); the stride matters only at incremental steps without PIFS's lists
    uses_stride = cfg.step > 0 and not cfg.data.fewshot_lists and cfg.data.protocol == "fewshot"
    check_split(cfg.nshot, cfg.ishot, cfg.data.fewshot_stride if uses_stride else None)


@dataclass
class RunConfig:
    dataset: str = "synthetic"  # synthetic | voc | coco
    task: str = "5-0"
    step: int = 0
    nshot: int = 5
    ishot: int = 0
    method: str = "FT"
    label: str = ""  # this run's row in tables: a configured variant's name ("" = the method)
    seed: int = 42
    previous: str = ""  # model.pt of step - 1 (required for step > 0, except weak-shot step 1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    params: dict = field(default_factory=dict)  # the method's own hyper-parameters

    def __post_init__(self):
        check_run_config(self)

    def resolved(self) -> "RunConfig":
        """A copy with the derived values written out."""
        cfg = dataclasses.replace(self, model=dataclasses.replace(self.model))
        if cfg.model.pooling_size <= 0:
            cfg.model.pooling_size = max(1, round(cfg.data.crop_size / cfg.model.output_stride))
        return cfg


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise IfssError(f"config key {key!r} is a section; give it a mapping, not {value!r}")
        return from_dict(typ, value, prefix=f"{key}.")
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise IfssError(f"config key {key!r} needs a mapping, got {value!r}")
        return dict(value)
    if typ is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise IfssError(f"config key {key!r} needs a list, got {value!r}")
        return list(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise IfssError(f"config key {key!r} needs true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise IfssError(f"config key {key!r} needs an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IfssError(f"config key {key!r} needs a number, got {value!r}")
        return float(value)
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise IfssError(f"config key {key!r} needs a string, got {value!r}")
        return str(value)
    return value


def unknown_key_error(key: str, valid: typing.Iterable[str]) -> IfssError:
    valid = sorted(valid)
    leaf = {v.rsplit(".", 1)[-1]: v for v in valid}
    close = [leaf[m] for m in closest(key.rsplit(".", 1)[-1], leaf)]
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    else:
        hint = f"; valid keys: {', '.join(valid)}" if valid else "; this section takes no keys"
    return IfssError(f"unknown config key {key!r}{hint}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a (possibly partial) mapping; unknown keys are errors."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in types_:
            raise unknown_key_error(prefix + key, [prefix + k for k in types_])
        kwargs[key] = _coerce(value, types_[key], prefix + key)
    return dataclasses.replace(cls(), **kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def parse_overrides(pairs: list[str]) -> dict:
    """`["train.lr=0.1", "task=5-0"]` -> nested dict with YAML-typed values."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise IfssError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise IfssError(f"override {pair!r} sets a key inside the value {part!r}")
        node[parts[-1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise IfssError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise IfssError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise IfssError(f"config file {str(path)!r} must hold a mapping of keys")
    return data


def build_config(config_file: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = load_yaml(config_file) if config_file else {}
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
