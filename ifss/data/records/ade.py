"""ADE20K as the MIT SceneParsing benchmark (ADEChallengeData2016): 150 classes + background 0.

Class names: the first name of each row of objectInfo150.txt (CSAILVision/sceneparsing), in label
order 1..150 (mmsegmentation's ADE20KDataset has the same list, except "television receiver" for
90). Label 0 ("other" in the challenge) is background, a class as in MiB / SDR, which learn it
at step 0; the label PNGs hold 0..150 and no void.

Tasks: MiB's and SDR's (fcdl94/MiB tasks.py and LTTM/SDR tasks.py, identical): 100-50, 100-10
(100 + 5 x 10) and 50-50 (MiB's "50": 0-50, 51-100, 101-150), each also in the shuffled class
orders `b` and `c` (MiB's 100-50b, 100-10b, 50b, ...). Their new classes are written out below as
MiB lists them; step 0 is every class not learned later (equal to MiB's step-0 lists, which are
sorted). MiB's data/ade/order-b.txt (a permutation of 1..150) is not what its code reads for the
`b` tasks; the lists in tasks.py are.

Weak-shot tasks `ws1`..`ws4`: SimFormer's four splits, each (base classes: pixel labels, novel
classes: image-level labels only) with 38 = round(150 / 4) novel classes. Its lists are in its
0-based "did"s (= ifss id - 1, MaskFormer's ADE labels shifted down by one), copied verbatim below
from bcmi/SimFormer-Weak-Shot-Semantic-Segmentation prop_former/data/datasets/ADE_20k/info.py
(split1_novel_dids .. split4_novel_dids). SimFormer, preparing ADE20K as MaskFormer does, makes
"other" (0) void; here it stays background, class 0 of step 0 as in every ifss task: a run that
wants SimFormer's convention leaves it out of its metrics (`ifss.metrics.weakshot_summary` with
base = 1..num_base - 1 ignores pixels whose ground truth is 0).
"""
from __future__ import annotations

from ifss.data.records.record import DatasetRecord, Folders, SourceFile, Steps, without

__all__ = ["ADE", "ADE_ARCHIVE_FOLDER", "ADE_CLASSES", "ADE_FILES", "ADE_IDS",
           "SIMFORMER_ADE_NOVEL"]

