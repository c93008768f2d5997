"""Episodic heads (ifss.episodic.heads) and scores (ifss.episodic.scores): every loss against a
hand computation, batched training against one episode at a time, one SGD step by hand, the
prediction's tie rule, IoU sums and the run summary."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ifss.episodic.heads import (HeadSettings, aggregated_binary_ce, background_distillation,
                                 binary_prediction, fit_heads, head_logits, weighted_ce)
from ifss.episodic.scores import EpisodeScores, over_runs
from ifss.errors import IfssError

V = 255


def lse(*values):
    return math.log(sum(math.exp(v) for v in values))


def logits_of(*pixels):
    """1 x 1 x C x 1 x P float64 logits from P pixels, each a tuple of C logits."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, 1, len(pixels[0]), 1, -1)


# --- losses by hand ---------------------------------------------------------------------------

def test_weighted_ce_by_hand():
    # episode 0: n0 = 2, n1 = 1 -> weights [1, 2]; the void pixel counts nowhere
    z0 = logits_of((0.0, 1.0), (1.0, 0.0), (0.0, 2.0), (5.0, -3.0))
    y0 = torch.tensor([[[[0, 0, 1, V]]]])
    l0 = [lse(0, 1) - 0, lse(1, 0) - 1, lse(0, 2) - 2]
    want0 = (l0[0] + l0[1] + 2 * l0[2]) / (1 + 1 + 2)
    # episode 1: no novel pixel (n1 = 0) -> weights [1, 1], a plain mean over the valid pixels
    z1 = logits_of((0.5, -0.5), (2.0, 1.0), (0.0, 0.0), (1.0, 3.0))
    y1 = torch.tensor([[[[0, V, 0, 0]]]])
    want1 = ((lse(0.5, -0.5) - 0.5) + (lse(0, 0) - 0) + (lse(1, 3) - 1)) / 3
    got = weighted_ce(torch.cat([z0, z1]), torch.cat([y0, y1]))
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx([want0, want1], abs=1e-12)
    # no label-0 pixel: w1 = n0 / n1 = 0, the weights sum to 0 -> loss 0 (not 0/0)
    assert weighted_ce(z0, torch.tensor([[[[1, 1, V, V]]]])).tolist() == [0.0]


def test_aggregated_binary_ce_by_hand():
    # two shots of one episode, counted together: n0 = 3, n1 = 2 -> weights [1, 1.5]
    shot0 = [(0.0, 1.0, 2.0), (1.0, -1.0, 0.5), (9.0, 9.0, 9.0)]
    shot1 = [(2.0, 0.0, -1.0), (0.0, 0.0, 1.0), (-1.0, 1.0, 0.0)]
    z = torch.cat([logits_of(*shot0), logits_of(*shot1)], dim=1)
    y = torch.tensor([[[[0, 1, V]], [[0, 1, 0]]]])

    def log_bg(p):  # log (P_0 + P_1): every channel but the last (the novel one)
        return lse(p[0], p[1]) - lse(*p)

    def log_fg(p):
        return p[2] - lse(*p)

    num = -(log_bg(shot0[0]) + 1.5 * log_fg(shot0[1])
            + log_bg(shot1[0]) + 1.5 * log_fg(shot1[1]) + log_bg(shot1[2]))
    want = num / (1 + 1.5 + 1 + 1.5 + 1)
    assert aggregated_binary_ce(z, y).tolist() == pytest.approx([want], abs=1e-12)


def test_background_distillation_by_hand():
    # B = 2: student background, two base classes, the novel class; the teacher has B + 1 = 3
    student = [(0.0, 1.0, -1.0, 2.0), (1.0, 0.0, 0.5, -2.0)]
    teacher = [(1.0, 0.0, 0.0), (0.0, 2.0, -1.0)]
    z, t = logits_of(*student), logits_of(*teacher)
    terms = []
    for s, te in zip(student, teacher):
        den = lse(*s)
        q = [math.exp(v - lse(*te)) for v in te]
        log_bg = lse(s[0], s[3]) - den  # old background = new background + novel
        terms.append((q[0] * log_bg + q[1] * (s[1] - den) + q[2] * (s[2] - den)) / 3)
    want = -sum(terms) / 2  # mean over every pixel, divided by B + 1 = 3 classes
    assert background_distillation(z, t).tolist() == pytest.approx([want], abs=1e-12)
    with pytest.raises(IfssError, match="teacher logits must be of shape"):
        background_distillation(z, logits_of(*student))


# --- training ---------------------------------------------------------------------------------

