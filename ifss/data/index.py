"""Which classes each train image holds: read once from the label files, cached as JSON.

Step-0 filtering and few-shot sampling both need it; building it reads every label PNG, so it is
cached (by `ifss splits`, or beside the data on first use) and validated on the way.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ifss.atomic import write_json
from ifss.data.incremental import IGNORE
from ifss.data.layout import Layout
from ifss.data.readers import read_label
from ifss.data.records import get_dataset
from ifss.errors import IfssError

INDEX_VERSION = 1


def _classes_in(path: Path, valid: set[int]) -> list[int]:
    values = {int(v) for v in np.unique(read_label(path))}
    bad = values - valid
    if bad:
        raise IfssError(
            f"label file {path} holds value(s) {sorted(bad)}, which are no class of this dataset; "
            "fix or remove the file"
        )
    return sorted(values - {IGNORE})


def build_image_classes(layout: Layout, split: str, label_space: str) -> dict[str, list[int]]:
    ids = layout.ids(split)
    valid = set(get_dataset(label_space).label_ids) | {IGNORE}  # the record's ids, and void
    with ThreadPoolExecutor(max_workers=4) as pool:
        classes = pool.map(lambda i: _classes_in(layout.label_path(split, i), valid), ids)
        return dict(zip(ids, classes))


def write_index(path: str | Path, layout: Layout, split: str, label_space: str) -> dict:
    index = {
        "version": INDEX_VERSION,
        "split": split,
        "image_classes": build_image_classes(layout, split, label_space),
    }
    write_json(path, index)
    return index


def load_image_classes(
    layout: Layout, split: str, label_space: str, index_path: str | Path = ""
) -> dict[str, list[int]]:
    """From `index_path` if given, else from the cache beside the data (built if missing)."""
    if index_path:
        path = Path(index_path)
        if not path.is_file():
            raise IfssError(f"class index {path} (data.class_index) does not exist; "
                            "build it with `ifss splits`")
    else:
        path = layout.root / ".ifss" / f"image_classes_{split}.json"
    if path.is_file():
        index = json.loads(path.read_text())
        if index.get("version") == INDEX_VERSION and index.get("split") == split:
            return index["image_classes"]
    if index_path:
        raise IfssError(f"class index {path} is stale or for another split; rebuild it with `ifss splits`")
    try:
        return write_index(path, layout, split, label_space)["image_classes"]
    except OSError:  # read-only data folder: build in memory only
        return build_image_classes(layout, split, label_space)


def images_per_class(image_classes: dict[str, list[int]]) -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    for image_id, classes in image_classes.items():
        for c in classes:
            table.setdefault(c, []).append(image_id)
    return table
