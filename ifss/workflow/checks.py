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
from ifss.data.records import get_dataset
from ifss.data.records.coco_voc import COCO_VOC_INPUTS
from ifss.errors import IfssError, unknown
from ifss.methods.registry import METHODS, method_params, weakshot_methods
from ifss.table_metrics import DEFAULT_WEAKSHOT_METRICS, EPISODIC_METRICS, WEAKSHOT_METRICS
from ifss.tasks import get_task
from ifss.workflow.paths import CONTINUAL, WEAKSHOT
from ifss.workflow.settings import (PARTS, SETTINGS, STAGES, as_list, matches,
                                    method_layers, method_of, run_context)
from ifss.workflow.targets import all_protocols, is_continual, is_weakshot

# Methods of the papers' tables that the config may name before their code is registered: they
# validate, are announced in one warning line and are left out of the DAG until registered.
PLANNED_METHODS = (
    "FT", "COS", "WI", "DWI", "RT", "AMP", "SPN", "LWF", "ILT", "MIB", "PIFS", "MCLOS",
    "LWF-MC", "EWC", "RW", "PI", "CIL", "SDR",  # the continual-segmentation suite (SDR, MiB)
)
# Run-config keys the workflow sets itself, per run; a config fragment may not set them.
WORKFLOW_KEYS = (
    "dataset", "task", "step", "nshot", "ishot", "method", "label", "previous",
    "data.root", "data.class_index", "data.protocol", "data.train_labels", "model.pretrained",
)
# eval keys the workflow sets for each episodic evaluation (not in datasets.D.episodic)
EPISODIC_KEYS = ("protocol", "head", "gamma")
# Names a configured method may not have: path components of the continual layout.
RESERVED_NAMES = ("step0", "episodic", *CONTINUAL, WEAKSHOT)
# Datasets built from other datasets (source derived): name -> role -> the record whose layout
# (label space) the role's dataset must have; `from` names the configured dataset of each role.
DERIVED = {"coco-voc": COCO_VOC_INPUTS}


def check_config(cfg: dict) -> None:
    """Raise IfssError naming the first bad key; fill in defaults that depend on other keys."""
    check_fragment(cfg["run"], "run")
    check_datasets(cfg["datasets"])
    check_methods(cfg["methods"])
    check_pseudo_labels(cfg["methods"])
    check_overrides(cfg["overrides"])
    check_tables(cfg)
    check_figures(cfg)
    check_params(cfg)
    check_retrain(cfg)


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
        check_derived(name, ds, datasets)
        for part in ("run", *PARTS):
            check_fragment(ds[part], f"datasets.{name}.{part}")
        for key in EPISODIC_KEYS:
            if key in ds["episodic"].get("eval", {}):
                raise IfssError(f"datasets.{name}.episodic.eval.{key} is set for each evaluation "
                                "(eval.protocol: episodic; head and gamma: the table's row); "
                                "remove it")


def check_derived(name: str, ds: dict, datasets: dict) -> None:
    """A derived dataset (source derived) names a configured dataset for each of its inputs
    (`from`, default: the datasets named as the roles); another source has no `from`."""
    where, roles = f"datasets.{name}", DERIVED.get(name)
    if ds["source"] != "derived":
        if "from" in ds:
            raise IfssError(f"{where}.from: only a dataset with source derived is built from "
                            "others; remove it")
        if roles and ds["source"] == "download":
            raise IfssError(f"{where}.source: {name} has nothing to download; set it to derived "
                            f"(built from the configured {' and '.join(roles)}) or local")
        return
    if roles is None:
        raise IfssError(f"{where}.source: {name} is not built from other datasets (derived "
                        f"datasets: {', '.join(DERIVED)}); use download or local")
    ds["from"] = {**roles, **ds.get("from", {})}
    for role, space in roles.items():
        used = ds["from"][role]
        if used not in datasets:
            raise IfssError(f"{where}.from.{role}: {used!r} is not under datasets (configured: "
                            f"{', '.join(datasets)}); add a {used} entry (e.g. source: "
                            "download) or name a configured one")
        if used == name or get_dataset(used).label_space != space:
            raise IfssError(f"{where}.from.{role}: {used!r} is no {space} dataset (its labels "
                            f"are not {space}'s ids); name the configured {space} dataset")


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
            methods[name] = entry = {"params": {}, **{stage: {} for stage in STAGES}}
        if name in RESERVED_NAMES:
            raise IfssError(f"methods.{name}: {name!r} names a folder of the run layout; "
                            "rename the method")
        if method_of(methods, name) != name:
            check_variant(name, entry, methods)
        else:
            check_method_name(name, f"methods.{name}")
        for stage in STAGES:
            check_fragment(entry[stage], f"methods.{name}.{stage}")
        check_stages_of_kind(name, entry, methods)


