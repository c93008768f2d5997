"""SimFormer's Hungarian matching of proposals to the targets of one image (proposal-pixel
similarity transfer), written from research/wilson_sdr_gfss_simformer.md §D.1 and §G.

A model gives per image Q proposals: class logits Q x (C+1) (the last column = no object) and mask
logits Q x h x w. An image's targets are its classes (T of them); a base target has a binary mask
H x W, a novel target has an image-level label only. The cost of proposal q for target t is

    cost[q, t] = w_cls·(−p_q(c_t))                                    every target
               + w_focal·focal(m_q, M_t) + w_dice·dice(m_q, M_t)      targets with a mask

with p_q = softmax of q's class logits (a probability, no log), M_t the target mask downsampled
(nearest) to h x w, focal the sigmoid focal loss (α 0.25, γ 2) averaged over the pixels and dice
1 − (2·Σσ(m)M + 1)/(Σσ(m) + ΣM + 1). The weights default to SimFormer's (1, 20, 1). scipy's
linear_sum_assignment picks the assignment of least total cost.

The original's cost matrix assumed the mask-less targets come after the ones with masks; here the
mask costs are written into the columns of the targets that have a mask, whatever their order,
and a novel target's mask is never read (its pixels are void in the label map), so a caller may
pass anything in its place.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ifss.errors import IfssError

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0

Match = tuple[torch.Tensor, torch.Tensor]  # (proposal indices, target indices), int64, CPU


def class_cost(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """−softmax(logits)[:, classes]: Q x T from class logits Q x (C+1) and target classes T."""
    return -logits.float().softmax(-1)[:, classes.long()]


def focal_cost(mask_logits: torch.Tensor, targets: torch.Tensor,
               alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Sigmoid focal loss of every proposal (Q x P logits) against every target (T x P binary),
    averaged over the P pixels: Q x T. Per pixel α(1−σ)^γ·(−log σ) where the target is 1 and
    (1−α)σ^γ·(−log(1−σ)) where it is 0."""
    x = mask_logits.float()
    t = targets.float()
    prob = x.sigmoid()
    positive = alpha * (1 - prob).pow(gamma) * F.softplus(-x)  # −log σ(x) = softplus(−x)
    negative = (1 - alpha) * prob.pow(gamma) * F.softplus(x)  # −log(1 − σ(x)) = softplus(x)
    return (positive @ t.T + negative @ (1 - t).T) / x.shape[-1]


def dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − (2·Σσ(m)t + 1)/(Σσ(m) + Σt + 1) for every proposal (Q x P) and target (T x P): Q x T."""
    prob = mask_logits.float().sigmoid()
    t = targets.float()
    numerator = 2 * prob @ t.T
    denominator = prob.sum(-1)[:, None] + t.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def match_cost(logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor,
               masks: torch.Tensor | None, has_mask: torch.Tensor, *, cost_class: float = 1.0,
               cost_focal: float = 20.0, cost_dice: float = 1.0) -> torch.Tensor:
    """The Q x T cost matrix of one image (float32, no gradient).

    logits Q x (C+1), mask_logits Q x h x w, classes T, masks T x H x W (rows of targets without a
    mask are never read; None when no target has one), has_mask T booleans.
    """
    with torch.no_grad():
        classes = torch.as_tensor(classes, device=logits.device).long().reshape(-1)
        has_mask = torch.as_tensor(has_mask, device=logits.device).bool().reshape(-1)
        if has_mask.numel() != classes.numel():
            raise IfssError(f"has_mask names {has_mask.numel()} targets but the image has "
                            f"{classes.numel()} target classes; give one flag per target")
        cost = cost_class * class_cost(logits, classes)
        if not bool(has_mask.any()):
            return cost
        if masks is None:
            raise IfssError("a target is flagged has_mask but no masks were given; pass the "
                            "image's T x H x W target masks")
        rows = has_mask.nonzero().squeeze(1)
        target = masks.to(logits.device)[rows].float()  # only the rows that have a mask
        target = F.interpolate(target[:, None], size=mask_logits.shape[-2:], mode="nearest")
        target = target.flatten(1)
        predicted = mask_logits.flatten(1)
        mask_part = (cost_focal * focal_cost(predicted, target)
                     + cost_dice * dice_cost(predicted, target))
        cost[:, rows] += mask_part
        return cost


def assign(cost: torch.Tensor) -> Match:
    """Least-cost assignment of a Q x T matrix: (proposal indices, target indices), int64 on the
    CPU, ordered by proposal. With T > Q only Q targets are assigned."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone()
    if not bool(torch.isfinite(cost).all()):
        raise IfssError("the matching cost has NaN or infinite entries; check the model's "
                        "logits and the base targets' masks")
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def hungarian_match(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                    target_classes: Sequence[torch.Tensor],
                    target_masks: Sequence[torch.Tensor | None],
                    has_mask: Sequence[torch.Tensor], *, cost_class: float = 1.0,
                    cost_focal: float = 20.0, cost_dice: float = 1.0) -> list[Match]:
    """Match each image of a batch on its own: pred_logits N x Q x (C+1), pred_masks N x Q x h x w
    and, per image, target classes T_i, masks T_i x H x W (or None) and has_mask T_i. Returns one
    (proposal indices, target indices) pair per image."""
    n = pred_logits.shape[0]
    if not len(target_classes) == len(target_masks) == len(has_mask) == n:
        raise IfssError(f"the batch has {n} images but the targets give {len(target_classes)} "
                        f"class lists, {len(target_masks)} mask sets and {len(has_mask)} has_mask "
                        "lists; give one of each per image")
    return [assign(match_cost(pred_logits[i], pred_masks[i], target_classes[i], target_masks[i],
                              has_mask[i], cost_class=cost_class, cost_focal=cost_focal,
                              cost_dice=cost_dice))
            for i in range(n)]
