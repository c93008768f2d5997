"""Incremental filtering and label remapping, as pure functions on class ids and lookup tables.

A lookup table (LUT) maps every 8-bit label value of the dataset's files to the run's label:
the position of the class in `task.order(step)`, 255 (ignored) for classes the run must not see,
and INVALID for values that are no class of the dataset at all (an error when met).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ifss.data.records import get_dataset
from ifss.tasks import Task

IGNORE = 255
INVALID = -1


def valid_label_values(label_space: str) -> tuple[int, ...]:
    """The values a label file of this label space may hold: its class ids and void."""
    return get_dataset(label_space).label_ids + (IGNORE,)


def build_lut(label_space: str, keep: Iterable[int], order: tuple[int, ...]) -> np.ndarray:
    """LUT: classes in `keep` -> index in `order`; other valid values -> 255; the rest INVALID."""
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[list(valid_label_values(label_space))] = IGNORE
    position = {c: i for i, c in enumerate(order)}
    for c in keep:
        lut[c] = position[c]
    return lut


def test_lut(task: Task, step: int) -> np.ndarray:
    """Evaluation after `step`: seen classes keep their labels, unseen classes are ignored."""
    order = task.order(step)
    return build_lut(task.label_space, order, order)


def base_lut(task: Task) -> np.ndarray:
    """Step-0 training: the base classes and background."""
    return test_lut(task, 0)


def fewshot_lut(task: Task, step: int, sampled_class: int) -> np.ndarray:
    """A few-shot image sampled for `sampled_class`: old classes and that class keep their labels,
    every other class (the step's other new classes, future classes) is ignored."""
    old = task.order(step - 1)
    return build_lut(task.label_space, old + (sampled_class,), task.order(step))


def keeps_image_at_step0(image_classes: Iterable[int], task: Task) -> bool:
    """Step 0 drops every image that holds a class outside the step-0 set (PIFS protocol)."""
    allowed = set(task.order(0)) | {IGNORE}
    return set(image_classes) <= allowed


def apply_lut(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Remap; raises ValueError listing the invalid values found (callers name the file)."""
    out = lut[label]
    if (out == INVALID).any():
        bad = sorted(int(v) for v in np.unique(label[out == INVALID]))
        raise ValueError(bad)
    return out.astype(np.uint8)
