"""The segmentation dataset: (image id, label lookup table) samples -> dict batches."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors

from ifss.data.incremental import IGNORE, apply_lut, valid_label_values
from ifss.data.layout import Layout
from ifss.data.readers import read_image, read_label
from ifss.errors import IfssError


class SegmentationSet(Dataset):
    """Each sample is an image id with its own LUT (few-shot images differ in what they keep).

    An index may come as `(index, seed)`: the random transform then runs under that seed, so a
    resumed run draws the same augmentations as an uninterrupted one.
    """

    def __init__(
        self,
        layout: Layout,
        split: str,
        samples: list[tuple[str, np.ndarray]],
        transform: Callable,
        label_space: str,
        num_classes: int,
        with_image_labels: bool = False,
    ):
        self.layout, self.split, self.samples = layout, split, samples
        self.transform, self.label_space = transform, label_space
        self.num_classes, self.with_image_labels = num_classes, with_image_labels

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image (uint8) and its remapped label, before any transform."""
        image_id, lut = self.samples[index]
        image = read_image(self.layout.image_path(self.split, image_id))
        label_path = self.layout.label_path(self.split, image_id)
        label = read_label(label_path)
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise IfssError(
                f"label file {label_path} is {label.shape[1]}x{label.shape[0]} but its image is "
                f"{image.shape[2]}x{image.shape[1]}; the pair does not match"
            )
        try:
            label = apply_lut(label, lut)
        except ValueError as err:
            valid = valid_label_values(self.label_space)
            raise IfssError(
                f"label file {label_path} holds value(s) {err.args[0]}, outside the classes of this "
                f"dataset (valid: {valid[0]}..{valid[-2]} and 255); fix or remove the file"
            ) from None
        return image, torch.from_numpy(label)

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load(index)
        # image-level labels describe the whole image, so they come before any crop
        present = image_labels(label, self.num_classes) if self.with_image_labels else None
        image, label = tv_tensors.Image(image), tv_tensors.Mask(label)
        if seed is None:
            image, label = self.transform(image, label)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image, label = self.transform(image, label)
        sample = {
            "image": image.as_subclass(torch.Tensor),
            "label": label.as_subclass(torch.Tensor),
            "index": index,
        }
        if present is not None:
            sample["image_labels"] = present
        return sample


def image_labels(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Multi-hot vector of the classes present in a (remapped) label map; void ignored."""
    present = torch.unique(label)
    present = present[present != IGNORE].long()
    labels = torch.zeros(num_classes)
    labels[present] = 1.0
    return labels


def pad_collate(batch: list[dict]) -> dict:
    """Stack samples; images of different sizes are padded (image 0, label void)."""
    sizes = {tuple(s["image"].shape[-2:]) for s in batch}
    if len(sizes) > 1:
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        for s in batch:
            dh, dw = h - s["image"].shape[-2], w - s["image"].shape[-1]
            s["image"] = F.pad(s["image"], (0, dw, 0, dh), value=0.0)
            s["label"] = F.pad(s["label"], (0, dw, 0, dh), value=IGNORE)
    return default_collate(batch)
