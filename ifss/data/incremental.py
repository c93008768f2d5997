"""Incremental filtering and label remapping, as pure functions on class ids and lookup tables.

A lookup table (LUT) maps every 8-bit label value of the dataset's files to the run's label:
the position of the class in `task.order(step)`, 255 (ignored) or 0 (background) for classes the
run must not see, and INVALID for values that are no class of the dataset at all (an error when
met).

Protocols (`data.protocol`; research wilson_sdr_gfss_simformer.md §B.5 for the continual ones):

    fewshot     step 0: images holding only base classes; step k: nshot images per new class
                (ifss.data.fewshot); test: unseen classes ignored (255)
    disjoint    step k: images with a pixel of a class of step k and no class of a later step;
                labels of other steps' classes -> background
    overlap     step k: images with a pixel of a class of step k (later classes may be there);
                labels of other steps' classes -> background
    sequential  disjoint's images, old classes keep their labels (ICCVW'19)
    test (continual protocols): every val image, unseen classes -> background, the convention of
                MiB and SDR, where "background" means "not a class learned so far"
    weakshot    SimFormer's weak-shot segmentation (research §D.1): step 1 of a two-step task,
                trained from ImageNet weights with no previous model and no step-0 run. Every
                train image holding a class of order(1) enters; base classes (step 0, background
                included) keep their pixel labels, novel classes' pixels become void (the novel
                classes are known from image-level labels only), void stays void. With
                data.train_labels (SimFormer's retraining) the labels come from a pseudo-label
                folder and every class of order(1) keeps its label (`labelled_lut`). Test: every
                val image, every class of order(1) kept, void stays void (nothing is unseen)
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ifss.data.records import get_dataset
from ifss.errors import IfssError
from ifss.tasks import Task

IGNORE = 255
INVALID = -1
CONTINUAL_PROTOCOLS = ("disjoint", "overlap", "sequential")  # test: unseen classes -> background


def valid_label_values(label_space: str) -> tuple[int, ...]:
    """The values a label file of this label space may hold: its class ids and void."""
    return get_dataset(label_space).label_ids + (IGNORE,)


def build_lut(label_space: str, keep: Iterable[int], order: tuple[int, ...],
              others: int = IGNORE) -> np.ndarray:
    """LUT: classes in `keep` -> index in `order`; other classes -> `others` (255 or background
    0); void stays 255; the rest INVALID."""
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[list(valid_label_values(label_space))] = others
    lut[IGNORE] = IGNORE
    position = {c: i for i, c in enumerate(order)}
    for c in keep:
        lut[c] = position[c]
    return lut


def test_lut(task: Task, step: int, protocol: str = "fewshot") -> np.ndarray:
    """Evaluation after `step`: seen classes keep their labels; unseen classes are ignored
    (fewshot, weakshot) or background (the continual protocols)."""
    order = task.order(step)
    return build_lut(task.label_space, order, order,
                     0 if protocol in CONTINUAL_PROTOCOLS else IGNORE)


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


def keeps_image(image_classes: Iterable[int], task: Task, step: int, protocol: str) -> bool:
    """Whether an image enters step `step` under a continual protocol: it holds a pixel of a class
    of that step and, unless `overlap`, no class of a later step."""
    present = set(image_classes) - {0, IGNORE}
    if not present & set(task.steps[step]):
        return False
    return protocol == "overlap" or present <= set(task.order(step))


def continual_lut(task: Task, step: int, protocol: str) -> np.ndarray:
    """Training labels of step `step`: the step's classes (and, `sequential`, the old ones) keep
    their labels, every other class becomes background."""
    order = task.order(step)
    keep = order if protocol == "sequential" else (0,) + task.steps[step]
    return build_lut(task.label_space, keep, order, others=0)


def check_weakshot_step(task: Task, step: int) -> None:
    """A weak-shot run is step 1 of a two-step task (base classes, novel classes)."""
    if task.num_steps != 2 or step != 1:
        raise IfssError(
            f"a weak-shot run (data.protocol=weakshot) is step 1 of a two-step task (base, novel), "
            f"but this is step {step} of task {task.name}, which has {task.num_steps} step(s); "
            "use step=1 and a two-step task such as cocostuff10k ws1 or synthetic 15-5")


def keeps_image_weakshot(image_classes: Iterable[int], task: Task) -> bool:
    """A weak-shot step trains on every image holding at least one class of `task.order(1)`."""
    return bool(set(image_classes) & set(task.order(1)))


def weakshot_lut(task: Task) -> np.ndarray:
    """Weak-shot training labels: base classes (step 0, background included) keep their
    positions in `order(1)`; novel classes' pixels (and any class outside the task) become void,
    so no novel pixel reaches a method."""
    return build_lut(task.label_space, task.order(0), task.order(1))


def labelled_lut(task: Task) -> np.ndarray:
    """Weak-shot retraining on pseudo labels (data.train_labels): every class of `order(1)` keeps
    its position; other classes and void become void."""
    return build_lut(task.label_space, task.order(1), task.order(1))


def apply_lut(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Remap; raises ValueError listing the invalid values found (callers name the file)."""
    out = lut[label]
    if (out == INVALID).any():
        bad = sorted(int(v) for v in np.unique(label[out == INVALID]))
        raise ValueError(bad)
    return out.astype(np.uint8)
