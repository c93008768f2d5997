"""WILSON's losses (ifss.weak_losses) against hand computations of the formulas of
research/wilson_sdr_gfss_simformer.md §A.4."""
from __future__ import annotations

import math

import pytest
import torch

from ifss.errors import IfssError
from ifss.weak_losses import (classification_loss, ngwp_scores, one_hot_bce, prior_loss,
                              pseudo_class_gate, soft_labels, weak_segmentation_loss,
                              weak_target)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bce_logit(x: float, t: float) -> float:
    """BCE-with-logits of one element: -t log σ(x) - (1 - t) log(1 - σ(x))."""
    return t * softplus(-x) + (1 - t) * softplus(x)


def test_one_hot_bce_sums_classes_and_skips_void_pixels():
    logits = torch.tensor([[[[1.0, -2.0, 0.5]], [[0.0, 3.0, -1.0]], [[-0.5, 0.25, 2.0]]]])
    labels = torch.tensor([[[0, 255, 2]]])
    pixel0 = bce_logit(1.0, 1) + bce_logit(0.0, 0) + bce_logit(-0.5, 0)
    pixel2 = bce_logit(0.5, 0) + bce_logit(-1.0, 0) + bce_logit(2.0, 1)
    assert one_hot_bce(logits, labels).item() == pytest.approx((pixel0 + pixel2) / 2, rel=1e-6)


def test_one_hot_bce_refuses_a_label_past_the_classes():
    with pytest.raises(IfssError, match="exceeds the 2 classes"):
        one_hot_bce(torch.zeros(1, 2, 1, 1), torch.tensor([[[2]]]))


def test_ngwp_scores_match_the_formula():
    z = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # N=1, C=2, 1x2 pixels
    m = [[math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)],  # class 0 at pixels 0, 1
         [1 / (math.exp(2) + 1), math.e / (1 + math.e)]]  # class 1
    zs = [[2.0, 0.0], [0.0, 1.0]]
    expected = []
    for c in range(2):
        pooled = sum(mi * zi for mi, zi in zip(m[c], zs[c])) / (1 + sum(m[c]))
        mean = sum(m[c]) / 2
        expected.append(pooled + (1 - mean) ** 3 * math.log(0.01 + mean))
    assert ngwp_scores(z).flatten().tolist() == pytest.approx(expected, rel=1e-6)
    # other focal settings reach the penalty
    g1 = ngwp_scores(z, gamma=1.0, lam=0.5)[0, 1].item()
    mean = sum(m[1]) / 2
    pooled = sum(mi * zi for mi, zi in zip(m[1], zs[1])) / (1 + sum(m[1]))
    assert g1 == pytest.approx(pooled + (1 - mean) * math.log(0.5 + mean), rel=1e-6)


def test_classification_and_prior_losses_are_mean_bce():
    scores = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = (bce_logit(1, 1) + bce_logit(-1, 0) + bce_logit(0.5, 0) + bce_logit(2, 1)) / 4
    assert classification_loss(scores, labels).item() == pytest.approx(expected, rel=1e-6)
    z = torch.tensor([[[[0.3]], [[-0.7]]]])
    old = torch.tensor([[[[2.0]], [[-1.0]]]])
    sig = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))]
    expected = (bce_logit(0.3, sig[0]) + bce_logit(-0.7, sig[1])) / 2
    assert prior_loss(z, old).item() == pytest.approx(expected, rel=1e-6)


def test_soft_labels_mix_the_argmax_one_hot_with_the_scores():
    m = torch.tensor([[[[0.7]], [[0.2]], [[0.1]]]])
    q = soft_labels(m, 0.5).flatten().tolist()
    assert q == pytest.approx([0.85, 0.1, 0.05])
    assert soft_labels(m, 1.0).flatten().tolist() == [1.0, 0.0, 0.0]  # hard labels
    assert soft_labels(m, 0.0).flatten().tolist() == pytest.approx([0.7, 0.2, 0.1])


def test_weak_target_takes_old_classes_from_the_old_model_and_background_as_the_minimum():
    old_probs = torch.tensor([[[[0.6]], [[0.3]], [[0.9]], [[0.8]]]])  # channel 3 is not read
    q = torch.tensor([[[[0.4]], [[0.05]], [[0.15]], [[0.4]]]])
    target = weak_target(old_probs, q, num_old=3).flatten().tolist()
    assert target == pytest.approx([0.4, 0.3, 0.9, 0.4])
    q[0, 0] = 0.9
    assert weak_target(old_probs, q, 3)[0, 0].item() == pytest.approx(0.6)


def test_gate_opens_only_when_the_winning_new_classes_are_the_labelled_ones():
    # 2 images, classes: background, 1 old, 2 and 3 new; pixels of one row
    masks = torch.zeros(2, 4, 1, 3)
    masks[0, 2, 0, 0] = masks[0, 3, 0, 1] = masks[0, 0, 0, 2] = 1  # new 2 and 3 both win
    masks[1, 2, 0, :] = 1  # only new class 2 wins
    labels = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # both images labelled with 2 and 3
    assert pseudo_class_gate(masks, labels, num_old=2).tolist() == [1.0, 0.0]
    assert pseudo_class_gate(masks, torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 2).tolist() \
        == [1.0, 1.0]


def test_weak_segmentation_loss_sums_classes_averages_pixels_and_weights_images():
    logits = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]], [[[3.0, 3.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0]], [[0.5, 1.0]]], [[[0.0, 0.0]], [[1.0, 1.0]]]])
    image0 = ((bce_logit(1, 1) + bce_logit(0, 0.5)) + (bce_logit(-1, 0) + bce_logit(2, 1))) / 2
    image1 = bce_logit(3, 0) + bce_logit(0, 1)
    gate = torch.tensor([1.0, 0.0])
    assert weak_segmentation_loss(logits, target, gate).item() == \
        pytest.approx(image0 / 2, rel=1e-6)
    both = weak_segmentation_loss(logits, target, torch.ones(2)).item()
    assert both == pytest.approx((image0 + image1) / 2, rel=1e-6)
    with pytest.raises(IfssError, match="differ in shape"):
        weak_segmentation_loss(logits, target[:, :1], gate)
