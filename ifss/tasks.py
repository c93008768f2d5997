"""Class splits as data.

A task is a list of steps; each step lists the dataset's original label ids learned at that step.
Background (0) is always the first class of step 0 and is not written in the lists below. During a
run, labels are remapped to their position in ``order(step)`` = [0] + classes of steps 0..step.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache

from ifss.errors import IfssError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# COCO category ids 1..90 (11 ids are unused by the dataset); index = id, None = unused id.
COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", None, "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack",
    "umbrella", None, None, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", None, "dining table", None, None, "toilet", None, "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", None, "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
COCO_IDS = tuple(i for i, name in enumerate(COCO_CLASSES) if i > 0 and name is not None)

# The label space each dataset's annotation files use. The synthetic benchmark mirrors VOC.
DATASET_LABEL_SPACE = {"voc": "voc", "synthetic": "voc", "coco": "coco"}


def _rest(universe, novel):
    return tuple(c for c in universe if c not in set(novel))


def _voc_tasks() -> dict[str, tuple[tuple[int, ...], ...]]:
    all_ids = tuple(range(1, 21))
    tasks = {"offline": (all_ids,)}
    for fold in range(4):  # PASCAL-5i folds
        novel = tuple(range(5 * fold + 1, 5 * fold + 6))
        tasks[f"5-{fold}"] = (_rest(all_ids, novel), novel)
        tasks[f"5-{fold}m"] = (_rest(all_ids, novel),) + tuple((c,) for c in novel)
    tasks["15-5"] = (tuple(range(1, 16)), tuple(range(16, 21)))
    tasks["15-1"] = (tuple(range(1, 16)),) + tuple((c,) for c in range(16, 21))
    tasks["19-1"] = (tuple(range(1, 20)), (20,))
    tasks["10-10"] = (tuple(range(1, 11)), tuple(range(11, 21)))
    tasks["10-1"] = (tuple(range(1, 11)),) + tuple((c,) for c in range(11, 21))
    return tasks


def _coco_tasks() -> dict[str, tuple[tuple[int, ...], ...]]:
    tasks = {"offline": (COCO_IDS,)}
    for fold in range(4):  # COCO-20i: every 4th class of the 80, in id order
        novel = COCO_IDS[fold::4]
        tasks[f"20-{fold}"] = (_rest(COCO_IDS, novel), novel)
        tasks[f"20-{fold}m"] = (_rest(COCO_IDS, novel),) + tuple(
            novel[i : i + 5] for i in range(0, 20, 5)
        )
    return tasks


TASKS = {"voc": _voc_tasks(), "coco": _coco_tasks()}


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
        return DATASET_LABEL_SPACE[self.dataset]

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
        names = names or (VOC_CLASSES if self.label_space == "voc" else COCO_CLASSES)
        return [names[c] for c in self.order(step)]


@cache
def get_task(dataset: str, name: str) -> Task:
    if dataset not in DATASET_LABEL_SPACE:
        raise IfssError(
            f"unknown dataset {dataset!r}; valid datasets: {', '.join(sorted(DATASET_LABEL_SPACE))}"
        )
    table = TASKS[DATASET_LABEL_SPACE[dataset]]
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise IfssError(
            f"unknown task {name!r} for dataset {dataset!r}{hint}; valid tasks: {', '.join(table)}"
        )
    return Task(dataset, name, table[name])


def task_names(dataset: str) -> list[str]:
    return list(TASKS[DATASET_LABEL_SPACE[dataset]])
