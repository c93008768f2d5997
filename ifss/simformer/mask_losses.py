"""SimFormer's proposal losses (proposal-pixel similarity transfer and the complementary loss),
written from research/wilson_sdr_gfss_simformer.md §D.1-D.2 and §G.

Shapes: pred_logits N x Q x (C+1) (last = no object), pred_masks N x Q x h x w (logits); per
image i the targets are classes T_i, masks T_i x H x W and has_mask T_i (False for a novel class,
known from its image-level label only: its mask row is never read). `matches` is what
ifss.simformer.matching.hungarian_match returns: per image (proposal indices, target indices).

    classification_loss   CE over all queries; a matched query's target is its target's class,
                          an unmatched one's the no-object class; class weights 1, no-object 0.1
                          (torch's weighted mean: Σ w_y·CE / Σ w_y)
    sigmoid_focal_loss    α_t(1 − p_t)^γ·CE per pixel (α 0.25, γ 2), averaged over the pixels of
                          a pair, summed over pairs, divided by num_masks
    dice_loss             1 − (2·Σσ(m)t + 1)/(Σσ(m) + Σt + 1), summed over pairs / num_masks
    mask_losses           both on the matched (proposal, target with a mask) pairs; num_masks =
                          the number of targets with a mask in the batch (at least 1)
    complementary_loss    per image with a novel target: prediction = pixel-wise max over the
                          logits of the proposals matched to its novel targets and a constant
                          logit −2.9444 (σ = 0.05, not learnable); target = (1 − max of the base
                          masks)·(1 − padding); 20·focal + 1·dice (num_masks 1), averaged over
                          those images. Images without a novel target contribute nothing.
    simformer_losses      matching + every term above, weighted and named
    deep_supervision      the sum of a loss function over the final and each auxiliary output,
                          each matched on its own

Predicted masks are upsampled (bilinear, align_corners False) to the targets' size before the
losses, as MaskFormer does; the matching cost works the other way (targets downsampled).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.simformer.matching import FOCAL_ALPHA, FOCAL_GAMMA, Match, hungarian_match

IGNORE_LOGIT = -2.9444  # σ(−2.9444) ≈ 0.05: the constant "not a novel class" proposal


def classification_loss(pred_logits: torch.Tensor, matches: Sequence[Match],
                        target_classes: Sequence[torch.Tensor],
                        no_object_weight: float = 0.1) -> torch.Tensor:
    """Weighted CE of every query's class logits; unmatched queries target no-object (C)."""
    n, q, c1 = pred_logits.shape
    device = pred_logits.device
    labels = torch.full((n, q), c1 - 1, dtype=torch.long, device=device)
    for i, (src, tgt) in enumerate(matches):
        classes = torch.as_tensor(target_classes[i], device=device).long().reshape(-1)
        labels[i, src.to(device)] = classes[tgt.to(device)]
    weight = torch.ones(c1, dtype=torch.float32, device=device)
    weight[-1] = no_object_weight
    return F.cross_entropy(pred_logits.float().transpose(1, 2), labels, weight=weight)


def _focal_per_pair(logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                    gamma: float) -> torch.Tensor:
    x = logits.float().flatten(1)
    t = targets.float().flatten(1)
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * (1 - p_t).pow(gamma) * ce).mean(1)


