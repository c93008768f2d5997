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


def segmentation_ce(logits: torch.Tensor, labels: torch.Tensor,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the pixels whose label is not void (zero if there are none).
    Sum / count rather than a branch on the count, so no host sync per step. `label_smoothing`
    ε: torch's target (1 - ε)·onehot + ε/C (void pixels drop out with their smoothing term)."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum",
                            label_smoothing=label_smoothing)
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
    # at T = 1 the division and the T^2 factor are exact no-ops: skipped (same bits, two passes
    # over the teacher's logits fewer)
    q = F.softmax(old_logits if temperature == 1 else old_logits / temperature, dim=1)
    per_pixel = -(q * log_p).mean(dim=1)
    loss = _masked_mean(per_pixel, mask)
    return loss if temperature == 1 else loss * temperature**2


def unbiased_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_old: int,
                           log_p: torch.Tensor | None = None) -> torch.Tensor:
    """MiB's UNCE: background absorbs the old classes. log p(0) = lse(z_old) - lse(z); labels of
    old classes (< num_old, background included) become 0; void pixels are ignored (the mean is
    over the other pixels, 0 when there are none).

    From one fused log-softmax: log p(0) = lse over the old channels of log_softmax(z), the new
    classes' log p picked by label (no relabelled copy of the labels, no host sync). `log_p`:
    log_softmax(logits) when the caller has it (MiB's UNKD takes the same)."""
    log_p = F.log_softmax(logits, dim=1) if log_p is None else log_p
    log_old = torch.logsumexp(log_p[:, :num_old], dim=1)
    valid = labels != IGNORE
    new = (labels >= num_old) & valid
    picked = log_p.gather(1, torch.where(new, labels, 0).unsqueeze(1)).squeeze(1)
    per_pixel = torch.where(new, picked, log_old)
    return -torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp_min(1)


