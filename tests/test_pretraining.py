"""GFSS pre-training (PSP, PSP-CTR): the supervised pixel contrast by hand, its anchor sampling,
the projection head, the params' domains, and tiny step-0 runs of both presets on PSPNet."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_tiny
from ifss.config import RunConfig
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.losses import segmentation_ce
from ifss.methods.params import PretrainContrastParams, PretrainParams
from ifss.methods.pretraining import Pretraining
from ifss.methods.registry import method_info, method_params
from ifss.pixel_contrast import (ProjectionHead, pixel_contrast, sample_pixel_anchors,
                                 supervised_contrast)

CPU = Runtime(torch.device("cpu"))
V = 255


# --- the loss --------------------------------------------------------------------------------

def _unit(*angles):
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def _by_hand(f, classes, t, tb):
    """Eq. 2 of the report, summed as written: positives = same class but self, negatives =
    other classes; mean over the anchors that have a positive."""
    n = len(classes)
    dot = [[sum(f[i][k] * f[j][k] for k in range(len(f[i]))) / t for j in range(n)]
           for i in range(n)]
    losses = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and classes[j] == classes[i]]
        neg = sum(math.exp(dot[i][k]) for k in range(n) if classes[k] != classes[i])
        if pos:
            logp = [dot[i][j] - math.log(math.exp(dot[i][j]) + neg) for j in pos]
            losses.append(-(t / tb) * sum(logp) / len(pos))
    return sum(losses) / len(losses)


def test_supervised_contrast_by_hand():
    f = _unit(0.0, 0.3, 2.0, 2.4, 1.0)
    classes = [1, 1, 2, 2, 3]  # anchor 4 (class 3) has no positive: left out, still a negative
    t, tb = 0.1, 0.07
    expected = _by_hand(f.tolist(), classes, t, tb)
    got = supervised_contrast(f, torch.tensor(classes), temperature=t, base_temperature=tb)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # anchor 0 by itself: one positive (1), negatives 2, 3, 4
    d = [math.cos(a - 0.0) / t for a in (0.3, 2.0, 2.4, 1.0)]
    z = sum(math.exp(x) for x in d[1:])
    assert expected != pytest.approx(-(t / tb) * (d[0] - math.log(math.exp(d[0]) + z)))
    # other temperatures move it as the formula says
    assert supervised_contrast(f, torch.tensor(classes), temperature=0.5,
                               base_temperature=0.2).item() == pytest.approx(
        _by_hand(f.tolist(), classes, 0.5, 0.2), rel=1e-5)


def test_supervised_contrast_padding_and_degenerate_batches():
    f = _unit(0.0, 0.3, 2.0, 2.4, 1.0, 0.7)
    classes = torch.tensor([1, 1, 2, 2, 3, 1])
    valid = torch.tensor([True, True, True, True, True, False])  # the last slot is padding
    padded = supervised_contrast(f, classes, valid)
    assert padded.item() == pytest.approx(_by_hand(f[:5].tolist(), classes[:5].tolist(),
                                                   0.1, 0.07), rel=1e-5)
    # one class: no negatives, log_prob 0; no pair of a class: no positives -> 0 with a graph
    one = f[:2].clone().requires_grad_()
    assert supervised_contrast(one, torch.tensor([4, 4])).item() == pytest.approx(0.0, abs=1e-6)
    lone = f[:3].clone().requires_grad_()
    zero = supervised_contrast(lone, torch.tensor([1, 2, 3]))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(lone.grad).all()
    empty = supervised_contrast(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_pixel_contrast_is_the_loss_of_its_sampled_anchors():
    torch.manual_seed(3)
    emb = F.normalize(torch.randn(2, 8, 4, 4), dim=1).requires_grad_()
    labels = torch.tensor([1] * 8 + [2] * 8).view(1, 4, 4).repeat(2, 1, 1)
    labels[1, :, :1] = 0
    logits = torch.randn(2, 3, 8, 8)  # predictions read at 4 x 4 (nearest)
    torch.manual_seed(7)
    got = pixel_contrast(emb, labels, logits, max_samples=1024, max_views=4)
    torch.manual_seed(7)
    preds = logits[:, :, ::2, ::2].argmax(1).reshape(2, -1)
    index, classes, valid, _ = sample_pixel_anchors(labels.reshape(2, -1), preds, 3,
                                                    max_views=4)
    anchors = emb.detach().flatten(2).transpose(1, 2).reshape(-1, 8)[index[valid]]
    assert int(valid.sum()) == 4 * 4  # classes 1, 2 in each image, 4 anchors each
    assert got.item() == pytest.approx(supervised_contrast(anchors, classes[valid]).item(),
                                       rel=1e-5)
    got.backward()
    assert emb.grad.abs().sum() > 0
    # no class with more than max_views pixels: zero
    assert pixel_contrast(emb, labels, logits, max_views=8).item() == 0.0


# --- anchor sampling -------------------------------------------------------------------------

def _picked(labels, preds, out):
    index, classes, valid, is_hard = out
    flat_l, flat_p = labels.reshape(-1), preds.reshape(-1)
    idx, cls, hard = index[valid], classes[valid], is_hard[valid]
    assert torch.equal(flat_l[idx], cls)  # every anchor has its class's label
    assert torch.equal(hard, flat_p[idx] != cls)  # hard = mispredicted
    assert len(set(idx.tolist())) == len(idx)  # no pixel twice
    return idx, cls, hard


def test_anchors_half_hard_half_easy():
    # class 1: 6 hard + 6 easy; class 2: 20 easy (no hard one: the easy fill in); void 4
    labels = torch.tensor([[1] * 12 + [2] * 20 + [V] * 4])
    preds = torch.tensor([[0] * 6 + [1] * 6 + [2] * 20 + [1] * 4])
    idx, cls, hard = _picked(labels, preds, sample_pixel_anchors(labels, preds, 3, max_views=8))
    assert (cls == 1).sum() == 8 and (hard & (cls == 1)).sum() == 4  # n_view / 2 of each
    assert (cls == 2).sum() == 8 and not hard[cls == 2].any()  # topped up from the easy
    # hard ones short (2 of 12): all 2, then 6 easy
    preds2 = torch.tensor([[0] * 2 + [1] * 10 + [2] * 20 + [1] * 4])
    _, cls, hard = _picked(labels, preds2, sample_pixel_anchors(labels, preds2, 3, max_views=8))
    assert (hard & (cls == 1)).sum() == 2 and (cls == 1).sum() == 8
    # easy ones short (1 of 12): 7 hard
    preds3 = torch.tensor([[0] * 11 + [1] + [2] * 20 + [1] * 4])
    _, cls, hard = _picked(labels, preds3, sample_pixel_anchors(labels, preds3, 3, max_views=8))
    assert (hard & (cls == 1)).sum() == 7 and (cls == 1).sum() == 8


def test_anchor_counts_follow_max_views_and_max_samples():
    # image 0: class 1 (9 px), class 2 (8 px = max_views: not more, left out), class 3 (12 px)
    # image 1: class 1 (12 px), class 3 (10 px)
    labels = torch.tensor([[1] * 9 + [2] * 8 + [3] * 12 + [V] * 3,
                           [1] * 12 + [3] * 10 + [V] * 10])
    preds = torch.zeros_like(labels)
    _, cls, _ = _picked(labels, preds, sample_pixel_anchors(labels, preds, 4, max_views=8))
    assert (cls == 2).sum() == 0
    assert len(cls) == 4 * 8  # four (image, class) pairs, n_view = min(1024 // 4, 8) = 8
    # max_samples // pairs below max_views: n_view = 10 // 4 = 2
    idx, cls, _ = _picked(labels, preds, sample_pixel_anchors(labels, preds, 4, max_samples=10,
                                                              max_views=8))
    assert len(cls) == 8 and sorted(torch.bincount(idx // labels.shape[1]).tolist()) == [4, 4]
    # more pairs than max_samples: no anchor
    out = sample_pixel_anchors(labels, preds, 4, max_samples=3, max_views=8)
    assert not out[2].any()


def test_background_anchors_are_a_choice():
    labels = torch.tensor([[0] * 20 + [1] * 10 + [V] * 10])
    preds = torch.zeros_like(labels)
    _, cls, _ = _picked(labels, preds, sample_pixel_anchors(labels, preds, 2, max_views=5))
    assert set(cls.tolist()) == {1}  # default, the report: background is no anchor
    _, cls, _ = _picked(labels, preds, sample_pixel_anchors(labels, preds, 2, max_views=5,
                                                            background_anchors=True))
    assert sorted(torch.bincount(cls).tolist()) == [5, 5]


def test_anchor_sampling_is_random_and_seeded():
    labels = torch.tensor([[1] * 40 + [2] * 40])
    preds = torch.randint(0, 3, labels.shape, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        torch.manual_seed(seed)
        return sample_pixel_anchors(labels, preds, 3, max_views=6)[0]

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


# --- projection head, CE, params -------------------------------------------------------------

def test_projection_head_is_unit_norm():
    head = ProjectionHead(16, dim=8)
    out = head(torch.randn(2, 16, 5, 7) * 3)
    assert out.shape == (2, 8, 5, 7)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)
    head.eval()
    assert torch.allclose(head(torch.randn(1, 16, 3, 3)).norm(dim=1), torch.ones(1, 3, 3),
                          atol=1e-5)


def test_label_smoothed_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    labels[0, 0] = V
    keep = labels != V
    # by hand: target (1 - eps) onehot + eps / C, over the non-void pixels
    logp = F.log_softmax(logits, 1).permute(0, 2, 3, 1)[keep]
    onehot = F.one_hot(labels[keep], 4).float()
    by_hand = -(((1 - 0.1) * onehot + 0.1 / 4) * logp).sum(1).mean()
    assert segmentation_ce(logits, labels, 0.1).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert segmentation_ce(logits, labels, 0.0).item() == pytest.approx(
        segmentation_ce(logits, labels).item(), rel=1e-6)
    assert segmentation_ce(logits, torch.full_like(labels, V), 0.1).item() == 0.0


@pytest.mark.parametrize("bad", [
    {"label_smoothing": 1.0}, {"label_smoothing": -0.1}, {"contrast_weight": -1.0},
    {"temperature": 0.0}, {"base_temperature": -0.07}, {"max_samples": 0}, {"max_views": 0},
    {"projection_dim": 0}, {"projection_lr_mult": -1.0}, {"background_anchors": 1},
])
def test_params_domains(bad):
    name = next(iter(bad))
    with pytest.raises(IfssError, match=f"params.{name}"):
        PretrainParams(**bad)


def test_registry_presets():
    psp, ctr = method_info("PSP"), method_info("PSP-CTR")
    for info in (psp, ctr):
        assert (info.base, info.classifier, info.step0, info.step0_from) == \
            (info.name, "linear", True, None)
        assert info.cls == "Pretraining"
    assert method_params("PSP", {}) == PretrainParams(label_smoothing=0.1, contrast_weight=0.0)
    assert method_params("PSP-CTR", {}).contrast_weight == 0.1
    assert isinstance(method_params("PSP-CTR", {}), PretrainContrastParams)
    assert method_params("PSP-CTR", {"contrast_weight": 0.4}).contrast_weight == 0.4
    with pytest.raises(IfssError, match="params.max_views"):
        method_params("PSP-CTR", {"max_views": 0})


def test_step0_only():
    """The registry marks both presets step-0-only and the run builder refuses their step 1
    (the end-to-end refusal, before any write: test_psp_ctr_refuses_step1)."""
    from ifss.builder import resolve

    assert method_info("PSP").step0_only and method_info("PSP-CTR").step0_only
    assert not method_info("FT").step0_only
    for method in ("PSP", "PSP-CTR"):
        with pytest.raises(IfssError, match=f"{method} pre-trains the step-0 model only and has "
                                            "no step 1"):
            resolve(RunConfig(method=method, step=1, previous="step0/model.pt"))
        assert resolve(RunConfig(method=method, step=0)).cfg.step == 0


def test_projection_lr_mult_and_modules():
    from ifss.config import ModelConfig
    from ifss.models import build_model

    model = build_model(ModelConfig(arch="pspnet", head_channels=16), [6])
    ce = Pretraining(PretrainParams(), RunConfig(method="PSP"), CPU)
    ce.attach(model)
    assert ce.modules() == {}  # CE only: no projection head
    ctr = Pretraining(PretrainContrastParams(projection_lr_mult=2.0, projection_dim=8),
                      RunConfig(method="PSP-CTR"), CPU)
    ctr.attach(model)
    groups = {g["name"]: g for g in ctr.param_groups(model, RunConfig().train)}
    assert groups["projection"]["lr_mult"] == 2.0 and groups["body"]["lr_mult"] == 1.0
    assert ctr.modules()["projection"].layers[-1].out_channels == 8


# --- tiny step-0 runs ------------------------------------------------------------------------

PSP_RUN = {"model.arch": "pspnet", "params.max_views": 4}


@pytest.fixture(scope="module")
def ctr_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("psp") / "ctr"
    run_tiny(synth_root, out, method="PSP-CTR", **PSP_RUN)
    return out


def test_psp_ctr_step0_run(ctr_run):
    log = (ctr_run / "log.txt").read_text()
    lines = [line for line in log.splitlines() if " iter " in line]
    assert lines and all(" ce " in line and " contrast " in line for line in lines)
    # the contrast term is there and learns (nonzero at some logged iteration)
    assert any(float(line.split(" contrast ")[1].split()[0]) > 0 for line in lines)
    ckpt = torch.load(ctr_run / "model.pt", map_location="cpu", weights_only=True)
    projection = ckpt["modules"]["projection"]
    assert projection["layers.2.weight"].shape == (256, 16, 1, 1)  # head_channels 16 -> 256
    assert "params:" in (ctr_run / "config.yaml").read_text()
    assert "contrast_weight: 0.1" in (ctr_run / "config.yaml").read_text()


def test_psp_step0_run_is_ce_only(synth_root, tmp_path):
    run_tiny(synth_root, tmp_path / "psp", method="PSP", **{"model.arch": "pspnet"})
    lines = [line for line in (tmp_path / "psp" / "log.txt").read_text().splitlines()
             if " iter " in line]
    assert lines and all(" ce " in line and " contrast " not in line for line in lines)
    ckpt = torch.load(tmp_path / "psp" / "model.pt", map_location="cpu", weights_only=True)
    assert ckpt["modules"] == {}


def test_psp_ctr_refuses_step1(synth_root, ctr_run, tmp_path):
    with pytest.raises(IfssError, match="PSP-CTR pre-trains the step-0 model only"):
        run_tiny(synth_root, tmp_path / "s1", method="PSP-CTR", step=1,
                 previous=str(ctr_run / "model.pt"), **PSP_RUN)
    assert not (tmp_path / "s1").exists()  # refused before anything was written
