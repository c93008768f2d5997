"""SimFormer's pixel-pixel similarity transfer (ifss.simformer.similarity, ifss.simformer.pairs)
against hand computations of research/wilson_sdr_gfss_simformer.md §D.1 and §G."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from ifss.errors import IfssError
from ifss.simformer.pairs import epoch_pairs
from ifss.simformer.similarity import (BalancedBCE, SimNet, distill_cce, distill_ce, grid_pairs,
                                       novel_scores, same_probability, sample_at,
                                       sample_base_points, sample_distill_points,
                                       student_similarity)

BN_EPS = 1e-5


# ---------------------------------------------------------------- SimNet


def test_simnet_maps_pair_grids_to_two_logits_and_checks_its_width():
    net = SimNet(dim=4)
    assert net(torch.randn(5, 3, 8)).shape == (5, 3, 2)
    assert net(torch.randn(7, 8)).shape == (7, 2)
    assert net(torch.randn(0, 5, 8)).shape == (0, 5, 2)
    with pytest.raises(IfssError, match="dim"):
        net(torch.randn(7, 6))


def test_simnet_grids_equal_forward_on_the_built_grids():
    """The factorised first layer gives forward's logits (training-mode BatchNorm over all the
    pairs of all the grids at once) and the same gradients."""
    torch.manual_seed(0)
    embeddings = [(torch.randn(5, 4, requires_grad=True), torch.randn(3, 4)),
                  (torch.randn(2, 4), torch.randn(6, 4, requires_grad=True))]
    net = SimNet(dim=4)
    built = torch.cat([grid_pairs(a, b).reshape(-1, 8) for a, b in embeddings])
    expected = net(built)
    got = net.grids(embeddings)
    assert got.shape == (5 * 3 + 2 * 6, 2)
    assert torch.allclose(got, expected, atol=1e-5)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), embeddings[0][0])
    (g_got,) = torch.autograd.grad(got.square().sum(), embeddings[0][0])
    assert torch.allclose(g_got, g_expected, atol=1e-5)
    assert net.grids([]).shape == (0, 2)
    assert net.grids([(torch.zeros(0, 4), torch.randn(3, 4))]).shape == (0, 2)
    with pytest.raises(IfssError, match="dim"):
        net.grids([(torch.randn(2, 3), torch.randn(2, 3))])


def _zero(layer):
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)


def test_simnet_residual_identity_path_carries_the_first_layer():
    torch.manual_seed(0)
    net = SimNet(dim=3).eval()  # BatchNorm with running mean 0, var 1: x / sqrt(1 + eps)
    _zero(net.fc2)
    _zero(net.fc3)
    x = torch.randn(6, 6)
    h1 = torch.relu((x @ net.fc1.weight.t() + net.fc1.bias) / math.sqrt(1 + BN_EPS))
    expected = h1 @ net.head.weight.t() + net.head.bias
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(out, expected, atol=1e-6)
        # without the identity path the zeroed branches would leave only the head's bias
        assert not torch.allclose(out, net.head.bias.expand(6, 2), atol=1e-3)
        # a branch that outputs relu(1 / sqrt(1 + eps)) is added to h1
        net.fc2.bias.fill_(1.0)
        shifted = (h1 + 1 / math.sqrt(1 + BN_EPS)) @ net.head.weight.t() + net.head.bias
        assert torch.allclose(net(x), shifted, atol=1e-6)


def test_same_probability_grid_pairs_and_sample_at_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    assert same_probability(logits).tolist() == pytest.approx([0.75, 0.25])
    a, b = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0], [30.0]])
    grid = grid_pairs(a, b)
    assert grid.shape == (2, 3, 2)
    assert grid[1, 2].tolist() == [2.0, 30.0] and grid[0, 1].tolist() == [1.0, 20.0]
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    points = torch.tensor([[0, 1], [1, 0]])
    assert sample_at(maps, points, (2, 2)).tolist() == [[1.0], [2.0]]
    # a 3 x 3 label grid over a 2 x 2 map: the centre is the mean, the corner the corner
    assert sample_at(maps, torch.tensor([[1, 1], [2, 2]]), (3, 3))[:, 0].tolist() == \
        pytest.approx([1.5, 3.0])


def test_novel_scores_sum_class_probability_times_mask_sigmoid():
    class_logits = torch.zeros(1, 2, 3)  # softmax 1/3 for class 0 (base), 1 (novel), no-object
    mask_logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # σ = 0.5 and 0.75
    scores = novel_scores(class_logits, mask_logits, [1])
    assert scores.shape == (1, 1, 1, 1)
    assert scores.item() == pytest.approx(0.5 / 3 + 0.75 / 3)


# ---------------------------------------------------------------- points


def _labels_pair():
    a = torch.full((10, 10), 255, dtype=torch.long)
    a[0:4] = 1        # 40 pixels of the common class
    a[4:6] = 2        # 20 pixels of a base class only a has
    a[8:10] = 7       # a class outside the base set (novel left unvoided): never sampled
    b = torch.full((10, 10), 255, dtype=torch.long)
    b[0:2] = 1        # 20 pixels of the common class (fewer than 80: drawn with replacement)
    b[2:5] = 3
    return a, b


def test_base_points_split_80_20_and_never_touch_void_or_novel():
    a, b = _labels_pair()
    pa, pb, targets = sample_base_points(a, b, {1, 2, 3}, n=100,
                                         generator=torch.Generator().manual_seed(0))
    assert pa.shape == pb.shape == (100, 2)
    class_a, class_b = a[pa[:, 0], pa[:, 1]], b[pb[:, 0], pb[:, 1]]
    assert (class_a[:80] == 1).all() and (class_a[80:] == 2).all()
    assert (class_b[:80] == 1).all() and (class_b[80:] == 3).all()
    assert targets.shape == (100, 100)
    assert (targets[:80, :80] == 1).all() and targets.sum().item() == 80 * 80
    small = sample_base_points(a, b, {1, 2, 3}, n=10, generator=torch.Generator().manual_seed(1))
    assert (a[small[0][:, 0], small[0][:, 1]] == 1).sum().item() == 8


def test_base_points_without_a_common_class_or_with_only_one_class():
    a, _ = _labels_pair()
    only3 = torch.full((10, 10), 3, dtype=torch.long)
    pa, pb, targets = sample_base_points(a, only3, {1, 2, 3}, n=50,
                                         generator=torch.Generator().manual_seed(0))
    class_a = a[pa[:, 0], pa[:, 1]]
    assert set(class_a.tolist()) <= {1, 2} and targets.sum().item() == 0
    only1 = torch.ones(6, 6, dtype=torch.long)
    pa, pb, targets = sample_base_points(only1, only1, {1, 2, 3}, n=50,
                                         generator=torch.Generator().manual_seed(0))
    assert (targets == 1).all() and pa.shape == (50, 2)
    void = torch.full((10, 10), 255, dtype=torch.long)
    pa, pb, targets = sample_base_points(a, void, {1, 2, 3}, n=50)
    assert pb.shape == (0, 2) and targets.shape == (50, 0)


def test_base_points_are_reproducible_under_a_generator():
    a, b = _labels_pair()
    first = sample_base_points(a, b, {1, 2, 3}, generator=torch.Generator().manual_seed(5))
    again = sample_base_points(a, b, {1, 2, 3}, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_distill_points_come_from_the_novel_or_void_region():
    big = torch.zeros(20, 20, dtype=torch.bool)
    big[:10] = True  # 200 pixels: 100 distinct points
    tiny = torch.zeros(20, 20, dtype=torch.bool)
    tiny[5, 5:8] = True  # 3 pixels: points repeat
    pa, pb = sample_distill_points(big, tiny, n=100, generator=torch.Generator().manual_seed(0))
    assert pa.shape == pb.shape == (100, 2)
    assert big[pa[:, 0], pa[:, 1]].all() and len({tuple(p) for p in pa.tolist()}) == 100
    assert tiny[pb[:, 0], pb[:, 1]].all()
    empty, _ = sample_distill_points(torch.zeros(4, 4, dtype=torch.bool), tiny, n=10)
    assert empty.shape == (0, 2)


# ---------------------------------------------------------------- balanced BCE


def test_balanced_bce_weights_and_loss_by_hand_and_the_window_forgets():
    loss_fn = BalancedBCE(window=2)
    l3 = math.log(3.0)
    logits = torch.tensor([[0.0, l3], [0.0, 0.0], [0.0, 0.0], [l3, 0.0]])
    loss = loss_fn(logits, torch.tensor([1, 1, 1, 0]))
    assert loss_fn.weights() == pytest.approx((1 / 4, 3 / 4))  # P = 3, N = 1
    # -(1/4)·log(3/4), -(1/4)·log(1/2) twice, -(3/4)·log(3/4); mean of 4
    expected = (-0.25 * math.log(0.75) + 0.5 * math.log(2) - 0.75 * math.log(0.75)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss_fn(torch.zeros(6, 2), torch.tensor([1, 0, 0, 0, 0, 0]))
    assert loss_fn.weights() == pytest.approx((6 / 10, 4 / 10))  # P = 3 + 1, N = 1 + 5
    loss = loss_fn(torch.zeros(2, 2), torch.tensor([0, 0]))
    assert loss_fn.weights() == pytest.approx((7 / 8, 1 / 8))  # first batch gone: P 1, N 7
    assert loss.item() == pytest.approx(math.log(2) / 8, rel=1e-6)


def test_balanced_bce_state_round_trip_through_a_weights_only_checkpoint():
    loss_fn = BalancedBCE(window=3)
    loss_fn(torch.zeros(4, 2), torch.tensor([1, 1, 1, 0]))
    loss_fn(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
    buffer = io.BytesIO()
    torch.save(loss_fn.state_dict(), buffer)
    buffer.seek(0)
    restored = BalancedBCE(window=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.weights() == pytest.approx((3 / 7, 4 / 7))  # P = 3 + 1, N = 1 + 2
    assert loss_fn.weights() == pytest.approx((3 / 7, 4 / 7))
    logits, targets = torch.randn(5, 2), torch.tensor([1, 0, 1, 0, 0])
    assert restored(logits, targets).item() == pytest.approx(loss_fn(logits, targets).item())
    with pytest.raises(IfssError, match="window"):
        BalancedBCE(window=4).load_state_dict(loss_fn.state_dict())


def test_simnet_trains_on_sampled_base_points_end_to_end():
    torch.manual_seed(0)
    a, b = _labels_pair()
    emb = torch.randn(2, 4, 5, 5, requires_grad=True)  # mask features at half the label size
    pa, pb, targets = sample_base_points(a, b, {1, 2, 3}, n=20,
                                         generator=torch.Generator().manual_seed(0))
    net = SimNet(dim=4)
    logits = net(grid_pairs(sample_at(emb[0], pa, (10, 10)), sample_at(emb[1], pb, (10, 10))))
    loss = BalancedBCE()(logits, targets)
    loss.backward()
    assert logits.shape == (20, 20, 2) and net.fc1.weight.grad.abs().sum() > 0
    assert emb.grad.abs().sum() > 0


# ---------------------------------------------------------------- student and distillation


def test_student_similarity_is_relu_cosine_per_pair():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [-1.0, 0.0], [3.0, 0.0]])
    r = 1 / math.sqrt(2)
    expected = [[0.0, 0.0, 1.0],   # cos -1 -> 0
                [r, 0.0, r]]       # cos -1/√2 -> 0
    assert student_similarity(a, b).tolist() == [pytest.approx(row) for row in expected]


def test_distill_ce_by_hand_with_a_detached_teacher():
    s = torch.tensor([0.8, 0.3], requires_grad=True)
    t = torch.tensor([1.0, 0.25], requires_grad=True)
    loss = distill_ce(s, t)
    expected = (-math.log(0.8) - (0.25 * math.log(0.3) + 0.75 * math.log(0.7))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_distill_cce_by_hand_and_negative():
    s = torch.tensor([0.8, 0.3, 0.5])
    t = torch.tensor([1.0, 0.25, 0.5])
    # -0.5·log 1.8, -0.25·log(2 - 0.3), and 0 where t = 0.5
    expected = (-0.5 * math.log(1.8) - 0.25 * math.log(1.7)) / 3
    value = distill_cce(s, t).item()
    assert value == pytest.approx(expected, rel=1e-6) and value < 0
    assert distill_cce(torch.tensor([1.0]), torch.tensor([1.0])).item() == \
        pytest.approx(-0.5 * math.log(2))


# ---------------------------------------------------------------- pairs

BASE, NOVEL = {0, 1, 2, 3}, {10, 11, 12, 13}
LABELS = {
    "a": {0, 10, 11},
    "b": {0, 10},       # shares exactly {10} with a
    "c": {1, 10, 11},   # shares {10, 11} with a: never a's partner on a novel class
    "d": {2, 11},       # shares exactly {11} with a
    "e": {1, 11, 12},   # shares exactly {11} with a; 12 is in no other image
    "f": {2},           # no novel class: falls back to d (base class 2)
    "g": {1, 13},       # 13 in no other image: falls back to c, e or i (base class 1)
    "h": {0, 10},
    "i": {1, 10},       # class 10 in 5 images, class 11 in 4: 11 is the rarer
}


def _check_pair_rules(pairs):
    assert [i for i, _ in pairs] == list(LABELS)
    for image, partner in pairs:
        assert partner != image
        novel = LABELS[image] & NOVEL
        if image in "abcdehi":  # images with a partner sharing exactly one novel class
            assert len(novel & LABELS[partner]) == 1, (image, partner)
    partners = dict(pairs)
    assert partners["f"] == "d" and partners["g"] in {"c", "e", "i"}
    assert partners["e"] in {"a", "c", "d"}


def test_pairs_share_exactly_one_novel_class_and_random_class_otherwise():
    seen_a = set()
    for seed in range(40):
        pairs = epoch_pairs(LABELS, BASE, NOVEL, seed, rare_prob=0.0)
        _check_pair_rules(pairs)
        seen_a.add(dict(pairs)["a"])
    assert seen_a & {"b", "h", "i"} and seen_a & {"d", "e"}  # both classes get drawn
    assert not seen_a & {"c"}


def test_pairs_rare_prob_one_always_pairs_on_the_rarest_class():
    for seed in range(20):
        pairs = dict(epoch_pairs(LABELS, BASE, NOVEL, seed, rare_prob=1.0))
        _check_pair_rules(list(pairs.items()))
        assert pairs["a"] in {"d", "e"} and pairs["c"] in {"d", "e"}  # class 11 (4 images)


def test_pairs_are_deterministic_under_a_numpy_seed():
    first = epoch_pairs(LABELS, BASE, NOVEL, 3)
    assert epoch_pairs(LABELS, BASE, NOVEL, np.random.default_rng(3)) == first
    assert any(epoch_pairs(LABELS, BASE, NOVEL, seed) != first for seed in range(4, 10))


def test_pairs_name_an_image_without_any_partner_and_reject_overlapping_sets():
    with pytest.raises(IfssError, match="'lonely'"):
        epoch_pairs({**LABELS, "lonely": {3}}, BASE, NOVEL, 0)
    with pytest.raises(IfssError, match="both base and novel"):
        epoch_pairs(LABELS, BASE | {10}, NOVEL, 0)
