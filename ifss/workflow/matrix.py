"""`Matrix`: one loaded workflow config, answering what the rules ask about a job (its inputs,
its `--set` arguments, its threads) from the job's wildcards.

Unknown names in a requested path (a dataset, task, protocol, method, table, figure, shot or
step) fail here with an IfssError that lists the valid ones; rules/common.smk turns it into
Snakemake's WorkflowError. Answers that Snakemake asks for once per job are cached.
"""
from __future__ import annotations

import functools
import os
import shlex
from pathlib import Path

import ifss.config as runconfig
from ifss.data.records import get_dataset
from ifss.errors import IfssError, unknown
from ifss.methods.registry import (METHODS, MethodInfo, base_methods, method_params,
                                   weakshot_methods)
from ifss.tasks import Task, get_task
from ifss.workflow import paths, targets
from ifss.workflow.checks import PLANNED_METHODS, check_config, retrain_mismatch
from ifss.workflow.include import expand_includes
from ifss.workflow.schema import validate_schema
from ifss.workflow.settings import method_of, run_settings, set_args, set_pairs


class Matrix:
    def __init__(self, cfg: dict):
        """`cfg`: a config as `load` leaves it (included, validated, checked)."""
        self.config = cfg
        self.datasets: dict = cfg["datasets"]
        self.tables: dict = cfg["tables"]
        self.figures: dict = cfg["figures"]
        self.methods: dict = cfg["methods"]
        self.weights_dir: str = cfg["weights"]["dir"].rstrip("/")
        self.run_settings = functools.cache(functools.partial(run_settings, cfg))
        self.fewshot_run = functools.cache(self._fewshot_run)
        self.continual_run = functools.cache(self._continual_run)
        self.weakshot_run = functools.cache(self._weakshot_run)
        self.step0_task = functools.cache(targets.step0_task)

    @classmethod
    def load(cls, cfg: dict, base_dir: str | Path, schema_file: str | Path) -> "Matrix":
        """Expand `include`, validate against the schema and check `cfg`, in place (Snakemake's
        `config` then holds what the rules use), and wrap it."""
        expanded = expand_includes(cfg, base_dir)
        cfg.clear()
        cfg.update(expanded)
        validate_schema(cfg, schema_file)
        check_config(cfg)
        return cls(cfg)

    # ------------------------------------------------------------- names

    def registered_method(self, name: str) -> str:
        return method_of(self.methods, name)

    def is_registered(self, name: str) -> bool:
        return self.registered_method(name) in METHODS

    def unregistered(self) -> list[str]:
        return targets.unregistered(self.tables, self.figures, self.is_registered)

    def check_dataset(self, dataset: str) -> dict:
        if dataset not in self.datasets:
            raise unknown("dataset", dataset, self.datasets, "under `datasets` in the config")
        return self.datasets[dataset]

    def check_task(self, dataset: str, task: str) -> Task:
        self.check_dataset(dataset)
        return get_task(dataset, task)

    def check_method(self, name: str) -> MethodInfo:
        """The registry entry of a configured name (a variant resolves to its method)."""
        registered = self.registered_method(name)
        if registered in METHODS:
            return METHODS[registered]
        if registered in PLANNED_METHODS:
            raise IfssError(f"method {registered!r} is not registered yet in "
                            f"ifss/methods/registry.py; registered methods: {', '.join(METHODS)}")
        variants = [n for n in self.methods if self.registered_method(n) != n]
        raise unknown("method", registered, [*METHODS, *variants])

    def check_base(self, name: str) -> MethodInfo:
        info = self.check_method(name)
        if info.weakshot:
            raise IfssError(f"method {name!r} is a weak-shot method: it trains from ImageNet "
                            "weights with no step-0 run; its runs are "
                            f"{paths.weakshot_dir('<dataset>', '<task>', name)}/")
        if not info.step0:
            raise IfssError(
                f"method {name!r} has no step-0 run (its step 1 starts from step0/{info.base}); "
                f"step-0 methods: {', '.join(base_methods())}"
            )
        return info

    def check_not_weakshot(self, name: str, info: MethodInfo, dataset: str, task: str) -> None:
        """A weak-shot method runs under protocol weakshot only."""
        if info.weakshot:
            raise IfssError(f"method {name!r} is a weak-shot method: it runs only under "
                            f"protocol weakshot, as {paths.weakshot_dir(dataset, task, name)}/")

    def check_weakshot(self, name: str) -> MethodInfo:
        """The registry entry of a configured weak-shot name (a variant resolves to its
        method)."""
        info = self.check_method(name)
        if not info.weakshot:
            raise IfssError(f"method {name!r} is not a weak-shot method, so it has no weakshot "
                            f"runs; weak-shot methods: {', '.join(weakshot_methods())} (and "
                            "their variants)")
        return info

    @staticmethod
    def check_protocol(protocol: str, step0: bool = False) -> None:
        """A continual protocol; at step 0 one that has its own step-0 run (not sequential)."""
        if protocol not in paths.CONTINUAL:
            raise unknown("protocol", protocol, paths.CONTINUAL)
        if step0 and paths.STEP0_PROTOCOL[protocol] != protocol:
            raise IfssError(f"{protocol} runs start from the {paths.STEP0_PROTOCOL[protocol]} "
                            f"step-0 run (the same images and labels); request "
                            f"{paths.STEP0_PROTOCOL[protocol]}/step0/<base> instead")

    @staticmethod
    def check_shot(nshot, fragment: dict) -> None:
        default = runconfig.DataConfig().fewshot_stride
        stride = fragment.get("data", {}).get("fewshot_stride", default)
        if not 1 <= int(nshot) <= int(stride):
            raise IfssError(f"unknown shot s{nshot}: nshot must be 1..{stride} "
                            f"(data.fewshot_stride); the papers use 1, 2 and 5")

    # ------------------------------------------------------------- data and weights

    def dataset_marker(self, dataset: str) -> str:
        ds = self.datasets[dataset]
        # a derived dataset's converter writes the marker `ifss download` writes
        source = "download" if ds["source"] == "derived" else ds["source"]
        return paths.dataset_marker(ds["root"], source)

    def dataset_keys(self, dataset: str, step: int = 0) -> dict:
        """The run-config keys that say where a run's data is. The class index (`ifss splits`)
        indexes the first train split: a step that trains on another one (coco-voc's step 1, on
        voc_train) is not given it and reads the index cached beside the data."""
        ds = self.datasets[dataset]
        keys = {"data.root": ds["root"]}
        splits = get_dataset(dataset).train_splits
        if ds["class_index"] and splits[min(int(step), len(splits) - 1)] == splits[0]:
            keys["data.class_index"] = paths.class_index_path(dataset)
        return keys

    def dataset_inputs(self, dataset: str) -> dict:
        ds = self.datasets[dataset]
        if ds["source"] == "local" and not os.path.isdir(ds["root"]):
            raise IfssError(
                f"dataset {dataset!r} has source 'local', but its root {ds['root']!r} does not "
                f"exist; prepare it there, or set datasets.{dataset}.source to download"
            )
        inputs = {}
        if self.dataset_marker(dataset):
            inputs["data"] = self.dataset_marker(dataset)
        if ds["class_index"]:
            inputs["class_index"] = paths.class_index_path(dataset)
        return inputs

    def class_index_inputs(self, dataset: str) -> dict:
        self.check_dataset(dataset)
        marker = self.dataset_marker(dataset)
        return {"data": marker} if marker else {}

    def derived_inputs(self, dataset: str) -> dict:
        """A derived dataset's inputs: role -> the marker of the configured dataset it reads
        (none for one of source local: its folder is checked by the converter)."""
        used = self.datasets[dataset]["from"]
        return {role: self.dataset_marker(name) for role, name in used.items()
                if self.dataset_marker(name)}

    def derived_args(self, dataset: str) -> str:
        """`--coco ROOT --voc ROOT`: the roots of the datasets it is built from."""
        used = self.datasets[dataset]["from"]
        return " ".join(f"--{role} {shlex.quote(self.datasets[name]['root'])}"
                        for role, name in used.items())

    def download_args(self, dataset: str) -> str:
        opts = self.datasets[dataset]["download"]
        args = ["--mirror", opts["mirror"]] if opts["mirror"] else []
        if dataset == "coco":
            args += ["--coco-source", opts["coco_source"]]
        return " ".join(shlex.quote(a) for a in args)

    def weights_args(self) -> str:
        mirror = self.config["weights"]["mirror"]
        return f"--mirror {shlex.quote(mirror)}" if mirror else ""

    def weights_path(self, name: str) -> str:
        return paths.weights_path(self.weights_dir, name)

    # ------------------------------------------------------------- training jobs

    def threads(self, dataset: str, stage: str) -> int:
        """Snakemake threads of a training job (an unknown dataset fails in the rule's input
        function, with its own message)."""
        ds = self.datasets.get(dataset)
        return ds["threads"][stage] if ds else 1

    @staticmethod
    def step0_dir(dataset: str, task: str, base: str, protocol: str = "fewshot") -> str:
        """The step-0 run of a few-shot task or, under a continual protocol, of its step-0
        protocol (sequential: disjoint's)."""
        return paths.run_dir(dataset, task, base, 0, None, None, protocol)

    def imagenet_weights(self, dataset: str) -> dict:
        """{"weights": file} of the dataset's ImageNet weights, or nothing (weights: none)."""
        if self.datasets[dataset]["weights"] != "none":
            return {"weights": self.weights_path(self.datasets[dataset]["weights"])}
        return {}

    def step0_start(self, dataset: str, task: str, base: str, protocol: str = "fewshot") -> dict:
        """What a step-0 run starts from: {"previous": model.pt} of the step-0 run it continues
        (e.g. DWI's from COS's), or {"weights": file} of ImageNet weights, or nothing."""
        info = self.check_base(base)
        if info.step0_from:
            return {"previous": f"{self.step0_dir(dataset, task, info.step0_from, protocol)}"
                                "/model.pt"}
        return self.imagenet_weights(dataset)

    def step0_inputs(self, dataset: str, task: str, base: str, protocol: str = "fewshot") -> dict:
        """Data, class index and start (the "weights" file is best marked ancient); `protocol`:
        fewshot, or the continual step-0 run's (disjoint or overlap)."""
        self.check_task(dataset, task)
        if protocol != "fewshot":
            self.check_protocol(protocol, step0=True)
        return {**self.dataset_inputs(dataset), **self.step0_start(dataset, task, base, protocol)}

    def step0_sets(self, dataset: str, task: str, base: str, protocol: str = "fewshot") -> str:
        """The step-0 run's `--set` pairs, from the wildcards only: Snakemake leaves params that
        read `input` out of its params-changed check, and an edited step-0 setting must rerun."""
        fixed = dict(dataset=dataset, task=task, step=0, method=base)
        if protocol != "fewshot":
            fixed["data.protocol"] = protocol
        fixed.update(self.dataset_keys(dataset))
        start = self.step0_start(dataset, task, base, protocol)
        if "previous" in start:
            fixed["previous"] = start["previous"]
        if "weights" in start:
            fixed["model.pretrained"] = start["weights"]
        return set_args(fixed, self.run_settings(dataset, task, base, "step0", step=0,
                                                 protocol=protocol))

    def _fewshot_run(self, dataset, task, method, nshot: int, ishot: int, step: int):
        """(method info, run fragment) of a few-shot step; unknown names fail here."""
        task_info = self.check_task(dataset, task)
        info = self.check_method(method)
        self.check_not_weakshot(method, info, dataset, task)
        if not 1 <= step < task_info.num_steps:
            raise IfssError(
                f"task {task!r} has few-shot steps 1..{task_info.num_steps - 1}, not step{step} "
                f"(step-0 runs are {paths.step0_dir(dataset, task, '<base>')}/)"
            )
        setting = "MS" if task_info.is_multi_step else "SS"
        fragment = self.run_settings(dataset, task, method, "fewshot", setting, nshot, ishot,
                                     step)
        self.check_shot(nshot, fragment)
        return info, fragment

    def step_inputs(self, dataset, task, method, nshot, ishot, step) -> dict:
        """The previous step's model only: data and class index reach it through step 0.
        `nshot` and `ishot` as in the requested path (they name the folders)."""
        info, _ = self.fewshot_run(dataset, task, method, int(nshot), int(ishot), int(step))
        if int(step) == 1:
            previous = paths.step0_dir(dataset, self.step0_task(dataset, task), info.base)
        else:
            previous = paths.step_dir(dataset, task, method, nshot, ishot, int(step) - 1)
        return {"previous": f"{previous}/model.pt"}

    def step_sets(self, dataset, task, method, nshot, ishot, step) -> str:
        nshot, ishot, step = int(nshot), int(ishot), int(step)
        _, fragment = self.fewshot_run(dataset, task, method, nshot, ishot, step)
        fixed = dict(dataset=dataset, task=task, step=step, nshot=nshot, ishot=ishot)
        return set_args({**fixed, **self.method_keys(method),
                         **self.dataset_keys(dataset, step)}, fragment)

    def method_keys(self, method: str) -> dict:
        registered = self.registered_method(method)
        if registered != method:
            return {"method": registered, "label": method}  # a variant: its own row in tables
        return {"method": method}

    def _continual_run(self, dataset, task, protocol, method, step: int):
        """(method info, run fragment) of a continual step; unknown names fail here."""
        task_info = self.check_task(dataset, task)
        self.check_protocol(protocol)
        info = self.check_method(method)
        self.check_not_weakshot(method, info, dataset, task)
        if not 1 <= step < task_info.num_steps:
            raise IfssError(
                f"task {task!r} has continual steps 1..{task_info.num_steps - 1}, not step{step} "
                f"(step-0 runs are {self.step0_dir(dataset, task, '<base>', protocol)}/)")
        fragment = self.run_settings(dataset, task, method, "continual", step=step,
                                     protocol=protocol)
        return info, fragment

    def continual_step_inputs(self, dataset, task, protocol, method, step) -> dict:
        """The previous step's model: step 1 starts from the shared step-0 run of the method's
        base (the first task with the same step-0 classes; sequential: disjoint's)."""
        info, _ = self.continual_run(dataset, task, protocol, method, int(step))
        if int(step) == 1:
            previous = self.step0_dir(dataset, self.step0_task(dataset, task), info.base,
                                      protocol)
        else:
            previous = paths.continual_step_dir(dataset, task, protocol, method, int(step) - 1)
        return {"previous": f"{previous}/model.pt"}

    def continual_step_sets(self, dataset, task, protocol, method, step) -> str:
        _, fragment = self.continual_run(dataset, task, protocol, method, int(step))
        fixed = {"dataset": dataset, "task": task, "step": int(step), **self.method_keys(method),
                 "data.protocol": protocol, **self.dataset_keys(dataset, int(step))}
        return set_args(fixed, fragment)

    # ------------------------------------------------------------- weak-shot jobs

    def pseudo_source(self, name: str) -> str | None:
        """The configured name whose pseudo labels the weak-shot runs of `name` train on."""
        return (self.methods.get(name) or {}).get("pseudo_labels")

    def _weakshot_run(self, dataset, task, method, step: int) -> dict:
        """The run fragment of a weak-shot run; unknown names and a retraining run without
        pseudo labels (or the other way round) fail here."""
        task_info = self.check_task(dataset, task)
        self.check_weakshot(method)
        if task_info.num_steps != 2:
            raise IfssError(f"task {task!r} has {task_info.num_steps} steps, but a weak-shot run "
                            "is step 1 of a two-step task (base and novel classes); use ws1.. "
                            "or 15-5")
        if step != 1:
            raise IfssError(f"a weak-shot run is step 1 of its task (from ImageNet weights, no "
                            f"step-0 run), not step{step}; request "
                            f"{paths.weakshot_dir(dataset, task, method)}/")
        fragment = self.run_settings(dataset, task, method, "weakshot", step=1,
                                     protocol=paths.WEAKSHOT)
        params = method_params(self.registered_method(method), fragment.get("params") or {})
        if hasattr(params, "retrain"):
            message = retrain_mismatch(method, params.retrain, self.pseudo_source(method))
            if message:
                raise IfssError(message)
        return fragment

    def weakshot_inputs(self, dataset, task, method, step) -> dict:
        """Data, class index, ImageNet weights ("weights", best marked ancient) and, for a run
        on pseudo labels, the source's pseudo-label folder ("pseudo_labels")."""
        self.weakshot_run(dataset, task, method, int(step))
        inputs = {**self.dataset_inputs(dataset), **self.imagenet_weights(dataset)}
        source = self.pseudo_source(method)
        if source:
            inputs["pseudo_labels"] = paths.pseudo_dir(dataset, task, source)
        return inputs

    def weakshot_sets(self, dataset, task, method, step) -> str:
        """`--set` pairs of a weak-shot run, from the wildcards and the config only."""
        fragment = self.weakshot_run(dataset, task, method, int(step))
        fixed = {"dataset": dataset, "task": task, "step": 1, **self.method_keys(method),
                 "data.protocol": paths.WEAKSHOT, **self.dataset_keys(dataset, 1)}
        weights = self.imagenet_weights(dataset)
        if weights:
            fixed["model.pretrained"] = weights["weights"]
        source = self.pseudo_source(method)
        if source:
            fixed["data.train_labels"] = paths.pseudo_dir(dataset, task, source)
        return set_args(fixed, fragment)

    def pseudo_inputs(self, dataset, task, method) -> dict:
        """The weak-shot run's model and the data it labels."""
        self.weakshot_run(dataset, task, method, 1)
        return {"model": f"{paths.weakshot_dir(dataset, task, method)}/model.pt",
                **self.dataset_inputs(dataset)}

    def pseudo_sets(self, dataset, task, method) -> str:
        """`ifss pseudo-labels --set` pairs: where the data is (the rest is the model's)."""
        self.weakshot_run(dataset, task, method, 1)
        return set_pairs(self.dataset_keys(dataset, 1).items())

    # ------------------------------------------------------------- episodic evaluations

    def episodic_inputs(self, dataset, task, backbone, nshot, head) -> dict:
        """The few-shot step-0 run of `backbone` on the fold, and the data."""
        self.episodic_head_settings(dataset, task, backbone, head)
        step0 = paths.step0_dir(dataset, self.step0_task(dataset, task), backbone)
        return {"model": f"{step0}/model.pt", **self.dataset_inputs(dataset)}

    def episodic_head_settings(self, dataset, task, backbone, head) -> dict:
        """{"eval.head", "eval.gamma"} of a head folder (binary | generalized-g{gamma}); the
        names are checked (a fold task, a step-0 backbone)."""
        task_info = self.check_task(dataset, task)
        if task_info.num_steps != 2:
            raise IfssError(f"task {task!r} is not a fold (base classes and one step of novel "
                            "classes); episodic evaluations are of the 5-i / 20-i tasks")
        self.check_base(backbone)
        kind, _, gamma = head.partition("-g")
        if head == "binary":
            return {"eval.head": "binary", "eval.gamma": 0.0}
        try:
            value = float(gamma)
        except ValueError:
            value = None
        if kind != "generalized" or value is None or paths.episodic_head(kind, value) != head:
            raise IfssError(f"unknown episodic head folder {head!r}; use binary or "
                            "generalized-g<gamma> (generalized-g0, generalized-g10)")
        return {"eval.head": "generalized", "eval.gamma": value}

    def episodic_sets(self, dataset, task, backbone, nshot, head) -> str:
        """`ifss eval` --set pairs: where the data is, the protocol, shot, head and gamma, then
        datasets.D.episodic (episodes, runs, image size, ...)."""
        fixed = {"eval.protocol": "episodic", "nshot": int(nshot),
                 **self.episodic_head_settings(dataset, task, backbone, head),
                 **self.dataset_keys(dataset)}
        return set_args(fixed, self.datasets[dataset]["episodic"])

    # ------------------------------------------------------------- tables and figures

    def all_targets(self) -> list[str]:
        return targets.all_targets(self.tables, self.figures, self.is_registered)

    def table(self, name: str) -> dict:
        if name not in self.tables:
            raise unknown("table", name, self.tables, "under `tables` in the config")
        return self.tables[name]

    def table_metrics(self, name: str) -> list[str]:
        return targets.table_metrics(self.table(name), self.is_registered)

    def table_spec(self, name: str) -> dict:
        """What the table script needs besides the metrics files (a few-shot table's spec is
        what it was before continual tables existed: a Snakemake param, its change reruns)."""
        table = self.table(name)
        spec = {
            "name": name,
            "title": table.get("title", name),
            "dataset": table["dataset"],
            "methods": [m for m in table["methods"] if self.is_registered(m)],
        }
        if table["kind"] == "episodic":
            rows = {name: row for name, row in table["rows"].items()
                    if self.is_registered(row["backbone"])}
            return {**spec, "kind": "episodic", "tasks": table["tasks"], "shots": table["shots"],
                    "rows": rows, "metrics": table["metrics"], "delta": table.get("delta")}
        if table["kind"] == "continual":
            protocols = [p for t in table["tasks"] for p in targets.table_protocols(table, t)]
            spec = {**spec, "kind": "continual", "tasks": table["tasks"],
                    "protocols": list(dict.fromkeys(protocols))}
            if table.get("extra_tests"):  # only then: an older table's spec stays as it was
                spec["extra_tests"] = table["extra_tests"]
            if targets.is_weakshot(table):  # only then, too
                spec["metrics"] = table["metrics"]
            return spec
        if table.get("delta"):  # only then: an older table's spec stays as it was
            spec["delta"] = table["delta"]
        return {**spec, "shots": table["shots"]}

    def figure(self, name: str, kind: str = "comparison") -> dict:
        if name not in self.figures:
            raise unknown("figure", name, self.figures, "under `figures` in the config")
        figure = self.figures[name]
        if figure["kind"] != kind:
            files = ", ".join(paths.figure_files(name, figure["kind"]).values())
            raise IfssError(f"figure {name!r} is a {figure['kind']} figure: it makes {files}")
        return figure

    def figure_inputs(self, name: str) -> dict:
        """The figure's copies of the compared runs' model.pt, and the dataset."""
        figure = self.figure(name)
        for method in figure["methods"]:
            self.check_method(method)
        models = [paths.figure_model(name, m) for m in figure["methods"]]
        return {"models": models, **self.dataset_inputs(figure["dataset"])}

    def figure_model_source(self, name: str, method: str) -> str:
        """The model.pt of one compared run (a temp() file the copy keeps for the figure)."""
        figure = self.figure(name)
        if method not in figure["methods"]:
            raise unknown("method", method, figure["methods"], f"in figures.{name}.methods")
        run = paths.step_dir(figure["dataset"], figure["task"], method, figure["nshot"],
                             figure["ishot"], figure["step"])
        return os.path.join(run, "model.pt")

    def figure_params(self, name: str) -> dict:
        figure = self.figure(name)
        keys = ("num_images", "tsne_images", "per_class", "tsne_iterations")
        return {"names": figure["methods"], "data_root": self.datasets[figure["dataset"]]["root"],
                **{k: figure[k] for k in keys}}

    def per_step_runs(self, name: str) -> dict[str, list[str]]:
        """A per_step figure's metrics.json, per registered method: its step-0 run's, then one
        per continual step."""
        figure = self.figure(name, "per_step")
        dataset, task, protocol = figure["dataset"], figure["task"], figure["protocol"]
        steps = get_task(dataset, task).num_steps
        runs = {}
        for method in figure["methods"]:
            if not self.is_registered(method):
                continue
            base = self.check_method(method).base
            step0 = self.step0_dir(dataset, self.step0_task(dataset, task), base, protocol)
            runs[method] = [f"{step0}/metrics.json"] + [
                f"{paths.continual_step_dir(dataset, task, protocol, method, k)}/metrics.json"
                for k in range(1, steps)]
        return runs

    def per_step_inputs(self, name: str) -> list[str]:
        return [path for files in self.per_step_runs(name).values() for path in files]

    def per_step_spec(self, name: str) -> dict:
        figure = self.figure(name, "per_step")
        title = figure.get("title") or (f"{figure['dataset']} {figure['task']} "
                                        f"{figure['protocol']}: mIoU after each step")
        return {"name": name, "title": title, "runs": self.per_step_runs(name)}
