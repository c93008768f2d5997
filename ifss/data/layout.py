"""Where a dataset keeps its images, labels and id lists on disk, under one data root.

The folders and the sentence saying how to make a missing dataset come from its record
(`ifss.data.records`); a `Layout` adds the root and reads the id lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ifss.data.records import get_dataset
from ifss.errors import IfssError


@dataclass(frozen=True)
class Layout:
    root: Path
    images: dict[str, str]  # split -> folder of images, relative to root
    labels: dict[str, str]  # split -> folder of label PNGs
    lists: dict[str, str]  # split -> text file of ids
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    how_to_make: str = ""

    def image_path(self, split: str, image_id: str) -> Path:
        return self.root / self.images[split] / f"{image_id}{self.image_suffix}"

    def label_path(self, split: str, image_id: str) -> Path:
        return self.root / self.labels[split] / f"{image_id}{self.label_suffix}"

    def ids(self, split: str) -> list[str]:
        path = self.root / self.lists[split]
        if not path.is_file():
            raise IfssError(f"id list {path} is missing; {self.how_to_make}")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise IfssError(f"id list {path} is empty; put one {split} image id a line in it, or "
                            f"remake the dataset ({self.how_to_make})")
        return ids

    def check(self) -> None:
        if not self.root.is_dir():
            raise IfssError(f"data root {self.root} does not exist; {self.how_to_make}")
        for split in self.lists:
            self.ids(split)


def layout_for(dataset: str, root: str | Path) -> Layout:
    """The layout of `dataset`'s record, rooted at `root`."""
    record = get_dataset(dataset)
    folders = record.folders
    return Layout(
        Path(root),
        images=dict(folders.images),
        labels=dict(folders.labels),
        lists=dict(folders.lists),
        image_suffix=folders.image_suffix,
        label_suffix=folders.label_suffix,
        how_to_make=record.how_to_make(root),
    )
