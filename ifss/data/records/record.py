"""The parts of a dataset record: `DatasetRecord`, its `Folders` and its download rows.

Standard library only (the workflow imports the records while building the DAG, where torch
must not load).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["DatasetRecord", "Folders", "SourceFile", "Steps", "one_per_step", "without"]

Steps = tuple[tuple[int, ...], ...]  # per step, the original label ids learned at that step


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


@dataclass(frozen=True)
class Folders:
    """Where images, labels and id lists lie, relative to the data root (split -> path)."""

    images: Mapping[str, str]
    labels: Mapping[str, str]  # label PNGs: one uint8 label id per pixel, 255 void
    lists: Mapping[str, str]  # text files of ids, one per line
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    classes: tuple[str | None, ...]  # index = label id in the files; None = id the data never uses
    folders: Folders
    tasks: Mapping[str, Steps]  # task name -> steps (background 0 is implicit in step 0)
    make: str  # how to get it, a clause for error messages; `{root}` becomes the data root
    label_space: str = ""  # the record whose label ids the files use; "" = this one
    sources: tuple[SourceFile, ...] = ()  # download rows; () = not downloadable
    label_sources: tuple[str, ...] = ()  # ways to build the labels from sources; first = default
    prepare: str = ""  # "module:function(raw_dir, out, source, workers)" building the layout
    # the split step k trains on: train_splits[min(k, len - 1)] (COCO-to-VOC trains step 1 on
    # VOC relabelled to COCO ids)
    train_splits: tuple[str, ...] = ("train",)
    extra_tests: tuple[str, ...] = ()  # splits evaluated after every step besides "val"
    # background 0 counts among the base classes of SimFormer's weak-shot metrics; False where
    # the dataset has no background to label (COCO-Stuff-10K; ADE20K's "other", which SimFormer
    # makes void)
    weakshot_background: bool = True

    def __post_init__(self):
        if not self.label_space:  # frozen: set the default the way dataclasses do
            object.__setattr__(self, "label_space", self.name)

    @property
    def label_ids(self) -> tuple[int, ...]:
        """Every id that names a class, background 0 included (255 void is not a class)."""
        return tuple(i for i, name in enumerate(self.classes) if name is not None)

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(i for i in self.label_ids if i > 0)

    def how_to_make(self, root: str | Path) -> str:
        return self.make.format(root=root)


def without(universe: Iterable[int], novel: Iterable[int]) -> tuple[int, ...]:
    """The ids of `universe` (in its order) that are not in `novel`."""
    novel = set(novel)
    return tuple(c for c in universe if c not in novel)


def one_per_step(ids: Iterable[int]) -> Steps:
    return tuple((c,) for c in ids)
