"""COCO-Stuff-10K (v1.1): 10 000 COCO images labelled with 80 thing and 91 stuff classes.

Label ids, 171 classes: 1..80 are COCO's thing classes in COCO category-id order (COCO-Stuff's
91 thing ids without the 11 that have no annotations: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91),
81..171 are the stuff classes, COCO-Stuff ids 92..182 in id order. Id k is MaskFormer's
contiguous 171-class index k - 1 (datasets/prepare_coco_stuff_10k_v1.0_sem_seg.py, S - 2 on the
v1.0 release) and SimFormer's class "did" k - 1 (prop_former/data/datasets/coco_stuff_10k/
meta_files/info.py, whose COCO_CATEGORIES gives the names used here, those of
nightrome/cocostuff's cocostuff-labels.txt). Unlabeled pixels (v1.1's 0) become void 255.

Background: COCO-Stuff has none (its stuff classes cover what is not a thing). ifss's tasks
always put background 0 first in step 0 (`ifss.tasks`), so id 0 keeps the name "background" but
no label file holds it: it has no ground-truth pixels, its IoU is None unless a model predicts it,
and the weak-shot metrics (`ifss.metrics.weakshot_summary`) leave it out. A model trained on these
labels never sees a background target.

Splits: the release's imageLists/train.txt (9000 images) is ifss's `train`, its test.txt (1000)
ifss's `val`. SimFormer's loader (register_coco_stuff_10k_splits.py) additionally skips seven
training images (COCO_train2014_000000{016680,230639,382127,429995,314646,003518,058075}); ifss
keeps them.

Tasks: `offline` (all 171 classes) and SimFormer's weak-shot splits `ws1`..`ws9`, each two steps,
(base classes: pixel labels, novel classes: image-level labels only). ws1-ws3 are SimFormer's
fixed lists of 43 = round(171 / 4) novel classes; ws4 is the first 43 of its fixed permutation
`randp`; ws5-ws9 (its class-ratio study) the first int(171 * r) of `randp` for
r = 0.30, 0.35, 0.40, 0.45, 0.50, i.e. 51, 59, 68, 76 and 85 novel classes, each split's novel set
inside the next one's. The lists below are SimFormer's, verbatim, in its 0-based "did"s
(bcmi/SimFormer-Weak-Shot-Semantic-Segmentation, prop_former/data/datasets/coco_stuff_10k/
meta_files/info.py: split1_novel_dids .. split3_novel_dids, randp, class_ratios); the tasks
shift them by one and sort them.
"""
from __future__ import annotations

from ifss.data.records.coco import COCO_CLASSES, COCO_IDS
from ifss.data.records.record import DatasetRecord, Folders, SourceFile, Steps, without

__all__ = [
    "COCOSTUFF10K", "COCOSTUFF10K_CLASSES", "COCOSTUFF10K_FILES", "COCOSTUFF10K_IDS",
    "COCOSTUFF10K_SOURCE_IDS", "SIMFORMER_COCOSTUFF_NOVEL", "SIMFORMER_COCOSTUFF_RANDP",
    "SIMFORMER_COCOSTUFF_RATIOS",
]

# COCO-Stuff ids 92..182, cocostuff-labels.txt (the same names as SimFormer's COCO_CATEGORIES)
_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

# COCO-Stuff v1.1 id of each class, in label order: COCOSTUFF10K_SOURCE_IDS[k - 1] is ifss id k
COCOSTUFF10K_SOURCE_IDS = COCO_IDS + tuple(range(92, 183))
COCOSTUFF10K_CLASSES = (("background",) + tuple(COCO_CLASSES[i] for i in COCO_IDS) + _STUFF)
COCOSTUFF10K_IDS = tuple(range(1, 172))

