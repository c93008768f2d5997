"""Train and test transforms (torchvision.transforms.v2; labels travel as tv_tensors.Mask)."""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(crop_size: int, scale_min: float, scale_max: float) -> v2.Compose:
    """Random scale (relative to a crop-sized frame), crop padded with void labels, flip."""
    return v2.Compose([
        v2.ScaleJitter((crop_size, crop_size), scale_range=(scale_min, scale_max), antialias=True),
        v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}
        ),
        v2.RandomHorizontalFlip(),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def test_transform() -> v2.Compose:
    """Full images, only normalised (as PIFS tests)."""
    return v2.Compose([
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
