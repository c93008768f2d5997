"""Losses of learning segmentation from image-level labels (WILSON, Cermelli et al., CVPR 2022).

Formulas from research/wilson_sdr_gfss_simformer.md §A.3-A.4 and §G (paper equation numbers in
brackets). z: localizer logits N x C x h x w over every class seen so far (background first);
m = softmax(z) over the classes.

    one_hot_bce            step 0: BCE-with-logits against the one-hot label, summed over
                           classes, averaged over the labelled pixels (void pixels, whose one-hot
                           target is all zero, left out)
    ngwp_scores     (1-2)  ŷ_c = Σ_i m_ic z_ic / (1 + Σ_i m_ic)  +  (1 - m̄_c)^γ log(λ + m̄_c),
                           m̄_c = mean_i m_ic (normalised global weighted pooling + focal penalty)
    classification_loss (3) multi-label soft margin: BCE-with-logits of the scores against the
                           image labels, averaged over images x classes
    prior_loss      (4)    ℓ_LOC: BCE-with-logits of the localizer's old-class logits against
                           σ(old model logits), averaged over every element
    soft_labels     (5-6)  q = α·onehot(argmax m) + (1 - α)·m
    weak_target     (7)    old classes σ(old logits), new classes q, background min of the two
    pseudo_class_gate      1 for an image whose new classes with pseudo pixels (pixels where
                           the class is the argmax) are exactly its labelled new classes
    weak_segmentation_loss (8) BCE-with-logits against the target, summed over classes,
                           averaged over pixels, then over images, each weighted by its gate

The original's gate counted pixels with a positive soft score, which every labelled class has
everywhere (a softmax is never 0), so it never closed; here a pseudo pixel is an argmax pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.losses import IGNORE


def one_hot_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """WILSON's step-0 loss: one-hot BCE over the classes, void pixels (255) left out."""
    num_classes = logits.shape[1]
    labels = labels.long()
    valid = labels != IGNORE
    if labels[valid].numel() and int(labels[valid].max()) >= num_classes:
        raise IfssError(f"a label exceeds the {num_classes} classes of the logits; check the "
                        "task's class order")
    target = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2)
    target = target.to(logits.dtype) * valid.unsqueeze(1)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def ngwp_scores(logits: torch.Tensor, gamma: float = 3.0, lam: float = 0.01) -> torch.Tensor:
    """Image-level class scores (N x C) from localizer logits (N x C x h x w): normalised global
    weighted pooling plus the focal penalty."""
    masks = logits.softmax(1).flatten(2)
    z = logits.flatten(2)
    pooled = (masks * z).sum(-1) / (1.0 + masks.sum(-1))
    mean = masks.mean(-1)
    return pooled + (1 - mean).pow(gamma) * torch.log(lam + mean)


def classification_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ_CLS: BCE-with-logits of image-level scores against multi-hot labels (same shape)."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def prior_loss(old_class_logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """ℓ_LOC: the localizer's old-class logits against the old model's sigmoid scores."""
    return F.binary_cross_entropy_with_logits(old_class_logits, torch.sigmoid(old_logits))


def soft_labels(masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """q = α·binarize(m) + (1 - α)·m, binarize = one-hot of the per-pixel argmax over classes."""
    hard = F.one_hot(masks.argmax(1), masks.shape[1]).permute(0, 3, 1, 2).to(masks.dtype)
    return alpha * hard + (1 - alpha) * masks


def weak_target(old_probs: torch.Tensor, q: torch.Tensor, num_old: int) -> torch.Tensor:
    """The segmentation target: old classes from the old model, new ones from the soft labels,
    background the minimum of the two (both N x C x h x w; old_probs' channels past num_old are
    not read)."""
    background = torch.minimum(old_probs[:, :1], q[:, :1])
    return torch.cat([background, old_probs[:, 1:num_old], q[:, num_old:]], 1)


def pseudo_class_gate(masks: torch.Tensor, new_labels: torch.Tensor, num_old: int) -> torch.Tensor:
    """Per image (N), 1.0 when the new classes that win at least one pixel of `masks` are exactly
    the labelled ones (`new_labels`: N x (C - num_old) multi-hot), else 0.0."""
    winners = F.one_hot(masks.argmax(1), masks.shape[1]).flatten(1, 2).amax(1)[:, num_old:]
    return (winners.bool() == new_labels.bool()).all(1).to(masks.dtype)


def weak_segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                           gate: torch.Tensor) -> torch.Tensor:
    """ℓ_SEG: BCE-with-logits summed over classes, averaged over pixels, then over the images,
    each weighted by `gate` (N)."""
    if logits.shape != target.shape:
        raise IfssError(f"the segmentation logits {tuple(logits.shape)} and the weak target "
                        f"{tuple(target.shape)} differ in shape")
    per_image = F.binary_cross_entropy_with_logits(logits, target, reduction="none") \
        .sum(1).flatten(1).mean(1)
    return (per_image * gate).mean()
