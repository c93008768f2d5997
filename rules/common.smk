# Config helpers: validate the experiment matrix, turn it into run settings and target paths.
#
# Everything here runs while Snakemake builds the DAG, so it stays torch-free and cheap: the method
# registry, the task table and the run-config dataclasses of `ifss` are plain Python.

import difflib
import functools
import json
import os
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("8.0")

# The checkout's package comes first, and jobs find the `ifss` command of the Python that runs
# Snakemake even when its venv is not activated (a conda env, when used, is put in front of it).
sys.path.insert(0, workflow.basedir)
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
)
os.environ.setdefault("IFSS_ROOT", workflow.basedir)  # envs/ifss.yaml installs the checkout from it

import ifss.config as runconfig
from ifss.errors import IfssError
from ifss.methods.registry import METHODS
from ifss.tasks import get_task, task_names

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
SETTINGS = ("SS", "MS")
STAGES = ("step0", "fewshot")


# ----------------------------------------------------------------- validation


def _schema_error_message(err) -> str:
    """One sentence for a jsonschema ValidationError: the config key, what is wrong, the fix."""
    from jsonschema.exceptions import best_match

    if err.context:  # oneOf / anyOf: the branch that came closest says most
        err = best_match(err.context)
    path = ".".join(str(p) for p in err.absolute_path)
    where = f"config key {path!r}" if path else "the config"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        names = ", ".join(repr(f"{path}.{k}" if path else k) for k in extra)
        hints = [m for k in extra for m in difflib.get_close_matches(k, allowed, n=1)]
        hint = f"did you mean {', '.join(hints)}? " if hints else ""
        return f"unknown config key {names}; {hint}valid keys here: {', '.join(allowed)}"
    if err.validator == "propertyNames":
        return f"{where}: name {err.instance!r} is not allowed ({err.message})"
    return f"{where}: {err.message}"


def validate_config(cfg: dict) -> None:
    try:
        validate(cfg, schema="../workflow/schemas/config.schema.yaml")
    except WorkflowError as err:
        cause = err.__context__
        if cause is None or not hasattr(cause, "absolute_path"):
            raise
        raise WorkflowError(f"Invalid config: {_schema_error_message(cause)}.") from None


def _config_error(message: str):
    return WorkflowError(f"Invalid config: {message}")


def _check_fragment(fragment: dict, where: str) -> None:
    """Type-check a run fragment against ifss's run-config dataclasses (not the method params)."""
    for key in WORKFLOW_KEYS:
        section, _, leaf = key.rpartition(".")
        node = fragment.get(section, {}) if section else fragment
        if isinstance(node, dict) and leaf in node:
            raise _config_error(f"{where}.{key} is set by the workflow for each run; remove it")
    rest = {k: v for k, v in fragment.items() if k != "params"}
    try:
        runconfig.from_dict(runconfig.RunConfig, rest)
    except IfssError as err:
        raise _config_error(f"in {where}: {err}") from None


def _check_method_name(name: str, where: str) -> None:
    if name in METHODS or name in PLANNED_METHODS:
        return
    known = sorted(set(METHODS) | set(PLANNED_METHODS))
    close = difflib.get_close_matches(name, known, n=2)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise _config_error(
        f"{where}: unknown method {name!r}{hint}; known methods: {', '.join(known)}"
    )


def _method_of(methods: dict, name: str) -> str:
    """The registered method a configured name runs: itself, or what its variant entry names."""
    return (methods.get(name) or {}).get("method", name)


def _check_variant(name: str, entry: dict, methods: dict) -> None:
    """A variant names a method that is not itself a variant and shares its step-0 run."""
    of = entry["method"]
    if _method_of(methods, of) != of:
        raise _config_error(
            f"methods.{name}.method: {of!r} is itself a variant (of "
            f"{methods[of]['method']!r}); name the registered method"
        )
    _check_method_name(of, f"methods.{name}.method")
    if entry["step0"]:
        raise _config_error(
            f"methods.{name}.step0: a variant shares the step-0 run of {of}; set step-0 "
            f"settings under methods.{of}.step0, or register a method with its own step 0"
        )


