"""The train and test sets of one step of one run."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ifss.config import RunConfig
from ifss.data import fewshot, incremental, transforms
from ifss.data.index import images_per_class, load_image_classes
from ifss.data.layout import Layout, layout_for
from ifss.data.records import get_dataset
from ifss.data.segmentation import SegmentationSet, class_positions
from ifss.errors import IfssError
from ifss.tasks import Task

log = logging.getLogger("ifss")

# What a step's training samples can carry besides the image (a method's `needs`): pixel
# labels, multi-hot image-level labels.
DATA_KEYS = ("label", "image_labels")


@dataclass
class StepData:
    task: Task
    step: int
    train: SegmentationSet  # augmented
    train_plain: SegmentationSet  # same samples, no augmentation (imprinting, prototypes)
    test: SegmentationSet
    image_classes: dict[str, list[int]]  # image id of the step's train split -> its class ids
    # split -> a test set evaluated besides `test` (the record's extra_tests), same labels
    extra_tests: dict[str, SegmentationSet] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.task.order(self.step))


def train_samples(cfg: RunConfig, task: Task, image_classes: dict[str, list[int]]):
    """(image id, LUT) pairs of the step's training set under `data.protocol`: few-shot (step 0:
    every train image with only base classes; step k: the few-shot images), weak-shot or
    continual."""
    if cfg.data.protocol == "weakshot":
        return weakshot_samples(cfg, task, image_classes)
    if cfg.data.protocol != "fewshot":
        return continual_samples(cfg, task, image_classes)
    if cfg.step == 0:
        lut = incremental.base_lut(task)
        ids = [i for i, cs in image_classes.items() if incremental.keeps_image_at_step0(cs, task)]
        if not ids:
            raise IfssError(
                f"none of the {len(image_classes)} train images of {cfg.dataset} in "
                f"{cfg.data.root} holds only base classes of task {task.name}, so step 0 has "
                "nothing to train on; check data.root and the task, and rebuild the class index "
                "(data.class_index, or the cache in <data.root>/.ifss) if the labels changed"
            )
        return [(i, lut) for i in ids]
    new = task.new_classes(cfg.step)
    if cfg.data.fewshot_lists:
        lists = fewshot.load_fewshot_lists(cfg.data.fewshot_lists, cfg.dataset)
        pairs = fewshot.sample_from_lists(lists, new, cfg.nshot, cfg.ishot)
    else:
        pairs = fewshot.sample_fewshot(
            images_per_class(image_classes), new, cfg.nshot, cfg.ishot, cfg.data.fewshot_stride
        )
    return [(i, incremental.fewshot_lut(task, cfg.step, c)) for i, c in pairs]


def continual_samples(cfg: RunConfig, task: Task, image_classes: dict[str, list[int]]):
    """Every train image the protocol lets into the step, with the step's labels."""
    protocol = cfg.data.protocol
    ids = [i for i, cs in image_classes.items()
           if incremental.keeps_image(cs, task, cfg.step, protocol)]
    if not ids:
        raise IfssError(
            f"none of the {len(image_classes)} {train_split(cfg.dataset, cfg.step)} images of "
            f"{cfg.dataset} in {cfg.data.root} enters step {cfg.step} of task {task.name} under "
            f"the {protocol} protocol (classes "
            f"{list(task.steps[cfg.step])}); check data.root, the task and data.protocol")
    lut = incremental.continual_lut(task, cfg.step, protocol)
    return [(i, lut) for i in ids]


def weakshot_samples(cfg: RunConfig, task: Task, image_classes: dict[str, list[int]]):
    """Every train image holding a class of `task.order(1)`, novel pixels void
    (`incremental.weakshot_lut`), or, with data.train_labels, every class kept
    (`incremental.labelled_lut`, on the pseudo labels)."""
    incremental.check_weakshot_step(task, cfg.step)
    ids = [i for i, cs in image_classes.items() if incremental.keeps_image_weakshot(cs, task)]
    if not ids:
        raise IfssError(
            f"none of the {len(image_classes)} {train_split(cfg.dataset, cfg.step)} images of "
            f"{cfg.dataset} in {cfg.data.root} holds a class of task {task.name}, so the "
            "weak-shot step has nothing to train on; check data.root and the task")
    lut = (incremental.labelled_lut(task) if cfg.data.train_labels
           else incremental.weakshot_lut(task))
    return [(i, lut) for i in ids]


