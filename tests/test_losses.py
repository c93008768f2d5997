"""Each loss against a hand computation from its formula (research/pifs_mclos_mib.md §2)."""
import math

import pytest
import torch

from ifss import losses

# one image, one pixel: logits as plain lists, so the arithmetic below can be followed by hand
NEW = torch.tensor([1.0, 2.0, 0.5, -1.0]).view(1, 4, 1, 1)  # bkg, old 1, old 2, new 3
OLD = torch.tensor([0.5, 1.5, 0.0]).view(1, 3, 1, 1)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_segmentation_ce_ignores_void_and_handles_all_void():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    assert losses.segmentation_ce(logits, labels).item() == pytest.approx(-math.log(softmax([1, 0])[0]))
    void = torch.full((1, 1, 2), 255)
    assert losses.segmentation_ce(logits, void).item() == 0.0


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_knowledge_distillation(T):
    q = softmax([0.5 / T, 1.5 / T, 0.0 / T])  # the temperature softens the teacher only
    p = softmax([1.0, 2.0, 0.5])  # new logits narrowed to the 3 old channels, not divided
    expected = -sum(qc * math.log(pc) for qc, pc in zip(q, p)) / 3 * T * T
    assert losses.knowledge_distillation(NEW, OLD, T).item() == pytest.approx(expected, rel=1e-5)
    if T == 2.0:  # by hand: q = softmax(.25, .75, 0), p = softmax(1, 2, .5)
        assert expected == pytest.approx(-(0.2918 * math.log(0.2312) + 0.4810 * math.log(0.6285)
                                           + 0.2272 * math.log(0.1402)) / 3 * 4, rel=1e-3)


def test_knowledge_distillation_mask():
    new = torch.cat([NEW, torch.zeros_like(NEW)], dim=3)
    old = torch.cat([OLD, torch.zeros_like(OLD)], dim=3)
    mask = torch.tensor([[[True, False]]])
    assert losses.knowledge_distillation(new, old, mask=mask).item() == pytest.approx(
        losses.knowledge_distillation(NEW, OLD).item())


def test_unbiased_cross_entropy():
    z = [1.0, 2.0, 0.5, -1.0]
    # 3 old classes (bkg, 1, 2), one new class (index 3)
    log_p0 = lse(z[:3]) - lse(z)
    log_p3 = z[3] - lse(z)
    for label, expected in [(0, -log_p0), (1, -log_p0), (2, -log_p0), (3, -log_p3)]:
        got = losses.unbiased_cross_entropy(NEW, torch.tensor([[[label]]]), num_old=3)
        assert got.item() == pytest.approx(expected, rel=1e-5)
    two = torch.cat([NEW, NEW], dim=3)
    got = losses.unbiased_cross_entropy(two, torch.tensor([[[3, 255]]]), num_old=3)
    assert got.item() == pytest.approx(-log_p3, rel=1e-5)
    # every pixel void: zero, with a zero (not NaN) gradient
    logits = two.clone().requires_grad_(True)
    got = losses.unbiased_cross_entropy(logits, torch.tensor([[[255, 255]]]), num_old=3)
    got.backward()
    assert got.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
    # a log-softmax handed in gives the same value
    log_p = torch.log_softmax(two, dim=1)
    assert losses.unbiased_cross_entropy(two, torch.tensor([[[3, 0]]]), 3, log_p).item() == \
        pytest.approx((-log_p3 - log_p0) / 2, rel=1e-5)


def test_unbiased_distillation():
    z = [1.0, 2.0, 0.5, -1.0]
    q = softmax([0.5, 1.5, 0.0])
    log_p0 = lse([z[0], z[3]]) - lse(z)  # background absorbs the new class
    log_p1, log_p2 = z[1] - lse(z), z[2] - lse(z)
    expected = -(q[0] * log_p0 + q[1] * log_p1 + q[2] * log_p2) / 3
    assert losses.unbiased_distillation(NEW, OLD).item() == pytest.approx(expected, rel=1e-5)


def test_feature_distillation():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert losses.feature_distillation(a, b).item() == pytest.approx((1 + 4) / 2)


def test_mib_initialise():
    weight = torch.arange(12.0).view(4, 3, 1, 1)
    bias = torch.tensor([0.5, 1.0, 2.0, 3.0])
    losses.mib_initialise(weight, bias, slice(2, 4))
    assert torch.equal(weight[2], weight[0]) and torch.equal(weight[3], weight[0])
    assert weight[1, 0, 0, 0] == 3.0  # old classes untouched
    expected = 0.5 - math.log(3)
    assert bias.tolist() == pytest.approx([expected, 1.0, expected, expected])