def _check_names(names, where: str, methods: dict) -> None:
    for name in names:
        if _method_of(methods, name) != name:
            continue  # a variant, checked with its entry
        _check_method_name(name, where)


def check_config(cfg: dict) -> None:
    """What the schema cannot say: names that must exist in ifss, keys of the run config."""
    _check_fragment(cfg["run"], "run")
    for name, ds in cfg["datasets"].items():
        ds.setdefault("root", f"data/{name}")
        root = ds["root"].rstrip("/")
        if ds["source"] == "download" and os.path.basename(root) != name:
            raise _config_error(
                f"datasets.{name}.root is {ds['root']!r}, but `ifss download` prepares "
                f"<folder>/{name}; make the root end in /{name}"
            )
        if ds["source"] == "synth" and name != "synthetic":
            raise _config_error(
                f"datasets.{name}.source: only the dataset 'synthetic' can be synth"
            )
        for part in ("run", "step0", "SS", "MS"):
            _check_fragment(ds[part], f"datasets.{name}.{part}")
    for name, method in cfg["methods"].items():
        if method is None:
            cfg["methods"][name] = method = {"params": {}, "step0": {}, "fewshot": {}}
        if _method_of(cfg["methods"], name) != name:
            _check_variant(name, method, cfg["methods"])
        else:
            _check_method_name(name, f"methods.{name}")
        for stage in STAGES:
            _check_fragment(method[stage], f"methods.{name}.{stage}")
    for name, override in cfg["overrides"].items():
        _check_fragment(override["set"], f"overrides.{name}.set")
        when = override["when"]
        for key, valid in (("stage", STAGES), ("setting", SETTINGS)):
            for value in _as_list(when.get(key, [])):
                if value not in valid:
                    raise _config_error(
                        f"overrides.{name}.when.{key}: {value!r} is not one of {', '.join(valid)}"
                    )
    for name, table in cfg["tables"].items():
        if table["dataset"] not in cfg["datasets"]:
            raise _config_error(
                f"tables.{name}.dataset {table['dataset']!r} is not under datasets "
                f"(configured: {', '.join(cfg['datasets'])})"
            )
        for task in table["tasks"]:
            try:
                steps = get_task(table["dataset"], task).num_steps
            except IfssError as err:
                raise _config_error(f"tables.{name}.tasks: {err}") from None
            if steps < 2:
                raise _config_error(f"tables.{name}.tasks: task {task!r} has no incremental step")
        _check_names(table["methods"], f"tables.{name}.methods", cfg["methods"])
    for name, figure in cfg["figures"].items():
        where = f"figures.{name}"
        if figure["dataset"] not in cfg["datasets"]:
            raise _config_error(f"{where}.dataset {figure['dataset']!r} is not under datasets")
        try:
            steps = get_task(figure["dataset"], figure["task"]).num_steps
        except IfssError as err:
            raise _config_error(f"{where}.task: {err}") from None
        figure.setdefault("step", steps - 1)
        if not 1 <= figure["step"] < steps:
            raise _config_error(f"{where}.step: task {figure['task']!r} has few-shot steps "
                                f"1..{steps - 1}")
        if len(figure["methods"]) < 2:
            raise _config_error(f"{where}.methods: a comparison needs two or more methods")
        _check_names(figure["methods"], f"{where}.methods", cfg["methods"])


def _as_list(value):
    return value if isinstance(value, list) else [value]


validate_config(config)
check_config(config)

DATASETS = config["datasets"]
TABLES = config["tables"]
FIGURES = config["figures"]
METHOD_SETTINGS = config["methods"]
WEIGHTS_DIR = config["weights"]["dir"].rstrip("/")


