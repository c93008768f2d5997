"""Raw downloads -> the folder layouts the ifss dataset readers expect.

    fetch_dataset(name, root)           downloads a dataset record's files (checksummed) into
                                        root/downloads/, extracts them safely into
                                        root/raw/<archive>/, prepares root/<name>/ with the
                                        record's `prepare` function (one of those below)
    prepare_voc(raw_dir, out)           VOC 2012 + SBD-augmented labels -> out/
    prepare_coco(raw_dir, out, source)  COCO 2017 images + object labels -> out/

Layouts written (images and VOC labels are hard links, or symlinks across file systems):

    voc/JPEGImages/<id>.jpg
    voc/SegmentationClassAug/<id>.png             0 background, 1..20 classes, 255 void
    voc/ImageSets/Segmentation/{train_aug,val}.txt
    coco/images/{train2017,val2017}/<id>.jpg      <id> = the 12-digit COCO file stem
    coco/annotations/{train2017,val2017}/<id>.png 0 background, 1..90 COCO category id, 255 void
    coco/split/{train,val}.txt                    ids, sorted

Every output file is written under a temporary name and renamed, and existing outputs are kept,
so an interrupted preparation resumes where it stopped. `fetch_dataset` writes a completion
marker last; a second call with the marker present returns at once.
"""

from __future__ import annotations

import errno
import importlib
import json
import multiprocessing
import os
import shutil
import sys
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from ifss.data import sources
from ifss.data.records import get_dataset
from ifss.download import download_file, file_hash, mirrored_url, safe_extract
from ifss.errors import IfssError, unknown

__all__ = [
    "COCO_STUFF_TO_OBJECT", "UnverifiedDownloadWarning", "coco_instance_label", "fetch_dataset",
    "prepare_coco", "prepare_voc", "stuff_to_object_labels",
]

COCO_SOURCES = get_dataset("coco").label_sources  # the label sources prepare_coco knows
COCO_SPLITS = {"train": "train2017", "val": "val2017"}
MARKER = ".ifss-prepared.json"


class UnverifiedDownloadWarning(UserWarning):
    """A file was downloaded without a published checksum to compare it with."""


# ---------------------------------------------------------------------------------------------
# small file helpers


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_lines(path: Path, ids: Iterable[str]) -> None:
    _write_text_atomic(path, "".join(f"{i}\n" for i in ids))


def _save_png_atomic(label: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _link(src: Path, dst: Path) -> None:
    """Make `dst` the file `src`: a hard link, else a symlink (other file system), else a copy."""
    if dst.is_symlink() and not dst.exists():  # dangling: its target moved
        dst.unlink()
    if dst.exists():
        return
    try:
        os.link(src, dst)
        return
    except OSError as e:
        if e.errno == errno.EEXIST:
            return
        if e.errno == errno.ENOENT:
            raise IfssError(f"{src} is missing; extract its archive again (delete the folder "
                            "under raw/ that should hold it) and rerun.") from e
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _progress(items: Iterable, total: int, desc: str) -> Iterable:
    if not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit="img")


