"""COCO 2017 with object labels (from the instance annotations or the COCO-Stuff maps)."""
from __future__ import annotations

from ifss.data.records.record import DatasetRecord, Folders, SourceFile, Steps, without

__all__ = ["COCO", "COCO_CLASSES", "COCO_FILES", "COCO_IDS"]

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
        tasks[f"20-{fold}"] = (without(COCO_IDS, novel), novel)
        tasks[f"20-{fold}m"] = (without(COCO_IDS, novel),) + tuple(
            novel[i : i + 5] for i in range(0, 20, 5)
        )
    for fold in range(4):  # COCO-20i's contiguous variant: the fold's block of 20 of the 80
        novel = COCO_IDS[20 * fold : 20 * fold + 20]  # (GFSS-Capstone with use_split_coco off)
        tasks[f"20-{fold}c"] = (without(COCO_IDS, novel), novel)
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