def _episodes(E=3, K=2, D=6, h=3, H=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(E, K, D, h, h, generator=gen)
    labels = (torch.rand(E, K, H, H, generator=gen) > 0.6).long()
    labels[:, :, 0, :2] = V
    if E > 1:
        labels[1][labels[1] == 1] = 0  # an episode without novel pixels: weights [1, 1]
    return features, labels, gen


@pytest.mark.parametrize("kind", ["binary", "generalized"])
def test_batched_equals_one_at_a_time(kind):
    B = 3
    features, labels, gen = _episodes()
    E, D = features.shape[0], features.shape[2]
    C = 2 if kind == "binary" else B + 2
    weight = torch.randn(E, C, D, generator=gen) * 0.1
    bias = torch.randn(E, C, generator=gen) * 0.1
    teacher = (torch.randn(B + 1, D, generator=gen) * 0.3, torch.randn(B + 1, generator=gen))
    settings = HeadSettings(kind, steps=20, gamma=10.0 if kind == "generalized" else 0.0)
    with torch.no_grad():  # as an evaluation calls it
        w_all, b_all = fit_heads(settings, features, labels, weight, bias, teacher)
    assert not torch.equal(w_all, weight)  # it trained, and the inputs are left unchanged
    for e in range(E):
        one = slice(e, e + 1)
        w_one, b_one = fit_heads(settings, features[one], labels[one], weight[one], bias[one],
                                 teacher)
        assert torch.allclose(w_all[one], w_one, atol=1e-6, rtol=0), (kind, e)
        assert torch.allclose(b_all[one], b_one, atol=1e-6, rtol=0), (kind, e)


def test_one_sgd_step_by_hand():
    features, labels, gen = _episodes(E=1, K=1)
    size = tuple(labels.shape[-2:])
    D, B, lr, gamma = features.shape[2], 2, 0.1, 4.0
    teacher_w, teacher_b = torch.randn(B + 1, D, generator=gen), torch.randn(B + 1, generator=gen)
    for kind, C in (("binary", 2), ("generalized", B + 2)):
        w0 = torch.randn(1, C, D, generator=gen)
        b0 = torch.randn(1, C, generator=gen)
        w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        logits = head_logits(w, b, features, size)
        if kind == "binary":
            loss = weighted_ce(logits, labels)
        else:
            teacher_logits = head_logits(teacher_w[None], teacher_b[None], features, size)
            loss = aggregated_binary_ce(logits, labels) + gamma * background_distillation(
                logits, teacher_logits)
        gw, gb = torch.autograd.grad(loss.sum(), [w, b])
        got_w, got_b = fit_heads(HeadSettings(kind, steps=1, lr=lr, gamma=gamma), features,
                                 labels, w0, b0, (teacher_w, teacher_b))
        assert torch.allclose(got_w, w0 - lr * gw, atol=1e-7, rtol=0), kind
        assert torch.allclose(got_b, b0 - lr * gb, atol=1e-7, rtol=0), kind
        assert gw.abs().max() > 1e-3  # the step moved the head
    with torch.inference_mode():  # callable from an inference-mode evaluation too
        again = fit_heads(HeadSettings(kind, steps=1, lr=lr, gamma=gamma), features.clone(),
                          labels, w0, b0, (teacher_w, teacher_b))
    assert torch.equal(again[0], got_w) and torch.equal(again[1], got_b)
    # no bias: stays None; zero steps: the start values
    w, b = fit_heads(HeadSettings("binary", steps=0), features, labels, w0[:, :2], None)
    assert b is None and torch.equal(w, w0[:, :2])


def test_one_step_with_saturated_logits():
    """Logits tens apart (the novel channel dominating background pixels and the reverse): the
    step still follows autograd of the losses, in float64, to 1e-9."""
    features, labels, gen = _episodes(E=2, K=1, seed=1)
    features = features.double()
    size = tuple(labels.shape[-2:])
    D, B, gamma = features.shape[2], 3, 10.0
    teacher = (torch.randn(B + 1, D, generator=gen).double(),
               torch.randn(B + 1, generator=gen).double())
    w0 = torch.randn(2, B + 2, D, generator=gen).double() * 30
    b0 = torch.randn(2, B + 2, generator=gen).double() * 30
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    logits = head_logits(w, b, features, size)
    teacher_logits = head_logits(teacher[0].expand(2, -1, -1), teacher[1].expand(2, -1),
                                 features, size)
    assert logits.std() > 20
    loss = aggregated_binary_ce(logits, labels) + gamma * background_distillation(
        logits, teacher_logits)
    gw, gb = torch.autograd.grad(loss.sum(), [w, b])
    got_w, got_b = fit_heads(HeadSettings("generalized", steps=1, gamma=gamma), features,
                             labels, w0, b0, teacher)
    assert torch.isfinite(got_w).all()
    assert torch.allclose(got_w, w0 - 0.1 * gw, atol=1e-9, rtol=0)
    assert torch.allclose(got_b, b0 - 0.1 * gb, atol=1e-9, rtol=0)


def test_head_logits_is_a_1x1_conv_then_bilinear_upsampling():
    features, _, gen = _episodes(E=2, K=3, D=5, h=4)
    weight, bias = torch.randn(2, 4, 5, generator=gen), torch.randn(2, 4, generator=gen)
    got = head_logits(weight, bias, features, (10, 7))
    assert got.shape == (2, 3, 4, 10, 7)
    for e in range(2):
        conv = F.conv2d(features[e], weight[e][:, :, None, None], bias[e])
        want = F.interpolate(conv, size=(10, 7), mode="bilinear", align_corners=False)
        assert torch.allclose(got[e], want, atol=1e-5), e


def test_settings_and_shapes_are_checked():
    with pytest.raises(IfssError, match="unknown head kind 'binry'"):
        HeadSettings("binry")
    features, labels, _ = _episodes(E=2, K=1, D=4)
    with pytest.raises(IfssError, match="binary head has 2 channels"):
        fit_heads(HeadSettings("binary"), features, labels, torch.zeros(2, 3, 4), None)
    with pytest.raises(IfssError, match="head weight must be"):
        fit_heads(HeadSettings("binary"), features, labels, torch.zeros(2, 2, 5), None)
    with pytest.raises(IfssError, match="needs the base classifier"):
        fit_heads(HeadSettings("generalized", gamma=1.0), features, labels,
                  torch.zeros(2, 4, 4), None)
    with pytest.raises(IfssError, match="must be 0, 1 or 255"):
        weighted_ce(torch.zeros(1, 1, 2, 1, 2), torch.tensor([[[[0, 2]]]]))


# --- prediction and scores --------------------------------------------------------------------

def test_binary_prediction_ties_and_per_episode_channel():
    # pixels: fg above the rest, tied with another channel, below another channel
    e0 = logits_of((0.0, 1.0, 2.0), (2.0, 0.0, 2.0), (3.0, 0.0, 1.0))
    e1 = logits_of((0.0, 1.0, 2.0), (2.0, 2.5, 2.0), (3.0, 3.0, 1.0))
    logits = torch.cat([e0, e1])
    assert binary_prediction(logits, torch.tensor([2, 1])).tolist() == [
        [[[1, 0, 0]]], [[[0, 1, 0]]]]
    assert binary_prediction(logits, 0).tolist() == [[[[0, 0, 1]]], [[[0, 0, 0]]]]
    with pytest.raises(IfssError, match="must lie in 0..2"):
        binary_prediction(logits, 3)


def test_episode_scores_sum_before_dividing():
    scores = EpisodeScores()
    # A (class 5): fg I 1 U 2, bg I 2 U 3; C (class 5): fg I 2 U 3, bg I 1 U 2
    pred = torch.tensor([[[[1, 0, 0, 0]]], [[[0, 1, 1, 1]]]])
    label = torch.tensor([[[[1, 1, 0, 0]]], [[[0, 0, 1, 1]]]])
    scores.add(pred, label, [5, 5])
    # B (class 7), 2 x 4 with a void pixel predicted 1: fg I 4 U 5, bg I 2 U 3
    pred_b = torch.tensor([[[[1, 1, 1, 1], [1, 0, 0, 1]]]])
    label_b = torch.tensor([[[[1, 1, 1, 1], [0, 0, 0, V]]]])
    scores.add(pred_b, label_b, torch.tensor([7]))
    assert scores.per_class() == pytest.approx({5: 3 / 5, 7: 4 / 5})  # (1+2)/(2+3), not 7/12
    assert scores.miou() == pytest.approx(0.7)
    fb = (7 / 10 + 5 / 8) / 2  # fg (1+2+4)/(2+3+5), bg (2+1+2)/(3+2+3)
    per_episode = ((1 / 2 + 2 / 3) / 2 + (2 / 3 + 1 / 2) / 2 + (4 / 5 + 2 / 3) / 2) / 3
    assert scores.fb_iou() == pytest.approx(fb)
    assert abs(fb - per_episode) > 0.02  # the case tells the two apart
    assert scores.episodes == 3
    assert math.isnan(EpisodeScores().miou())
    with pytest.raises(IfssError, match="one class id per episode"):
        scores.add(pred, label, [5])


def test_over_runs_max_mean_and_sliding_window():
    runs = [{"miou": m, "fb": f} for m, f in
            zip([0.1, 0.5, 0.3, 0.4, 0.6], [1.0, 2.0, 3.0, 4.0, 5.0])]
    got = over_runs(runs, "miou", group=4)
    assert got["max"] == {"miou": 0.6, "fb": 5.0}
    assert got["mean"] == pytest.approx({"miou": 0.38, "fb": 3.0})
    # windows 0-3 (mean 0.325) and 1-4 (0.45): the second; disjoint groups would give run 4 alone
    assert got["smoothed"] == pytest.approx({"miou": 0.45, "fb": 3.5})
    # fewer runs than the group: the one window of all runs
    assert over_runs(runs[:2], "miou")["smoothed"] == pytest.approx({"miou": 0.3, "fb": 1.5})
    with pytest.raises(IfssError, match="unknown key"):
        over_runs(runs, "fbiou")
