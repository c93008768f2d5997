"""What the JSON schema cannot say about a config: names that must exist in ifss, the keys of each
run fragment, and every method's `params` against its Params dataclass.

`check_config` runs on a schema-validated config (defaults filled in) while Snakemake loads the
workflow, so a typo fails at once, naming the key, not hours later in a job. It also fills in the
defaults that depend on other values (a dataset's root, a figure's step).
"""
from __future__ import annotations

import dataclasses
import os

import ifss.config as runconfig
from ifss.errors import IfssError, unknown
from ifss.methods.registry import METHODS, method_params
from ifss.tasks import get_task
from ifss.workflow.settings import (SETTINGS, STAGES, as_list, matches, method_layers,
                                    method_of, run_context)

# Methods of the papers' tables that the config may name before their code is registered: they
# validate, are announced in one warning line and are left out of the DAG until registered.
PLANNED_METHODS = (
    "FT", "COS", "WI", "DWI", "RT", "AMP", "SPN", "LWF", "ILT", "MIB", "PIFS", "MCLOS",
)
# Run-config keys the workflow sets itself, per run; a config fragment may not set them.
WORKFLOW_KEYS = (
    "dataset", "task", "step", "nshot", "ishot", "method", "label", "previous",
    "data.root", "data.class_index", "model.pretrained",
)


def check_config(cfg: dict) -> None:
    """Raise IfssError naming the first bad key; fill in defaults that depend on other keys."""
    check_fragment(cfg["run"], "run")
    check_datasets(cfg["datasets"])
    check_methods(cfg["methods"])
    check_overrides(cfg["overrides"])
    check_tables(cfg)
    check_figures(cfg)
    check_params(cfg)


def check_fragment(fragment: dict, where: str) -> None:
    """Type-check a run fragment against ifss's run-config dataclasses (not the method params)."""
    for key in WORKFLOW_KEYS:
        section, _, leaf = key.rpartition(".")
        node = fragment.get(section, {}) if section else fragment
        if isinstance(node, dict) and leaf in node:
            raise IfssError(f"{where}.{key} is set by the workflow for each run; remove it")
    rest = {k: v for k, v in fragment.items() if k != "params"}
    try:
        runconfig.from_dict(runconfig.RunConfig, rest)
    except IfssError as err:
        raise IfssError(f"in {where}: {err}") from None


def check_datasets(datasets: dict) -> None:
    for name, ds in datasets.items():
        ds.setdefault("root", f"data/{name}")
        root = ds["root"].rstrip("/")
        if ds["source"] == "download" and os.path.basename(root) != name:
            raise IfssError(
                f"datasets.{name}.root is {ds['root']!r}, but `ifss download` prepares "
                f"<folder>/{name}; make the root end in /{name}"
            )
        if ds["source"] == "synth" and name != "synthetic":
            raise IfssError(f"datasets.{name}.source: only the dataset 'synthetic' can be synth")
        for part in ("run", "step0", *SETTINGS):
            check_fragment(ds[part], f"datasets.{name}.{part}")


def check_method_name(name: str, where: str) -> None:
    if name not in METHODS and name not in PLANNED_METHODS:
        raise IfssError(f"{where}: {unknown('method', name, sorted({*METHODS, *PLANNED_METHODS}))}")


def check_variant(name: str, entry: dict, methods: dict) -> None:
    """A variant names a method that is not itself a variant and shares its step-0 run."""
    of = entry["method"]
    if method_of(methods, of) != of:
        raise IfssError(f"methods.{name}.method: {of!r} is itself a variant (of "
                        f"{methods[of]['method']!r}); name the registered method")
    check_method_name(of, f"methods.{name}.method")
    if entry["step0"]:
        raise IfssError(
            f"methods.{name}.step0: a variant shares the step-0 run of {of}; set step-0 "
            f"settings under methods.{of}.step0, or register a method with its own step 0"
        )


def check_methods(methods: dict) -> None:
    for name, entry in methods.items():
        if entry is None:
            methods[name] = entry = {"params": {}, "step0": {}, "fewshot": {}}
        if method_of(methods, name) != name:
            check_variant(name, entry, methods)
        else:
            check_method_name(name, f"methods.{name}")
        for stage in STAGES:
            check_fragment(entry[stage], f"methods.{name}.{stage}")


def check_names(names, where: str, methods: dict) -> None:
    for name in names:
        if method_of(methods, name) == name:  # a variant is checked with its entry
            check_method_name(name, where)


def check_overrides(overrides: dict) -> None:
    for name, override in overrides.items():
        check_fragment(override["set"], f"overrides.{name}.set")
        for key, valid in (("stage", STAGES), ("setting", SETTINGS)):
            for value in as_list(override["when"].get(key, [])):
                if value not in valid:
                    raise IfssError(f"overrides.{name}.when.{key}: {value!r} is not one of "
                                    f"{', '.join(valid)}")


