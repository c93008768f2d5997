"""The train and test sets of one step of one run."""
from __future__ import annotations

from dataclasses import dataclass

from ifss.config import RunConfig
from ifss.data import fewshot, incremental, transforms
from ifss.data.index import images_per_class, load_image_classes
from ifss.data.layout import Layout, layout_for
from ifss.data.segmentation import SegmentationSet
from ifss.errors import IfssError
from ifss.tasks import Task


@dataclass
class StepData:
    task: Task
    step: int
    train: SegmentationSet  # augmented
    train_plain: SegmentationSet  # same samples, no augmentation (imprinting, prototypes)
    test: SegmentationSet
    image_classes: dict[str, list[int]]  # train image id -> original class ids it holds

    @property
    def num_classes(self) -> int:
        return len(self.task.order(self.step))


def train_samples(cfg: RunConfig, task: Task, image_classes: dict[str, list[int]]):
    """(image id, LUT) pairs of the step's training set under `data.protocol`: few-shot (step 0:
    every train image with only base classes; step k: the few-shot images) or continual."""
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
            f"none of the {len(image_classes)} train images of {cfg.dataset} in {cfg.data.root} "
            f"enters step {cfg.step} of task {task.name} under the {protocol} protocol (classes "
            f"{list(task.steps[cfg.step])}); check data.root, the task and data.protocol")
    lut = incremental.continual_lut(task, cfg.step, protocol)
    return [(i, lut) for i in ids]


def build_step_data(cfg: RunConfig, task: Task, layout: Layout | None = None,
                    image_labels: bool = False) -> StepData:
    """The step's sets; `image_labels`: training samples also carry multi-hot image labels."""
    layout = layout or layout_for(cfg.dataset, cfg.data.root)
    layout.check()
    image_classes = load_image_classes(layout, "train", task.label_space, cfg.data.class_index)
    samples = train_samples(cfg, task, image_classes)
    num_classes = len(task.order(cfg.step))
    common = dict(label_space=task.label_space, num_classes=num_classes)
    d = cfg.data
    train = SegmentationSet(
        layout, "train", samples,
        transforms.train_transform(d.crop_size, d.scale_min, d.scale_max),
        with_image_labels=image_labels, **common,
    )
    plain = SegmentationSet(layout, "train", samples, transforms.test_transform(), **common)
    lut = incremental.test_lut(task, cfg.step, cfg.data.protocol)
    test = SegmentationSet(
        layout, "val", [(i, lut) for i in layout.ids("val")], transforms.test_transform(), **common
    )
    return StepData(task, cfg.step, train, plain, test, image_classes)
