"""What the workflow makes: each table's runs and metrics files, the figures, the default target
list; and which task's step-0 run a task reuses."""
from __future__ import annotations

from typing import Callable

from ifss.tasks import get_task, task_names
from ifss.workflow.paths import figure_files, step_dir, table_files

Registered = Callable[[str], bool]  # is a configured name's method registered?


def step0_task(dataset: str, task: str) -> str:
    """The task whose step-0 run `task` uses: the first task with the same step-0 classes.

    Step 0 depends only on its classes, so 5-0m uses 5-0's step-0 run (15-1 uses 15-5's) and
    the same base model is not trained twice.
    """
    classes = get_task(dataset, task).steps[0]
    return next(t for t in task_names(dataset) if get_task(dataset, t).steps[0] == classes)


def table_runs(table: dict, registered: Registered) -> list[tuple]:
    """(task, method, nshot, ishot, last step) of each run a table reads (registered methods)."""
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


def table_metrics(table: dict, registered: Registered) -> list[str]:
    """The metrics.json of the last step of each run the table reads."""
    return [f"{step_dir(table['dataset'], *run)}/metrics.json"
            for run in table_runs(table, registered)]


def figure_methods_registered(figure: dict, registered: Registered) -> bool:
    return all(registered(m) for m in figure["methods"])


def all_targets(tables: dict, figures: dict, registered: Registered) -> list[str]:
    """Every table's files, and every figure whose compared methods are all registered."""
    paths = [path for name in tables for path in table_files(name).values()]
    paths += [path for name, figure in figures.items()
              if figure_methods_registered(figure, registered)
              for path in figure_files(name).values()]
    return paths


def unregistered(tables: dict, figures: dict, registered: Registered) -> list[str]:
    """Compared names whose method is not registered yet (left out of the DAG), sorted."""
    return sorted({m for spec in (*tables.values(), *figures.values()) for m in spec["methods"]
                   if not registered(m)})
