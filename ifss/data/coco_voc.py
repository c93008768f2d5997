"""The COCO-to-VOC layout (record `coco-voc`) from a prepared COCO and a prepared VOC.

    build_coco_voc(coco, voc, out)   the layout below in `out` (the CLI: `ifss coco-voc`)
    voc_to_coco_labels(label)        one VOC label map (ids 0..20, 255) -> COCO category ids

Layout written (`coco` and `voc` are the folders `ifss download coco|voc` prepares):

    images/{train2017,val2017}            -> symlink to coco/images/{train2017,val2017}
    annotations/{train2017,val2017}       -> symlink to coco/annotations/{train2017,val2017}
    voc/JPEGImages                        -> symlink to voc/JPEGImages
    voc/SegmentationClassAugAsCoco/<id>.png   VOC train_aug + val labels as COCO ids (written)
    split/{train,val}.txt                 COCO's id lists
    split/{voc_train,voc_val}.txt         VOC's train_aug and val id lists
    .ifss-prepared.json                   the inputs; written last, when everything else is there

Images and COCO labels are linked, not copied: one symlink per folder (absolute target), not one
link per file, because COCO train2017 alone is 118k images (a hard link per file would be 123k
links, and hard links cannot cross file systems, where data folders often sit apart). The cost:
the COCO and VOC folders must stay where they are (a moved one leaves the links dangling; rerun
with the new paths). Only the VOC labels are new files, relabelled with `VOC_TO_COCO`.

Every input (each root, its folders and id lists) is checked before anything is written. Over a
complete output from the same inputs a call does nothing; an incomplete output (no marker) is
rebuilt: links replaced, every label and list rewritten (each file under a temporary name, then
renamed), marker last.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ifss.data.layout import Layout, layout_for
from ifss.data.prepare_files import (MARKER, progress, read_record, write_lines,
                                     write_text_atomic)
from ifss.data.records import get_dataset
from ifss.data.records.coco_voc import COCO_VOC_INPUTS, VOC_TO_COCO
from ifss.errors import IfssError

__all__ = ["VOC_TO_COCO_LUT", "build_coco_voc", "voc_to_coco_labels"]

NAME = "coco-voc"
VOID = 255
_INVALID = -1


def _lut() -> np.ndarray:
    lut = np.full(256, _INVALID, dtype=np.int16)
    lut[: len(VOC_TO_COCO)] = VOC_TO_COCO
    lut[VOID] = VOID
    return lut


VOC_TO_COCO_LUT = _lut()  # VOC label value -> COCO id; _INVALID for values no VOC label holds
VOC_TO_COCO_LUT.flags.writeable = False


def voc_to_coco_labels(label: np.ndarray) -> np.ndarray:
    """VOC ids (0 background, 1..20, 255 void) -> COCO ids (0 and 255 stay); ValueError listing
    the values that are no VOC id."""
    out = VOC_TO_COCO_LUT[np.asarray(label, dtype=np.uint8)]
    if (out == _INVALID).any():
        raise ValueError(sorted(int(v) for v in np.unique(label[out == _INVALID])))
    return out.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# inputs


# the split of each input dataset the layout reads, by the coco-voc split it becomes
_SPLITS = {"coco": {"train": "train", "val": "val"},
           "voc": {"voc_train": "train", "voc_val": "val"}}


def _input_layout(role: str, root: Path) -> Layout:
    """The prepared `role` dataset at `root`, its folders and id lists checked (nothing read but
    the lists)."""
    name = COCO_VOC_INPUTS[role]
    fix = f"prepare it with `ifss download {name} --root DIR` and pass --{role} DIR/{name}"
    if not root.is_dir():
        raise IfssError(f"the {name} folder {root} (--{role}) does not exist; {fix}")
    layout = layout_for(name, root)
    for split in _SPLITS[role].values():
        for kind, folder in (("image", layout.images[split]), ("label", layout.labels[split])):
            if not (root / folder).is_dir():
                raise IfssError(f"the {name} {split} {kind} folder {root / folder} is missing; "
                                f"{fix}")
        if not (root / layout.lists[split]).is_file():
            raise IfssError(f"the {name} {split} id list {root / layout.lists[split]} is "
                            f"missing; {fix}")
    return layout


# ---------------------------------------------------------------------------------------------
# writing


def _link_folder(target: Path, link: Path) -> None:
    """`link` -> `target` (absolute), replacing a link to elsewhere; a real folder is refused."""
    target = target.resolve()
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return
    elif link.exists():
        raise IfssError(f"{link} is a real folder, not a link to {target}; delete it and rerun")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(link.name + ".part")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def _relabel(src: Path, dst: Path) -> None:
    try:
        with Image.open(src) as img:
            if img.mode not in ("P", "L"):
                raise IfssError(f"VOC label file {src} is a {img.mode} image; VOC labels are "
                                "single-channel or palette PNGs of class ids, so prepare VOC again")
            label = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise IfssError(f"VOC label file {src} is missing; prepare VOC again") from None
    except (UnidentifiedImageError, OSError) as err:
        raise IfssError(f"VOC label file {src} cannot be decoded ({err}); prepare VOC "
                        "again") from None
    try:
        out = voc_to_coco_labels(label)
    except ValueError as err:
        raise IfssError(f"VOC label file {src} holds value(s) {err.args[0]}, which are no VOC "
                        "class id (0..20, 255 void); fix or remove the file") from None
    tmp = dst.with_name(dst.name + ".part")
    Image.fromarray(out).save(tmp, format="PNG")  # uint8 H x W: mode L
    os.replace(tmp, dst)


def build_coco_voc(coco: Path | str, voc: Path | str, out: Path | str,
                   workers: int = 4) -> Path:
    """Build the coco-voc layout in `out` from the prepared COCO folder `coco` and VOC folder
    `voc` (see the module docstring); returns `out`. `workers`: threads relabelling VOC."""
    coco, voc, out = Path(coco), Path(voc), Path(out)
    coco_layout, voc_layout = _input_layout("coco", coco), _input_layout("voc", voc)
    inputs = {"coco": str(coco.resolve()), "voc": str(voc.resolve())}
    ids = {mine: layout.ids(theirs)
           for layout, role in ((coco_layout, "coco"), (voc_layout, "voc"))
           for mine, theirs in _SPLITS[role].items()}

    if out.resolve() in (coco.resolve(), voc.resolve()):
        raise IfssError(f"--out {out} is the COCO or VOC folder itself; give the coco-voc "
                        "layout a folder of its own, such as DIR/coco-voc")
    marker = out / MARKER
    state = read_record(marker) if marker.is_file() else None
    if state is not None and state.get("dataset") != NAME:
        raise IfssError(f"{out} holds the prepared dataset {state.get('dataset')!r}; give the "
                        "coco-voc layout a folder of its own, such as DIR/coco-voc")
    if state is not None and state.get("complete"):
        if state.get("from") == inputs:
            return out
        raise IfssError(f"{out} was built from {state.get('from')}, not {inputs}; delete {out} "
                        "to build it from these, or pass the folders it was built from")
    if marker.is_file():  # not complete: the output is rebuilt
        marker.unlink()

    record = get_dataset(NAME)
    for role, layout in (("coco", coco_layout), ("voc", voc_layout)):
        for mine, theirs in _SPLITS[role].items():
            _link_folder(layout.root / layout.images[theirs], out / record.folders.images[mine])
    for mine, theirs in _SPLITS["coco"].items():
        _link_folder(coco / coco_layout.labels[theirs], out / record.folders.labels[mine])

    # VOC train_aug and val labels, relabelled into one folder (both splits' record entry)
    sources = {i: voc_layout.label_path(theirs, i)
               for mine, theirs in _SPLITS["voc"].items() for i in ids[mine]}
    labels = out / record.folders.labels["voc_train"]
    labels.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = pool.map(lambda i: _relabel(sources[i], labels / f"{i}.png"), sources)
        for _ in progress(done, len(sources), "coco-voc"):
            pass

    for split, split_ids in ids.items():
        write_lines(out / record.folders.lists[split], split_ids)
    write_text_atomic(marker, json.dumps({"dataset": NAME, "from": inputs, "complete": True,
                                          "voc_to_coco": list(VOC_TO_COCO)}, indent=2) + "\n")
    return out
