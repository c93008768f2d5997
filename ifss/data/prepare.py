"""Raw downloads -> the folder layouts the ifss dataset readers expect.

    fetch_dataset(name, root)           downloads a dataset record's files (checksummed) into
                                        root/downloads/, extracts them safely into
                                        root/raw/<archive>/, prepares root/<name>/ with the
                                        record's `prepare` function (one of those below)
    prepare_voc(raw_dir, out)           VOC 2012 + SBD-augmented labels -> out/
    prepare_coco(raw_dir, out, source)  COCO 2017 images + object labels -> out/ (defined in
                                        ifss.data.coco_labels, importable from here)
    prepare_ade(raw_dir, out)           ADE20K SceneParsing tree, checked, + id lists -> out/
                                        (defined in ifss.data.ade, importable from here)
    COCO-Stuff-10K                      its record's `prepare` (ifss.data.cocostuff10k): .mat
                                        labels -> PNGs of ids 1..171 (255 unlabeled) + lists
    coco-voc (COCO-to-VOC)              built from prepared COCO and VOC folders, not
                                        downloaded: `ifss coco-voc` (ifss.data.coco_voc)

Layouts written (images, VOC and ADE labels are hard links, or symlinks across file systems):

    voc/JPEGImages/<id>.jpg
    voc/SegmentationClassAug/<id>.png             0 background, 1..20 classes, 255 void
    voc/ImageSets/Segmentation/{train_aug,val}.txt
    coco/images/{train2017,val2017}/<id>.jpg      <id> = the 12-digit COCO file stem
    coco/annotations/{train2017,val2017}/<id>.png 0 background, 1..90 COCO category id, 255 void
    coco/split/{train,val}.txt                    ids, sorted
    coco/annotations/.ifss-labels.json            the label source; "complete" once lists exist
    ade/ADEChallengeData2016/images/{training,validation}/<id>.jpg
    ade/ADEChallengeData2016/annotations/{training,validation}/<id>.png   0 background, 1..150
    ade/{train,val}.txt                           ids, sorted

Every output file is written under a temporary name and renamed, and existing outputs are kept,
so an interrupted preparation resumes where it stopped. `fetch_dataset` writes a completion
marker last; a second call with the marker present returns at once.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Callable

from ifss.data import sources
from ifss.data.ade import prepare_ade
from ifss.data.coco_labels import (
    COCO_STUFF_TO_OBJECT, coco_instance_label, prepare_coco, stuff_to_object_labels,
)
from ifss.data.prepare_files import (
    MARKER, find_folder, link_or_copy, progress, read_ids, read_record, write_lines,
    write_text_atomic,
)
from ifss.data.records import get_dataset
from ifss.download import download_file, file_hash, mirrored_url, safe_extract
from ifss.errors import IfssError

__all__ = [
    "COCO_STUFF_TO_OBJECT", "UnverifiedDownloadWarning", "coco_instance_label", "fetch_dataset",
    "prepare_ade", "prepare_coco", "prepare_voc", "stuff_to_object_labels",
]


class UnverifiedDownloadWarning(UserWarning):
    """A file was downloaded without a published checksum to compare it with."""


# ---------------------------------------------------------------------------------------------
# VOC


def prepare_voc(raw_dir: Path | str, out: Path | str, source: str | None = None,
                workers: int = 1) -> Path:
    """Build the ifss VOC layout in `out` from the extracted VOC devkit, SBD labels and lists.

    `raw_dir` must hold (anywhere below it) the VOC 2012 devkit folder `VOC2012/` (JPEGImages,
    ImageSets/Segmentation/val.txt, SegmentationClass), a `SegmentationClassAug/` folder of label
    PNGs and a `train_aug.txt` list (lines `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`
    or bare ids). train_aug.txt gives the 10582 training ids and the devkit's val.txt the 1449
    validation ids. Any training id that is also a validation id is dropped from train_aug, so
    the two never overlap (the published list has none; a hand-made one might). Labels come from
    SegmentationClassAug, or, for an id missing there, from the devkit's SegmentationClass
    (palette PNGs whose indices are the class ids). Returns `out`. `source` and `workers` are
    there for the preparers' common signature: VOC has one label source, and linking is fast.
    """
    raw_dir, out = Path(raw_dir), Path(out)
    devkit = find_folder(raw_dir, "VOC 2012 devkit folder VOC2012/ (from "
                         "VOCtrainval_11-May-2012.tar)",
                         lambda name, dirs, files: name == "VOC2012" and "JPEGImages" in dirs)
    aug = find_folder(raw_dir, "SegmentationClassAug/ label folder (from "
                      "SegmentationClassAug.zip)",
                      lambda name, dirs, files: name == "SegmentationClassAug"
                      and any(f.endswith(".png") for f in files))
    train_list = find_folder(raw_dir, "train_aug.txt list (from list.zip)",
                             lambda name, dirs, files: "train_aug.txt" in files) / "train_aug.txt"
    val_list = devkit / "ImageSets" / "Segmentation" / "val.txt"
    if not val_list.is_file():
        raise IfssError(f"{val_list} is missing; extract VOCtrainval_11-May-2012.tar again.")

    val_ids = read_ids(val_list)
    val_set = set(val_ids)
    train_ids = [i for i in read_ids(train_list) if i not in val_set]

    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    all_ids = train_ids + val_ids
    for image_id in progress(all_ids, len(all_ids), "voc"):
        image = devkit / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            listed_in = val_list if image_id in val_set else train_list
            raise IfssError(f"VOC image {image} (listed in {listed_in}) is missing; extract "
                            "VOCtrainval_11-May-2012.tar again.")
        label = aug / f"{image_id}.png"
        if not label.is_file():
            label = devkit / "SegmentationClass" / f"{image_id}.png"
        if not label.is_file():
            raise IfssError(f"No label for VOC image {image_id} in {aug} or "
                            f"{devkit / 'SegmentationClass'}; extract SegmentationClassAug.zip again.")
        link_or_copy(image, out / "JPEGImages" / f"{image_id}.jpg")
        link_or_copy(label, out / "SegmentationClassAug" / f"{image_id}.png")
    write_lines(out / "ImageSets" / "Segmentation" / "train_aug.txt", train_ids)
    write_lines(out / "ImageSets" / "Segmentation" / "val.txt", val_ids)
    return out


# ---------------------------------------------------------------------------------------------
# download + extract + prepare


def _preparer(spec: str) -> Callable[..., Path]:
    """The function a record names as "module:function"."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def fetch_dataset(name: str, root: Path | str, mirror: str | None = None,
                  coco_source: str | None = None, workers: int = 1) -> Path:
    """Download, verify, extract and prepare dataset `name` (a record with sources) under `root`.

    Archives go to `root/downloads/` (checked against the md5s of the record's download rows; a
    file with no published md5 is used with an UnverifiedDownloadWarning giving the md5 of what
    arrived), are extracted into `root/raw/<archive>/` and prepared into `root/<name>/` by the
    record's `prepare` function; `root/<name>/` is returned. `coco_source` picks one of the
    record's label sources (the name is COCO's, the only dataset with several; None = the
    record's first; ignored for a dataset with one way to build its labels). `mirror` replaces
    the scheme and host of every URL (a local copy of the files, or a test server). The marker
    `root/<name>/.ifss-prepared.json` records the label source at the start and is marked
    complete last: a second call then returns at once, and a killed call resumes (downloads via
    HTTP Range, extraction from scratch, conversion per image).
    """
    files = sources.files_for(name, coco_source)  # checks name and source before any writing
    record = get_dataset(name)
    source = (coco_source or record.label_sources[0]) if record.label_sources else None
    root = Path(root)
    out = root / name
    marker = out / MARKER
    state = read_record(marker) if marker.is_file() else None
    if state is not None:
        if state.get("source") != source:
            raise IfssError(f"{out} holds {name} labels from {state.get('source')!r}, not "
                            f"{source!r}; delete {out} to prepare it again, or ask for "
                            f"{state.get('source')!r}.")
        if state.get("complete"):
            return out

    checksums = {}
    for f in files:
        url = mirrored_url(f.url, mirror)
        path = download_file(url, root / "downloads" / f.name, md5=f.md5)
        if f.md5 is None:
            got = file_hash(path, "md5")
            warnings.warn(f"{path} (from {url}) has no published checksum, so it is unverified; "
                          f"its md5 is {got}: compare it with a copy you trust.",
                          UnverifiedDownloadWarning, stacklevel=2)
            checksums[f.name] = {"md5": got, "verified": False}
        else:
            checksums[f.name] = {"md5": f.md5, "verified": True}
        dest = root / "raw" / f.extract_to
        if not (dest.is_dir() and any(dest.iterdir())):  # only a finished extraction is there
            safe_extract(path, dest)

    if state is None:  # say which labels are being written, so a resumed run cannot mix two
        write_text_atomic(marker, json.dumps({"dataset": name, "source": source,
                                              "complete": False}) + "\n")
    _preparer(record.prepare)(root / "raw", out, source=source, workers=workers)
    write_text_atomic(marker, json.dumps({"dataset": name, "source": source, "complete": True,
                                          "files": checksums}, indent=2) + "\n")
    return out
