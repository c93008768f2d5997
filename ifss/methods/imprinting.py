"""Classifier weights from the few-shot images' features, without a gradient step: weight
imprinting (WI, on the cosine classifier) and adaptive masked proxies (AMP, on the linear one).

Formulas (research/pifs_mclos_mib.md §2.2). Head features are upsampled bilinearly to the label
size; for image n and class c with pixel set P(n, c):

    WI   p[n, c] = normalize(sum_{i in P(n,c)} normalize(f_i))      w_c = normalize(sum_n p[n, c])
    AMP  m[n, c] = mean_{i in P(n,c)} f_i      proto_c = normalize(mean_{n : P(n,c) != {}} m[n, c])
         new classes: w_c = proto_c; older classes present in the few-shot set:
         w_c = alpha * w_c + (1 - alpha) * proto_c; bias_c = 0 for every imprinted class.

The pure functions take feature maps and labels and return tensors; `class_statistics` runs them
over a dataset (one full-size, unaugmented image at a time, model in eval mode, no gradient).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ifss.data.segmentation import SegmentationSet
from ifss.errors import IfssError
from ifss.losses import IGNORE
from ifss.methods.base import Method
from ifss.methods.params import AMPParams

PerImage = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


# --- pure functions ---------------------------------------------------------------------------

def features_at(features: torch.Tensor, size) -> torch.Tensor:
    """Head features (N x D x h x w) bilinearly upsampled to `size` (the label's H x W)."""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False)


def class_feature_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       normalize_pixels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class, the sum of the pixel features of that class and the pixel count.

    features: N x D x H x W (already at the label size); labels: N x H x W with void 255.
    Returns sums N x C x D (each pixel feature L2-normalised first if `normalize_pixels`) and
    counts N x C. Labels >= num_classes other than 255 are an error.
    """
    n, d = features.shape[:2]
    if tuple(features.shape[-2:]) != tuple(labels.shape[-2:]):
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} "
                         "differ in size")
    feats = features.float().flatten(2).transpose(1, 2).reshape(-1, d)  # (N*H*W) x D
    if normalize_pixels:
        feats = F.normalize(feats, dim=1)
    lab = labels.reshape(n, -1).long()
    valid = lab != IGNORE
    if (lab[valid] >= num_classes).any() or (lab[valid] < 0).any():
        raise ValueError(f"labels outside 0..{num_classes - 1} and {IGNORE}")
    slot = (torch.arange(n, device=lab.device).unsqueeze(1) * num_classes + lab).reshape(-1)
    keep = valid.reshape(-1)
    sums = feats.new_zeros(n * num_classes, d).index_add_(0, slot[keep], feats[keep])
    counts = torch.bincount(slot[keep], minlength=n * num_classes).to(feats.dtype)
    return sums.view(n, num_classes, d), counts.view(n, num_classes)


def wi_image_prototypes(features: torch.Tensor, labels: torch.Tensor,
                        num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p[n, c] = normalize(sum over the pixels of c in image n of normalize(f)); zero where c is
    absent. Returns (N x C x D prototypes, N x C bool presence)."""
    sums, counts = class_feature_sums(features, labels, num_classes, normalize_pixels=True)
    return F.normalize(sums, dim=-1), counts > 0


def amp_image_means(features: torch.Tensor, labels: torch.Tensor,
                    num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """m[n, c] = mean feature of the pixels of c in image n (raw features: AMP's classifier is
    linear); zero where c is absent. Returns (N x C x D, N x C bool presence)."""
    sums, counts = class_feature_sums(features, labels, num_classes, normalize_pixels=False)
    return sums / counts.clamp_min(1.0).unsqueeze(-1), counts > 0


def wi_weights(prototype_sum: torch.Tensor) -> torch.Tensor:
    """w_c = normalize(sum_n p[n, c]) from the C x D sum of the per-image prototypes."""
    return F.normalize(prototype_sum, dim=-1)


def amp_proxies(mean_sum: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """proto_c = normalize(mean over the images holding c of their mean feature of c)."""
    return F.normalize(mean_sum / images.clamp_min(1.0).unsqueeze(-1), dim=-1)


def amp_mix(old: torch.Tensor, proto: torch.Tensor, alpha: float) -> torch.Tensor:
    """AMP's update of an already-learned weight: alpha * old + (1 - alpha) * proto."""
    return alpha * old + (1.0 - alpha) * proto


# --- over a dataset ---------------------------------------------------------------------------

@torch.no_grad()
def class_statistics(model: nn.Module, dataset: SegmentationSet, per_image: PerImage,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the images of `dataset` of per_image(features at label size, label, C), and the
    number of images holding each class (C x D and C). One image at a time, at its own size, so
    nothing is padded; the model is put in eval mode and left in the mode it had."""
    was_training = model.training
    model.eval()
    total, images = None, None
    try:
        for index in range(len(dataset)):
            sample = dataset[index]
            image = sample["image"].unsqueeze(0).to(device)
            label = sample["label"].unsqueeze(0).to(device)
            features = model.head(model.body(image))
            values, present = per_image(features_at(features, label.shape[-2:]), label,
                                        dataset.num_classes)
            if total is None:
                total = values.new_zeros(values.shape[1:])
                images = values.new_zeros(values.shape[1])
            total += values.sum(0)
            images += present.sum(0)
    finally:
        model.train(was_training)
    if total is None:
        raise IfssError("the few-shot training set is empty; nothing to imprint")
    return total, images


def check_new_classes_present(images: torch.Tensor, data, step: int) -> None:
    """Every class of `step` needs at least one few-shot image with pixels of it."""
    sl = _classifier_slice(data.task, step)
    names = data.task.class_names(step)
    missing = [names[c] for c in range(sl.start, sl.stop) if images[c] == 0]
    if missing:
        raise IfssError(
            f"no few-shot image of step {step} has pixels of class(es) {', '.join(missing)}, so "
            "their weights cannot be imprinted; check the few-shot split (nshot, ishot)"
        )


def _classifier_slice(task, step: int) -> slice:
    counts = task.classes_per_step(step)
    return slice(sum(counts[:-1]), sum(counts))


@torch.no_grad()
def set_step_weights(classifier: nn.Module, step: int, weights: torch.Tensor) -> None:
    """Write n x D weights into classifier step `step` (n classes); zero its bias if it has one."""
    conv = classifier.convs[step]
    conv.weight.copy_(weights.view_as(conv.weight).to(conv.weight.dtype))
    if getattr(conv, "bias", None) is not None:
        conv.bias.zero_()


def imprint_new_classes(model: nn.Module, data, step: int, device: torch.device) -> torch.Tensor:
    """WI: set the cosine weights of step `step` to the imprinted weights of its classes (in
    task.new_classes(step) order, which is their label order); returns those weights."""
    total, images = class_statistics(model, data.train_plain, wi_image_prototypes, device)
    check_new_classes_present(images, data, step)
    weights = wi_weights(total[_classifier_slice(data.task, step)])
    set_step_weights(model.classifier, step, weights)
    return weights


# --- methods ----------------------------------------------------------------------------------

class WeightImprinting(Method):
    """WI: starts from the COS step-0 model; the new step's cosine weights are imprinted from the
    few-shot images (`imprint_new_classes`); no gradient step."""

    trains = False

    def prepare(self, model, old_model, data) -> None:
        super().prepare(model, old_model, data)
        imprint_new_classes(model, data, self.step, self.runtime.device)


class AdaptiveMaskedProxies(Method):
    """AMP (Siam et al. 2019): starts from the FT step-0 model (linear classifier); no gradient
    step. Every class present in the few-shot set (background and older classes included) gets
    proto_c = normalize(mean over images of the image's mean feature of c); new classes take
    w = proto, older ones w = amp_alpha * w + (1 - amp_alpha) * proto; imprinted biases are 0.

    The original makes 5 passes over the unaugmented few-shot set and averages over all of them;
    the passes see the same images, so the average equals that of one pass, which is what this
    does. No gradient step.
    """

    Params = AMPParams
    trains = False

    def prepare(self, model, old_model, data) -> None:
        super().prepare(model, old_model, data)
        total, images = class_statistics(model, data.train_plain, amp_image_means,
                                          self.runtime.device)
        check_new_classes_present(images, data, self.step)
        imprint_amp(model.classifier, amp_proxies(total, images), images > 0, self.step,
                    self.params.amp_alpha)


@torch.no_grad()
def imprint_amp(classifier: nn.Module, proxies: torch.Tensor, present: torch.Tensor, step: int,
                alpha: float) -> None:
    """Apply AMP to an incremental linear classifier: proxies C x D, present C bool."""
    for k in range(classifier.num_steps):
        sl = classifier.step_slice(k)
        conv = classifier.convs[k]
        weight = conv.weight.view(conv.weight.shape[0], -1)
        proto = proxies[sl].to(weight)
        new = proto if k == step else amp_mix(weight, proto, alpha)
        mask = present[sl].to(weight.device)
        weight[mask] = new[mask]
        if conv.bias is not None:
            conv.bias[mask] = 0.0
