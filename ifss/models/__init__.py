"""Models: ResNet body -> head of the architecture `model.arch` (DeepLab-v3 ASPP, PSPNet) ->
incremental classifier.

`build_model(cfg.model, classes_per_step, classifier="cosine")` is the one entry point; the parts
take explicit arguments and never read a config. Every architecture is a `SegmentationModel`
(output dict, previous-step loading, classifier growth, parameter groups).
"""
from __future__ import annotations

from typing import Sequence

from ifss.config import ModelConfig
from ifss.errors import IfssError
from ifss.models.architectures import ARCHITECTURES, head_builder
from ifss.models.classifiers import (CLASSIFIERS, CosineClassifier, EmbeddingClassifier,
                                     IncrementalClassifier, LinearClassifier)
from ifss.models.heads import ASPP, PSPHead
from ifss.models.norm import NORMS, NormAct, SyncNormAct, convert_sync_norm, norm_factory
from ifss.models.pretrained import IMAGENET_WEIGHTS, fetch_weights, load_imagenet
from ifss.models.resnet import BACKBONES, ResNetBody, build_body
from ifss.models.segmenter import SegmentationModel

__all__ = [
    "ARCHITECTURES", "ASPP", "BACKBONES", "CLASSIFIERS", "CosineClassifier",
    "EmbeddingClassifier", "IMAGENET_WEIGHTS", "IncrementalClassifier", "LinearClassifier",
    "NORMS", "NormAct", "PSPHead", "ResNetBody", "SegmentationModel", "SyncNormAct", "build_body",
    "build_classifier", "build_model", "convert_sync_norm", "fetch_weights", "load_imagenet",
    "norm_factory",
]


def build_classifier(kind: str, in_channels: int, classes_per_step: Sequence[int],
                     cosine_scale: float = 10.0) -> IncrementalClassifier:
    if kind not in CLASSIFIERS:
        raise IfssError(f"classifier {kind!r} is not known; valid values: {', '.join(CLASSIFIERS)}")
    if kind == "cosine":
        return CosineClassifier(in_channels, classes_per_step, scale=cosine_scale)
    return CLASSIFIERS[kind](in_channels, classes_per_step)


def build_model(cfg: ModelConfig, classes_per_step: list[int], classifier: str = "linear",
                cosine_scale: float = 10.0, embedding_dim: int | None = None) -> SegmentationModel:
    """The model of `cfg` with one classifier step per entry of `classes_per_step`.

    `cfg.arch` names the head (ARCHITECTURES). `cfg.pooling_size` (DeepLab-v3) must already be
    resolved (RunConfig.resolved()); 0 pools globally at eval. With the "embedding" classifier
    (SPN) the head outputs `embedding_dim` channels, one per dimension of the fixed class vectors
    (SPNet: 600 = fastText + word2vec; ASPP keeps `cfg.head_channels` hidden channels); the
    vectors are set afterwards (`set_embeddings`).
    """
    make_head = head_builder(cfg.arch)  # before building anything: a bad name fails fast
    if classifier == "embedding" and not (isinstance(embedding_dim, int) and embedding_dim > 0):
        raise IfssError("the embedding classifier needs the dimension of its class vectors "
                        f"(embedding_dim), got {embedding_dim!r}")
    norm = norm_factory(cfg.norm, cfg.activation)
    body = build_body(cfg.backbone, cfg.output_stride, norm, cfg.dilate_first_block)
    if cfg.pretrained:
        load_imagenet(body, cfg.pretrained)
    out_channels = embedding_dim if classifier == "embedding" else cfg.head_channels
    # Order matters: body, head, classifier draw from the global RNG in this order (seeded runs).
    head = make_head(cfg, body.out_channels, out_channels, norm)
    cls = build_classifier(classifier, out_channels, classes_per_step, cosine_scale)
    return SegmentationModel(body, head, cls)
