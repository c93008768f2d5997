"""Where each dataset keeps its images, labels and id lists on disk.

VOC (and the synthetic benchmark) use the VOC 2012 devkit layout with the SBD-augmented labels;
COCO uses the converted object-label layout that `ifss download coco` writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    def check(self) -> None:
        if not self.root.is_dir():
            raise IfssError(f"data root {self.root} does not exist; {self.how_to_make}")
        for split in self.lists:
            self.ids(split)


def layout_for(dataset: str, root: str | Path) -> Layout:
    root = Path(root)
    if dataset in ("voc", "synthetic"):
        make = (
            f"make it with `ifss synth --out {root}`"
            if dataset == "synthetic"
            else "download it with `ifss download voc --root DIR` and set data.root=DIR/voc"
        )
        return Layout(
            root,
            images={"train": "JPEGImages", "val": "JPEGImages"},
            labels={"train": "SegmentationClassAug", "val": "SegmentationClassAug"},
            lists={
                "train": "ImageSets/Segmentation/train_aug.txt",
                "val": "ImageSets/Segmentation/val.txt",
            },
            how_to_make=make,
        )
    if dataset == "coco":
        return Layout(
            root,
            images={"train": "images/train2017", "val": "images/val2017"},
            labels={"train": "annotations/train2017", "val": "annotations/val2017"},
            lists={"train": "split/train.txt", "val": "split/val.txt"},
            how_to_make="download and convert it with `ifss download coco --root DIR` "
            "and set data.root=DIR/coco",
        )
    raise IfssError(f"unknown dataset {dataset!r}; valid datasets: coco, synthetic, voc")
