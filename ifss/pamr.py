"""PAMR mask refinement and WILSON's self-supervised localizer loss, as pure tensor functions.

PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020) smooths soft class scores with
affinities computed from the image; WILSON (Cermelli et al., CVPR 2022) thresholds the refined
scores into a hard pseudo mask and trains its localizer on it with a class-balanced cross-entropy
(ℓ_SSS). Formulas as in research/wilson_sdr_gfss_simformer.md §A.3-A.4 and §G. Every function
works on any device and keeps the autograd graph (WILSON itself calls PAMR under no_grad).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ifss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ifss.errors import IfssError

# the images' ImageNet statistics (the original code mistyped the blue mean as 0.4069)


def _check_4d(name: str, t: torch.Tensor) -> None:
    if t.dim() != 4:
        raise IfssError(f"{name} must be a 4-d N x C x H x W tensor, got shape {tuple(t.shape)}.")


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo `(x - mean) / std` on the channel axis (-3) of a ... x K x H x W image."""
    if image.dim() < 3 or image.shape[-3] != len(mean) or len(mean) != len(std):
        raise IfssError(
            f"image must be ... x {len(mean)} x H x W to match mean/std of length "
            f"{len(mean)}/{len(std)}, got shape {tuple(image.shape)}."
        )
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return image * s + m


def _offsets(d: int, centre: bool) -> list[tuple[int, int]]:
    return [
        (dy * d, dx * d) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if centre or (dy, dx) != (0, 0)
    ]


def _shifted(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """N x C x P x H x W: x read at each 3x3 offset of every dilation, borders replicated."""
    h, w = x.shape[-2:]
    views = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode="replicate")
        for dy, dx in _offsets(d, centre):
            views.append(padded[..., d + dy : d + dy + h, d + dx : d + dx + w])
    return torch.stack(views, dim=2)


def _affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """N x P x H x W softmax weights over the 8·|dilations| neighbours of every pixel."""
    # the std is over the full windows (centre once per dilation): the local contrast scale
    sigma = _shifted(image, dilations, centre=True).std(dim=2, keepdim=True)
    neighbours = _shifted(image, dilations, centre=False)
    logits = -(image.unsqueeze(2) - neighbours).abs() / (1e-8 + 0.1 * sigma)
    return logits.mean(dim=1).softmax(dim=1)


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8, 12),
) -> torch.Tensor:
    """Refine N x C x H x W soft masks with affinities from the N x K x H x W image (same H x W).

    Each iteration replaces a pixel's scores by the affinity-weighted sum of its neighbours' scores.
    """
    _check_4d("image", image)
    _check_4d("masks", masks)
    if image.shape[0] != masks.shape[0] or image.shape[-2:] != masks.shape[-2:]:
        raise IfssError(
            f"masks must have the batch size and H x W of image {tuple(image.shape)}, "
            f"got {tuple(masks.shape)}."
        )
    if not dilations or any(int(d) < 1 for d in dilations):
        raise IfssError(
            f"dilations must be a non-empty list of positive integers, got {list(dilations)}."
        )
    if iterations < 0:
        raise IfssError(f"iterations must be a non-negative integer, got {iterations}.")
    dilations = [int(d) for d in dilations]
    # affinities depend on the image only, so they are computed once for all iterations
    alpha = _affinity(image.to(masks.dtype), dilations).unsqueeze(1)
    for _ in range(iterations):
        masks = (alpha * _shifted(masks, dilations, centre=False)).sum(dim=2)
    return masks


def pseudo_mask(
    masks: torch.Tensor,
    cutoff_top: float = 0.6,
    cutoff_background: float = 0.7,
    cutoff_low: float = 0.2,
) -> torch.Tensor:
    """N x C x H x W 0/1 mask: pixel i is class c when
    masks_ic > max(cutoff·max_i masks_ic, cutoff_low).

    Channel 0 (background) uses `cutoff_background`, the others `cutoff_top`; a pixel claimed by
    more than one class is dropped (all zeros), as is a pixel claimed by none.
    """
    _check_4d("masks", masks)
    peak = masks.flatten(2).amax(dim=2)  # N x C, per image and class
    cutoff = torch.full_like(peak[0], cutoff_top)
    cutoff[0] = cutoff_background
    threshold = (peak * cutoff).clamp_min(cutoff_low)
    claimed = masks > threshold[:, :, None, None]
    unique = claimed.sum(dim=1, keepdim=True) == 1
    return (claimed & unique).to(masks.dtype)


def balanced_self_supervision(
    logits: torch.Tensor, pseudo: torch.Tensor, image_labels: torch.Tensor
) -> torch.Tensor:
    """ℓ_SSS per image (shape N): class-balanced CE of the localizer `logits` on the `pseudo`
    mask.

    Weights w_c = (|I| - M_c) / (1 + |I|) favour the rarer pseudo classes; the mean runs over all
    H·W pixels (pixels without a pseudo class add zero). An image's loss is kept only when its
    pseudo mask holds exactly (#image labels + 1) classes, i.e. every labelled class and background.
    """
    _check_4d("logits", logits)
    _check_4d("pseudo", pseudo)
    if logits.shape != pseudo.shape:
        raise IfssError(
            f"pseudo must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(pseudo.shape)}."
        )
    n, c = logits.shape[:2]
    if image_labels.shape != (n, c - 1):
        raise IfssError(
            f"image_labels must be N x (C-1) = {n} x {c - 1} (foreground classes only), "
            f"got shape {tuple(image_labels.shape)}."
        )
    pseudo = pseudo.to(logits.dtype)
    counts = pseudo.flatten(2).sum(dim=2)  # M_c, N x C
    total = counts.sum(dim=1, keepdim=True)  # |I|
    weights = (total - counts) / (1.0 + total)
    valid = pseudo.sum(dim=1) > 0
    target = pseudo.argmax(dim=1)
    pixel_weight = weights.gather(1, target.flatten(1)).view_as(target)
    ce = F.cross_entropy(logits, target, reduction="none")
    # where() rather than a product, so a non-finite CE on an ignored pixel cannot leak in
    loss = torch.where(valid, pixel_weight * ce, torch.zeros_like(ce)).flatten(1).mean(dim=1)
    present = (counts > 0).sum(dim=1)
    gate = present == (image_labels > 0).sum(dim=1) + 1
    return loss * gate.to(loss.dtype)
