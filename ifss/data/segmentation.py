"""The segmentation dataset: (image id, label lookup table) samples -> dict batches."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

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

    `read_labels=False`: samples carry no "label" and no label file is opened (a weak step trains
    from image-level labels only, so it must not be able to see the pixels). `image_labels`: per
    image id, the positions (in the step's class order) of the classes the image holds; samples
    then carry them as a multi-hot "image_labels" vector.

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
        image_labels: Mapping[str, tuple[int, ...]] | None = None,
        read_labels: bool = True,
    ):
        self.layout, self.split, self.samples = layout, split, samples
        self.transform, self.label_space = transform, label_space
        self.num_classes, self.image_labels = num_classes, image_labels
        self.read_labels = read_labels

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image (uint8) and its remapped label (None without `read_labels`), before any
        transform."""
        image_id, lut = self.samples[index]
        if not self.read_labels:
            return read_image(self.layout.image_path(self.split, image_id)), None
        image, label = read_pair(self.layout, self.split, image_id)
        label_path = self.layout.label_path(self.split, image_id)
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
        inputs = (tv_tensors.Image(image),)
        if label is not None:
            inputs += (tv_tensors.Mask(label),)
        if seed is None:
            outputs = self.transform(*inputs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                outputs = self.transform(*inputs)
        if label is None:  # a lone input comes back alone
            outputs = (outputs,)
        sample = {"image": outputs[0].as_subclass(torch.Tensor), "index": index}
        if label is not None:
            sample["label"] = outputs[1].as_subclass(torch.Tensor)
        if self.image_labels is not None:
            sample["image_labels"] = multi_hot(self.image_labels[self.samples[index][0]],
                                               self.num_classes)
        return sample


def read_pair(layout: Layout, split: str, image_id: str) -> tuple[torch.Tensor, np.ndarray]:
    """The image (uint8, 3 x H x W) and its label file's values (H x W), refused in one sentence
    when their sizes differ."""
    image = read_image(layout.image_path(split, image_id))
    label_path = layout.label_path(split, image_id)
    label = read_label(label_path)
    if tuple(label.shape) != tuple(image.shape[1:]):
        raise IfssError(
            f"label file {label_path} is {label.shape[1]}x{label.shape[0]} but its image is "
            f"{image.shape[2]}x{image.shape[1]}; the pair does not match"
        )
    return image, label


def class_positions(image_classes: Mapping[str, Iterable[int]], order: tuple[int, ...]
                    ) -> dict[str, tuple[int, ...]]:
    """Per image id, the positions in `order` of the original classes the image holds (from the
    class index, so old classes count even where the step's labels turn them into background;
    classes outside `order`, future ones, are left out)."""
    position = {c: i for i, c in enumerate(order)}
    return {image_id: tuple(sorted(position[c] for c in classes if c in position))
            for image_id, classes in image_classes.items()}


def multi_hot(positions: Iterable[int], num_classes: int) -> torch.Tensor:
    """Float vector of `num_classes` with 1 at `positions`."""
    labels = torch.zeros(num_classes)
    labels[list(positions)] = 1.0
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
            if "label" in s:
                s["label"] = F.pad(s["label"], (0, dw, 0, dh), value=IGNORE)
    return default_collate(batch)
