"""PASCAL VOC 2012 with the SBD-augmented labels, and the synthetic benchmark using its classes."""
from __future__ import annotations

from ifss.data.records.record import (
    DatasetRecord, Folders, SourceFile, Steps, one_per_step, without,
)

__all__ = ["SYNTHETIC", "VOC", "VOC_CLASSES", "VOC_FILES", "VOC_FOLDERS"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def _voc_tasks() -> dict[str, Steps]:
    ids = tuple(range(1, 21))
    tasks = {"offline": (ids,)}
    for fold in range(4):  # PASCAL-5i folds
        novel = tuple(range(5 * fold + 1, 5 * fold + 6))
        tasks[f"5-{fold}"] = (without(ids, novel), novel)
        tasks[f"5-{fold}m"] = (without(ids, novel),) + one_per_step(novel)
    tasks["15-5"] = (ids[:15], ids[15:])
    tasks["15-1"] = (ids[:15],) + one_per_step(ids[15:])
    tasks["19-1"] = (ids[:19], (20,))
    tasks["10-10"] = (ids[:10], ids[10:])
    tasks["10-1"] = (ids[:10],) + one_per_step(ids[10:])
    tasks["10-5-5"] = (ids[:10], ids[10:15], ids[15:])
    return tasks


# VOC 2012 devkit layout with the SBD-augmented labels (what `prepare_voc` writes)
VOC_FOLDERS = Folders(
    images={"train": "JPEGImages", "val": "JPEGImages"},
    labels={"train": "SegmentationClassAug", "val": "SegmentationClassAug"},
    lists={
        "train": "ImageSets/Segmentation/train_aug.txt",
        "val": "ImageSets/Segmentation/val.txt",
    },
)

VOC_FILES = (
    SourceFile(
        name="VOCtrainval_11-May-2012.tar",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        extract_to="VOCtrainval_11-May-2012",
        md5_source="torchvision torchvision/datasets/voc.py (DATASET_YEAR_DICT['2012']); "
                   "also PaddlePaddle/PaddleDetection ppdet/utils/download.py",
        note="VOCdevkit/VOC2012: JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt",
    ),
    SourceFile(
        name="SegmentationClassAug.zip",
        url="http://cs.jhu.edu/~cxliu/data/SegmentationClassAug.zip",
        md5=None,  # searched code and docs: no published md5 found
        extract_to="SegmentationClassAug",
        note="SBD-augmented labels for train_aug + val, single-channel PNGs 0..20 and 255",
    ),
    SourceFile(
        name="list.zip",
        url="http://cs.jhu.edu/~cxliu/data/list.zip",
        md5=None,  # searched code and docs: no published md5 found
        extract_to="list",
        note="list/train_aug.txt: the 10582 SBD-augmented training images",
    ),
)

VOC = DatasetRecord(
    name="voc",
    classes=VOC_CLASSES,
    folders=VOC_FOLDERS,
    tasks=_voc_tasks(),
    make="download it with `ifss download voc --root DIR` and set data.root=DIR/voc",
    sources=VOC_FILES,
    prepare="ifss.data.prepare:prepare_voc",
)

# The embedded benchmark: VOC's classes, label ids, layout and tasks, drawn by `ifss synth`.
SYNTHETIC = DatasetRecord(
    name="synthetic",
    classes=VOC_CLASSES,
    folders=VOC_FOLDERS,
    tasks=VOC.tasks,
    make="make it with `ifss synth --out {root}`",
    label_space="voc",
)