def registered_method(name: str) -> str:
    return _method_of(METHOD_SETTINGS, name)


def is_registered(name: str) -> bool:
    return registered_method(name) in METHODS


_unregistered = sorted({
    m for spec in (*TABLES.values(), *FIGURES.values()) for m in spec["methods"]
    if not is_registered(m)
})
if _unregistered:
    logger.warning(
        f"ifss: methods not registered yet, left out of the tables until they are: "
        f"{', '.join(_unregistered)}"
    )


# ----------------------------------------------------------------- paths


def step0_dir(dataset, task, base):
    return f"results/runs/{dataset}/{task}/step0/{base}"


@functools.cache
def step0_task(dataset: str, task: str) -> str:
    """The task whose step-0 run `task` uses: the first task with the same step-0 classes.

    Step 0 depends only on its classes, so 5-0m uses 5-0's step-0 run (15-1 uses 15-5's) and
    the same base model is not trained twice.
    """
    classes = get_task(dataset, task).steps[0]
    return next(t for t in task_names(dataset) if get_task(dataset, t).steps[0] == classes)


def step_dir(dataset, task, method, nshot, ishot, step):
    return f"results/runs/{dataset}/{task}/{method}/s{nshot}-i{ishot}/step{step}"


def dataset_marker(dataset: str) -> str:
    """The file whose presence says the dataset folder is complete."""
    ds = DATASETS[dataset]
    root = ds["root"].rstrip("/")
    markers = {"synth": f"{root}/meta.json", "download": f"{root}/.ifss-prepared.json"}
    return markers.get(ds["source"], "")  # local: none, the folder is checked instead


def class_index_path(dataset: str) -> str:
    return f"resources/splits/{dataset}/class_index.json"


def weights_path(name: str) -> str:
    return f"{WEIGHTS_DIR}/{name}.pth"


# ----------------------------------------------------------------- run settings


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _matches(when: dict, context: dict) -> bool:
    """Every `when` key holds one of the run's values (a variant's run has two method names)."""
    for key, wanted in when.items():
        values = context.get(key)
        if values is None:
            return False
        values = values if isinstance(values, tuple) else (values,)
        if not {str(v) for v in values} & {str(v) for v in _as_list(wanted)}:
            return False
    return True


@functools.cache
def run_settings(dataset, task, method, stage, setting=None, nshot=None, ishot=None, step=0):
    """The run fragment of one run, from this run's config sections only.

    Order (later wins): run, datasets.D.run, datasets.D.{step0|SS|MS}, methods.M.params,
    methods.M.{step0|fewshot}, for a variant V of M then methods.V.params and methods.V.fewshot,
    then every matching override in file order. No other method's section is read, so editing
    one method's settings changes no other run's params (its variants' excepted).
    """
    ds = DATASETS[dataset]
    registered = registered_method(method)
    names = (registered, method) if registered != method else (method,)
    layers = [config["run"], ds["run"], ds["step0"] if stage == "step0" else ds[setting]]
    for name in names:
        method_cfg = METHOD_SETTINGS.get(name) or {}
        layers += [{"params": method_cfg.get("params") or {}}, method_cfg.get(stage) or {}]
    context = dict(dataset=dataset, task=task, method=names if len(names) > 1 else method,
                   stage=stage, setting=setting, nshot=nshot, ishot=ishot, step=step)
    layers += [o["set"] for o in config["overrides"].values() if _matches(o["when"], context)]
    return functools.reduce(_merge, layers, {})


def _yaml_value(value) -> str:
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


def _flatten(fragment: dict, prefix="") -> list:
    pairs = []
    for key, value in fragment.items():
        if isinstance(value, dict):
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _set_pairs(pairs) -> str:
    return " ".join(f"--set {shlex.quote(f'{k}={_yaml_value(v)}')}" for k, v in pairs)


