"""COCO 2017 object labels: instance annotations or COCO-Stuff maps -> label PNGs.

    prepare_coco(raw_dir, out, source)  COCO 2017 images + object labels -> out/ (the layout in
                                        `ifss.data.prepare`)
    coco_instance_label(anns, h, w)     one image's label from its instance annotations
    stuff_to_object_labels(label)       one COCO-Stuff map -> object labels (PIFS's conversion)

Labels are uint8 PNGs: 0 background, 1..90 COCO category id, 255 void. Each is written under a
temporary name and renamed, and existing labels are kept, so an interrupted run resumes.
`out/annotations/.ifss-labels.json` says which source wrote them ({"source", "complete"}: written
incomplete before the first label, complete after the id lists); converting into a folder that
holds labels of another source is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ifss.data.prepare_files import (
    MARKER, find_folder, link_or_copy, progress, read_record, write_lines, write_text_atomic,
)
from ifss.data.records import get_dataset
from ifss.errors import IfssError, unknown

__all__ = ["COCO_STUFF_TO_OBJECT", "coco_instance_label", "prepare_coco", "stuff_to_object_labels"]

COCO_SOURCES = get_dataset("coco").label_sources  # the label sources prepare_coco knows
COCO_SPLITS = {"train": "train2017", "val": "val2017"}


# ---------------------------------------------------------------------------------------------
# COCO labels (pure functions)


def _stuff_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # stuff 91..181 (and unused values) -> background 0
    lut[:91] = np.arange(1, 92, dtype=np.uint8)  # thing index v -> COCO category id v + 1
    lut[255] = 255  # unlabeled stays void
    return lut


COCO_STUFF_TO_OBJECT = _stuff_lut()
COCO_STUFF_TO_OBJECT.flags.writeable = False


def stuff_to_object_labels(label: np.ndarray) -> np.ndarray:
    """COCO-Stuff map (0..181 = COCO-Stuff id - 1, 255 unlabeled) -> object labels.

    Thing indices 0..90 become COCO category ids 1..91, 255 stays 255, and every stuff class
    (91..181) becomes background 0 — PIFS's conversion, with a uint8 table (the original int8
    table cannot hold 255).
    """
    label = np.asarray(label)
    if label.dtype != np.uint8:
        raise ValueError(f"expected a uint8 label map, got {label.dtype}")
    return COCO_STUFF_TO_OBJECT[label]


def _annotation_mask(ann: dict, height: int, width: int) -> np.ndarray | None:
    """Boolean mask of one COCO annotation (polygons, RLE or uncompressed RLE); None if empty."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6]  # >= 3 points
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    else:
        return None
    with warnings.catch_warnings():  # pycocotools' decode trips NumPy 2's __array__(copy=) notice
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.shape[:2] != (height, width):
        raise IfssError(f"COCO annotation {ann.get('id')} has a mask of size {mask.shape[:2]} for "
                        f"an image of size {(height, width)}; the annotation file is corrupt, "
                        "download it again.")
    return mask.astype(bool)