ADE_CLASSES = (
    "background",
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
ADE_IDS = tuple(range(1, 151))

# New classes of the shuffled orders, as fcdl94/MiB tasks.py lists them.
_B_100_10 = (  # 100-10b steps 1..5; together, 100-50b's step 1 and 50b's step 2
    (11, 16, 50, 64, 66, 73, 89, 92, 145, 146),
    (30, 37, 51, 52, 72, 85, 98, 114, 115, 138),
    (2, 35, 65, 97, 110, 111, 112, 118, 124, 141),
    (4, 7, 15, 41, 67, 78, 79, 88, 108, 139),
    (17, 20, 59, 68, 83, 94, 102, 122, 127, 137),
)
_B_100_50 = (2, 4, 7, 11, 15, 16, 17, 20, 30, 35, 37, 41, 50, 51, 52, 59, 64, 65, 66, 67, 68, 72,
             73, 78, 79, 83, 85, 88, 89, 92, 94, 97, 98, 102, 108, 110, 111, 112, 114, 115, 118,
             122, 124, 127, 137, 138, 139, 141, 145, 146)
_B_50_STEP1 = (3, 5, 6, 8, 10, 12, 13, 19, 21, 23, 26, 31, 33, 34, 36, 39, 40, 43, 44, 53, 55, 57,
               60, 70, 71, 80, 86, 87, 91, 95, 99, 101, 105, 106, 107, 113, 116, 120, 125, 126,
               131, 132, 133, 140, 142, 143, 147, 148, 149, 150)
_C_100_10 = (  # 100-10c steps 1..5; together, 100-50c's step 1 and 50c's step 2
    (3, 4, 7, 18, 39, 64, 73, 101, 113, 137),
    (47, 51, 55, 60, 62, 80, 116, 127, 140, 148),
    (22, 42, 49, 58, 59, 89, 91, 92, 108, 125),
    (2, 38, 53, 100, 104, 117, 130, 131, 141, 145),
    (15, 21, 72, 75, 88, 93, 103, 107, 122, 150),
)
_C_100_50 = (2, 3, 4, 7, 15, 18, 21, 22, 38, 39, 42, 47, 49, 51, 53, 55, 58, 59, 60, 62, 64, 72, 73,
             75, 80, 88, 89, 91, 92, 93, 100, 101, 103, 104, 107, 108, 113, 116, 117, 122, 125,
             127, 130, 131, 137, 140, 141, 145, 148, 150)
_C_50_STEP1 = (1, 6, 8, 9, 14, 24, 25, 26, 29, 34, 35, 36, 40, 41, 44, 45, 48, 50, 54, 61, 63, 67,
               68, 71, 78, 81, 84, 85, 90, 94, 95, 96, 97, 98, 99, 102, 106, 112, 114, 115, 118,
               120, 121, 123, 124, 126, 135, 136, 139, 149)


# SimFormer's novel classes per weak-shot split (0-based dids = ifss id - 1), verbatim
SIMFORMER_ADE_NOVEL = {
    1: (1, 3, 6, 8, 10, 13, 17, 22, 23, 29, 33, 38, 41, 50, 51, 56, 67, 70, 71, 74, 77, 81, 92, 93,
        98, 101, 102, 103, 110, 113, 119, 121, 126, 127, 130, 136, 147, 149),
    2: (0, 10, 21, 27, 28, 29, 34, 40, 42, 43, 51, 57, 58, 65, 66, 68, 69, 73, 76, 78, 85, 88, 90,
        100, 105, 110, 111, 112, 113, 114, 117, 123, 124, 132, 134, 139, 142, 146),
    3: (0, 5, 9, 15, 16, 21, 24, 25, 27, 32, 34, 35, 38, 39, 55, 70, 76, 85, 95, 96, 98, 100, 106,
        109, 111, 118, 119, 124, 128, 132, 134, 135, 136, 138, 140, 141, 143, 144),
    4: (5, 11, 13, 16, 21, 24, 26, 32, 35, 42, 53, 56, 60, 61, 63, 64, 68, 70, 75, 82, 91, 93, 94,
        99, 100, 105, 111, 115, 118, 121, 122, 130, 132, 135, 137, 138, 141, 143),
}


def _from_new(*later: tuple[int, ...]) -> Steps:
    """Steps whose step 0 is every class that the later steps do not learn."""
    return (without(ADE_IDS, [c for step in later for c in step]),) + tuple(later)


def _ade_tasks() -> dict[str, Steps]:
    ids = ADE_IDS
    return {
        "offline": (ids,),
        "100-50": (ids[:100], ids[100:]),
        "100-10": (ids[:100],) + tuple(ids[k:k + 10] for k in range(100, 150, 10)),
        "50-50": (ids[:50], ids[50:100], ids[100:]),
        "100-50b": _from_new(_B_100_50),
        "100-10b": _from_new(*_B_100_10),
        "50-50b": _from_new(_B_50_STEP1, _B_100_50),
        "100-50c": _from_new(_C_100_50),
        "100-10c": _from_new(*_C_100_10),
        "50-50c": _from_new(_C_50_STEP1, _C_100_50),
        **{f"ws{split}": _from_new(tuple(sorted(d + 1 for d in dids)))
           for split, dids in SIMFORMER_ADE_NOVEL.items()},
    }


ADE_ARCHIVE_FOLDER = "ADEChallengeData2016"  # the archive's top folder, kept in the layout

ADE_FILES = (
    SourceFile(
        name="ADEChallengeData2016.zip",
        url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        md5="7328b3957e407ddae1d3cbf487f149ef",
        extract_to="ADEChallengeData2016",
        md5_source="paperswithcode/torchbench torchbench/datasets/ade20k.py "
                   "(ARCHIVE_DICT['trainval']); its sha1 219e1696abb36c8ba3a3afe7fb2f4b4606a897c7 "
                   "is published in dmlc/gluon-cv scripts/datasets/ade20k.py and "
                   "zhanghang1989/PyTorch-Encoding scripts/prepare_ade20k.py",
        note="ADEChallengeData2016/images/{training,validation}/ADE_*.jpg (20210 + 2000) and "
             "annotations/{training,validation}/ADE_*.png (0 other, 1..150); no id lists",
    ),
)

ADE = DatasetRecord(
    name="ade",
    classes=ADE_CLASSES,
    folders=Folders(  # what `prepare_ade` writes: the archive's tree plus the id lists
        images={"train": f"{ADE_ARCHIVE_FOLDER}/images/training",
                "val": f"{ADE_ARCHIVE_FOLDER}/images/validation"},
        labels={"train": f"{ADE_ARCHIVE_FOLDER}/annotations/training",
                "val": f"{ADE_ARCHIVE_FOLDER}/annotations/validation"},
        lists={"train": "train.txt", "val": "val.txt"},
    ),
    tasks=_ade_tasks(),
    make="download it with `ifss download ade --root DIR` and set data.root=DIR/ade",
    sources=ADE_FILES,
    prepare="ifss.data.ade:prepare_ade",
    weakshot_background=False,
)
