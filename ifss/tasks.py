"""Class splits: which of a dataset's classes each step of a task learns.

The split tables are data in the dataset records (`ifss.data.records`); this module turns one into
a `Task`. A task is a list of steps; each step lists the dataset's original label ids learned at
that step. Background (0) is always the first class of step 0 and is not written in the tables.
During a run, labels are remapped to their position in ``order(step)`` = [0] + classes of steps
0..step. Torch-free: the workflow imports it while building the DAG.
"""
from __future__ import annotations

from dataclasses import dataclass

from ifss.data.records import get_dataset
from ifss.errors import IfssError, unknown


@dataclass(frozen=True)
class Task:
    dataset: str
    name: str
    steps: tuple[tuple[int, ...], ...]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def label_space(self) -> str:
        return get_dataset(self.dataset).label_space

    @property
    def is_multi_step(self) -> bool:
        return self.num_steps > 2

    def check_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise IfssError(
                f"task {self.name!r} has steps 0..{self.num_steps - 1}; step {step} does not exist"
            )

    def new_classes(self, step: int) -> tuple[int, ...]:
        """Original ids learned at `step` (background included at step 0)."""
        self.check_step(step)
        return ((0,) if step == 0 else ()) + self.steps[step]

    def order(self, step: int) -> tuple[int, ...]:
        """Original ids of every class seen up to `step`; the index is the remapped label."""
        self.check_step(step)
        return (0,) + tuple(c for s in self.steps[: step + 1] for c in s)

    def classes_per_step(self, step: int) -> list[int]:
        """Class counts of steps 0..step (step 0 counts background)."""
        return [len(self.new_classes(s)) for s in range(step + 1)]

    @property
    def num_base(self) -> int:
        """Base classes including background: remapped labels < num_base are base."""
        return 1 + len(self.steps[0])

    def class_names(self, step: int, names: tuple | None = None) -> list[str]:
        names = names or get_dataset(self.dataset).classes
        return [names[c] for c in self.order(step)]


def get_task(dataset: str, name: str) -> Task:
    # not cached: a lookup in the record's table is cheap, and a cache would outlive a record
    # replaced in DATASETS (tests register their own)
    table = get_dataset(dataset).tasks
    if name not in table:
        raise unknown("task", name, table, f"for dataset {dataset!r}")
    return Task(dataset, name, table[name])


def task_names(dataset: str) -> list[str]:
    return list(get_dataset(dataset).tasks)