def weakshot_method(methods: dict, name: str) -> bool:
    """Does a configured name run a registered weak-shot method (SimFormer, or a variant)?"""
    info = METHODS.get(method_of(methods, name))
    return bool(info and info.weakshot)


def _weakshot_list() -> str:
    return ", ".join(weakshot_methods()) or "none registered"


def check_stages_of_kind(name: str, entry: dict, methods: dict) -> None:
    """A weak-shot method has only its weakshot stage; another method has none."""
    if method_of(methods, name) not in METHODS:
        return
    if weakshot_method(methods, name):
        for stage in ("step0", "fewshot", "continual"):
            if entry[stage]:
                raise IfssError(f"methods.{name}.{stage}: {name} is a weak-shot method (step 1 "
                                "from ImageNet weights, under protocol weakshot only); move "
                                f"these settings to methods.{name}.weakshot")
    elif entry["weakshot"]:
        raise IfssError(f"methods.{name}.weakshot: {name} is not a weak-shot method (those "
                        f"are: {_weakshot_list()}); remove the section")


def check_pseudo_labels(methods: dict) -> None:
    """`pseudo_labels: SOURCE`: a weak-shot run trains on the pseudo labels of another configured
    weak-shot method's step-1 model; sources may chain but not loop."""
    for name, entry in methods.items():
        source = entry.get("pseudo_labels")
        if source is None:
            continue
        where = f"methods.{name}.pseudo_labels"
        if method_of(methods, name) in METHODS and not weakshot_method(methods, name):
            raise IfssError(f"{where}: {name} is not a weak-shot method, and only weak-shot runs "
                            f"({_weakshot_list()}) train on pseudo labels; remove it")
        if source == name:
            raise IfssError(f"{where}: {name} cannot train on its own pseudo labels; name the "
                            "weak-shot variant whose step-1 model labels the train set")
        if source not in methods:
            raise IfssError(f"{where}: {source!r} is not under methods (configured: "
                            f"{', '.join(methods)}); name a configured weak-shot method or "
                            "variant")
        if not weakshot_method(methods, source):
            raise IfssError(f"{where}: {source!r} is not a weak-shot method (those are: "
                            f"{_weakshot_list()} and their variants), so it makes no pseudo "
                            "labels; name a weak-shot variant")
        chain = [name, source]
        while (methods[chain[-1]] or {}).get("pseudo_labels"):
            chain.append(methods[chain[-1]]["pseudo_labels"])
            if chain[-1] in chain[:-1]:
                raise IfssError(f"{where}: the pseudo labels go round in a cycle "
                                f"({' -> '.join(chain)}); let one of them train on the "
                                "dataset's own labels (no pseudo_labels)")


def check_names(names, where: str, methods: dict, weakshot: bool = False,
                steps: bool = True) -> None:
    """Known names; weak-shot methods where `weakshot` (a weak-shot table), nowhere else; with
    `steps` (the names train incremental steps), no step-0-only method."""
    for name in names:
        if method_of(methods, name) == name:  # a variant is checked with its entry
            check_method_name(name, where)
        info = METHODS.get(method_of(methods, name))
        if steps and info is not None and info.step0_only:
            raise IfssError(f"{where}: {name!r} pre-trains a step-0 model only and has no "
                            "incremental steps; use it as a backbone of an episodic table "
                            f"(rows: {{NAME: {{backbone: {name}}}}})")
        if weakshot_method(methods, name) != weakshot and method_of(methods, name) in METHODS:
            if weakshot:
                raise IfssError(f"{where}: {name!r} is not a weak-shot method, so it has no "
                                f"weakshot runs; weak-shot methods: {_weakshot_list()} (and "
                                "their variants)")
            raise IfssError(f"{where}: {name!r} is a weak-shot method: it runs only under "
                            "protocol weakshot; put it in a continual table with protocols: "
                            "[weakshot]")


