"""Architectures by name: what `model.arch` puts between the ResNet body and the classifier.

Each entry turns the model config into a head with explicit arguments:
`(cfg, in_channels, out_channels, norm) -> head`, where `in_channels` is the body's width and
`out_channels` the classifier's input width (`cfg.head_channels`, or the class-vector dimension
of the embedding classifier). Body, ImageNet weights, classifier and the output contract are
shared (see `build_model` and `SegmentationModel`).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ifss.config import ModelConfig
from ifss.errors import unknown
from ifss.models.heads import ASPP, PSPHead
from ifss.models.norm import NormFactory

HeadBuilder = Callable[[ModelConfig, int, int, NormFactory], nn.Module]


def deeplabv3_head(cfg: ModelConfig, in_channels: int, out_channels: int,
                   norm: NormFactory) -> nn.Module:
    """ASPP with `cfg.head_channels` hidden channels (PIFS/MiB)."""
    return ASPP(in_channels, out_channels, cfg.head_channels, cfg.output_stride, norm,
                pooling=cfg.pooling, pooling_size=cfg.pooling_size)


def pspnet_head(cfg: ModelConfig, in_channels: int, out_channels: int,
                norm: NormFactory) -> nn.Module:
    """Pyramid pooling + bottleneck of `out_channels` (GFSS: ResNet-50, 512, OS 8)."""
    return PSPHead(in_channels, out_channels, cfg.psp_bins, norm, dropout=cfg.dropout)


ARCHITECTURES: dict[str, HeadBuilder] = {
    "deeplabv3": deeplabv3_head,
    "pspnet": pspnet_head,
}


def head_builder(name: str) -> HeadBuilder:
    if name not in ARCHITECTURES:
        raise unknown("architecture", name, ARCHITECTURES, where="in model.arch")
    return ARCHITECTURES[name]