# SimFormer's novel classes (0-based dids = ifss id - 1), verbatim from its info.py
SIMFORMER_COCOSTUFF_NOVEL = {
    1: (3, 6, 10, 11, 18, 19, 26, 27, 31, 34, 37, 38, 40, 41, 50, 53, 55, 59, 61, 68, 76, 82, 85,
        90, 92, 94, 103, 106, 108, 112, 113, 117, 120, 127, 129, 131, 141, 146, 155, 156, 159, 166,
        169),
    2: (1, 3, 6, 7, 9, 10, 13, 27, 31, 35, 38, 40, 43, 44, 53, 62, 68, 74, 77, 80, 82, 84, 86, 99,
        101, 108, 110, 111, 116, 118, 121, 122, 125, 131, 137, 141, 148, 153, 155, 156, 160, 161,
        166),
    3: (0, 5, 10, 13, 15, 16, 20, 23, 25, 27, 28, 31, 33, 34, 35, 36, 40, 43, 47, 50, 51, 58, 62,
        69, 80, 81, 83, 84, 87, 90, 101, 105, 119, 121, 124, 126, 137, 138, 150, 154, 157, 158,
        164),
}
SIMFORMER_COCOSTUFF_RANDP = (
    170, 112, 3, 26, 121, 69, 50, 87, 14, 13, 58, 106, 17, 134, 164, 161, 100, 151, 24, 114, 25,
    92, 12, 61, 102, 113, 89, 110, 76, 128, 149, 57, 144, 137, 46, 27, 83, 133, 162, 37, 109, 33,
    40, 82, 47, 0, 31, 111, 66, 91, 120, 136, 39, 157, 163, 45, 28, 131, 9, 49, 19, 155, 150, 1, 4,
    68, 130, 42, 132, 75, 71, 48, 7, 85, 116, 96, 93, 159, 139, 115, 95, 105, 78, 156, 54, 5, 11,
    44, 65, 88, 62, 60, 41, 104, 107, 8, 168, 117, 98, 143,
)
SIMFORMER_COCOSTUFF_RATIOS = (0.3, 0.35, 0.4, 0.45, 0.5)  # class_ratios of splits 5..9
_NOVEL = round(171 / 4)  # 43, SimFormer's novel_num


def _weakshot(dids) -> Steps:
    """(base, novel) in ifss ids from SimFormer's 0-based novel dids."""
    novel = tuple(sorted(d + 1 for d in dids))
    return (without(COCOSTUFF10K_IDS, novel), novel)


def _cocostuff_tasks() -> dict[str, Steps]:
    tasks: dict[str, Steps] = {"offline": (COCOSTUFF10K_IDS,)}
    for split, dids in SIMFORMER_COCOSTUFF_NOVEL.items():
        tasks[f"ws{split}"] = _weakshot(dids)
    tasks["ws4"] = _weakshot(SIMFORMER_COCOSTUFF_RANDP[:_NOVEL])
    for split, ratio in enumerate(SIMFORMER_COCOSTUFF_RATIOS, start=5):
        tasks[f"ws{split}"] = _weakshot(SIMFORMER_COCOSTUFF_RANDP[:int(171 * ratio)])
    return tasks


COCOSTUFF10K_FILES = (
    SourceFile(
        name="cocostuff-10k-v1.1.zip",
        url="http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
            "cocostuff-10k-v1.1.zip",
        # searched code, docs and pages (nightrome/cocostuff10k README, mmsegmentation's
        # coco_stuff10k converter, deeplab-pytorch's setup script): no published checksum
        md5=None,
        extract_to="cocostuff-10k-v1.1",
        note="2.0 GB; images/<id>.jpg (10000, <id> = COCO_train2014_<12 digits>), "
             "annotations/<id>.mat (field S: 0 unlabeled, 1..182 COCO-Stuff ids; also names, "
             "captions, regionMapStuff, regionLabelsStuff), imageLists/{all,train,test}.txt "
             "(10000 / 9000 / 1000 ids)",
    ),
)

COCOSTUFF10K = DatasetRecord(
    name="cocostuff10k",
    classes=COCOSTUFF10K_CLASSES,
    folders=Folders(  # what `prepare_cocostuff10k` writes
        images={"train": "images", "val": "images"},
        labels={"train": "labels", "val": "labels"},
        lists={"train": "lists/train.txt", "val": "lists/test.txt"},
    ),
    tasks=_cocostuff_tasks(),
    make="download and convert it with `ifss download cocostuff10k --root DIR` and set "
         "data.root=DIR/cocostuff10k",
    sources=COCOSTUFF10K_FILES,
    prepare="ifss.data.cocostuff10k:prepare_cocostuff10k",
    weakshot_background=False,
)
