"""COCO-Stuff-10K reader: the extracted cocostuff-10k-v1.1.zip -> the layout of `cocostuff10k`.

    cocostuff_label(S)                  one v1.1 label map (0 unlabeled, 1..182) -> ifss ids
    prepare_cocostuff10k(raw_dir, out)  checks the release, links its images, converts its .mat
                                        labels to PNGs, writes the id lists

The archive holds images/<id>.jpg, annotations/<id>.mat and imageLists/{all,train,test}.txt
(9000 training and 1000 test ids). Each .mat file (MATLAB v5, read with scipy.io.loadmat) holds
the label map `S` (height x width; 0 unlabeled, 1..182 the COCO-Stuff ids, of which the 11
thing ids without annotations never occur) beside `names`, `captions`, `regionMapStuff` and
`regionLabelsStuff`, which ifss does not read. The older v1.0 release (MaskFormer's) stores v7.3
(HDF5) files with other indices and is refused with a sentence saying so. Layout written:

    cocostuff10k/images/<id>.jpg            hard links (symlinks, copies) of the release's images
    cocostuff10k/labels/<id>.png            uint8: 1..171 the classes of the record, 255 unlabeled
    cocostuff10k/lists/{train,test}.txt     the release's lists (test = ifss's `val` split)

Both lists, and that each listed id has its image and its .mat file, are checked before anything
is written. Labels are written under a temporary name and renamed, images linked, and existing
outputs kept, so an interrupted preparation resumes; the lists are written last. A label map
whose size differs from its image's, or that holds a value outside 0..182 or one of the unused
ids, stops the preparation with one sentence naming the file.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ifss.data.prepare_files import find_folder, link_or_copy, progress, read_ids, write_lines
from ifss.data.records import get_dataset
from ifss.data.records.cocostuff10k import COCOSTUFF10K_SOURCE_IDS
from ifss.errors import IfssError

__all__ = ["COCOSTUFF_TO_IFSS", "cocostuff_label", "prepare_cocostuff10k"]

_AGAIN = ("extract cocostuff-10k-v1.1.zip again (delete its folder under raw/ and rerun "
          "`ifss download cocostuff10k`)")
_LISTS = {"train": "train.txt", "val": "test.txt"}  # ifss split -> the release's imageLists/
INVALID = -1


def _lut() -> np.ndarray:
    """COCO-Stuff v1.1 value -> ifss id: 0 -> 255, used ids -> 1..171, anything else INVALID."""
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[0] = 255
    for ifss_id, source_id in enumerate(COCOSTUFF10K_SOURCE_IDS, start=1):
        lut[source_id] = ifss_id
    return lut


COCOSTUFF_TO_IFSS = _lut()
COCOSTUFF_TO_IFSS.flags.writeable = False


def cocostuff_label(S: np.ndarray) -> np.ndarray:
    """One COCO-Stuff-10K v1.1 label map (0 unlabeled, 1..182) -> uint8 ifss labels.

    Raises ValueError naming the values that are no COCO-Stuff class in use (above 182,
    negative, fractional, or one of the 11 thing ids without annotations).
    """
    S = np.asarray(S)
    if S.ndim != 2:
        raise ValueError(f"a label map has 2 dimensions, this one {S.ndim}")
    if S.dtype.kind not in "iuf" or S.size == 0:
        raise ValueError(f"a label map holds numbers, this one {S.dtype} ({S.size} values)")
    values = np.unique(S)
    bad = [v for v in values.tolist()
           if not (float(v).is_integer() and 0 <= v <= 255 and COCOSTUFF_TO_IFSS[int(v)] >= 0)]
    if bad:
        raise ValueError(f"values {bad[:10]} are no COCO-Stuff class in use")
    return COCOSTUFF_TO_IFSS[S.astype(np.uint8)].astype(np.uint8)


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise IfssError(f"The COCO-Stuff-10K list {path} is missing; {_AGAIN}.")
    return read_ids(path, _AGAIN)


def _check_files(base: Path, split_ids: dict[str, list[str]]) -> None:
    """Every listed id has its image and its .mat file, and no id is in both lists."""
    train, test = set(split_ids["train"]), set(split_ids["val"])
    both = sorted(train & test)
    if both:
        raise IfssError(f"{len(both)} ids (first {both[0]}) are in both "
                        f"{base / 'imageLists' / 'train.txt'} and "
                        f"{base / 'imageLists' / 'test.txt'}; {_AGAIN}.")
    for split, ids in split_ids.items():
        for folder, suffix in (("images", ".jpg"), ("annotations", ".mat")):
            missing = [i for i in ids if not (base / folder / (i + suffix)).is_file()]
            if missing:
                more = (f" (and {len(missing) - 1} other {suffix} files)"
                        if len(missing) > 1 else "")
                raise IfssError(f"{base / folder / (missing[0] + suffix)}, listed in "
                                f"imageLists/{_LISTS[split]}, is missing{more}; {_AGAIN}.")


def _load_S(path: Path) -> np.ndarray:
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=["S"])["S"]
    except NotImplementedError as e:  # scipy's answer to a v7.3 (HDF5) file
        raise IfssError(f"{path} is a MATLAB v7.3 file, as the COCO-Stuff-10K v1.0 release "
                        "stores its labels; ifss reads v1.1 (cocostuff-10k-v1.1.zip, whose "
                        "indices differ): download that one.") from e
    except KeyError:
        raise IfssError(f"{path} holds no label map S; {_AGAIN}.") from None
    except (OSError, ValueError, TypeError) as e:
        raise IfssError(f"Cannot read the COCO-Stuff-10K label file {path} ({e}); {_AGAIN}.") \
            from e


def _convert(job: tuple[str, str, str]) -> None:
    """One label: the .mat at job[0] (checked against the image at job[1]) -> the PNG at job[2]."""
    src, image, dst = (Path(p) for p in job)
    if dst.exists():
        return
    try:
        label = cocostuff_label(_load_S(src))
    except ValueError as e:
        raise IfssError(f"The label map S in {src} is wrong: {e}; {_AGAIN}.") from None
    with Image.open(image) as im:
        width, height = im.size
    if label.shape != (height, width):
        raise IfssError(f"The label map S in {src} is {label.shape[0]}x{label.shape[1]} but its "
                        f"image {image} is {height}x{width}; {_AGAIN}.")
    tmp = dst.with_name(dst.name + ".part")
    Image.fromarray(label).save(tmp, format="PNG")
    os.replace(tmp, dst)


def _run(jobs: list[tuple[str, str, str]], workers: int) -> None:
    if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for _ in progress(pool.map(_convert, jobs, chunksize=32), len(jobs),
                              "cocostuff10k labels"):
                pass
    else:
        for job in progress(jobs, len(jobs), "cocostuff10k labels"):
            _convert(job)


def prepare_cocostuff10k(raw_dir: Path | str, out: Path | str, source: str | None = None,
                         workers: int = 1) -> Path:
    """Build the ifss COCO-Stuff-10K layout in `out` from the extracted v1.1 release.

    The release is found anywhere below `raw_dir` (the folder holding imageLists/ and
    annotations/); imageLists/train.txt becomes the `train` split, test.txt the `val` split.
    Returns `out`. `workers` > 1 converts labels in that many processes; `source` is there for
    the preparers' common signature (COCO-Stuff-10K has one label source).
    """
    raw_dir, out = Path(raw_dir), Path(out)
    folders = get_dataset("cocostuff10k").folders
    base = find_folder(raw_dir, "COCO-Stuff-10K release (a folder with imageLists/ and "
                       "annotations/, from cocostuff-10k-v1.1.zip)",
                       lambda name, dirs, files: "imageLists" in dirs and "annotations" in dirs)
    split_ids = {split: _read_list(base / "imageLists" / name) for split, name in _LISTS.items()}
    _check_files(base, split_ids)  # everything is checked before the first write

    images = {split: out / folders.images[split] for split in split_ids}
    labels = {split: out / folders.labels[split] for split in split_ids}
    for folder in (*images.values(), *labels.values()):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, ids in split_ids.items():
        for image_id in progress(ids, len(ids), f"cocostuff10k {split} images"):
            link_or_copy(base / "images" / f"{image_id}.jpg",
                         images[split] / f"{image_id}{folders.image_suffix}")
            jobs += [(str(base / "annotations" / f"{image_id}.mat"),
                      str(base / "images" / f"{image_id}.jpg"),
                      str(labels[split] / f"{image_id}{folders.label_suffix}"))]
    _run(jobs, workers)
    for split, ids in split_ids.items():
        write_lines(out / folders.lists[split], ids)
    return out
