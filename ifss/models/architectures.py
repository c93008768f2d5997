"""Architectures by name: what `model.arch` builds.

Each entry is a model builder `(cfg, classes_per_step, classifier, cosine_scale, embedding_dim)
-> model` with explicit arguments. `deeplabv3` and `pspnet` share one assembly (`head_model`):
ResNet body at `cfg.output_stride` -> head -> incremental classifier, a `SegmentationModel`; their
head builders take `(cfg, in_channels, out_channels, norm)`, where `in_channels` is the body's
width and `out_channels` the classifier's input width (`cfg.head_channels`, or the class-vector
dimension of the embedding classifier). `maskformer` (SimFormer's model) is a whole model of its
own: its body runs at stride 32 and its class head (linear, with a "no object" class) is part of
it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn

from ifss.config import ModelConfig
from ifss.errors import IfssError, unknown
from ifss.models.classifiers import CLASSIFIERS, CosineClassifier, IncrementalClassifier
from ifss.models.heads import ASPP, PSPHead
from ifss.models.maskformer import MaskFormer, build_stride32_body
from ifss.models.norm import NormFactory, norm_factory
from ifss.models.pretrained import load_imagenet
from ifss.models.resnet import build_body
from ifss.models.segmenter import SegmentationModel

HeadBuilder = Callable[[ModelConfig, int, int, NormFactory], nn.Module]
ModelBuilder = Callable[[ModelConfig, Sequence[int], str, float, "int | None"], nn.Module]


def build_classifier(kind: str, in_channels: int, classes_per_step: Sequence[int],
                     cosine_scale: float = 10.0) -> IncrementalClassifier:
    if kind not in CLASSIFIERS:
        raise IfssError(f"classifier {kind!r} is not known; valid values: {', '.join(CLASSIFIERS)}")
    if kind == "cosine":
        return CosineClassifier(in_channels, classes_per_step, scale=cosine_scale)
    return CLASSIFIERS[kind](in_channels, classes_per_step)


def deeplabv3_head(cfg: ModelConfig, in_channels: int, out_channels: int,
                   norm: NormFactory) -> nn.Module:
    """ASPP with `cfg.head_channels` hidden channels (PIFS/MiB)."""
    return ASPP(in_channels, out_channels, cfg.head_channels, cfg.output_stride, norm,
                pooling=cfg.pooling, pooling_size=cfg.pooling_size)


def pspnet_head(cfg: ModelConfig, in_channels: int, out_channels: int,
                norm: NormFactory) -> nn.Module:
    """Pyramid pooling + bottleneck of `out_channels` (GFSS: ResNet-50, 512, OS 8)."""
    return PSPHead(in_channels, out_channels, cfg.psp_bins, norm, dropout=cfg.dropout)


def head_model(make_head: HeadBuilder) -> ModelBuilder:
    """The body -> `make_head` -> incremental classifier assembly of a `SegmentationModel`."""

    def build(cfg: ModelConfig, classes_per_step: Sequence[int], classifier: str,
              cosine_scale: float, embedding_dim: int | None) -> SegmentationModel:
        norm = norm_factory(cfg.norm, cfg.activation)
        body = build_body(cfg.backbone, cfg.output_stride, norm, cfg.dilate_first_block)
        if cfg.pretrained:
            load_imagenet(body, cfg.pretrained)
        out_channels = embedding_dim if classifier == "embedding" else cfg.head_channels
        # Order matters: body, head, classifier draw from the global RNG in this order (seeded
        # runs).
        head = make_head(cfg, body.out_channels, out_channels, norm)
        cls = build_classifier(classifier, out_channels, classes_per_step, cosine_scale)
        return SegmentationModel(body, head, cls)

    return build


def maskformer_model(cfg: ModelConfig, classes_per_step: Sequence[int], classifier: str,
                     cosine_scale: float, embedding_dim: int | None) -> MaskFormer:
    """MaskFormer over all the classes of `classes_per_step`, its decoder `cfg.head_channels`
    wide (hidden = mask = pixel-decoder width). The body runs at `cfg.output_stride`: 32 is
    MaskFormer's plain ResNet (the papers); 16 or 8 dilate it as for DeepLab, which keeps more
    than 2 x 2 memory tokens for the transformer on the 64 px synthetic images. Its class head is MaskFormer's own
    linear layer with a "no object" class: the registry's "linear" names it, other kinds are
    refused. `cfg.dropout` is the transformer's dropout (MaskFormer's 0.1, the key's default)."""
    if classifier != "linear":
        raise IfssError(f"model.arch=maskformer has its own linear class head (with a no-object "
                        f"class), not a {classifier!r} classifier; use a method with the linear "
                        "classifier or another model.arch")
    norm = norm_factory(cfg.norm, cfg.activation)
    if cfg.output_stride == 32:
        body = build_stride32_body(cfg.backbone, norm)
    else:
        body = build_body(cfg.backbone, cfg.output_stride, norm, cfg.dilate_first_block)
    if cfg.pretrained:
        load_imagenet(body, cfg.pretrained)
    width = cfg.head_channels
    return MaskFormer(body, sum(classes_per_step), hidden_dim=width, num_queries=cfg.num_queries,
                      dec_layers=cfg.decoder_layers, mask_dim=width, conv_dim=width,
                      nheads=cfg.attention_heads, dim_feedforward=cfg.ffn_channels,
                      dropout=cfg.dropout)


ARCHITECTURES: dict[str, ModelBuilder] = {
    "deeplabv3": head_model(deeplabv3_head),
    "pspnet": head_model(pspnet_head),
    "maskformer": maskformer_model,
}


def model_builder(name: str) -> ModelBuilder:
    if name not in ARCHITECTURES:
        raise unknown("architecture", name, ARCHITECTURES, where="in model.arch")
    return ARCHITECTURES[name]