def check_overrides(overrides: dict) -> None:
    for name, override in overrides.items():
        check_fragment(override["set"], f"overrides.{name}.set")
        when = override["when"]
        for key, valid in (("stage", STAGES), ("setting", SETTINGS),
                           ("protocol", runconfig.PROTOCOLS)):
            for value in as_list(when.get(key, [])):
                if value not in valid:
                    raise IfssError(f"overrides.{name}.when.{key}: {value!r} is not one of "
                                    f"{', '.join(valid)}")
        if (as_list(when.get("stage", [])) == ["step0"]
                and set(as_list(when.get("protocol", []))) == {"sequential"}):
            raise IfssError(f"overrides.{name}.when: sequential runs start from the disjoint "
                            "step-0 run (the same images and labels), so no step-0 run has "
                            "protocol sequential; use protocol: disjoint")


def check_task_of(cfg: dict, dataset: str, task: str, where: str) -> int:
    """The number of steps of `task`, which must have an incremental step."""
    if dataset not in cfg["datasets"]:
        raise IfssError(f"{where.rpartition('.')[0]}.dataset {dataset!r} is not under datasets "
                        f"(configured: {', '.join(cfg['datasets'])})")
    try:
        steps = get_task(dataset, task).num_steps
    except IfssError as err:
        raise IfssError(f"{where}: {err}") from None
    if steps < 2:
        raise IfssError(f"{where}: task {task!r} has no incremental step")
    return steps


def check_keys_of_kind(spec: dict, where: str, keys, kind: str) -> None:
    for key in keys:
        if key in spec:
            raise IfssError(f"{where}.{key}: a {kind} has no {key}; remove it")


def check_tables(cfg: dict) -> None:
    for name, table in cfg["tables"].items():
        where = f"tables.{name}"
        steps = {task: check_task_of(cfg, table["dataset"], task, f"{where}.tasks")
                 for task in table["tasks"]}
        if table["kind"] == "episodic":
            check_episodic_table(cfg, table, where, steps)
            continue
        if table["kind"] == "continual":
            check_keys_of_kind(table, where, ("shots", "ishots"), "continual table (every "
                               "image with a class of the step trains)")
            protocols, tasks = table["protocols"], table["tasks"]
            if isinstance(protocols, dict):
                for task in tasks:
                    if task not in protocols:
                        raise IfssError(f"{where}.protocols: no protocols for task {task!r}; "
                                        f"give a list for each task of {where}.tasks, or one "
                                        "list for all of them")
                for task in protocols:
                    if task not in tasks:
                        raise IfssError(f"{where}.protocols: {task!r} is not one of "
                                        f"{where}.tasks ({', '.join(tasks)}); remove it or "
                                        "add the task")
            check_extra_tests(table, where)
        else:
            check_keys_of_kind(table, where, ("protocols", "extra_tests"), "few-shot table")
        check_keys_of_kind(table, where, ("rows",), f"{table['kind']} table")
        if is_weakshot(table):
            check_weakshot_table(table, where, steps)
        else:
            check_keys_of_kind(table, where, ("metrics",), f"{table['kind']} table (weak-shot "
                               "tables only: protocols [weakshot])")
        check_names(table["methods"], f"{where}.methods", cfg["methods"], is_weakshot(table))
        if "delta" in table:
            if table["kind"] == "continual":
                raise IfssError(f"{where}.delta: a continual table has no paired folds or "
                                "splits to take differences over; remove it")
            if table["delta"] not in table["methods"]:
                raise IfssError(f"{where}.delta: {table['delta']!r} is not one of "
                                f"{where}.methods ({', '.join(table['methods'])})")


def check_weakshot_table(table: dict, where: str, steps: dict[str, int]) -> None:
    """Protocol weakshot alone, two-step tasks, weak-shot metrics (default filled in)."""
    others = [p for p in all_protocols(table) if p != WEAKSHOT]
    if others:
        raise IfssError(f"{where}.protocols: weakshot runs only weak-shot methods, so it shares "
                        f"no table with {', '.join(others)}; give the weak-shot runs a table of "
                        "their own")
    for task, count in steps.items():
        if count != 2:
            raise IfssError(f"{where}.tasks: {task!r} has {count} steps, but a weak-shot run is "
                            "step 1 of a two-step task (base and novel classes); use ws1.. or "
                            "15-5")
    table.setdefault("metrics", list(DEFAULT_WEAKSHOT_METRICS))
    check_metrics(table, where, WEAKSHOT_METRICS, "a weak-shot table")