@functools.cache
def _fragment_args(fragment_json: str) -> str:
    return _set_pairs(_flatten(json.loads(fragment_json)))


def set_args(fixed: dict, fragment: dict) -> str:
    """`--set key=value ...` for `ifss train`: the workflow's keys, then the config's."""
    return f"{_set_pairs(fixed.items())} {_fragment_args(json.dumps(fragment))}"


def _dataset_keys(dataset: str) -> dict:
    ds = DATASETS[dataset]
    keys = {"data.root": ds["root"]}
    if ds["class_index"]:
        keys["data.class_index"] = class_index_path(dataset)
    return keys


def dataset_inputs(dataset: str) -> dict:
    ds = DATASETS[dataset]
    inputs = {}
    if ds["source"] == "local" and not os.path.isdir(ds["root"]):
        raise WorkflowError(
            f"dataset {dataset!r} has source 'local', but its root {ds['root']!r} does not exist; "
            f"prepare it there, or set datasets.{dataset}.source to download"
        )
    if dataset_marker(dataset):
        inputs["data"] = dataset_marker(dataset)
    if ds["class_index"]:
        inputs["class_index"] = class_index_path(dataset)
    return inputs


# ----------------------------------------------------------------- wildcard checks


def _unknown(kind: str, value, valid, where: str = "") -> WorkflowError:
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f" ({where})" if where else ""
    return WorkflowError(
        f"unknown {kind} {value!r}{hint}; valid {kind}s{where}: {', '.join(valid)}"
    )


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise _unknown("dataset", dataset, DATASETS, "under `datasets` in the config")


def check_task(dataset: str, name: str):
    check_dataset(dataset)
    try:
        return get_task(dataset, name)
    except IfssError:
        raise _unknown("task", name, task_names(dataset), f"of dataset {dataset}") from None


def check_method(name: str):
    """The registry entry of a configured name (a variant resolves to its method)."""
    if is_registered(name):
        return METHODS[registered_method(name)]
    name = registered_method(name)
    if name in PLANNED_METHODS:
        raise WorkflowError(
            f"method {name!r} is not registered yet in ifss/methods/registry.py; "
            f"registered methods: {', '.join(METHODS)}"
        )
    raise _unknown("method", name, METHODS, "registered in ifss/methods/registry.py")


def check_base(name: str):
    info = check_method(name)
    if not info.step0:
        bases = [m.name for m in METHODS.values() if m.step0]
        raise WorkflowError(
            f"method {name!r} has no step-0 run (its step 1 starts from step0/{info.base}); "
            f"step-0 methods: {', '.join(bases)}"
        )
    return info


def check_shot(nshot, fragment: dict) -> None:
    stride = fragment.get("data", {}).get("fewshot_stride", runconfig.DataConfig().fewshot_stride)
    if not 1 <= int(nshot) <= int(stride):
        raise WorkflowError(
            f"unknown shot s{nshot}: nshot must be 1..{stride} (data.fewshot_stride); "
            f"the papers use 1, 2 and 5"
        )


# ----------------------------------------------------------------- targets


def table_runs(name: str) -> list:
    """(task, method, nshot, ishot, last step) of each run a table reads (registered methods)."""
    table = TABLES[name]
    runs = []
    for task_name in table["tasks"]:
        last = get_task(table["dataset"], task_name).num_steps - 1
        for method in table["methods"]:
            if not is_registered(method):
                continue
            for nshot in table["shots"]:
                for ishot in table["ishots"]:
                    runs.append((task_name, method, nshot, ishot, last))
    return runs


def table_metrics(name: str) -> list:
    dataset = TABLES[name]["dataset"]
    return [f"{step_dir(dataset, *run)}/metrics.json" for run in table_runs(name)]


def table_outputs(name: str) -> list:
    base = f"results/tables/{name}"
    return [f"{base}.csv", f"{base}.md", f"{base}_runs.csv", f"{base}_per_class.csv"]