def train_split(dataset: str, step: int) -> str:
    """The split step `step` trains on: the record's `train_splits[min(step, len - 1)]`."""
    splits = get_dataset(dataset).train_splits
    return splits[min(step, len(splits) - 1)]


def step_image_classes(cfg: RunConfig, task: Task, layout: Layout, split: str):
    """The class index of `split`. data.class_index (what `ifss splits` makes) indexes the first
    train split only; a step training on another split uses that split's own index cached beside
    the data, and says so once, instead of refusing an index that was never meant for it."""
    index = cfg.data.class_index
    first = get_dataset(cfg.dataset).train_splits[0]
    if index and split != first:
        log.info("step %d trains on the %s split; data.class_index %s indexes %s, so the class "
                 "index of %s is the one cached under %s", cfg.step, split, index, first, split,
                 layout.root / ".ifss")
        index = ""
    return load_image_classes(layout, split, task.label_space, index)


def build_step_data(cfg: RunConfig, task: Task, layout: Layout | None = None,
                    needs: frozenset[str] = frozenset({"label"})) -> StepData:
    """The step's sets, training on the step's split (`train_split`) and testing on "val" and the
    record's `extra_tests`. With data.train_labels (weak-shot retraining) the training sets read
    their labels from that pseudo-label folder (checked against its manifest first); the images,
    the class index and the image-level labels stay the dataset's.

    `needs` (keys of DATA_KEYS) says what the training samples carry besides the image:
    "label", the remapped pixel labels (without it no training label file is ever opened, so a
    weak step cannot see the pixels); "image_labels", multi-hot vectors over `task.order(step)`
    of the classes each image holds, read from the class index (the whole image, before any crop;
    old classes included, future ones never). Test sets always read their labels.
    """
    unknown = set(needs) - set(DATA_KEYS)
    if unknown:
        raise IfssError(f"the training data was asked for {sorted(unknown)}, which a step's data "
                        f"cannot carry; ask a method's `needs` or `data_needs` for "
                        f"{', '.join(DATA_KEYS)} only")
    layout = layout or layout_for(cfg.dataset, cfg.data.root)
    layout.check()
    split = train_split(cfg.dataset, cfg.step)
    image_classes = step_image_classes(cfg, task, layout, split)
    samples = train_samples(cfg, task, image_classes)
    order = task.order(cfg.step)
    common = dict(label_space=task.label_space, num_classes=len(order))
    carried = dict(read_labels="label" in needs, image_labels=(
        class_positions({i: image_classes[i] for i, _ in samples}, order)
        if "image_labels" in needs else None))
    d = cfg.data
    train_layout = layout
    if d.train_labels:  # weak-shot retraining: the pseudo labels replace the split's own
        from ifss.simformer.pseudo_labels import pseudo_label_layout

        train_layout = pseudo_label_layout(layout, d.train_labels, cfg.dataset, task, split,
                                           [i for i, _ in samples])
    train = SegmentationSet(
        train_layout, split, samples,
        transforms.train_transform(d.crop_size, d.scale_min, d.scale_max), **carried, **common,
    )
    plain = SegmentationSet(train_layout, split, samples, transforms.test_transform(),
                            **carried, **common)
    lut = incremental.test_lut(task, cfg.step, cfg.data.protocol)

    def test_set(test_split: str) -> SegmentationSet:
        return SegmentationSet(layout, test_split, [(i, lut) for i in layout.ids(test_split)],
                               transforms.test_transform(), **common)

    extra = {s: test_set(s) for s in get_dataset(cfg.dataset).extra_tests}
    return StepData(task, cfg.step, train, plain, test_set("val"), image_classes, extra)
