"""Losses shared by several methods. Each takes tensors and returns a scalar tensor.

Formulas as in research/pifs_mclos_mib.md §2.2-2.3. Logits are N x C x H x W; "old" logits come
from the frozen previous-step model and have C_old <= C channels (the first C_old of the new model).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = 255


def _masked_mean(per_pixel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_pixel.mean()
    mask = mask.to(per_pixel.dtype)
    return (per_pixel * mask).sum() / mask.sum().clamp_min(1.0)


def segmentation_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the pixels whose label is not void (zero if there are none).
    Sum / count rather than a branch on the count, so no host sync per step."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp_min(1)


def knowledge_distillation(
    new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KD of PIFS/LwF: -mean_pixels[(1/C_old) sum_c softmax(z_old/T)_c log softmax(z_new)_c] T^2.

    The temperature softens the teacher only (research pifs_mclos_mib.md §2.2, the PIFS code's
    `kd_alpha`); the student's logits are not divided. The new logits are narrowed to the old
    model's C_old channels before the softmax. The mean over classes (not a sum) is the
    originals' convention; their KD weights (10) assume it.
    """
    c_old = old_logits.shape[1]
    log_p = F.log_softmax(new_logits[:, :c_old], dim=1)
    q = F.softmax(old_logits / temperature, dim=1)
    per_pixel = -(q * log_p).mean(dim=1)
    return _masked_mean(per_pixel, mask) * temperature**2


def unbiased_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_old: int) -> torch.Tensor:
    """MiB's UNCE: background absorbs the old classes. log p(0) = lse(z_old) - lse(z); labels of
    old classes (< num_old, background included) become 0; void pixels are ignored."""
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    log_p = logits - lse
    log_p = torch.cat(
        [torch.logsumexp(logits[:, :num_old], dim=1, keepdim=True) - lse, log_p[:, num_old:]], dim=1
    )
    target = labels.clone()
    target[(labels < num_old)] = 0
    target[(labels >= num_old) & (labels != IGNORE)] -= num_old - 1
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.nll_loss(log_p, target, ignore_index=IGNORE)


def unbiased_distillation(
    new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """MiB's UNKD: the new model's background probability absorbs the new classes.
    -mean_pixels[(q_0 log p_0 + sum_{old c >= 1} q_c log p_c) / C_old], q = softmax(z_old/T)."""
    c_old = old_logits.shape[1]
    lse = torch.logsumexp(new_logits, dim=1, keepdim=True)
    bkg_and_new = torch.cat([new_logits[:, :1], new_logits[:, c_old:]], dim=1)
    log_p = torch.cat(
        [torch.logsumexp(bkg_and_new, dim=1, keepdim=True) - lse, new_logits[:, 1:c_old] - lse],
        dim=1,
    )
    q = F.softmax(old_logits / temperature, dim=1)
    return -(q * log_p).sum(dim=1).mean() / c_old


def feature_distillation(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """ILT's feature term: mean squared error between new and old features."""
    return F.mse_loss(new, old)


@torch.no_grad()
def mib_initialise(weight: torch.Tensor, bias: torch.Tensor | None, new: slice) -> None:
    """MiB's classifier init, in place on a full classifier weight (C x D x 1 x 1) and bias:
    every new class copies the background weight; new biases and the background bias become
    b_bkg - log(|C_new| + 1), so the background's probability is shared out evenly."""
    count = len(range(*new.indices(weight.shape[0])))
    weight[new] = weight[0:1]
    if bias is not None:
        value = bias[0] - math.log(count + 1)
        bias[new] = value
        bias[0] = value


def info_nce(
    pos: torch.Tensor, neg: torch.Tensor, pos_mask: torch.Tensor | None = None,
    neg_mask: torch.Tensor | None = None, temperature: float = 0.1,
    base_temperature: float = 0.07, anchor_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MCLOS's pixel-to-memory InfoNCE from the anchors' cosine similarities to their positives
    (A x P) and negatives (A x Q); masks (same shapes, bool) drop entries. With s = cos / T:

        l_a = -(T / T_base) * mean_{p valid} [ s_p - log(e^{s_p} + sum_{n valid} e^{s_n}) ]

    averaged over the anchors (anchor_mask, A bool) with at least one valid positive; zero (with
    a graph) when there is none. Computed in float32."""
    pos, neg = pos.float() / temperature, neg.float() / temperature
    if pos_mask is None:
        pos_mask = torch.ones_like(pos, dtype=torch.bool)
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, -1e9)  # e^{-1e9} = 0, and stays finite in backward
    if neg.shape[1] == 0:
        neg = pos.new_full((pos.shape[0], 1), -1e9)
    lse_neg = torch.logsumexp(neg, dim=1, keepdim=True)
    log_prob = pos - torch.logaddexp(pos, lse_neg)
    npos = pos_mask.sum(1)
    per_anchor = -(temperature / base_temperature) * (
        (log_prob * pos_mask).sum(1) / npos.clamp_min(1))
    weight = npos > 0
    if anchor_mask is not None:
        weight = weight & anchor_mask
    weight = weight.to(per_anchor.dtype)
    return (per_anchor * weight).sum() / weight.sum().clamp_min(1.0)
