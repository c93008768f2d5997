"""MCLOS: InfoNCE by hand, anchor and example sampling, and a step 0 -> step 1 chain whose
memory travels in model.pt and resume.pt."""
import json
import math

import pytest
import torch

from conftest import tiny_overrides
from ifss.config import build_config
from ifss.errors import IfssError
from ifss.losses import info_nce
from ifss.methods.mclos import MCLOS, contrastive_loss, sample_anchors, select_examples
from ifss.run import train_run

# --- InfoNCE ---------------------------------------------------------------------------------


def test_info_nce_by_hand():
    t, tb = 0.1, 0.07
    pos = torch.tensor([[0.5, 0.2], [0.3, 0.9], [0.4, 0.4]])
    neg = torch.tensor([[0.1, -0.3], [0.6, 0.8], [0.0, 0.0]])
    pos_mask = torch.tensor([[True, True], [True, False], [False, False]])  # anchor 3: no positive
    neg_mask = torch.tensor([[True, True], [True, False], [True, True]])
    # anchor 1: s_p = 5, 2; s_n = 1, -3
    z = math.exp(1) + math.exp(-3)
    l1 = -(t / tb) * ((5 - math.log(math.exp(5) + z)) + (2 - math.log(math.exp(2) + z))) / 2
    assert l1 == pytest.approx(0.240468, abs=1e-6)
    # anchor 2: s_p = 3 (0.9 masked); s_n = 6 (0.8 masked)
    l2 = -(t / tb) * (3 - math.log(math.exp(3) + math.exp(6)))
    got = info_nce(pos, neg, pos_mask, neg_mask, t, tb)
    assert got.item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    only_first = info_nce(pos, neg, pos_mask, neg_mask, t, tb, torch.tensor([True, False, True]))
    assert only_first.item() == pytest.approx(l1, rel=1e-5)
    # no negative: s_p - log(e^{s_p}) = 0; nothing valid: 0 with a gradient
    assert info_nce(pos[:1], neg[:1], None, torch.zeros(1, 2, dtype=torch.bool)).item() \
        == pytest.approx(0.0, abs=1e-6)
    p = pos.clone().requires_grad_()
    zero = info_nce(p, neg, torch.zeros_like(pos_mask), neg_mask)
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(p.grad).all()


# --- anchors ---------------------------------------------------------------------------------

def _batch():
    """2 images x 20 pixels. Image 0: class 1 (5 hard + 3 easy), class 2 (6 easy), 6 void.
    Image 1: class 1 (4 easy), class 0 (10 hard), class 3 (1 pixel), 5 void."""
    v = 255
    lab0 = [1] * 8 + [2] * 6 + [v] * 6
    pred0 = [0] * 5 + [1] * 3 + [2] * 6 + [0] * 6
    lab1 = [1] * 4 + [0] * 10 + [3] + [v] * 5
    pred1 = [1] * 4 + [2] * 10 + [3] + [0] * 5
    return torch.tensor([lab0, lab1]), torch.tensor([pred0, pred1])


