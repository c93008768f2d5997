"""Which classes each train image holds: read once from the label files, cached as JSON.

Step-0 filtering and few-shot sampling both need it; building it reads every label PNG, so it is
cached (by `ifss splits`, or beside the data on first use). An index records what it was made from
and is used only while that still holds:

    version, split, label_space     the index format and what the ids mean
    list                            the id list file (relative to the root), its id count and the
                                    sha256 of its ids (comments and blank lines do not count)
    labels                          per id: [size, mtime_ns] of its label file (a stat, not a read:
                                    cheap for 100k files); a file modified within RACY_NS of the
                                    build also gets the sha256 of its bytes, since a second edit
                                    in the same timestamp tick with the same size would keep its
                                    stat (git's "racily clean" files)
    image_classes                   id -> sorted class ids (void 255 left out)

The cache beside the data is rebuilt (with one log line saying why) when any of it differs; an
index given as data.class_index (the workflow's, made by `ifss splits`) is refused with one
sentence instead, since someone else made it and may mean to keep it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ifss.atomic import write_json
from ifss.data.incremental import IGNORE
from ifss.data.layout import Layout
from ifss.data.readers import read_label
from ifss.data.records import get_dataset
from ifss.errors import IfssError

INDEX_VERSION = 2  # 2: records the list's ids and the label files' stats it was made from
RACY_NS = 2_000_000_000  # label files this recent at build time are also hashed
_CHUNK = 4096  # label files per stat task

log = logging.getLogger("ifss")


def _classes_in(path: Path, valid: set[int]) -> list[int]:
    values = {int(v) for v in np.unique(read_label(path))}
    bad = values - valid
    if bad:
        raise IfssError(
            f"label file {path} holds value(s) {sorted(bad)}, which are no class of this dataset; "
            "fix or remove the file"
        )
    return sorted(values - {IGNORE})


def build_image_classes(layout: Layout, split: str, label_space: str,
                        ids: list[str] | None = None) -> dict[str, list[int]]:
    ids = layout.ids(split) if ids is None else ids
    valid = set(get_dataset(label_space).label_ids) | {IGNORE}  # the record's ids, and void
    with ThreadPoolExecutor(max_workers=4) as pool:
        classes = pool.map(lambda i: _classes_in(layout.label_path(split, i), valid), ids)
        return dict(zip(ids, classes))


# ---------------------------------------------------------------------------------------------
# what an index was made from


def _ids_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise IfssError(f"label file {path} is missing") from None


def _stamp(path: Path, racy_after: int) -> list:
    """[size, mtime_ns] of a label file, plus the sha256 of its bytes if it is racily recent."""
    st = _stat(path)
    stamp: list = [st.st_size, st.st_mtime_ns]
    if st.st_mtime_ns >= racy_after:
        stamp.append(_file_sha256(path))
    return stamp


def _chunked_map(fn, items: list) -> list:
    """fn over items in a few threads (stat on a network file system waits, it does not compute)."""
    chunks = [items[k:k + _CHUNK] for k in range(0, len(items), _CHUNK)]
    if len(chunks) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [y for part in pool.map(lambda c: [fn(x) for x in c], chunks) for y in part]


def make_index(layout: Layout, split: str, label_space: str, dataset: str = "") -> dict:
    """The index of `split`: its image classes and what they were read from (`dataset`, the
    record's name, only to name it in messages)."""
    ids = layout.ids(split)
    list_path = layout.root / layout.lists[split]
    if not ids:
        raise IfssError(f"id list {list_path} lists no image; put the {split} ids in it, one a "
                        f"line, or {layout.how_to_make}")
    unique = list(dict.fromkeys(ids))
    racy_after = time.time_ns() - RACY_NS
    # stat before reading: a file changed in between then looks changed at the next load
    stamps = _chunked_map(lambda i: _stamp(layout.label_path(split, i), racy_after), unique)
    return {
        "version": INDEX_VERSION,
        "dataset": dataset,
        "split": split,
        "label_space": label_space,
        "list": {"file": layout.lists[split], "ids": len(ids), "sha256": _ids_sha256(ids)},
        "labels": dict(zip(unique, stamps)),
        "image_classes": build_image_classes(layout, split, label_space, ids),
    }


def write_index(path: str | Path, layout: Layout, split: str, label_space: str,
                dataset: str = "") -> dict:
    index = make_index(layout, split, label_space, dataset)
    write_json(path, index)
    return index


def _label_change(layout: Layout, split: str, image_id: str, recorded) -> str | None:
    path = layout.label_path(split, image_id)
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"label file {path} is missing"
    if [st.st_size, st.st_mtime_ns] != list(recorded[:2]):
        return f"label file {path} changed since the index was made"
    if len(recorded) > 2 and _file_sha256(path) != recorded[2]:
        return f"label file {path} changed since the index was made"
    return None


def stale_reason(index, layout: Layout, split: str, label_space: str) -> str | None:
    """Why `index` no longer describes `split` of `layout` (a clause), or None if it does."""
    if not isinstance(index, dict) or not isinstance(index.get("version"), int):
        return "it is not a class index"
    if index["version"] != INDEX_VERSION:
        return (f"it has index format {index['version']} (this ifss writes {INDEX_VERSION}, "
                "which records the files it was made from)")
    if index.get("split") != split:
        return f"it indexes the {index.get('split')!r} split, not {split!r}"
    if index.get("label_space") != label_space:
        return f"it holds {index.get('label_space')!r} label ids, not {label_space!r}"
    try:
        recorded, labels, classes = index["list"], index["labels"], index["image_classes"]
        ids = layout.ids(split)
        name = layout.lists[split]
        if len(ids) != recorded["ids"]:
            return f"{name} has {len(ids)} ids, the index {recorded['ids']}"
        if _ids_sha256(ids) != recorded["sha256"]:
            added = next((i for i in ids if i not in classes), None)
            if added is not None:
                return f"{name} lists {added}, which the index does not"
            return f"the ids in {name} changed since the index was made (same count)"
        unique = list(dict.fromkeys(ids))
        if set(labels) != set(unique) or set(classes) != set(unique):
            return "it is malformed (its ids do not match its own list record)"
        changes = _chunked_map(lambda i: _label_change(layout, split, i, labels[i]), unique)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "it is malformed"
    return next((c for c in changes if c), None)


# ---------------------------------------------------------------------------------------------
# loading


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # stale_reason says "it is not a class index"


def load_image_classes(
    layout: Layout, split: str, label_space: str, index_path: str | Path = ""
) -> dict[str, list[int]]:
    """From `index_path` if given (refused if stale), else from the cache beside the data
    (built if missing, rebuilt if stale)."""
    if index_path:
        path = Path(index_path)
        if not path.is_file():
            raise IfssError(f"class index {path} (data.class_index) does not exist; "
                            "build it with `ifss splits`")
        index = _read(path)
        reason = stale_reason(index, layout, split, label_space)
        if reason:
            dataset = index.get("dataset") if isinstance(index, dict) else None
            raise IfssError(
                f"class index {path} (data.class_index) does not match the data in "
                f"{layout.root}: {reason}; rebuild it with `ifss splits --dataset "
                f"{dataset or 'DATASET'} --root {layout.root} --out {path}` (in the workflow: "
                f"delete {path} and rerun)"
            )
        return index["image_classes"]

    path = layout.root / ".ifss" / f"image_classes_{split}.json"
    if path.is_file():
        index = _read(path)
        reason = stale_reason(index, layout, split, label_space)
        if reason is None:
            return index["image_classes"]
        log.info("class index %s is out of date (%s); rebuilding it", path, reason)
    else:
        log.info("building the class index %s from the %s label files", path, split)
    index = make_index(layout, split, label_space)
    try:
        write_json(path, index)
    except OSError:  # read-only data folder: keep it in memory only
        pass
    return index["image_classes"]


def images_per_class(image_classes: dict[str, list[int]]) -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    for image_id, classes in image_classes.items():
        for c in classes:
            table.setdefault(c, []).append(image_id)
    return table
