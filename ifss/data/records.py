"""Every fact about a dataset in one record: classes, label space, layout, downloads, tasks.

A new dataset is one `DatasetRecord` added to `DATASETS` plus its reader (the `prepare` function
that turns the downloaded archives into the layout). Everything else (`ifss.tasks`,
`ifss.data.layout`, `ifss.data.sources`, `ifss.data.prepare`, the CLI) reads the records.

This module imports nothing beyond the standard library and `ifss.errors`: the workflow imports
it (through `ifss.tasks`) while building the DAG, where torch must not load.

Download rows: each says which file to fetch, from where, its published md5 (with where that md5
was published), and where it is extracted (`raw/<extract_to>/`, one folder per archive, because
several archives share top-level names such as `train2017/`). A row whose md5 is None has no
checksum that we could find published; it is downloaded, and the caller warns that it is
unverified and prints the md5 of what arrived. Never fill one in from a download you made
yourself unless you trust where it came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ifss.errors import unknown

__all__ = ["DATASETS", "DatasetRecord", "Folders", "SourceFile", "get_dataset"]

Steps = tuple[tuple[int, ...], ...]  # per step, the original label ids learned at that step


@dataclass(frozen=True)
class SourceFile:
    """One downloadable archive of a dataset."""

    name: str  # file name under <root>/downloads/
    url: str
    md5: str | None  # as published; None = unverified
    extract_to: str  # folder under <root>/raw/
    needed_for: frozenset[str] | None = None  # label sources that need it; None = always
    md5_source: str = ""  # where the md5 was published
    note: str = ""


@dataclass(frozen=True)
class Folders:
    """Where images, labels and id lists lie, relative to the data root (split -> path)."""

    images: Mapping[str, str]
    labels: Mapping[str, str]  # label PNGs: one uint8 label id per pixel, 255 void
    lists: Mapping[str, str]  # text files of ids, one per line
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    classes: tuple[str | None, ...]  # index = label id in the files; None = id the data never uses
    folders: Folders
    tasks: Mapping[str, Steps]  # task name -> steps (background 0 is implicit in step 0)
    make: str  # how to get it, a clause for error messages; `{root}` becomes the data root
    label_space: str = ""  # the record whose label ids the files use; "" = this one
    sources: tuple[SourceFile, ...] = ()  # download rows; () = not downloadable
    label_sources: tuple[str, ...] = ()  # ways to build the labels from sources; first = default
    prepare: str = ""  # "module:function(raw_dir, out, source, workers)" building the layout

    def __post_init__(self):
        if not self.label_space:  # frozen: set the default the way dataclasses do
            object.__setattr__(self, "label_space", self.name)

    @property
    def label_ids(self) -> tuple[int, ...]:
        """Every id that names a class, background 0 included (255 void is not a class)."""
        return tuple(i for i, name in enumerate(self.classes) if name is not None)

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(i for i in self.label_ids if i > 0)

    def how_to_make(self, root: str | Path) -> str:
        return self.make.format(root=root)


def get_dataset(name: str) -> DatasetRecord:
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    return DATASETS[name]


def _rest(universe: tuple[int, ...], novel: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(c for c in universe if c not in set(novel))


def _singles(ids) -> Steps:
    return tuple((c,) for c in ids)


# --------------------------------------------------------------------------------------- VOC

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
        tasks[f"5-{fold}"] = (_rest(ids, novel), novel)
        tasks[f"5-{fold}m"] = (_rest(ids, novel),) + _singles(novel)
    tasks["15-5"] = (ids[:15], ids[15:])
    tasks["15-1"] = (ids[:15],) + _singles(ids[15:])
    tasks["19-1"] = (ids[:19], (20,))
    tasks["10-10"] = (ids[:10], ids[10:])
    tasks["10-1"] = (ids[:10],) + _singles(ids[10:])
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

# -------------------------------------------------------------------------------------- COCO

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


def _coco_tasks() -> dict[str, Steps]:
    tasks = {"offline": (COCO_IDS,)}
    for fold in range(4):  # COCO-20i: every 4th class of the 80, in id order
        novel = COCO_IDS[fold::4]
        tasks[f"20-{fold}"] = (_rest(COCO_IDS, novel), novel)
        tasks[f"20-{fold}m"] = (_rest(COCO_IDS, novel),) + tuple(
            novel[i : i + 5] for i in range(0, 20, 5)
        )
    return tasks


_PADDLEDET = ("PaddlePaddle/PaddleDetection ppdet/utils/download.py (DATASETS table); the same "
              "values in ContinualAI/avalanche "
              "avalanche/benchmarks/datasets/lvis_dataset/lvis_data.py (train/val zips) and "
              "intel/neural-compressor maskrcnn download_dataset.sh")

COCO_FILES = (
    SourceFile(
        name="train2017.zip",
        url="http://images.cocodataset.org/zips/train2017.zip",
        md5="cced6f7f71b7629ddf16f17bbcfab6b2",
        extract_to="train2017",
        md5_source=_PADDLEDET,
        note="118287 images, train2017/<12-digit id>.jpg",
    ),
    SourceFile(
        name="val2017.zip",
        url="http://images.cocodataset.org/zips/val2017.zip",
        md5="442b8da7639aecaf257c1dceb8ba8c80",
        extract_to="val2017",
        md5_source=_PADDLEDET,
        note="5000 images, val2017/<12-digit id>.jpg",
    ),
    SourceFile(
        name="annotations_trainval2017.zip",
        url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        md5="f4bbac642086de4f52a3fdda2de5fa2c",
        extract_to="annotations_trainval2017",
        needed_for=frozenset({"instances"}),
        md5_source=_PADDLEDET,
        note="annotations/instances_{train,val}2017.json",
    ),
    SourceFile(
        name="stuffthingmaps_trainval2017.zip",
        url="http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
            "stuffthingmaps_trainval2017.zip",
        md5=None,  # searched code, docs, pages (nightrome/cocostuff README too): none published
        extract_to="stuffthingmaps_trainval2017",
        needed_for=frozenset({"stuffthingmaps"}),
        note="COCO-Stuff maps {train,val}2017/<id>.png: 0..181 = COCO-Stuff id - 1, 255 void",
    ),
)

# The converted object-label layout that `prepare_coco` writes
COCO = DatasetRecord(
    name="coco",
    classes=COCO_CLASSES,
    folders=Folders(
        images={"train": "images/train2017", "val": "images/val2017"},
        labels={"train": "annotations/train2017", "val": "annotations/val2017"},
        lists={"train": "split/train.txt", "val": "split/val.txt"},
    ),
    tasks=_coco_tasks(),
    make="download and convert it with `ifss download coco --root DIR` and set data.root=DIR/coco",
    sources=COCO_FILES,
    # labels from the instance annotations (pycocotools) or from the COCO-Stuff maps (PIFS's way)
    label_sources=("instances", "stuffthingmaps"),
    prepare="ifss.data.coco_labels:prepare_coco",
)

# Insertion order is the order users see in messages and `--help`.
DATASETS: dict[str, DatasetRecord] = {r.name: r for r in (VOC, COCO, SYNTHETIC)}