def figure_outputs(name: str) -> list:
    return [f"results/figures/{name}/qualitative.png", f"results/figures/{name}/tsne.png"]


def all_targets() -> list:
    tables = [path for name in TABLES for path in table_outputs(name)]
    figures = [path for name, figure in FIGURES.items()
               if all(is_registered(m) for m in figure["methods"])
               for path in figure_outputs(name)]
    return tables + figures


# ----------------------------------------------------------------- data and weights rules


def marker_dir(wildcards, output):
    return os.path.dirname(output.marker)


def download_args(dataset: str) -> str:
    opts = DATASETS[dataset]["download"]
    args = []
    if opts["mirror"]:
        args += ["--mirror", opts["mirror"]]
    if dataset == "coco":
        args += ["--coco-source", opts["coco_source"]]
    return " ".join(shlex.quote(a) for a in args)


def download_root(wildcards, output):
    """`ifss download NAME --root R` prepares R/NAME, the dataset folder of the marker."""
    return os.path.dirname(os.path.dirname(output.marker))


def class_index_inputs(wildcards):
    check_dataset(wildcards.dataset)
    marker = dataset_marker(wildcards.dataset)
    return {"data": marker} if marker else {}


def dataset_root(wildcards):
    return DATASETS[wildcards.dataset]["root"]


def weights_dest(wildcards, output):
    return os.path.dirname(output.file)


def weights_mirror(wildcards):
    mirror = config["weights"]["mirror"]
    return f"--mirror {shlex.quote(mirror)}" if mirror else ""


# ----------------------------------------------------------------- training rules


def maybe_temp(path):
    return path if config["keep_fewshot_models"] else temp(path)


def _step0_start(wildcards) -> dict:
    """What a step-0 run starts from: {"previous": model.pt} of the step-0 run it continues
    (e.g. DWI's from COS's), or {"weights": file} of ImageNet weights, or nothing."""
    info = check_base(wildcards.base)
    if info.step0_from:
        start = step0_dir(wildcards.dataset, wildcards.task, info.step0_from)
        return {"previous": f"{start}/model.pt"}
    if DATASETS[wildcards.dataset]["weights"] != "none":
        return {"weights": weights_path(DATASETS[wildcards.dataset]["weights"])}
    return {}


def step0_inputs(wildcards):
    check_task(wildcards.dataset, wildcards.task)
    inputs = dataset_inputs(wildcards.dataset)
    for key, path in _step0_start(wildcards).items():
        inputs[key] = ancient(path) if key == "weights" else path
    return inputs


def training_threads(stage: str):
    """Snakemake threads of a training job: datasets.D.threads.<stage> (an unknown dataset
    fails in the rule's input function, with its own message)."""

    def threads(wildcards):
        ds = DATASETS.get(wildcards.dataset)
        return ds["threads"][stage] if ds else 1

    return threads


def step0_sets(wildcards):
    """The step-0 run's `--set` pairs, from the wildcards only: Snakemake leaves params that
    read `input` out of its params-changed check, and an edited step-0 setting must rerun it."""
    fixed = dict(dataset=wildcards.dataset, task=wildcards.task, step=0, method=wildcards.base)
    fixed.update(_dataset_keys(wildcards.dataset))
    start = _step0_start(wildcards)
    if "previous" in start:
        fixed["previous"] = start["previous"]
    if "weights" in start:
        fixed["model.pretrained"] = start["weights"]
    fragment = run_settings(wildcards.dataset, wildcards.task, wildcards.base, "step0", step=0)
    return set_args(fixed, fragment)


def _fewshot_run(wildcards):
    return fewshot_run(wildcards.dataset, wildcards.task, wildcards.method,
                       int(wildcards.nshot), int(wildcards.ishot), int(wildcards.step))


