"""Where each real dataset comes from: one row per file, data rather than code.

Each row says which file to fetch, from where, its published md5 (with where that md5 was
published), and what to do with it: every file is an archive extracted into `raw/<extract_to>/`
(one folder per archive, because several archives share top-level names such as `train2017/`).
`ifss.data.prepare.fetch_dataset` walks these rows; `needed_for` limits a row to one way of
building the labels (COCO: from the instance annotations or from the COCO-Stuff maps).

A row whose md5 is None has no checksum that we could find published; it is downloaded, and the
caller warns that it is unverified and prints the md5 of what arrived. Never fill one in from a
download you made yourself unless you trust where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from ifss.errors import IfssError

__all__ = ["SourceFile", "SOURCES", "files_for"]


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


_PADDLEDET = ("PaddlePaddle/PaddleDetection ppdet/utils/download.py (DATASETS table); the same "
              "values in ContinualAI/avalanche "
              "avalanche/benchmarks/datasets/lvis_dataset/lvis_data.py (train/val zips) and "
              "intel/neural-compressor maskrcnn download_dataset.sh")

SOURCES: dict[str, tuple[SourceFile, ...]] = {
    "voc": (
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
    ),
    "coco": (
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
    ),
}


def files_for(dataset: str, label_source: str | None = None) -> tuple[SourceFile, ...]:
    """The rows needed to build `dataset` with labels from `label_source` (COCO only)."""
    if dataset not in SOURCES:
        raise IfssError(f"Unknown dataset {dataset!r} to download; use one of {sorted(SOURCES)}.")
    return tuple(f for f in SOURCES[dataset]
                 if f.needed_for is None or label_source in f.needed_for)
