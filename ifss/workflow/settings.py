"""One run's `ifss train` settings: the config's sections layered in a fixed order, and written
as `--set key=value` arguments.

Order (later wins): run, datasets.D.run, the dataset's section of the run's kind, methods.M.params,
methods.M.<stage>, for a variant V of M then methods.V.params and methods.V.<stage>, then every
matching entry of `overrides` in file order. No other method's section is read, so editing one
method's settings changes no other run's arguments (its variants' excepted).

    run kind                 dataset section              method stage
    few-shot step 0          datasets.D.step0             step0
    few-shot step k >= 1     datasets.D.SS | MS           fewshot    (SS: single-step task)
    continual step 0         datasets.D.continual_step0   step0
    continual step k >= 1    datasets.D.continual         continual
    weak-shot step 1         datasets.D.weakshot          weakshot

An override's `when` is matched against the run's dataset, task, method (a variant: both names),
stage, protocol (fewshot for few-shot runs; a continual step 0 is disjoint's or overlap's, the
one sequential runs start from being disjoint's; weakshot for weak-shot runs), setting (SS | MS,
few-shot steps only), nshot and ishot (few-shot steps only) and step.

The `--set` strings are Snakemake params: a job reruns when they change, so the rendering of a
value must stay byte-for-byte the same from one version to the next.
"""
from __future__ import annotations

import functools
import json
import shlex

import yaml

from ifss.config import merge

STAGES = ("step0", "fewshot", "continual", "weakshot")  # the method sections (methods.M.<stage>)
SETTINGS = ("SS", "MS")  # few-shot steps of single-step and of multi-step tasks
# The dataset sections: every kind of run reads one (dataset_part)
PARTS = ("step0", *SETTINGS, "continual_step0", "continual", "weakshot", "episodic")


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def method_of(methods: dict, name: str) -> str:
    """The registered method a configured name runs: itself, or what its variant entry names."""
    return (methods.get(name) or {}).get("method", name)


def method_names(methods: dict, name: str) -> tuple[str, ...]:
    """(name,) for a method, (registered method, variant) for a variant."""
    registered = method_of(methods, name)
    return (registered, name) if registered != name else (name,)


def matches(when: dict, context: dict) -> bool:
    """Every `when` key holds one of the run's values (a variant's run has two method names)."""
    for key, wanted in when.items():
        values = context.get(key)
        if values is None:
            return False
        values = values if isinstance(values, tuple) else (values,)
        if not {str(v) for v in values} & {str(v) for v in as_list(wanted)}:
            return False
    return True


def method_layers(methods: dict, name: str, stage: str) -> list[tuple[str, dict]]:
    """(where, fragment) of the method sections a run of `name` at `stage` reads, in order."""
    layers = []
    for each in method_names(methods, name):
        entry = methods.get(each) or {}
        layers += [(f"methods.{each}", {"params": entry.get("params") or {}}),
                   (f"methods.{each}.{stage}", entry.get(stage) or {})]
    return layers


def dataset_part(stage: str, setting=None, protocol: str = "fewshot") -> str:
    """The datasets.D section a run reads (see the table above)."""
    if stage == "step0":
        return "step0" if protocol == "fewshot" else "continual_step0"
    return stage if stage in ("continual", "weakshot") else setting


def run_context(methods: dict, dataset, task, method, stage, setting=None, nshot=None,
                ishot=None, step=0, protocol="fewshot") -> dict:
    """What an override's `when` is matched against (a tuple value: any of its values)."""
    names = method_names(methods, method)
    return dict(dataset=dataset, task=task, method=names if len(names) > 1 else method,
                stage=stage, setting=setting, nshot=nshot, ishot=ishot, step=step,
                protocol=protocol)


def override_layers(cfg: dict, context: dict) -> list[tuple[str, dict]]:
    return [(f"overrides.{name}.set", o["set"]) for name, o in cfg["overrides"].items()
            if matches(o["when"], context)]


def run_layers(cfg: dict, dataset, task, method, stage, setting=None, nshot=None, ishot=None,
               step=0, protocol="fewshot") -> list[tuple[str, dict]]:
    """(where, fragment) of every section one run reads, in the order they are merged.
    `protocol`: fewshot, a continual run's (its step-0 protocol for a step-0 run), or weakshot
    (stage weakshot)."""
    ds = cfg["datasets"][dataset]
    part = dataset_part(stage, setting, protocol)
    layers = [("run", cfg["run"]), (f"datasets.{dataset}.run", ds["run"]),
              (f"datasets.{dataset}.{part}", ds[part])]
    layers += method_layers(cfg["methods"], method, stage)
    context = run_context(cfg["methods"], dataset, task, method, stage, setting, nshot, ishot,
                          step, protocol)
    return layers + override_layers(cfg, context)


def run_settings(cfg: dict, dataset, task, method, stage, setting=None, nshot=None, ishot=None,
                 step=0, protocol="fewshot") -> dict:
    """The merged run fragment of one run (a partial `ifss train` config)."""
    layers = run_layers(cfg, dataset, task, method, stage, setting, nshot, ishot, step, protocol)
    return functools.reduce(merge, (fragment or {} for _, fragment in layers), {})


# ----------------------------------------------------------------- `--set` arguments


def yaml_value(value) -> str:
    """A value `ifss train --set` reads back (YAML) as the same value."""
    return _yaml_str(value) if isinstance(value, str) else json.dumps(value)


@functools.cache
def _yaml_str(value: str) -> str:
    try:
        if yaml.safe_load(value) == value:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)


def flatten(fragment: dict, prefix: str = "") -> list[tuple[str, object]]:
    """{"train": {"lr": 0.1}} -> [("train.lr", 0.1)], in the fragment's order."""
    pairs = []
    for key, value in fragment.items():
        if isinstance(value, dict):
            pairs += flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def set_pairs(pairs) -> str:
    return " ".join(f"--set {shlex.quote(f'{k}={yaml_value(v)}')}" for k, v in pairs)


@functools.cache
def _fragment_args(fragment_json: str) -> str:
    return set_pairs(flatten(json.loads(fragment_json)))


def set_args(fixed: dict, fragment: dict) -> str:
    """`--set key=value ...` for `ifss train`: the workflow's keys, then the config's."""
    return f"{set_pairs(fixed.items())} {_fragment_args(json.dumps(fragment))}"
