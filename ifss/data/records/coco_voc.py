"""COCO-to-VOC (WILSON, Cermelli et al., CVPR 2022): COCO's 60 non-VOC classes, then VOC's 20.

Step 0 trains on COCO train2017 with the 60 COCO classes that are no VOC class; under the
disjoint protocol its image filter (an image enters when it holds a step-0 class and no class of
a later step) drops every COCO image with a pixel of a VOC class. Step 1 learns the 20 VOC
classes, as COCO ids, from VOC train_aug relabelled to COCO ids (the split `voc_train`). Every
step is tested on COCO val2017 (all 80 classes) and on VOC val relabelled to COCO ids
(`voc_val`, an extra test). Label ids are COCO category ids (1..90, 0 background, 255 void).

The layout is derived from a prepared COCO and a prepared VOC by `ifss coco-voc`
(`ifss.data.coco_voc`): nothing of its own to download.
"""
from __future__ import annotations

from ifss.data.records.coco import COCO_CLASSES, COCO_IDS
from ifss.data.records.record import DatasetRecord, Folders, without
from ifss.data.records.voc import VOC_CLASSES

__all__ = ["COCO_VOC", "COCO_VOC_INPUTS", "VOC_IN_COCO", "VOC_TO_COCO"]

# VOC label id (the index) -> the COCO category id of the same class; 0 background. 255 (void)
# stays 255 and is not in the table.
VOC_TO_COCO = (
    0,   # background
    5,   # aeroplane -> airplane
    2,   # bicycle
    16,  # bird
    9,   # boat
    44,  # bottle
    6,   # bus
    3,   # car
    17,  # cat
    62,  # chair
    21,  # cow
    67,  # diningtable -> dining table
    18,  # dog
    19,  # horse
    4,   # motorbike -> motorcycle
    1,   # person
    64,  # pottedplant -> potted plant
    20,  # sheep
    63,  # sofa -> couch
    7,   # train
    72,  # tvmonitor -> tv
)
assert len(VOC_TO_COCO) == len(VOC_CLASSES)

VOC_IN_COCO = tuple(sorted(VOC_TO_COCO[1:]))  # the 20 VOC classes as COCO ids, in id order

# The datasets the layout is made from: role -> the record whose prepared layout it reads.
COCO_VOC_INPUTS = {"coco": "coco", "voc": "voc"}

COCO_VOC = DatasetRecord(
    name="coco-voc",
    classes=COCO_CLASSES,
    folders=Folders(
        images={"train": "images/train2017", "val": "images/val2017",
                "voc_train": "voc/JPEGImages", "voc_val": "voc/JPEGImages"},
        labels={"train": "annotations/train2017", "val": "annotations/val2017",
                "voc_train": "voc/SegmentationClassAugAsCoco",
                "voc_val": "voc/SegmentationClassAugAsCoco"},
        lists={"train": "split/train.txt", "val": "split/val.txt",
               "voc_train": "split/voc_train.txt", "voc_val": "split/voc_val.txt"},
    ),
    # WILSON's `--task voc`: the 60 non-VOC classes, then the 20 VOC classes
    tasks={"voc": (without(COCO_IDS, VOC_IN_COCO), VOC_IN_COCO)},
    make="build it from a prepared COCO and VOC with `ifss coco-voc --coco DIR/coco --voc "
         "DIR/voc --out {root}` and set data.root={root}",
    label_space="coco",
    train_splits=("train", "voc_train"),
    extra_tests=("voc_val",),
)
