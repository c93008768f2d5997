"""Supervised pixel-to-pixel contrast within a mini-batch: the GFSS capstone's pre-training term
(seed 003 §3.3 Eq. 2-3; research/wilson_sdr_gfss_simformer.md §C.2, "Pixel-to-pixel contrastive
pre-training loss", after the hard anchor sampling of Wang et al. 2021, the report's [6]).

Embeddings: the projection head's output, L2-normalised per pixel (`ProjectionHead`).

Anchors (`sample_pixel_anchors`), labels and predictions read at the embeddings' size (nearest):
per image, the classes of the ground truth (void 255 never; background 0 only with
`background_anchors`) with MORE than `max_views` pixels; with M such (image, class) pairs in the
batch, n_view = min(max_samples // M, max_views) pixels per pair, half "hard" (label c,
prediction != c) and half "easy" (label c, prediction = c), the other kind topping up when one
runs short; drawn uniformly with torch's global RNG (deterministic under torch.manual_seed).

Loss (`supervised_contrast`), over the A sampled anchors of the whole batch, each anchor also a
contrast sample of the others; l_ij = f_i . f_j / T:

    log_prob_ij = l_ij - log(e^{l_ij} + sum_{k: class k != class i} e^{l_ik})
    L = -(T / T_base) * mean_i [ mean_{j != i, class j = class i} log_prob_ij ]

over the anchors with at least one positive (Eq. 2 with P_i = same class, self excluded, N_i =
the other classes). The original subtracts each row's max from l before exponentiating; that
cancels in log_prob and is only numerics, which logsumexp does here. Zero (with a graph) when
no anchor has a positive (fewer than two anchors of a class); a single class gives zero too, as
log_prob is then 0 for every pair.

Pieces shared with MCLOS's mini-batch contrast (ifss/methods/mclos.py): the hard/easy anchor
sampler (`mclos.sample_anchors`, whose n_view and top-up rule are these) and the InfoNCE of
ifss.losses.info_nce (the formula above on given positive and negative similarities).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ifss.losses import IGNORE, info_nce
from ifss.memory import at_size, labels_at
from ifss.methods.mclos import sample_anchors
from ifss.metrics import predicted_classes
from ifss.models.norm import NormFactory, norm_factory


class ProjectionHead(nn.Module):
    """conv1x1 (in -> in) -> BN + ReLU -> conv1x1 (in -> dim), L2-normalised over channels
    (in float32)."""

    def __init__(self, in_channels: int, dim: int = 256, norm: NormFactory | None = None):
        super().__init__()
        norm = norm or norm_factory("bn", "relu")
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),  # the norm's bias replaces it
            norm(in_channels, "relu"),
            nn.Conv2d(in_channels, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(x).float(), dim=1)  # float32: T = 0.1 amplifies errors


def sample_pixel_anchors(labels: torch.Tensor, preds: torch.Tensor, num_classes: int,
                         max_samples: int = 1024, max_views: int = 100,
                         background_anchors: bool = False):
    """Anchor pixels of a batch. labels, preds: N x P (flattened, at the embeddings' size; void
    255). Returns (index into the N*P pixels, class, valid, is_hard), valid slots first; the
    slots after them are padding. Uses torch's global RNG."""
    if not background_anchors:  # the report: background may hold any unlisted class
        labels = torch.where(labels == 0, IGNORE, labels)
    # "more than max_views pixels", so every pair fills its n_view <= max_views anchors
    return sample_anchors(labels, preds, num_classes, per_class=max_views,
                          max_anchors=max_samples, min_pixels=max_views + 1, hard=True)


def supervised_contrast(embeddings: torch.Tensor, classes: torch.Tensor,
                        valid: torch.Tensor | None = None, temperature: float = 0.1,
                        base_temperature: float = 0.07) -> torch.Tensor:
    """The loss of the module docstring over A anchors: embeddings A x D (normalised), classes
    A, valid A bool (None: all). Computed in float32."""
    f = embeddings.float()
    valid = torch.ones_like(classes, dtype=torch.bool) if valid is None else valid
    sims = f @ f.T
    same = classes.unsqueeze(1) == classes.unsqueeze(0)
    pair = valid.unsqueeze(1) & valid.unsqueeze(0)
    self_pair = torch.eye(len(classes), dtype=torch.bool, device=classes.device)
    return info_nce(sims, sims, same & pair & ~self_pair, ~same & pair, temperature,
                    base_temperature, valid)


def pixel_contrast(embeddings: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                   max_samples: int = 1024, max_views: int = 100,
                   background_anchors: bool = False, temperature: float = 0.1,
                   base_temperature: float = 0.07) -> torch.Tensor:
    """The contrastive term of a batch: embeddings N x D x h x w (normalised), labels N x H x W,
    segmentation logits N x C x H' x W' (their argmax at h x w gives the hard/easy split)."""
    n, d = embeddings.shape[:2]
    size = embeddings.shape[-2:]
    with torch.no_grad():
        preds = predicted_classes(at_size(logits.detach(), size)).reshape(n, -1)
    index, classes, valid, _ = sample_pixel_anchors(
        labels_at(labels, size).reshape(n, -1), preds, logits.shape[1], max_samples, max_views,
        background_anchors)
    if index.device.type == "cpu":  # free to read here: drop the padding slots
        used = int(valid.sum())
        index, classes, valid = index[:used], classes[:used], valid[:used]
    anchors = embeddings.flatten(2).transpose(1, 2).reshape(-1, d)[index]
    with torch.autocast(embeddings.device.type, enabled=False):  # similarities in float32
        return supervised_contrast(anchors, classes, valid, temperature, base_temperature)