def _dice_per_pair(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    prob = logits.float().flatten(1).sigmoid()
    t = targets.float().flatten(1)
    return 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float,
                       alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal loss of P mask logits against P binary targets (P x ... each): the mean over the
    pixels of each pair, summed over the pairs, divided by num_masks."""
    return _focal_per_pair(logits, targets, alpha, gamma).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss with +1 smoothing of P mask logits against P binary targets, summed over the
    pairs, divided by num_masks."""
    return _dice_per_pair(logits, targets).sum() / num_masks


def _to_size(mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """K x h x w logits resized (bilinear) to K x H x W; unchanged when the sizes agree."""
    if tuple(mask_logits.shape[-2:]) == tuple(size):
        return mask_logits
    return F.interpolate(mask_logits[:, None], size=tuple(size), mode="bilinear",
                         align_corners=False)[:, 0]


def count_masks(has_mask: Sequence[torch.Tensor]) -> float:
    """The number of targets with a mask in the batch, at least 1."""
    return float(max(sum(int(torch.as_tensor(h).bool().sum()) for h in has_mask), 1))


def mask_losses(pred_masks: torch.Tensor, matches: Sequence[Match],
                target_masks: Sequence[torch.Tensor | None], has_mask: Sequence[torch.Tensor],
                num_masks: float | None = None, alpha: float = FOCAL_ALPHA,
                gamma: float = FOCAL_GAMMA) -> dict[str, torch.Tensor]:
    """{"mask_focal", "mask_dice"} (unweighted; SimFormer weighs them 20 and 1) over the matched
    pairs whose target has a mask. num_masks defaults to count_masks(has_mask) (pass the mean
    over processes under DDP)."""
    if num_masks is None:
        num_masks = count_masks(has_mask)
    device = pred_masks.device
    focal, dice = [], []
    for i, (src, tgt) in enumerate(matches):
        flags = torch.as_tensor(has_mask[i]).bool().reshape(-1).cpu()
        keep = flags[tgt.cpu()]
        if not bool(keep.any()):
            continue
        src_k, tgt_k = src.cpu()[keep].to(device), tgt.cpu()[keep]
        target = target_masks[i][tgt_k.to(target_masks[i].device)].to(device)  # rows with masks
        predicted = _to_size(pred_masks[i, src_k], target.shape[-2:])
        focal.append(_focal_per_pair(predicted, target, alpha, gamma))
        dice.append(_dice_per_pair(predicted, target))
    if not focal:
        zero = pred_masks.sum() * 0.0
        return {"mask_focal": zero, "mask_dice": zero.clone()}
    return {"mask_focal": torch.cat(focal).sum() / num_masks,
            "mask_dice": torch.cat(dice).sum() / num_masks}


def complementary_target(base_masks: torch.Tensor,
                         padding: torch.Tensor | None = None) -> torch.Tensor:
    """(1 − max of the K x H x W base masks)·(1 − padding): H x W, 1 where no base class lies
    (novel and void pixels) except padded pixels. With K = 0 every unpadded pixel is 1."""
    if base_masks.dim() != 3:
        raise IfssError(f"base masks must be K x H x W, got shape {tuple(base_masks.shape)}")
    if base_masks.shape[0]:
        target = 1 - base_masks.float().amax(0)
    else:
        target = base_masks.new_ones(base_masks.shape[-2:], dtype=torch.float32)
    if padding is not None:
        target = target * (1 - padding.to(target.device).float())
    return target


def complementary_prediction(mask_logits: torch.Tensor,
                             ignore_logit: float = IGNORE_LOGIT) -> torch.Tensor:
    """Pixel-wise max over K x H x W proposal logits (K may be 0) and the constant logit: H x W."""
    constant = torch.full(mask_logits.shape[-2:], ignore_logit, dtype=mask_logits.dtype,
                          device=mask_logits.device)
    if mask_logits.shape[0] == 0:
        return constant
    return torch.maximum(mask_logits.amax(0), constant)


def complementary_loss(pred_masks: torch.Tensor, matches: Sequence[Match],
                       novel_flags: Sequence[torch.Tensor], base_masks: Sequence[torch.Tensor],
                       padding: torch.Tensor | Sequence[torch.Tensor | None] | None = None, *,
                       ignore_logit: float = IGNORE_LOGIT, focal_weight: float = 20.0,
                       dice_weight: float = 1.0, alpha: float = FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """The complementary loss, averaged over the images that have a novel target.

    novel_flags per image T_i booleans (True = novel target, no mask); base_masks per image
    K_i x H x W, the masks of its base targets only (0 x H x W when it has none); padding
    N x H x W (1 = padded pixel) or None.
    """
    device = pred_masks.device
    total = pred_masks.sum() * 0.0
    images = 0
    for i, (src, tgt) in enumerate(matches):
        flags = torch.as_tensor(novel_flags[i]).bool().reshape(-1).cpu()
        if not bool(flags.any()):
            continue
        chosen = src.cpu()[flags[tgt.cpu()]].to(device)
        base = base_masks[i].to(device)
        pad = None if padding is None else padding[i]
        target = complementary_target(base, pad)
        predicted = complementary_prediction(_to_size(pred_masks[i, chosen].float(), target.shape),
                                             ignore_logit)
        total = total + (focal_weight * sigmoid_focal_loss(predicted[None], target[None], 1.0,
                                                           alpha, gamma)
                         + dice_weight * dice_loss(predicted[None], target[None], 1.0))
        images += 1
    return total / max(images, 1)


def simformer_losses(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                     target_classes: Sequence[torch.Tensor],
                     target_masks: Sequence[torch.Tensor | None],
                     has_mask: Sequence[torch.Tensor],
                     padding: torch.Tensor | Sequence[torch.Tensor | None] | None = None, *,
                     cls_weight: float = 1.0, focal_weight: float = 20.0,
                     dice_weight: float = 1.0, comp_weight: float = 0.15,
                     no_object_weight: float = 0.1, ignore_logit: float = IGNORE_LOGIT,
                     num_masks: float | None = None) -> dict[str, torch.Tensor]:
    """Match one output (N x Q x (C+1), N x Q x h x w) to the targets and return its weighted
    terms {"loss_cls", "loss_mask_focal", "loss_mask_dice", "loss_comp"}. The defaults are
    SimFormer's COCO-Stuff-10K values (comp 0.15; ADE20K uses 0.2); the matcher uses the same
    class / focal / dice weights. comp_weight 0 skips the complementary loss."""
    matches = hungarian_match(pred_logits, pred_masks, target_classes, target_masks, has_mask,
                              cost_class=cls_weight, cost_focal=focal_weight,
                              cost_dice=dice_weight)
    masks = mask_losses(pred_masks, matches, target_masks, has_mask, num_masks)
    out = {"loss_cls": cls_weight * classification_loss(pred_logits, matches, target_classes,
                                                        no_object_weight),
           "loss_mask_focal": focal_weight * masks["mask_focal"],
           "loss_mask_dice": dice_weight * masks["mask_dice"]}
    if comp_weight:
        novel = [~torch.as_tensor(h).bool().reshape(-1) for h in has_mask]
        base = [_base_rows(target_masks[i], has_mask[i], pred_masks.shape[-2:], padding, i)
                for i in range(len(has_mask))]
        out["loss_comp"] = comp_weight * complementary_loss(
            pred_masks, matches, novel, base, padding, ignore_logit=ignore_logit,
            focal_weight=focal_weight, dice_weight=dice_weight)
    return out


def _base_rows(masks: torch.Tensor | None, has_mask: torch.Tensor, pred_size, padding,
               i: int) -> torch.Tensor:
    """The rows of an image's target masks that have a mask (never the others), K x H x W."""
    flags = torch.as_tensor(has_mask).bool().reshape(-1)
    if masks is not None:
        return masks[flags.to(masks.device)]
    if bool(flags.any()):
        raise IfssError("a target is flagged has_mask but no masks were given; pass the "
                        "image's T x H x W target masks")
    size = tuple(padding[i].shape[-2:]) if padding is not None else tuple(pred_size)
    return torch.zeros((0, *size))


def deep_supervision(predictions: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
                     ) -> dict[str, torch.Tensor]:
    """Σ over the (class logits, mask logits) of the final and every auxiliary output of
    loss_fn(logits, masks), term by term; loss_fn matches each output on its own (e.g. a
    functools.partial of simformer_losses with the targets)."""
    if not predictions:
        raise IfssError("deep supervision needs at least the final output")
    total: dict[str, torch.Tensor] = {}
    for logits, masks in predictions:
        for name, value in loss_fn(logits, masks).items():
            total[name] = total[name] + value if name in total else value
    return total