def check_tables(cfg: dict) -> None:
    for name, table in cfg["tables"].items():
        if table["dataset"] not in cfg["datasets"]:
            raise IfssError(f"tables.{name}.dataset {table['dataset']!r} is not under datasets "
                            f"(configured: {', '.join(cfg['datasets'])})")
        for task in table["tasks"]:
            try:
                steps = get_task(table["dataset"], task).num_steps
            except IfssError as err:
                raise IfssError(f"tables.{name}.tasks: {err}") from None
            if steps < 2:
                raise IfssError(f"tables.{name}.tasks: task {task!r} has no incremental step")
        check_names(table["methods"], f"tables.{name}.methods", cfg["methods"])


def check_figures(cfg: dict) -> None:
    for name, figure in cfg["figures"].items():
        where = f"figures.{name}"
        if figure["dataset"] not in cfg["datasets"]:
            raise IfssError(f"{where}.dataset {figure['dataset']!r} is not under datasets")
        try:
            steps = get_task(figure["dataset"], figure["task"]).num_steps
        except IfssError as err:
            raise IfssError(f"{where}.task: {err}") from None
        figure.setdefault("step", steps - 1)
        if not 1 <= figure["step"] < steps:
            raise IfssError(f"{where}.step: task {figure['task']!r} has few-shot steps "
                            f"1..{steps - 1}")
        if len(figure["methods"]) < 2:
            raise IfssError(f"{where}.methods: a comparison needs two or more methods")
        check_names(figure["methods"], f"{where}.methods", cfg["methods"])


# ----------------------------------------------------------------- method params


def runnable(cfg: dict) -> list[tuple[str, str]]:
    """(configured name, stage) of every kind of run the config can plan whose method is
    registered: each configured or compared name's few-shot steps, and the step-0 runs they
    start from (a base and the step-0 runs it continues)."""
    methods = cfg["methods"]
    named = [*methods, *(m for spec in (*cfg["tables"].values(), *cfg["figures"].values())
                         for m in spec["methods"])]
    fewshot = [n for n in dict.fromkeys(named) if method_of(methods, n) in METHODS]
    step0: dict[str, None] = {}
    for name in fewshot:
        base = METHODS[method_of(methods, name)].base
        while base and base not in step0:
            step0[base] = None
            base = METHODS[base].step0_from if base in METHODS else None
    runs = [(n, "fewshot") for n in fewshot]
    return [(n, "step0") for n in step0 if n in METHODS] + runs


def param_layers(cfg: dict, name: str, stage: str, dataset: str, part: str):
    """(where, params) of each section that can set the params of a run of `name` at `stage` on
    `dataset` (part: step0, SS or MS), in the order run settings merge them; the overrides are
    those whose `when` can match such a run (task, shots and step left open)."""
    ds = cfg["datasets"][dataset]
    layers = [("run", cfg["run"]), (f"datasets.{dataset}.run", ds["run"]),
              (f"datasets.{dataset}.{part}", ds[part]),
              *method_layers(cfg["methods"], name, stage)]
    context = run_context(cfg["methods"], dataset, None, name, stage,
                          setting=None if stage == "step0" else part)
    for key in ("task",) if stage == "step0" else ("task", "nshot", "ishot", "step"):
        del context[key]  # any
    for oname, override in cfg["overrides"].items():
        when = {k: v for k, v in override["when"].items() if k in context}
        if matches(when, context):
            layers.append((f"overrides.{oname}.set", override["set"]))
    return [(where, fragment.get("params") or {}) for where, fragment in layers]


def check_params(cfg: dict) -> None:
    """The params each run can get, layer by layer, checked against its method's Params
    (names, types, domains); the first layer that makes them invalid is named."""
    methods = cfg["methods"]
    for name, stage in runnable(cfg):
        registered = method_of(methods, name)
        for dataset in cfg["datasets"]:
            for part in (("step0",) if stage == "step0" else SETTINGS):
                values: dict = {}
                for where, params in param_layers(cfg, name, stage, dataset, part):
                    if not params:
                        continue
                    values = runconfig.merge(values, params)
                    try:
                        method_params(registered, values)
                    except IfssError as err:
                        raise _params_error(err, where, name, registered, stage, values) from None


def _params_error(err, where, name, registered, stage, values) -> IfssError:
    if not dataclasses.fields(METHODS[registered].params):
        err = f"{registered} has no params, got params.{next(iter(values))}"
    run = {"step0": f"{name}'s step-0 run", "fewshot": f"{name}'s few-shot steps"}[stage]
    return IfssError(f"in {where}" + ("" if where.startswith("methods.") else f" ({run})")
                     + f": {err}")
