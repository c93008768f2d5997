"""The episodes of episodic few-shot segmentation: folds, per-class image lists, episode draws.

Protocol of GFSS-Capstone (hmdliu; `EpisodicData` of src/dataset/dataset.py, the class lists of
src/dataset/utils.py, the folds of src/dataset/classes.py; research/wilson_sdr_gfss_simformer.md
§C.3; capstone report §3.1 and §4.2 "Evaluation Metrics"):

- folds are two-step tasks of the dataset records: PASCAL-5i = VOC task "5-i", COCO-20i = COCO
  task "20-i" (every 4th class) or "20-ic" (a contiguous block of 20). Base = step 0, novel =
  the later steps;
- a val image is listed for class c when it holds at least `min_class_pixels` pixels of c
  (2*32*32 in the original), counted at the label file's own resolution;
- run r walks the val images listed for a novel class in list order (restarting when exhausted)
  until it has `count` episodes. Each query gets one of its listed novel classes at random, K
  support images of that class (never the query, no repeats) and one base image: a random base
  class and a random image of its list. Labels are binary for the episode's class.

Torch-free: the draws use a numpy generator seeded by the run's seed, so the episodes of a run
are the same on every machine and for every evaluation batch size.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ifss.data.incremental import IGNORE
from ifss.data.index import images_per_class
from ifss.data.layout import Layout
from ifss.data.readers import read_label
from ifss.errors import IfssError
from ifss.tasks import Task


@dataclass(frozen=True)
class Fold:
    name: str
    base: tuple[int, ...]  # the step-0 classes (original ids), background left out
    novel: tuple[int, ...]  # the classes of the later steps


def fold_of(task: Task) -> Fold:
    """The fold a task defines: its step-0 classes are base, those of every later step novel."""
    if task.num_steps < 2:
        raise IfssError(f"task {task.name!r} of {task.dataset} has no novel classes, so it is no "
                        "few-shot fold; evaluate a step-0 model of a fold task such as 5-0 (VOC), "
                        "20-0 or 20-0c (COCO)")
    return Fold(task.name, tuple(task.steps[0]), tuple(c for s in task.steps[1:] for c in s))


# ---------------------------------------------------------------------------------------------
# per-class image lists


def kept_classes(label: np.ndarray, min_pixels: int) -> tuple[int, ...]:
    """The object classes (not background 0, not void 255) with at least `min_pixels` pixels."""
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
    counts[[0, IGNORE]] = 0
    return tuple(int(c) for c in np.flatnonzero(counts >= min_pixels))


def read_kept_classes(layout: Layout, split: str, min_pixels: int,
                      ids: Sequence[str] | None = None) -> tuple[dict[str, tuple[int, ...]],
                                                                 tuple[int, int]]:
    """(id -> kept classes of each image of `split`, in list order; the largest label height and
    width). Every label file is read once (the class index records which classes an image
    holds, not how many pixels they cover)."""
    ids = list(dict.fromkeys(layout.ids(split) if ids is None else ids))

    def one(image_id: str):
        label = read_label(layout.label_path(split, image_id))
        return kept_classes(label, min_pixels), label.shape

    with ThreadPoolExecutor(max_workers=4) as pool:  # PNG decoding releases the GIL
        results = list(pool.map(one, ids))
    largest = (max(s[0] for _, s in results), max(s[1] for _, s in results))
    return {i: kept for i, (kept, _) in zip(ids, results)}, largest


# ---------------------------------------------------------------------------------------------
# episodes


@dataclass(frozen=True)
class Episode:
    index: int  # position in its run (seeds the episode's own draws elsewhere)
    query: str
    novel: int  # the episode's novel class (original id)
    support: tuple[str, ...]  # K images of `novel`, without the query, no repeats
    base: int  # the base class scored on `base_image`
    base_image: str


def _name(c: int, names: Sequence[str] | None) -> str:
    return f"{c} ({names[c]})" if names and c < len(names) and names[c] else str(c)


def check_lists(lists: Mapping[int, list[str]], fold: Fold, shots: int, min_pixels: int,
                split: str = "val", names: Sequence[str] | None = None) -> None:
    """Every novel class that can be drawn has a query and K other images; some base class has
    an image. One sentence naming the first class that falls short and the fix."""
    if not any(lists.get(c) for c in fold.novel):
        raise IfssError(f"no {split} image holds {min_pixels} pixels of a novel class of fold "
                        f"{fold.name}, so there is no query; lower eval.min_class_pixels or "
                        "check data.root")
    for c in fold.novel:
        have = len(lists.get(c, ()))
        if 0 < have < shots + 1:
            raise IfssError(
                f"novel class {_name(c, names)} of fold {fold.name} has {have} {split} image(s) "
                f"with {min_pixels} of its pixels, fewer than nshot + 1 = {shots + 1} (a query "
                "and its support); lower nshot or eval.min_class_pixels")
    if not any(lists.get(c) for c in fold.base):
        raise IfssError(f"no {split} image holds {min_pixels} pixels of a base class of fold "
                        f"{fold.name}, so no base image can be drawn; lower "
                        "eval.min_class_pixels or check data.root")


def sample_episodes(image_classes: Mapping[str, Iterable[int]], fold: Fold, shots: int,
                    count: int, seed: int) -> list[Episode]:
    """`count` episodes of one run, drawn with numpy's generator seeded by `seed`.

    `image_classes`: the listed classes of each val image, in list order (read_kept_classes).
    Call `check_lists` first; here a shortfall is a plain ValueError."""
    novel = set(fold.novel)
    lists = images_per_class(image_classes)
    position = {c: {i: k for k, i in enumerate(ids)} for c, ids in lists.items() if c in novel}
    queries = [(i, tuple(c for c in cs if c in novel)) for i, cs in image_classes.items()]
    queries = [(i, cs) for i, cs in queries if cs]
    bases = [c for c in fold.base if lists.get(c)]
    if not queries or not bases:
        raise ValueError("no query image or no base image: call check_lists first")
    rng = np.random.default_rng(seed)
    episodes = []
    for index in range(count):
        query, classes = queries[index % len(queries)]  # the list walked, then restarted
        c = classes[rng.integers(len(classes))]
        ids, skip = lists[c], position[c][query]
        # K distinct positions among the others: draw from len - 1 and step over the query's
        picks = rng.choice(len(ids) - 1, size=shots, replace=False)
        support = tuple(ids[k + (k >= skip)] for k in picks)
        b = bases[rng.integers(len(bases))]
        image = lists[b][rng.integers(len(lists[b]))]
        episodes.append(Episode(index, query, c, support, b, image))
    return episodes


def binary_label(label: np.ndarray, class_id: int) -> np.ndarray:
    """1 where `class_id`, 255 where void, 0 elsewhere (every other class included)."""
    label = np.asarray(label)
    return np.where(label == IGNORE, IGNORE, (label == class_id).astype(np.uint8)).astype(np.uint8)