def _per_group(labels, preds, index, classes, valid, is_hard):
    out = {}
    flat_l, flat_p = labels.reshape(-1), preds.reshape(-1)
    idx = index[valid]
    assert len(set(idx.tolist())) == len(idx)  # no pixel twice
    assert torch.equal(flat_l[idx], classes[valid])  # each anchor has its class's label
    assert torch.equal(is_hard[valid], flat_p[idx] != flat_l[idx])
    for i, c, h in zip(idx.tolist(), classes[valid].tolist(), is_hard[valid].tolist()):
        key = (i // labels.shape[1], c)
        n_h, n_e = out.get(key, (0, 0))
        out[key] = (n_h + h, n_e + (not h))
    return out


def test_hard_anchor_sampling_counts_and_split():
    labels, preds = _batch()
    torch.manual_seed(0)
    res = sample_anchors(labels, preds, 4, per_class=4, max_anchors=100, min_pixels=2)
    assert len(res[0]) == min(100, 2 * 4 * 4, 2 * 20)
    assert bool(res[2][:16].all()) and not res[2][16:].any()  # valid slots first
    # n_view = min(4, 100 // 4 groups) = 4; half hard / half easy unless one kind runs short
    assert _per_group(labels, preds, *res) == {
        (0, 1): (2, 2), (0, 2): (0, 4), (1, 1): (0, 4), (1, 0): (4, 0)}
    res = sample_anchors(labels, preds, 4, per_class=4, max_anchors=10, min_pixels=2)
    # total cap: n_view = min(4, 10 // 4) = 2
    assert len(res[0]) == 10 and int(res[2].sum()) == 8
    assert _per_group(labels, preds, *res) == {
        (0, 1): (1, 1), (0, 2): (0, 2), (1, 1): (0, 2), (1, 0): (2, 0)}
    res = sample_anchors(labels, preds, 4, per_class=4, max_anchors=100, min_pixels=1)
    assert _per_group(labels, preds, *res)[(1, 3)] == (0, 1)  # 1 pixel: all it has


def test_random_anchor_sampling_ignores_predictions():
    labels, preds = _batch()
    counts = {}
    for seed in range(20):
        torch.manual_seed(seed)
        index, classes, valid, _ = sample_anchors(labels, None, 4, per_class=3, max_anchors=100,
                                                  min_pixels=2, hard=False)
        flat_l, flat_p = labels.reshape(-1), preds.reshape(-1)
        got = {}
        for i in index[valid].tolist():
            got[(i // 20, int(flat_l[i]))] = got.get((i // 20, int(flat_l[i])), 0) + 1
            counts[bool(flat_p[i] != flat_l[i])] = counts.get(bool(flat_p[i] != flat_l[i]), 0) + 1
        assert got == {(0, 1): 3, (0, 2): 3, (1, 1): 3, (1, 0): 3}
    # image 0, class 1 is 5/8 hard: random draws see both kinds there
    assert counts[True] > 0 and counts[False] > 0


# --- examples --------------------------------------------------------------------------------

SIMS = torch.tensor([[0.9, 0.2, 0.5, 0.6, 0.7, 0.1, 0.8, 0.3],
                     [0.1, 0.6, 0.4, 0.0, 0.2, 0.9, 0.3, 0.95]])
KEY_CLASSES = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
KEY_VALID = torch.tensor([True] * 7 + [False])
BY_CLASS = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])  # class blocks (the memory layout)
ANCHOR_CLASSES = torch.tensor([0, 1])


def _chosen(index, valid):
    return [sorted(i[v].tolist()) for i, v in zip(index, valid)]


def _select(num_pos, num_neg, mode, **kw):
    return select_examples(SIMS, ANCHOR_CLASSES, KEY_CLASSES, KEY_VALID, num_pos, num_neg, mode,
                           **kw)


def test_hard_examples_are_far_positives_and_close_negatives():
    for by_class in (None, BY_CLASS):
        pi, pv, ni, nv = _select(2, 2, "hard", by_class=by_class)
        assert _chosen(pi, pv) == [[1, 2], [4, 6]]  # lowest similarity, own class, valid
        assert _chosen(ni, nv) == [[4, 6], [1, 2]]  # highest similarity, other classes
    pi, pv, ni, nv = _select(5, 9, "hard", by_class=BY_CLASS)
    assert _chosen(pi, pv) == [[0, 1, 2, 3], [4, 5, 6]]  # fewer eligible than asked: all
    assert _chosen(ni, nv) == [[4, 5, 6], [0, 1, 2, 3]]


def test_semi_hard_draws_from_the_hardest_fraction():
    seen_pos, seen_neg = set(), set()
    for seed in range(30):
        torch.manual_seed(seed)
        pi, pv, ni, nv = _select(1, 1, "semi-hard", semi_hard_ratio=0.5, by_class=BY_CLASS)
        # positives of anchor 0: the hardest ceil(0.5 * 4) = 2 of its class's 4 slots {1, 2}
        assert int(pi[0, 0]) in (1, 2) and pv.all() and nv.all()
        seen_pos.add(int(pi[0, 0]))
        pi, pv, ni, nv = _select(1, 1, "semi-hard", semi_hard_ratio=0.25, by_class=BY_CLASS)
        # negatives: the hardest ceil(0.25 * 8) = 2 columns, own-class ones ineligible: {6, 4}
        assert int(ni[0, 0]) in (4, 6)
        seen_neg.add(int(ni[0, 0]))
    assert seen_pos == {1, 2} and seen_neg == {4, 6}
    torch.manual_seed(0)
    pi, pv, _, _ = _select(2, 2, "semi-hard", semi_hard_ratio=0.1, by_class=BY_CLASS)
    assert _chosen(pi, pv) == [[1, 2], [4, 6]]  # pool never smaller than the count: = hard


def test_random_examples_and_self_exclusion():
    torch.manual_seed(0)
    pi, pv, ni, nv = _select(4, 4, "random")
    assert _chosen(pi, pv) == [[0, 1, 2, 3], [4, 5, 6]]
    assert _chosen(ni, nv) == [[4, 5, 6], [0, 1, 2, 3]]
    picks = set()
    for seed in range(10):
        torch.manual_seed(seed)
        pi, pv, _, _ = _select(1, 1, "random", by_class=BY_CLASS)
        picks.add(int(pi[0, 0]))
    assert picks == {0, 1, 2, 3}  # not only the hardest
    # mini-batch contrast: the anchors are the keys, minus themselves
    sims = torch.eye(3) * 0.5 + 0.1
    classes = torch.tensor([0, 0, 1])
    pi, pv, ni, nv = select_examples(sims, classes, classes, torch.ones(3, dtype=torch.bool),
                                     2, 2, "hard", exclude=torch.eye(3, dtype=torch.bool))
    assert _chosen(pi, pv) == [[1], [0], []] and _chosen(ni, nv) == [[2], [2], [0, 1]]
    with pytest.raises(IfssError, match="example sampling 'hardest' is not known"):
        _select(1, 1, "hardest")


@pytest.mark.parametrize("mode", ["hard", "semi-hard"])
def test_memory_path_gradient_equals_plain_autograd(mode):
    """Memory keys take the embedding-bag backward; it must match differentiating the full
    similarity matrix."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=1)
    classes, key_classes = torch.tensor([0, 0, 1, 1, 2, 2]), torch.arange(3).repeat_interleave(4)
    valid, key_valid = torch.ones(6, dtype=torch.bool), torch.rand(12, generator=g) > 0.2
    by_class = torch.arange(12).view(3, 4)
    grads = []
    for key_grad in (False, True):
        a = anchors.clone().requires_grad_()
        k = keys.clone().requires_grad_(key_grad)
        torch.manual_seed(1)
        loss = contrastive_loss(a, classes, valid, k, key_classes, key_valid, 2, 3, mode, 0.5,
                                0.1, 0.07, by_class=by_class)
        loss.backward()
        grads.append((loss.detach(), a.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and grads[0][0] > 0
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


# --- runs ------------------------------------------------------------------------------------

SMALL = {"method": "MCLOS", "task": "5-0", "train.iterations": 4, "params.warmup": 0.25,
         "params.memory_size": 64, "params.num_pos": 32, "params.num_neg": 64}


def test_bad_params_one_clear_error(synth_root, tmp_path):
    cfg = build_config(None, tiny_overrides(synth_root, **{**SMALL, "params.memory": "region"}))
    with pytest.raises(IfssError, match=r"params.memory='region' is not known; valid values: "
                                        r"none, pixel, pixel\+region"):
        train_run(cfg, tmp_path / "run")


@pytest.fixture(scope="module")
def step0(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mclos") / "step0"
    train_run(build_config(None, tiny_overrides(synth_root, **SMALL)), out)
    return out


def test_step0_to_step1_carries_and_grows_the_memory(step0, synth_root, tmp_path):
    ckpt0 = torch.load(step0 / "model.pt", weights_only=True)
    mem0 = ckpt0["method"]["memory"]
    assert mem0["queue.ptr"].shape == (2, 16)  # region and pixel banks
    assert mem0["queue.storage"].shape == (2 * 16 * 64 + 1, 16)
    assert int(mem0["queue.count"][1].sum()) > 0
    assert "contrast" in (step0 / "log.txt").read_text()

    step1 = tmp_path / "step1"
    train_run(build_config(None, tiny_overrides(
        synth_root, **SMALL, step=1, nshot=1, previous=step0 / "model.pt")), step1)
    assert json.loads((step1 / "metrics.json").read_text())["miou_novel"] is not None
    mem1 = torch.load(step1 / "model.pt", weights_only=True)["method"]["memory"]
    assert mem1["queue.ptr"].shape == (2, 21)
    count0, count1 = mem0["queue.count"], mem1["queue.count"]
    assert (count1[:, :16] >= count0).all() and (count1[:, 16:] > 0).any()
    assert "kd" in (step1 / "log.txt").read_text()  # PIFS's terms are there at step 1


def test_resume_restores_memory_and_iteration(step0, synth_root, tmp_path, monkeypatch):
    extra = {**SMALL, "train.iterations": 4, "train.checkpoint_every": 2, "step": 1, "nshot": 1,
             "previous": step0 / "model.pt"}
    cfg = build_config(None, tiny_overrides(synth_root, **extra))
    whole = tmp_path / "whole"
    train_run(cfg, whole)

    loss = MCLOS.loss

    def crash_at_3(self, batch, out, old_out):
        if self.iteration == 3:  # the third iteration (before_step counts this one)
            raise KeyboardInterrupt
        return loss(self, batch, out, old_out)

    killed = tmp_path / "killed"
    monkeypatch.setattr(MCLOS, "loss", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, killed)
    resume = torch.load(killed / "resume.pt", weights_only=True)
    assert resume["iteration"] == 2
    assert resume["method"]["memory"]["queue.ptr"].shape == (2, 21)
    monkeypatch.setattr(MCLOS, "loss", loss)
    train_run(cfg, killed)
    assert "resumed from" in (killed / "log.txt").read_text()
    a = torch.load(whole / "model.pt", weights_only=True)
    b = torch.load(killed / "model.pt", weights_only=True)
    assert all(torch.equal(a["method"]["memory"][k], b["method"]["memory"][k])
               for k in a["method"]["memory"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
