"""Every fact about a dataset in one record: classes, label space, layout, downloads, tasks.

A new dataset is one `DatasetRecord` (a module here, added to `DATASETS` below) plus its reader
(the `prepare` function that turns the downloaded archives into the layout). Everything else
(`ifss.tasks`, `ifss.data.layout`, `ifss.data.sources`, `ifss.data.prepare`, the CLI) reads the
records.

    record.py   DatasetRecord, Folders, SourceFile (the types) and step helpers
    voc.py      PASCAL VOC 2012 + SBD, and the synthetic benchmark in VOC's classes
    coco.py     COCO 2017 object labels
    coco_voc.py COCO-to-VOC (WILSON): COCO's non-VOC classes, then VOC's relabelled to COCO ids
    ade.py      ADE20K SceneParsing (ADEChallengeData2016), 150 classes
    cocostuff10k.py  COCO-Stuff-10K v1.1, 171 thing and stuff classes (SimFormer's weak-shot splits)

This package imports nothing beyond the standard library and `ifss.errors`: the workflow imports
it (through `ifss.tasks`) while building the DAG, where torch must not load.

Download rows: each says which file to fetch, from where, its published md5 (with where that md5
was published), and where it is extracted (`raw/<extract_to>/`, one folder per archive, because
several archives share top-level names such as `train2017/`). A row whose md5 is None has no
checksum that we could find published; it is downloaded, and the caller warns that it is
unverified and prints the md5 of what arrived. Never fill one in from a download you made
yourself unless you trust where it came from.
"""
from __future__ import annotations

from ifss.data.records.ade import ADE, ADE_CLASSES, ADE_IDS
from ifss.data.records.coco import COCO, COCO_CLASSES, COCO_IDS
from ifss.data.records.coco_voc import COCO_VOC
from ifss.data.records.cocostuff10k import COCOSTUFF10K, COCOSTUFF10K_CLASSES
from ifss.data.records.record import DatasetRecord, Folders, SourceFile, Steps
from ifss.data.records.voc import SYNTHETIC, VOC, VOC_CLASSES
from ifss.errors import unknown

__all__ = [
    "ADE", "ADE_CLASSES", "ADE_IDS", "COCO", "COCO_CLASSES", "COCO_IDS", "COCO_VOC", "COCOSTUFF10K",
    "COCOSTUFF10K_CLASSES", "DATASETS",
    "DatasetRecord", "Folders", "SYNTHETIC", "SourceFile", "Steps", "VOC", "VOC_CLASSES",
    "get_dataset",
]

# Insertion order is the order users see in messages and `--help`.
DATASETS: dict[str, DatasetRecord] = {
    r.name: r for r in (VOC, COCO, SYNTHETIC, COCO_VOC, COCOSTUFF10K, ADE)}


def get_dataset(name: str) -> DatasetRecord:
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    return DATASETS[name]
