"""Models: what `model.arch` names (ifss.models.architectures): a ResNet body -> head
(DeepLab-v3 ASPP, PSPNet) -> incremental classifier, or MaskFormer (SimFormer's mask transformer).

`build_model(cfg.model, classes_per_step, classifier="cosine")` is the one entry point; the parts
take explicit arguments and never read a config. DeepLab-v3 and PSPNet are `SegmentationModel`s;
MaskFormer keeps the same contract where it applies (output dict with "logits", "features" and
"body", parameter groups) and refuses previous-step loading and classifier growth (it trains a
weak-shot step from ImageNet weights).
"""
from __future__ import annotations

from typing import Sequence

from ifss.config import ModelConfig
from ifss.errors import IfssError
from ifss.models.architectures import ARCHITECTURES, build_classifier, model_builder
from ifss.models.classifiers import (CLASSIFIERS, CosineClassifier, EmbeddingClassifier,
                                     IncrementalClassifier, LinearClassifier)
from ifss.models.heads import ASPP, PSPHead
from ifss.models.maskformer import MaskFormer
from ifss.models.norm import NORMS, NormAct, SyncNormAct, convert_sync_norm, norm_factory
from ifss.models.pretrained import IMAGENET_WEIGHTS, fetch_weights, load_imagenet
from ifss.models.resnet import BACKBONES, ResNetBody, build_body
from ifss.models.segmenter import SegmentationModel

__all__ = [
    "ARCHITECTURES", "ASPP", "BACKBONES", "CLASSIFIERS", "CosineClassifier",
    "EmbeddingClassifier", "IMAGENET_WEIGHTS", "IncrementalClassifier", "LinearClassifier",
    "MaskFormer", "NORMS", "NormAct", "PSPHead", "ResNetBody", "SegmentationModel",
    "SyncNormAct", "build_body", "build_classifier", "build_model", "convert_sync_norm",
    "fetch_weights", "load_imagenet", "norm_factory",
]


def build_model(cfg: ModelConfig, classes_per_step: Sequence[int], classifier: str = "linear",
                cosine_scale: float = 10.0, embedding_dim: int | None = None):
    """The model of `cfg` with one classifier step per entry of `classes_per_step` (MaskFormer:
    one class head over all of them).

    `cfg.arch` names the architecture (ARCHITECTURES). `cfg.pooling_size` (DeepLab-v3) must
    already be resolved (RunConfig.resolved()); 0 pools globally at eval. With the "embedding"
    classifier (SPN) the head outputs `embedding_dim` channels, one per dimension of the fixed
    class vectors (SPNet: 600 = fastText + word2vec; ASPP keeps `cfg.head_channels` hidden
    channels); the vectors are set afterwards (`set_embeddings`).
    """
    build = model_builder(cfg.arch)  # before building anything: a bad name fails fast
    if classifier == "embedding" and not (isinstance(embedding_dim, int) and embedding_dim > 0):
        raise IfssError("the embedding classifier needs the dimension of its class vectors "
                        f"(embedding_dim), got {embedding_dim!r}")
    return build(cfg, list(classes_per_step), classifier, cosine_scale, embedding_dim)