def _find(raw_dir: Path, what: str, match: Callable[[str, list[str], list[str]], bool]) -> Path:
    """The one folder under `raw_dir` for which match(name, subdirs, files) holds.

    Hidden folders (our temporary extraction folders) and macOS `__MACOSX` folders are skipped,
    and the walk does not descend into a match.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(raw_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        if match(os.path.basename(dirpath), dirnames, filenames):
            found.append(Path(dirpath))
            dirnames[:] = []
    if not found:
        raise IfssError(f"No {what} found under {raw_dir}; download and extract it there "
                        "(fetch_dataset does both).")
    if len(found) > 1:
        raise IfssError(f"Several {what} found under {raw_dir} ({', '.join(map(str, found))}); "
                        "keep only one of them.")
    return found[0]


def _read_ids(path: Path) -> list[str]:
    """Image ids of a list file: one per line, either a bare id or '/JPEGImages/<id>.jpg ...'."""
    ids, seen = [], set()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise IfssError(f"Cannot read the image list {path} ({e}); extract it again.") from e
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        image_id = Path(fields[0]).stem
        if image_id and image_id not in seen:
            seen.add(image_id)
            ids.append(image_id)
    if not ids:
        raise IfssError(f"The image list {path} is empty; extract it again.")
    return ids


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
    devkit = _find(raw_dir, "VOC 2012 devkit folder VOC2012/ (from VOCtrainval_11-May-2012.tar)",
                   lambda name, dirs, files: name == "VOC2012" and "JPEGImages" in dirs)
    aug = _find(raw_dir, "SegmentationClassAug/ label folder (from SegmentationClassAug.zip)",
                lambda name, dirs, files: name == "SegmentationClassAug"
                and any(f.endswith(".png") for f in files))
    train_list = _find(raw_dir, "train_aug.txt list (from list.zip)",
                       lambda name, dirs, files: "train_aug.txt" in files) / "train_aug.txt"
    val_list = devkit / "ImageSets" / "Segmentation" / "val.txt"
    if not val_list.is_file():
        raise IfssError(f"{val_list} is missing; extract VOCtrainval_11-May-2012.tar again.")

    val_ids = _read_ids(val_list)
    val_set = set(val_ids)
    train_ids = [i for i in _read_ids(train_list) if i not in val_set]

    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    all_ids = train_ids + val_ids
    for image_id in _progress(all_ids, len(all_ids), "voc"):
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
        _link(image, out / "JPEGImages" / f"{image_id}.jpg")
        _link(label, out / "SegmentationClassAug" / f"{image_id}.png")
    _write_lines(out / "ImageSets" / "Segmentation" / "train_aug.txt", train_ids)
    _write_lines(out / "ImageSets" / "Segmentation" / "val.txt", val_ids)
    return out


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
            for _ in _progress(pool.map(fn, jobs, chunksize=64), len(jobs), desc):
                pass
    else:
        for job in _progress(jobs, len(jobs), desc):
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
    that many processes.
    """
    raw_dir, out = Path(raw_dir), Path(out)
    if source not in COCO_SOURCES:
        raise unknown("COCO label source", source, COCO_SOURCES)
    for split, folder in COCO_SPLITS.items():
        image_dir = _find(raw_dir, f"COCO image folder {folder}/ of .jpg files (from {folder}.zip)",
                          lambda name, dirs, files: name == folder and _has_suffix(files, ".jpg"))
        label_dir = out / "annotations" / folder
        label_dir.mkdir(parents=True, exist_ok=True)
        if source == "instances":
            json_dir = _find(raw_dir, f"COCO instances_{folder}.json (from "
                             "annotations_trainval2017.zip)",
                             lambda name, dirs, files: f"instances_{folder}.json" in files)
            json_path = json_dir / f"instances_{folder}.json"
            images, anns = _load_instances(json_path)
            ids = sorted(images)
            jobs: list = [(anns.get(images[i][0], []), images[i][1], images[i][2],
                           str(label_dir / f"{i}.png")) for i in ids]
            fn, listed_in = _convert_instances, json_path
        else:
            stuff_dir = _find(raw_dir, f"COCO-Stuff map folder {folder}/ of .png files (from "
                              "stuffthingmaps_trainval2017.zip)",
                              lambda name, dirs, files: name == folder and _has_suffix(files, ".png"))
            ids = sorted(p.stem for p in stuff_dir.glob("*.png"))
            jobs = [(str(stuff_dir / f"{i}.png"), str(label_dir / f"{i}.png")) for i in ids]
            fn, listed_in = _convert_stuff, stuff_dir
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
            _link(src, image_out / f"{i}.jpg")
        _run(fn, jobs, workers, f"coco {folder}")
        _write_lines(out / "split" / f"{split}.txt", ids)
    return out


# ---------------------------------------------------------------------------------------------
# download + extract + prepare


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
    state = _read_marker(marker) if marker.is_file() else None
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
        _write_text_atomic(marker, json.dumps({"dataset": name, "source": source,
                                               "complete": False}) + "\n")
    _preparer(record.prepare)(root / "raw", out, source=source, workers=workers)
    _write_text_atomic(marker, json.dumps({"dataset": name, "source": source, "complete": True,
                                           "files": checksums}, indent=2) + "\n")
    return out