def unbiased_distillation(
    new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 1.0,
    log_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """MiB's UNKD: the new model's background probability absorbs the new classes.
    -mean_pixels[(q_0 log p_0 + sum_{old c >= 1} q_c log p_c) / C_old], q = softmax(z_old/T),
    log p_0 = lse(z_0, z_new) - lse(z): an lse over those channels of one fused log-softmax
    (`log_p`: log_softmax(new_logits) when the caller has it)."""
    c_old = old_logits.shape[1]
    log_p = F.log_softmax(new_logits, dim=1) if log_p is None else log_p
    log_bkg = torch.logsumexp(torch.cat([log_p[:, :1], log_p[:, c_old:]], dim=1), dim=1)
    q = F.softmax(old_logits if temperature == 1 else old_logits / temperature, dim=1)
    per_pixel = q[:, 0] * log_bkg + (q[:, 1:] * log_p[:, 1:c_old]).sum(dim=1)
    return -per_pixel.mean() / c_old


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


def multilabel_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LWF-MC's classification term (iCaRL's multi-class BCE, MiB's BCE with ignore index): per
    pixel, sum_c BCE(sigmoid(z_c), [y = c]) over all C channels (background included), averaged
    over the non-void pixels (zero if there are none). The MiB/SDR code averaged over every
    pixel, void ones counting as zero; the denominator here is `segmentation_ce`'s."""
    valid = labels != IGNORE
    target = F.one_hot(labels.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, target.to(logits.dtype), reduction="none").sum(dim=1)
    return _masked_mean(per_pixel, valid)


def sigmoid_distillation(new_logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """LWF-MC's distillation: per pixel, sum_{c < C_old} BCE(sigmoid(z_c), sigmoid(z_old_c)),
    averaged over all pixels. The sum over the old classes is the originals' C_old * mean."""
    c_old = old_logits.shape[1]
    per_pixel = F.binary_cross_entropy_with_logits(
        new_logits[:, :c_old], torch.sigmoid(old_logits), reduction="none").sum(dim=1)
    return per_pixel.mean()


def entropy_weighted_distillation(
    new_logits: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor,
    entropy_scale: float = 1.0,
) -> torch.Tensor:
    """CIL's distillation (Klingner et al. 2020) on the pixels labelled background or void:

        mean_{i: y_i in {0, void}} w_i * -sum_{c < C_old} q_ic log p_ic,
        w_i = 1 + entropy_scale * H(q_i) / ln 2,

    q = softmax(z_old) over the old model's C_old classes, p = softmax(z_new) over all C classes
    (so new classes are pushed out of these pixels), H the entropy in nats (bits after / ln 2).
    The mean divides by the number of those pixels, not by the sum of the weights (the original's
    norm=False). Computed in float32."""
    q = F.softmax(old_logits.float(), dim=1)
    log_p = F.log_softmax(new_logits.float(), dim=1)[:, :old_logits.shape[1]]
    weight = 1.0 + entropy_scale * torch.special.entr(q).sum(dim=1) / math.log(2.0)
    per_pixel = -weight * (q * log_p).sum(dim=1)
    return _masked_mean(per_pixel, (labels == 0) | (labels == IGNORE))


# --- SDR (research wilson_sdr_gfss_simformer.md §B.2) -------------------------------------------
# Feature maps are N x D x h x w (SDR: the body output); labels are N x h x w at the feature size
# (ifss.memory.labels_at). A label outside [0, C) (void 255, or a class a term leaves out) belongs
# to no class. Per-class statistics are one index_add over the pixels: no loop over classes and
# no value read back to the host.


def class_pixels(features: torch.Tensor, labels: torch.Tensor,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P x D pixel features, P class indices), an index outside [0, C) becoming C ("none")."""
    pixels = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    index = labels.reshape(-1).long()
    return pixels, torch.where((index >= 0) & (index < num_classes), index, num_classes)


def class_sums(features: torch.Tensor, labels: torch.Tensor,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the sum of its pixels' features (C x D, differentiable) and their count (C)."""
    pixels, index = class_pixels(features, labels, num_classes)
    sums = pixels.new_zeros(num_classes + 1, pixels.shape[1]).index_add(0, index, pixels)
    return sums[:num_classes], _class_counts(index, num_classes)[:num_classes]


def _class_counts(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels per index 0..C (a fixed-size index_add: bincount sizes its output from the data,
    a host sync on CUDA)."""
    return index.new_zeros(num_classes + 1).index_add_(0, index, torch.ones_like(index))


def _class_pixel_mse(features: torch.Tensor, labels: torch.Tensor,
                     prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class c: the mean over its pixels of MSE(f_i, p_c) = ||f_i - p_c||^2 / D, and the
    count of its pixels (C each)."""
    c, d = prototypes.shape
    pixels, index = class_pixels(features, labels, c)
    padded = torch.cat([prototypes.detach().to(pixels.dtype), pixels.new_zeros(1, d)])
    per_pixel = (pixels - padded[index]).pow(2).mean(1)
    sums = per_pixel.new_zeros(c + 1).index_add(0, index, per_pixel)
    counts = _class_counts(index, c)
    return (sums / counts.clamp_min(1))[:c], counts[:c]


def _mean_over_present(per_class: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    present = counts > 0
    return (per_class * present).sum() / present.sum().clamp_min(1)


def prototype_matching(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                       sumafter: bool = True) -> torch.Tensor:
    """SDR's prototype matching over the classes of `prototypes` (C x D, not differentiated)
    present in `labels` (the old classes' pixels). `sumafter`: the batch mean of each class
    against its prototype, (1/|present|) sum_c MSE(mean_{i in c} f_i, p_c); otherwise the
    per-pixel form sum_c mean_{i in c} MSE(f_i, p_c) (a sum over classes, as the original).
    Zero when no class is present."""
    if not sumafter:
        per_class, counts = _class_pixel_mse(features, labels, prototypes)
        return (per_class * (counts > 0)).sum()
    sums, counts = class_sums(features, labels, prototypes.shape[0])
    means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
    per_class = (means - prototypes.detach().to(means.dtype)).pow(2).mean(1)
    return _mean_over_present(per_class, counts)


def prototype_attraction(features: torch.Tensor, labels: torch.Tensor,
                         prototypes: torch.Tensor) -> torch.Tensor:
    """SDR's contrastive attraction: (1/|present|) sum_{c present} mean_{i in c} MSE(f_i, p_c)
    over the classes of `prototypes` (C x D, not differentiated) present in `labels`."""
    return _mean_over_present(*_class_pixel_mse(features, labels, prototypes))


def class_mean_repulsion(features: torch.Tensor, labels: torch.Tensor,
                         num_classes: int) -> torch.Tensor:
    """SDR's contrastive repulsion: the mean of 1 / ||mean_c - mean_k|| over the ordered pairs
    c != k of classes present in the batch (the diagonal, and coincident means, whose inverse
    distance is infinite, dropped). Zero with fewer than two classes."""
    sums, counts = class_sums(features, labels, num_classes)
    means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
    # exact differences (no |a|^2 + |b|^2 - 2ab), so the diagonal is exactly zero
    dist = torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist")
    present = counts > 0
    pair = present.unsqueeze(1) & present.unsqueeze(0) & (dist > 0)
    pair &= ~torch.eye(num_classes, dtype=torch.bool, device=pair.device)
    inverse = 1.0 / dist.masked_fill(~pair, 1.0)
    return (inverse * pair).sum() / pair.sum().clamp_min(1)


def feature_sparsity(features: torch.Tensor, labels: torch.Tensor,
                     eps: float = 1e-15) -> torch.Tensor:
    """SDR's feature sparsity (max_maskedforclass, exponential, ratio): each pixel's features are
    divided by the largest feature value of its label in the batch (over channels and pixels;
    every label value, void included, is a group of its own), f' = f / (max + eps), and

        L = mean_pixels [ sum_j exp(f'_j) / (sum_j f'_j + eps) ],

    zero when every pixel is background (the original then normalises nothing)."""
    pixels = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    group = labels.reshape(-1).long().clamp(0, IGNORE)
    peak = pixels.amax(1)
    top = peak.new_zeros(IGNORE + 1).scatter_reduce(0, group, peak, "amax", include_self=False)
    norm = pixels / (top[group] + eps).unsqueeze(1)
    ratio = norm.exp().sum(1) / (norm.sum(1) + eps)
    return ratio.mean() * (labels != 0).any()
