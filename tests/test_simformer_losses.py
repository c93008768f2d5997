"""SimFormer's matching and proposal losses (ifss.simformer.matching, ifss.simformer.mask_losses)
against hand computations of the formulas of research/wilson_sdr_gfss_simformer.md §D.1 and §G."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from ifss.simformer.mask_losses import (IGNORE_LOGIT, classification_loss, complementary_loss,
                                        complementary_prediction, complementary_target,
                                        deep_supervision, dice_loss, mask_losses,
                                        sigmoid_focal_loss, simformer_losses)
from ifss.simformer.matching import hungarian_match, match_cost

NAN = float("nan")


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def focal_pixel(x: float, t: int) -> float:
    """α_t (1 − p_t)^γ · CE with α 0.25, γ 2 for one pixel."""
    p = sig(x)
    if t == 1:
        return 0.25 * (1 - p) ** 2 * -math.log(p)
    return 0.75 * p ** 2 * -math.log(1 - p)


def focal_pair(xs: list[float], ts: list[int]) -> float:
    return sum(focal_pixel(x, t) for x, t in zip(xs, ts)) / len(xs)


def dice_pair(xs: list[float], ts: list[int]) -> float:
    s = [sig(x) for x in xs]
    return 1 - (2 * sum(a * b for a, b in zip(s, ts)) + 1) / (sum(s) + sum(ts) + 1)


def test_cost_matrix_of_two_proposals_and_a_masked_and_a_maskless_target():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]])  # C = 2, + no object
    masks = torch.tensor([[[1.5, -0.5]], [[-1.0, 2.0]]])  # Q = 2, 1 x 2
    classes = torch.tensor([1, 0])  # target 0 novel (no mask), target 1 base
    # target 1's mask at 2 x 4; nearest down to 1 x 2 reads row 0, columns 0 and 2 -> [1, 0]
    target_masks = torch.stack([torch.full((2, 4), NAN),
                                torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])])
    cost = match_cost(logits, masks, classes, target_masks, torch.tensor([False, True]))
    expected = []
    for q, (row, xs) in enumerate(zip(logits.tolist(), [[1.5, -0.5], [-1.0, 2.0]])):
        p = softmax(row)
        expected.append([-p[1],
                         -p[0] + 20 * focal_pair(xs, [1, 0]) + dice_pair(xs, [1, 0])])
    assert cost.flatten().tolist() == pytest.approx(sum(expected, []), rel=1e-5)
    weighted = match_cost(logits, masks, classes, target_masks, torch.tensor([False, True]),
                          cost_class=2.0, cost_focal=0.0, cost_dice=3.0)
    p0 = softmax(logits[0].tolist())
    assert weighted[0, 1].item() == pytest.approx(-2 * p0[0] + 3 * dice_pair([1.5, -0.5], [1, 0]),
                                                  rel=1e-5)


def test_assignment_is_the_optimum_not_the_greedy_choice():
    # greedy takes (0, a) = -0.5 first, then (1, b) = -0.05: total -0.55;
    # the optimum is (0, b) + (1, a) = -0.45 - 0.45 = -0.9
    probs = torch.tensor([[[0.5, 0.45, 0.05], [0.45, 0.05, 0.5]]])
    (src, tgt), = hungarian_match(probs.log(), torch.zeros(1, 2, 1, 1), [torch.tensor([0, 1])],
                                  [None], [torch.tensor([False, False])])
    assert src.tolist() == [0, 1]
    assert tgt.tolist() == [1, 0]


def test_target_order_does_not_change_the_matching():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 5, 6, generator=g)
    masks = torch.randn(1, 5, 4, 4, generator=g)
    classes = torch.tensor([0, 3, 4])  # base, base, novel
    gt = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    gt[2] = NAN
    has = torch.tensor([True, True, False])
    perm = torch.tensor([2, 1, 0])  # the mask-less target first
    cost_a = match_cost(logits[0], masks[0], classes, gt, has)
    cost_b = match_cost(logits[0], masks[0], classes[perm], gt[perm], has[perm])
    assert torch.allclose(cost_b, cost_a[:, perm])
    (src_a, tgt_a), = hungarian_match(logits, masks, [classes], [gt], [has])
    (src_b, tgt_b), = hungarian_match(logits, masks, [classes[perm]], [gt[perm]], [has[perm]])
    pairs_a = {(int(s), int(t)) for s, t in zip(src_a, tgt_a)}
    pairs_b = {(int(s), int(perm[t])) for s, t in zip(src_b, tgt_b)}
    assert pairs_a == pairs_b and len(pairs_a) == 3


def test_focal_and_dice_by_hand():
    logits = torch.tensor([[[0.5, -1.0]], [[2.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    focal = (focal_pair([0.5, -1.0], [1, 0]) + focal_pair([2.0, 0.0], [0, 1])) / 4
    dice = (dice_pair([0.5, -1.0], [1, 0]) + dice_pair([2.0, 0.0], [0, 1])) / 4
    assert sigmoid_focal_loss(logits, targets, 4).item() == pytest.approx(focal, rel=1e-5)
    assert dice_loss(logits, targets, 4).item() == pytest.approx(dice, rel=1e-5)


def test_mask_losses_use_matched_masked_pairs_over_the_masks_in_the_batch():
    pred = torch.tensor([[[[0.3, -0.7]], [[1.2, 0.4]], [[9.0, 9.0]]],
                         [[[9.0, 9.0]], [[9.0, 9.0]], [[-0.6, 1.5]]]])  # N 2, Q 3, 1 x 2
    target_masks = [torch.tensor([[[1.0, 0.0]], [[NAN, NAN]]]), torch.tensor([[[0.0, 1.0]]])]
    has = [torch.tensor([True, False]), torch.tensor([True])]
    matches = [(torch.tensor([0, 1]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    out = mask_losses(pred, matches, target_masks, has)
    focal = (focal_pair([1.2, 0.4], [1, 0]) + focal_pair([-0.6, 1.5], [0, 1])) / 2
    dice = (dice_pair([1.2, 0.4], [1, 0]) + dice_pair([-0.6, 1.5], [0, 1])) / 2
    assert out["mask_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert out["mask_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_classification_loss_weighs_no_object_by_a_tenth():
    logits = torch.tensor([[[0.3, -0.2], [1.0, 0.5]]])  # N 1, Q 2, C 1 + no object
    matches = [(torch.tensor([1]), torch.tensor([0]))]

    def ce(row, y):
        return math.log(sum(math.exp(v) for v in row)) - row[y]

    expected = (1.0 * ce([1.0, 0.5], 0) + 0.1 * ce([0.3, -0.2], 1)) / 1.1
    loss = classification_loss(logits, matches, [torch.tensor([0])])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_complementary_target_is_the_unpadded_complement_of_the_base_masks():
    base = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])
    padding = torch.tensor([[0, 0], [0, 1]], dtype=torch.bool)
    assert complementary_target(base, padding).tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert complementary_target(torch.zeros(0, 2, 2), padding).tolist() == [[1, 1], [1, 0]]


def test_constant_logit_wins_where_the_novel_proposals_are_lower():
    assert sig(IGNORE_LOGIT) == pytest.approx(0.05, abs=1e-4)
    pred = complementary_prediction(torch.tensor([[[-5.0, 1.0]], [[-4.0, -3.0]]]))
    assert pred.flatten().tolist() == pytest.approx([IGNORE_LOGIT, 1.0])


def test_complementary_loss_by_hand_and_images_without_novel_targets_add_nothing():
    pred = torch.tensor([[[[-5.0, 1.0]], [[-4.0, -3.0]], [[3.0, 3.0]]],
                         [[[0.5, 0.5]], [[0.1, 0.2]], [[0.3, 0.4]]]], requires_grad=True)
    matches = [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])),
               (torch.tensor([1]), torch.tensor([0]))]
    novel = [torch.tensor([True, True, False]), torch.tensor([False])]
    base = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])]
    loss = complementary_loss(pred, matches, novel, base)
    xs, ts = [IGNORE_LOGIT, 1.0], [0, 1]  # target = 1 - base mask
    expected = 20 * focal_pair(xs, ts) + dice_pair(xs, ts)  # one contributing image
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    grad = pred.grad
    assert grad[0, 0, 0, 0] == 0 and grad[0, 0, 0, 1] != 0  # the constant wins at pixel 0
    assert grad[0, 1].abs().sum() == 0 and grad[0, 2].abs().sum() == 0
    assert grad[1].abs().sum() == 0  # the image without a novel target
    none = complementary_loss(pred, matches[1:], novel[1:], base[1:])
    assert none.item() == 0


def test_novel_targets_masks_are_never_read():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    masks = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    classes = [torch.tensor([2, 0, 3]), torch.tensor([1])]
    has = [torch.tensor([False, True, False]), torch.tensor([False])]
    gt = (torch.rand(3, 8, 8, generator=g) > 0.5).float()

    def with_novel_rows(fill):
        first = gt.clone()
        first[0] = fill
        first[2] = fill
        return [first, torch.full((1, 8, 8), fill)]

    padding = torch.zeros(2, 8, 8)
    padding[:, -1] = 1
    nan = simformer_losses(logits, masks, classes, with_novel_rows(NAN), has, padding)
    zero = simformer_losses(logits, masks, classes, with_novel_rows(0.0), has, padding)
    assert set(nan) == {"loss_cls", "loss_mask_focal", "loss_mask_dice", "loss_comp"}
    for name, value in nan.items():
        assert torch.isfinite(value), name
        assert value.item() == pytest.approx(zero[name].item(), rel=1e-6), name
    assert nan["loss_comp"].item() > 0
    sum(nan.values()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(masks.grad).all()


def test_an_image_without_targets_gives_no_object_everywhere():
    logits = torch.tensor([[[0.2, 1.0]]])
    out = simformer_losses(logits, torch.zeros(1, 1, 2, 2), [torch.tensor([], dtype=torch.long)],
                           [None], [torch.tensor([], dtype=torch.bool)])
    assert out["loss_cls"].item() == pytest.approx(math.log(math.exp(0.2) + math.e) - 1.0)
    assert out["loss_mask_focal"].item() == 0 and out["loss_comp"].item() == 0


def test_deep_supervision_sums_the_final_and_auxiliary_outputs_each_matched_alone():
    g = torch.Generator().manual_seed(1)
    outputs = [(torch.randn(1, 3, 4, generator=g), torch.randn(1, 3, 2, 2, generator=g))
               for _ in range(3)]
    gt = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[NAN, NAN], [NAN, NAN]]])
    targets = dict(target_classes=[torch.tensor([0, 2])], target_masks=[gt],
                   has_mask=[torch.tensor([True, False])])
    fn = functools.partial(simformer_losses, **targets)
    total = deep_supervision(outputs, fn)
    alone = [fn(logits, masks) for logits, masks in outputs]
    for name in total:
        assert total[name].item() == pytest.approx(sum(a[name].item() for a in alone), rel=1e-6)
    assert total["loss_cls"].item() != pytest.approx(alone[0]["loss_cls"].item())