def check_metrics(table: dict, where: str, valid, kind: str) -> None:
    for metric in table["metrics"]:
        if metric not in valid:
            raise IfssError(f"{where}.metrics: {metric!r} is no column of {kind}; use some of "
                            f"{', '.join(valid)}")


def check_episodic_table(cfg: dict, table: dict, where: str, steps: dict[str, int]) -> None:
    """Folds of one incremental step, rows whose backbone is a step-0 method (their runs are the
    table's `methods`, filled in here), a binary head without gamma, delta naming a row."""
    check_keys_of_kind(table, where, ("methods", "ishots", "protocols", "extra_tests"),
                       "episodic table (rows are `rows`, evaluations of step-0 runs)")
    for task, count in steps.items():
        if count != 2:
            raise IfssError(f"{where}.tasks: {task!r} is not a fold (base classes and one step "
                            "of novel classes); use the dataset's 5-i / 20-i tasks")
    for row, spec in table["rows"].items():
        spec.setdefault("gamma", 0.0)
        if spec["head"] == "binary" and spec["gamma"]:
            raise IfssError(f"{where}.rows.{row}.gamma: the binary head has no distillation; "
                            "remove gamma or use head: generalized")
        info = METHODS.get(method_of(cfg["methods"], spec["backbone"]))
        if info is not None and not info.step0:
            raise IfssError(f"{where}.rows.{row}.backbone: {spec['backbone']!r} trains no "
                            f"step-0 model; backbones are step-0 methods such as PSP, PSP-CTR")
    table.setdefault("metrics", ["novel"])
    check_metrics(table, where, EPISODIC_METRICS, "an episodic table")
    table["methods"] = list(dict.fromkeys(spec["backbone"] for spec in table["rows"].values()))
    check_names(table["methods"], f"{where}.rows backbones", cfg["methods"], steps=False)
    if "delta" in table and table["delta"] not in table["rows"]:
        raise IfssError(f"{where}.delta: {table['delta']!r} is not one of {where}.rows "
                        f"({', '.join(table['rows'])})")


def check_extra_tests(table: dict, where: str) -> None:
    """A continual table's extra-test columns name extra tests of its dataset."""
    tests = get_dataset(table["dataset"]).extra_tests
    for split in table.get("extra_tests", {}):
        if split not in tests:
            have = f"its extra tests: {', '.join(tests)}" if tests else "it has none"
            raise IfssError(f"{where}.extra_tests: {split!r} is no extra test of dataset "
                            f"{table['dataset']!r} ({have}); remove it")


def check_figures(cfg: dict) -> None:
    for name, figure in cfg["figures"].items():
        where = f"figures.{name}"
        steps = check_task_of(cfg, figure["dataset"], figure["task"], f"{where}.task")
        if figure["kind"] == "per_step":
            check_keys_of_kind(figure, where, COMPARISON_KEYS, "per_step figure")
        else:
            check_keys_of_kind(figure, where, ("protocol",), "comparison figure")
            figure.setdefault("step", steps - 1)
            if not 1 <= figure["step"] < steps:
                raise IfssError(f"{where}.step: task {figure['task']!r} has few-shot steps "
                                f"1..{steps - 1}")
            if len(figure["methods"]) < 2:
                raise IfssError(f"{where}.methods: a comparison needs two or more methods")
        check_names(figure["methods"], f"{where}.methods", cfg["methods"])


COMPARISON_KEYS = ("nshot", "ishot", "step", "num_images", "tsne_images", "per_class",
                   "tsne_iterations")


# ----------------------------------------------------------------- method params


