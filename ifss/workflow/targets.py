"""What the workflow makes: each table's runs and metrics files, the figures, the default target
list; and which task's step-0 run a task reuses.

Tables and figures have a `kind` (filled in by the schema): few-shot tables (the default; runs
per shot and split), continual tables (runs per protocol; with protocols [weakshot], weak-shot
tables: step 1 of two-step tasks) and episodic tables (episodic evaluations of step-0 runs, per
fold, shot and head); comparison figures (the default; qualitative masks and t-SNE of compared
models) and per_step figures (mIoU after each step of a continual task)."""
from __future__ import annotations

from typing import Callable

from ifss.tasks import get_task, task_names
from ifss.workflow.paths import (WEAKSHOT, continual_step_dir, episodic_dir, episodic_head,
                                 figure_files, step_dir, table_files)

Registered = Callable[[str], bool]  # is a configured name's method registered?


def is_continual(spec: dict) -> bool:
    """A continual table or a per_step figure (runs of the continual protocols)."""
    return spec.get("kind") in ("continual", "per_step")


def all_protocols(table: dict) -> list[str]:
    """Every protocol of a continual table, in order (each once)."""
    protocols = table["protocols"]
    if isinstance(protocols, dict):
        protocols = [p for each in protocols.values() for p in each]
    return list(dict.fromkeys(protocols))


def is_weakshot(spec: dict) -> bool:
    """A weak-shot table: a continual table with protocol weakshot."""
    return spec.get("kind") == "continual" and WEAKSHOT in all_protocols(spec)


def step0_task(dataset: str, task: str) -> str:
    """The task whose step-0 run `task` uses: the first task of the same family (the same name
    before the first '-') with the same step-0 classes, else the first with those classes.

    Step 0 depends only on its classes, so 5-0m uses 5-0's step-0 run (15-1 uses 15-5's, 10-1
    and 10-5-5 use 10-10's) and the same base model is not trained twice; the family keeps
    15-5's folder its own although VOC's fold 5-3 has the same classes.
    """
    classes = get_task(dataset, task).steps[0]
    same = [t for t in task_names(dataset) if get_task(dataset, t).steps[0] == classes]
    family = task.split("-")[0]
    return next((t for t in same if t.split("-")[0] == family), same[0])


def table_runs(table: dict, registered: Registered) -> list[tuple]:
    """(task, method, nshot, ishot, last step) of each run a few-shot table reads (registered
    methods)."""
    runs = []
    for task in table["tasks"]:
        last = get_task(table["dataset"], task).num_steps - 1
        for method in table["methods"]:
            if not registered(method):
                continue
            for nshot in table["shots"]:
                for ishot in table["ishots"]:
                    runs.append((task, method, nshot, ishot, last))
    return runs


def table_protocols(table: dict, task: str) -> list[str]:
    """A continual table's protocols of `task` (`protocols`: one list, or a list per task)."""
    protocols = table["protocols"]
    return protocols[task] if isinstance(protocols, dict) else protocols


def continual_table_runs(table: dict, registered: Registered) -> list[tuple]:
    """(task, protocol, method, last step) of each run a continual table reads."""
    return [(task, protocol, method, get_task(table["dataset"], task).num_steps - 1)
            for task in table["tasks"] for protocol in table_protocols(table, task)
            for method in table["methods"] if registered(method)]


def episodic_table_runs(table: dict, registered: Registered) -> list[tuple]:
    """(task, backbone, nshot, head folder) of each evaluation an episodic table reads (rows
    may share one: the same backbone, head and gamma), registered backbones only."""
    runs = [(task, row["backbone"], nshot, episodic_head(row["head"], row.get("gamma", 0.0)))
            for task in table["tasks"] for row in table["rows"].values()
            if registered(row["backbone"]) for nshot in table["shots"]]
    return list(dict.fromkeys(runs))


def table_metrics(table: dict, registered: Registered) -> list[str]:
    """The metrics.json of the last step of each run the table reads (an episodic table: of
    each evaluation)."""
    if table.get("kind") == "episodic":
        return [f"{episodic_dir(table['dataset'], *run)}/metrics.json"
                for run in episodic_table_runs(table, registered)]
    if table.get("kind") == "continual":
        return [f"{continual_step_dir(table['dataset'], *run)}/metrics.json"
                for run in continual_table_runs(table, registered)]
    return [f"{step_dir(table['dataset'], *run)}/metrics.json"
            for run in table_runs(table, registered)]


def figure_methods_registered(figure: dict, registered: Registered) -> bool:
    return all(registered(m) for m in figure["methods"])


def figure_outputs(name: str, figure: dict) -> dict[str, str]:
    return figure_files(name, figure.get("kind", "comparison"))


def all_targets(tables: dict, figures: dict, registered: Registered) -> list[str]:
    """Every table's files; every comparison figure whose compared methods are all registered,
    every per_step figure with a registered method (a line per registered method)."""
    paths = [path for name in tables for path in table_files(name).values()]
    for name, figure in figures.items():
        if figure.get("kind") == "per_step":
            wanted = any(registered(m) for m in figure["methods"])
        else:
            wanted = figure_methods_registered(figure, registered)
        if wanted:
            paths += figure_outputs(name, figure).values()
    return paths


def unregistered(tables: dict, figures: dict, registered: Registered) -> list[str]:
    """Compared names whose method is not registered yet (left out of the DAG), sorted."""
    return sorted({m for spec in (*tables.values(), *figures.values()) for m in spec["methods"]
                   if not registered(m)})