@functools.cache
def fewshot_run(dataset, task, method, nshot, ishot, step):
    """(method info, run fragment) of a few-shot step; unknown names fail here."""
    task_info = check_task(dataset, task)
    info = check_method(method)
    if not 1 <= step < task_info.num_steps:
        raise WorkflowError(
            f"task {task!r} has few-shot steps 1..{task_info.num_steps - 1}, not step{step} "
            f"(step-0 runs are results/runs/{dataset}/{task}/step0/<base>/)"
        )
    setting = "MS" if task_info.is_multi_step else "SS"
    fragment = run_settings(dataset, task, method, "fewshot", setting, nshot, ishot, step)
    check_shot(nshot, fragment)
    return info, fragment


def step_inputs(wildcards):
    """The previous step's model only: data and class index reach it through step 0."""
    info, _ = _fewshot_run(wildcards)
    step = int(wildcards.step)
    if step == 1:
        base_task = step0_task(wildcards.dataset, wildcards.task)
        previous = step0_dir(wildcards.dataset, base_task, info.base)
    else:
        previous = step_dir(wildcards.dataset, wildcards.task, wildcards.method,
                            wildcards.nshot, wildcards.ishot, step - 1)
    return {"previous": f"{previous}/model.pt"}


def step_sets(wildcards):
    _, fragment = _fewshot_run(wildcards)
    method = registered_method(wildcards.method)
    fixed = dict(dataset=wildcards.dataset, task=wildcards.task, step=int(wildcards.step),
                 nshot=int(wildcards.nshot), ishot=int(wildcards.ishot), method=method)
    if method != wildcards.method:
        fixed["label"] = wildcards.method  # a variant: its own row in tables
    fixed.update(_dataset_keys(wildcards.dataset))
    return set_args(fixed, fragment)


# ----------------------------------------------------------------- table rule


def table_inputs(wildcards):
    if wildcards.table not in TABLES:
        raise _unknown("table", wildcards.table, TABLES, "under `tables` in the config")
    return table_metrics(wildcards.table)


def table_spec(wildcards):
    table = TABLES[wildcards.table]
    return {
        "name": wildcards.table,
        "title": table.get("title", wildcards.table),
        "dataset": table["dataset"],
        "methods": [m for m in table["methods"] if is_registered(m)],
        "shots": table["shots"],
    }


# ----------------------------------------------------------------- figures rule


def _figure(wildcards) -> dict:
    if wildcards.figure not in FIGURES:
        raise _unknown("figure", wildcards.figure, FIGURES, "under `figures` in the config")
    return FIGURES[wildcards.figure]


def figure_model(figure: str, method: str) -> str:
    return f"results/figures/{figure}/models/{method}.pt"


def figure_inputs(wildcards):
    """The figure's copies of the compared runs' model.pt."""
    fig = _figure(wildcards)
    for method in fig["methods"]:
        check_method(method)
    models = [figure_model(wildcards.figure, m) for m in fig["methods"]]
    return {"models": models, **dataset_inputs(fig["dataset"])}


def figure_model_source(wildcards):
    """The model.pt of one compared run (a temp() file the copy keeps for the figure)."""
    fig = _figure(wildcards)
    if wildcards.method not in fig["methods"]:
        raise _unknown("method", wildcards.method, fig["methods"],
                       f"of figures.{wildcards.figure}")
    run = step_dir(fig["dataset"], fig["task"], wildcards.method, fig["nshot"], fig["ishot"],
                   fig["step"])
    return os.path.join(run, "model.pt")


def figure_params(wildcards) -> dict:
    fig = _figure(wildcards)
    keys = ("num_images", "tsne_images", "per_class", "tsne_iterations")
    return {"names": fig["methods"], "data_root": DATASETS[fig["dataset"]]["root"],
            **{k: fig[k] for k in keys}}


# ----------------------------------------------------------------------------- bench


def bench_quick_flag(wildcards):
    return "--quick" if config.get("bench_quick", False) else ""


def bench_gpus(wildcards):
    return int(wildcards.device == "cuda")