def runnable(cfg: dict) -> list[tuple[str, str, str]]:
    """(configured name, stage, dataset part) of every kind of run the config can plan whose
    method is registered: each configured name's few-shot and continual steps (a weak-shot
    method's: its weak-shot run only), each compared name's steps of its table's or figure's
    kind, and the step-0 runs they start from (a base and the step-0 runs it continues; few-shot
    and continual step 0 read different sections)."""
    methods = cfg["methods"]
    specs = [*cfg["tables"].values(), *cfg["figures"].values()]
    kinds = {"fewshot": ("step0", SETTINGS), "continual": ("continual_step0", ("continual",))}
    runs, step0 = [], {}
    for stage, (step0_part, parts) in kinds.items():
        named = [*methods, *(m for spec in specs if is_continual(spec) == (stage == "continual")
                             for m in spec["methods"])]
        names = [n for n in dict.fromkeys(named)
                 if method_of(methods, n) in METHODS and not weakshot_method(methods, n)]
        runs += [(n, stage, part) for n in names for part in parts]
        for name in names:
            base = METHODS[method_of(methods, name)].base
            while base in METHODS and (base, step0_part) not in step0:
                step0[(base, step0_part)] = None
                base = METHODS[base].step0_from
    weak = [n for n in dict.fromkeys([*methods, *(m for spec in specs for m in spec["methods"])])
            if weakshot_method(methods, n)]
    runs += [(n, WEAKSHOT, WEAKSHOT) for n in weak]
    return [(base, "step0", part) for base, part in step0] + runs


def param_layers(cfg: dict, name: str, stage: str, dataset: str, part: str):
    """(where, params) of each section that can set the params of a run of `name` at `stage` on
    `dataset` (part: the datasets.D section the run reads), in the order run settings merge
    them; the overrides are those whose `when` can match such a run (task, shots, step and a
    continual run's protocol left open)."""
    ds = cfg["datasets"][dataset]
    layers = [("run", cfg["run"]), (f"datasets.{dataset}.run", ds["run"]),
              (f"datasets.{dataset}.{part}", ds[part]),
              *method_layers(cfg["methods"], name, stage)]
    protocol = {"continual_step0": ("disjoint", "overlap"), "continual": CONTINUAL,
                WEAKSHOT: WEAKSHOT}.get(part, "fewshot")
    context = run_context(cfg["methods"], dataset, None, name, stage,
                          setting=part if part in SETTINGS else None, protocol=protocol)
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
    for name, stage, part in runnable(cfg):
        registered = method_of(methods, name)
        for dataset in cfg["datasets"]:
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
    run = {"step0": f"{name}'s step-0 run", "fewshot": f"{name}'s few-shot steps",
           "continual": f"{name}'s continual steps", WEAKSHOT: f"{name}'s weak-shot runs"}[stage]
    return IfssError(f"in {where}" + ("" if where.startswith("methods.") else f" ({run})")
                     + f": {err}")


def weakshot_params(cfg: dict, name: str, dataset: str):
    """The Params a weak-shot run of `name` on `dataset` can get (every layer that can apply)."""
    values: dict = {}
    for _, params in param_layers(cfg, name, WEAKSHOT, dataset, WEAKSHOT):
        values = runconfig.merge(values, params)
    return method_params(method_of(cfg["methods"], name), values)


def check_retrain(cfg: dict) -> None:
    """A weak-shot run that trains on pseudo labels (`pseudo_labels`) is a retraining run
    (params.retrain, for the methods that have it), and the other way round."""
    methods = cfg["methods"]
    for name, stage, _ in runnable(cfg):
        if stage != WEAKSHOT:
            continue
        source = (methods.get(name) or {}).get("pseudo_labels")
        for dataset in cfg["datasets"]:
            params = weakshot_params(cfg, name, dataset)
            if not hasattr(params, "retrain"):
                continue
            message = retrain_mismatch(name, params.retrain, source)
            if message:
                raise IfssError(message)


def retrain_mismatch(name: str, retrain: bool, source: str | None) -> str:
    """The sentence for a retraining run without pseudo labels or the other way round ('')."""
    if retrain and not source:
        return (f"methods.{name}.pseudo_labels: {name} retrains (params.retrain true) but names "
                "no pseudo labels; set it to the weak-shot variant whose step-1 model labels the "
                "train set (such as SimFormer-sim)")
    if source and not retrain:
        return (f"methods.{name}.params.retrain: {name} trains on {source}'s pseudo labels, so "
                "set retrain: true (the novel classes then have masks), or remove pseudo_labels")
    return ""