def coco_instance_label(anns: list[dict], height: int, width: int) -> np.ndarray:
    """Semantic object label (uint8 H x W) of one image from its COCO instance annotations.

    0 is background and 1..90 the COCO category id. Crowd annotations (iscrowd=1) are painted
    first, as 255 (void: a region of unseparated instances that is neither a clean object nor
    background). Then every non-crowd annotation is painted with its category id in order of
    decreasing mask area (ties by annotation id), so a smaller object lying on a larger one stays
    visible and, where two categories overlap, the later (smaller) one wins. Non-crowd objects
    therefore also win over crowd regions: their outline is exact, a crowd region is coarse.
    Annotations with empty or degenerate (< 3 points) segmentations are skipped.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    objects = []
    for ann in anns:
        category = ann.get("category_id")
        if not isinstance(category, int) or not 1 <= category <= 254:
            raise IfssError(f"COCO annotation {ann.get('id')} has category_id {category!r}, "
                            "outside 1..254; the annotation file is corrupt, download it again.")
        mask = _annotation_mask(ann, height, width)
        if mask is None:
            continue
        if ann.get("iscrowd"):
            label[mask] = 255
        else:
            objects.append((-int(mask.sum()), ann.get("id", 0), category, mask))
    objects.sort(key=lambda o: (o[0], o[1]))
    for _, _, category, mask in objects:
        label[mask] = category
    return label


# ---------------------------------------------------------------------------------------------
# COCO conversion (one output PNG per call; these run in worker processes)


def _save_png_atomic(label: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _convert_instances(job: tuple[list[dict], int, int, str]) -> None:
    anns, height, width, dst = job
    dst = Path(dst)
    if not dst.exists():
        _save_png_atomic(coco_instance_label(anns, height, width), dst)


def _convert_stuff(job: tuple[str, str]) -> None:
    src, dst = Path(job[0]), Path(job[1])
    if dst.exists():
        return
    try:
        with Image.open(src) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise IfssError(f"COCO-Stuff map {src} has mode {im.mode}, not a single-channel "
                                "label map; extract stuffthingmaps_trainval2017.zip again.")
            label = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise IfssError(f"Cannot read the COCO-Stuff map {src} ({e}); the file is corrupt, "
                        "extract stuffthingmaps_trainval2017.zip again.") from e
    _save_png_atomic(stuff_to_object_labels(label), dst)


def _run(fn: Callable, jobs: list, workers: int, desc: str) -> None:
    if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for _ in progress(pool.map(fn, jobs, chunksize=64), len(jobs), desc):
                pass
    else:
        for job in progress(jobs, len(jobs), desc):
            fn(job)


def _load_instances(path: Path) -> tuple[dict[str, tuple[int, int, int]], dict[int, list[dict]]]:
    """{file stem: (image id, height, width)} and {image id: [annotations]} of an instances JSON."""
    try:
        with open(path) as f:
            data = json.load(f)
        images = {Path(im["file_name"]).stem: (int(im["id"]), int(im["height"]), int(im["width"]))
                  for im in data["images"]}
        anns: dict[int, list[dict]] = defaultdict(list)
        for ann in data.get("annotations", []):
            anns[int(ann["image_id"])].append(ann)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IfssError(f"Cannot read the COCO annotation file {path} ({e}); extract "
                        "annotations_trainval2017.zip again.") from e
    return images, anns


def _has_suffix(files: list[str], suffix: str) -> bool:
    return any(f.endswith(suffix) for f in files)


LABEL_RECORD = "annotations/.ifss-labels.json"  # which source wrote the labels; complete last


def _has_labels(out: Path) -> bool:
    return any(next((out / "annotations" / folder).glob("*.png"), None) is not None
               for folder in COCO_SPLITS.values() if (out / "annotations" / folder).is_dir())


def _check_label_source(out: Path, source: str) -> None:
    """Refuse to write `source` labels into a folder that holds labels of another source.

    Refused rather than reconverted: a researcher who converted COCO one way has results, class
    indexes and step-0 models made from those labels, and overwriting them in place would change
    the data under them (and, if the reconversion were interrupted, leave a mix of both sources);
    `ifss download` refuses the same way. Deleting the labels or choosing a new --out is one
    explicit step.
    """
    # labels of a download interrupted before this record existed: its marker names the source
    record = read_record(out / LABEL_RECORD) or read_record(out / MARKER)
    had = record.get("source") if record else None
    if had == source or not _has_labels(out):
        return
    labels = out / "annotations"
    what = (f"COCO labels converted from {had!r}" if had else
            "COCO labels of an unrecorded source (converted by an older ifss, or not by ifss)")
    raise IfssError(f"{labels} holds {what}, not from {source!r}; remove {labels} to convert "
                    f"again from {source!r}, or convert into a new --out.")


def prepare_coco(raw_dir: Path | str, out: Path | str, source: str = "instances",
                 workers: int = 1) -> Path:
    """Build the ifss COCO layout in `out` from extracted COCO 2017 files; returns `out`.

    Images come from folders `train2017/` and `val2017/` of .jpg files anywhere under `raw_dir`.
    Labels (uint8 PNG; 0 background, COCO category id 1..90, 255 void) come from
    - source="instances": `instances_{train,val}2017.json` (annotations_trainval2017.zip), each
      image rendered by `coco_instance_label` (crowd -> 255, objects by decreasing area). Every
      image of the JSON is kept, including those without annotations (all background).
    - source="stuffthingmaps": folders `train2017/`, `val2017/` of COCO-Stuff .png maps
      (stuffthingmaps_trainval2017.zip), mapped by `stuff_to_object_labels` (PIFS's way).
    Labels already written are kept, so an interrupted run resumes; `workers` > 1 converts in
    that many processes. The id lists `split/{train,val}.txt` are written after every label, then
    the label record is marked complete; labels of another source already in `out` are refused
    (`_check_label_source`).
    """
    raw_dir, out = Path(raw_dir), Path(out)
    if source not in COCO_SOURCES:
        raise unknown("COCO label source", source, COCO_SOURCES)
    _check_label_source(out, source)
    found = {}  # every input is found before the first write
    for split, folder in COCO_SPLITS.items():
        image_dir = find_folder(raw_dir, f"COCO image folder {folder}/ of .jpg files (from "
                                f"{folder}.zip)",
                                lambda name, dirs, files: name == folder
                                and _has_suffix(files, ".jpg"))
        if source == "instances":
            json_dir = find_folder(raw_dir, f"COCO instances_{folder}.json (from "
                                   "annotations_trainval2017.zip)",
                                   lambda name, dirs, files: f"instances_{folder}.json" in files)
            found[split] = (image_dir, json_dir / f"instances_{folder}.json")
        else:
            stuff_dir = find_folder(raw_dir, f"COCO-Stuff map folder {folder}/ of .png files "
                                    "(from stuffthingmaps_trainval2017.zip)",
                                    lambda name, dirs, files: name == folder
                                    and _has_suffix(files, ".png"))
            found[split] = (image_dir, stuff_dir)
    # the source first, marked incomplete: a resumed run cannot mix two sources, and a folder
    # whose conversion was interrupted does not look finished
    write_text_atomic(out / LABEL_RECORD, json.dumps({"source": source, "complete": False}) + "\n")

    split_ids = {}
    for split, folder in COCO_SPLITS.items():
        image_dir, listed_in = found[split]
        label_dir = out / "annotations" / folder
        label_dir.mkdir(parents=True, exist_ok=True)
        if source == "instances":
            images, anns = _load_instances(listed_in)
            ids = sorted(images)
            jobs: list = [(anns.get(images[i][0], []), images[i][1], images[i][2],
                           str(label_dir / f"{i}.png")) for i in ids]
            fn = _convert_instances
            del images, anns
        else:
            ids = sorted(p.stem for p in listed_in.glob("*.png"))
            jobs = [(str(listed_in / f"{i}.png"), str(label_dir / f"{i}.png")) for i in ids]
            fn = _convert_stuff
        if not ids:
            raise IfssError(f"No {folder} images listed in {listed_in}; extract it again.")
        jobs = [j for j in jobs if not Path(j[-1]).exists()]

        image_out = out / "images" / folder
        image_out.mkdir(parents=True, exist_ok=True)
        for i in ids:
            src = image_dir / f"{i}.jpg"
            if not src.is_file():
                raise IfssError(f"COCO image {src} (listed in {listed_in}) is missing; extract "
                                f"{folder}.zip again.")
            link_or_copy(src, image_out / f"{i}.jpg")
        _run(fn, jobs, workers, f"coco {folder}")
        del jobs
        split_ids[split] = ids
    for split, ids in split_ids.items():  # the lists after every label: readers need them
        write_lines(out / "split" / f"{split}.txt", ids)
    write_text_atomic(out / LABEL_RECORD, json.dumps({"source": source, "complete": True}) + "\n")
    return out
