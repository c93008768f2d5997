"""The continual protocols (disjoint / overlap / sequential) on hand-built VOC-layout data: which
images enter each step and which labels become background; the test-set convention."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ifss.config import DataConfig, RunConfig
from ifss.data import incremental
from ifss.data.build import build_step_data
from ifss.errors import IfssError
from ifss.tasks import get_task

TASK = get_task("voc", "10-5-5")  # {1..10}, {11..15}, {16..20}

# image id -> the classes its label holds (0 = background, 255 = void)
IMAGES = {
    "a": (0, 1, 2),        # step-0 classes only
    "b": (0, 3, 12),       # old + a step-1 class
    "c": (0, 12, 255),     # a step-1 class only
    "d": (0, 12, 17),      # a step-1 and a step-2 (future) class
    "e": (0, 5, 17),       # old + a step-2 class
    "f": (0,),             # background only
    "g": (0, 1, 19),       # step-0 + step-2 class
}


def entering(step: int, protocol: str) -> list[str]:
    return [i for i, cs in IMAGES.items() if incremental.keeps_image(cs, TASK, step, protocol)]


@pytest.mark.parametrize("step, protocol, want", [
    (0, "disjoint", ["a"]),            # b..e hold later classes; f holds no class of step 0
    (0, "sequential", ["a"]),
    (0, "overlap", ["a", "b", "e", "g"]),  # any pixel of {1..10}
    (1, "disjoint", ["b", "c"]),        # d holds the future class 17
    (1, "sequential", ["b", "c"]),
    (1, "overlap", ["b", "c", "d"]),
    (2, "disjoint", ["d", "e", "g"]),   # every class is seen by the last step
    (2, "overlap", ["d", "e", "g"]),
])
def test_which_images_enter_each_step(step, protocol, want):
    assert entering(step, protocol) == want


def remap(values, lut):
    return [int(v) for v in lut[np.array(values)]]


def test_labels_of_other_steps_become_background():
    values = [0, 3, 12, 17, 255]  # old, current, future, void
    # step 1 order: 0, 1..10, 11..15 -> class 12 is position 12
    assert remap(values, incremental.continual_lut(TASK, 1, "disjoint")) == [0, 0, 12, 0, 255]
    assert remap(values, incremental.continual_lut(TASK, 1, "overlap")) == [0, 0, 12, 0, 255]
    assert remap(values, incremental.continual_lut(TASK, 1, "sequential")) == [0, 3, 12, 0, 255]
    # overlap's step 0 sees future classes as background too
    assert remap(values, incremental.continual_lut(TASK, 0, "overlap")) == [0, 3, 0, 0, 255]


def test_test_convention_is_a_property_of_the_protocol():
    values = [0, 3, 12, 17, 255]
    assert remap(values, incremental.test_lut(TASK, 1, "fewshot")) == [0, 3, 12, 255, 255]
    for protocol in ("disjoint", "overlap", "sequential"):
        assert remap(values, incremental.test_lut(TASK, 1, protocol)) == [0, 3, 12, 0, 255]


@pytest.fixture
def voc_tree(tmp_path):
    """A VOC-devkit tree whose labels hold exactly the classes of IMAGES (4x4 pixels each)."""
    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for image_id, classes in IMAGES.items():
        label = np.zeros((4, 4), dtype=np.uint8)
        for k, c in enumerate(classes):
            label[k] = c  # one row per class
        Image.fromarray(label).save(root / "SegmentationClassAug" / f"{image_id}.png")
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg")
    lists = root / "ImageSets/Segmentation"
    (lists / "train_aug.txt").write_text("\n".join(IMAGES) + "\n")
    (lists / "val.txt").write_text("b\nd\n")
    return root


def step_data(root, step, protocol):
    cfg = RunConfig(dataset="voc", task="10-5-5", step=step,
                    data=DataConfig(root=str(root), protocol=protocol, crop_size=4))
    return build_step_data(cfg, TASK)


def test_step_data_under_each_protocol(voc_tree):
    for protocol, want in (("disjoint", ["b", "c"]), ("overlap", ["b", "c", "d"])):
        data = step_data(voc_tree, 1, protocol)
        assert [i for i, _ in data.train.samples] == want
    d = step_data(voc_tree, 1, "overlap").train_plain
    label = d[[i for i, _ in d.samples].index("d")]["label"]
    assert label[1].tolist() == [12] * 4 and label[2].tolist() == [0] * 4  # 17 -> background
    seq = step_data(voc_tree, 1, "sequential").train_plain
    assert seq[0]["label"][1].tolist() == [3] * 4  # image b: old class 3 kept
    test = step_data(voc_tree, 1, "disjoint").test
    assert test[1]["label"][2].tolist() == [0] * 4  # val image d: unseen 17 counts as background


def test_no_image_for_a_step_is_one_sentence(voc_tree):
    (voc_tree / "ImageSets/Segmentation/train_aug.txt").write_text("a\nf\n")
    (voc_tree / ".ifss").mkdir(exist_ok=True)
    with pytest.raises(IfssError, match=r"enters step 1 of task 10-5-5 under the disjoint "
                                        r"protocol"):
        step_data(voc_tree, 1, "disjoint")


def test_unknown_protocol_is_refused():
    with pytest.raises(IfssError, match=r"unknown protocol 'disjiont' in data.protocol "
                                        r"\(did you mean disjoint\?\)"):
        DataConfig(protocol="disjiont")
