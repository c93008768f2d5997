"""LWF-MC and CIL (ifss/methods/continual_kd.py): each loss against a hand computation from its
formula on two or three pixels, the methods' terms and presets, and one continual chain per method
(FT step 0 of 15-5 disjoint -> step 1), the existing FT / LWF / ILT / MIB included."""
import json
import math

import pytest
import torch

from conftest import run_tiny
from ifss import losses
from ifss.config import RunConfig
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.continual_kd import (EntropyWeightedDistillation,
                                      MultiClassLearningWithoutForgetting)
from ifss.methods.registry import method_info

CPU = Runtime(torch.device("cpu"))


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def bce(x, t):  # BCE(sigmoid(x), t) = softplus(x) - t x
    return softplus(x) - t * x


def pixels(*columns):
    """N=1, C x 1 x P logits from P per-pixel lists of C values."""
    return torch.tensor(columns).T.reshape(1, len(columns[0]), 1, len(columns))


# ------------------------------------------------------------------------------ LWF-MC

# bkg, old 1, new 2 (C_old = 2); pixel A is a new-class pixel, pixel B is void
Z = pixels([1.0, -0.5, 2.0], [0.0, 1.0, -1.0])
Z_OLD = pixels([0.5, -1.0], [2.0, 0.0])
Y = torch.tensor([[[2, 255]]])


def test_multilabel_bce_sums_classes_and_skips_void():
    # pixel A: targets (0, 0, 1) over all three classes; pixel B is void
    expected = bce(1.0, 0) + bce(-0.5, 0) + bce(2.0, 1)
    assert expected == pytest.approx(softplus(1) + softplus(-0.5) + softplus(2) - 2)
    assert expected == pytest.approx(1.91427, rel=1e-5)  # by hand: 1.31326 + 0.47408 + 2.12693 - 2
    assert losses.multilabel_bce(Z, Y).item() == pytest.approx(expected, rel=1e-6)
    assert losses.multilabel_bce(Z, torch.full_like(Y, 255)).item() == 0.0


def test_sigmoid_distillation_sums_old_classes_on_every_pixel():
    a = bce(1.0, sigmoid(0.5)) + bce(-0.5, sigmoid(-1.0))  # the new class 2 is not distilled
    b = bce(0.0, sigmoid(2.0)) + bce(1.0, sigmoid(0.0))  # the void pixel is
    expected = (a + b) / 2
    assert expected == pytest.approx((1.29935 + 1.50641) / 2, rel=1e-5)
    got = losses.sigmoid_distillation(Z, Z_OLD)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the originals' scaling: C_old * BCEWithLogits(mean over pixels x old classes)
    original = 2 * torch.nn.BCEWithLogitsLoss()(Z[:, :2], torch.sigmoid(Z_OLD))
    assert got.item() == pytest.approx(original.item(), rel=1e-6)


def test_lwf_mc_terms():
    method = MultiClassLearningWithoutForgetting(
        MultiClassLearningWithoutForgetting.Params(), RunConfig(step=1), CPU)
    terms = method.loss({"label": Y}, {"logits": Z}, {"logits": Z_OLD})
    assert set(terms) == {"bce", "bce_kd"}
    assert terms["bce"].item() == pytest.approx(1.914267, rel=1e-5)
    assert terms["bce_kd"].item() == pytest.approx(10 * 1.402880, rel=1e-5)  # icarl_importance 10
    assert set(method.loss({"label": Y}, {"logits": Z}, None)) == {"bce"}  # no previous model


# ------------------------------------------------------------------------------ CIL

# bkg, old 1, new 2 (C_old = 2); pixels: background (kept), new class 2 (excluded), void (kept)
C_Z = pixels([2.0, 0.5, 1.0], [-3.0, 4.0, 9.0], [0.0, 0.0, 0.0])
C_OLD = pixels([1.0, 0.0], [5.0, -5.0], [0.0, 0.0])
C_Y = torch.tensor([[[0, 2, 255]]])


@pytest.mark.parametrize("gs", [1.0, 0.5])
def test_entropy_weighted_distillation_by_hand(gs):
    # background pixel: q = softmax(1, 0) = (sigmoid(1), sigmoid(-1)), entropy in bits
    q = [sigmoid(1.0), sigmoid(-1.0)]
    h_bits = -sum(v * math.log(v) for v in q) / math.log(2)
    assert h_bits == pytest.approx(0.83994, rel=1e-4)
    lse = math.log(math.exp(2.0) + math.exp(0.5) + math.exp(1.0))  # the student's softmax: all C
    ce_bkg = -(q[0] * (2.0 - lse) + q[1] * (0.5 - lse))
    # void pixel: q = (1/2, 1/2) is one bit, p = 1/3 for every class
    ce_void, w_void = math.log(3), 1 + gs * 1.0
    expected = ((1 + gs * h_bits) * ce_bkg + w_void * ce_void) / 2  # two pixels, not sum of w
    got = losses.entropy_weighted_distillation(C_Z, C_OLD, C_Y, gs)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    if gs == 1.0:
        assert expected == pytest.approx((1.83994 * 0.86778 + 2 * 1.09861) / 2, rel=1e-4)


def test_entropy_weighted_distillation_ignores_foreground_pixels():
    base = losses.entropy_weighted_distillation(C_Z, C_OLD, C_Y)
    other = C_Z.clone()
    other[..., 1] = torch.tensor([7.0, -2.0, 0.0]).view(3, 1)  # the new-class pixel changes
    assert losses.entropy_weighted_distillation(other, C_OLD, C_Y).item() == pytest.approx(
        base.item())
    assert losses.entropy_weighted_distillation(C_Z, C_OLD, torch.full_like(C_Y, 2)).item() == 0.0


def test_entropy_weighted_distillation_pulls_towards_the_teacher():
    """A cross-entropy (SDR's code summed q * softmax(z), which rewards disagreeing)."""
    old = pixels([2.0, -1.0])
    label = torch.tensor([[[0]]])
    copy = losses.entropy_weighted_distillation(pixels([2.0, -1.0, -20.0]), old, label)
    swap = losses.entropy_weighted_distillation(pixels([-1.0, 2.0, -20.0]), old, label)
    new = losses.entropy_weighted_distillation(pixels([2.0, -1.0, 5.0]), old, label)
    assert copy < swap and copy < new


def test_cil_terms_and_preset_switch_on():
    params = EntropyWeightedDistillation.Params()
    assert params.loss_cil == 1.0 and params.entropy_scale == 1.0  # SDR's preset set nothing
    method = EntropyWeightedDistillation(
        EntropyWeightedDistillation.Params(loss_cil=3.0, entropy_scale=0.5), RunConfig(step=1), CPU)
    terms = method.loss({"label": C_Y}, {"logits": C_Z}, {"logits": C_OLD})
    assert set(terms) == {"ce", "cil"}
    assert terms["cil"].item() == pytest.approx(3 * 1.4400710, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(
        losses.segmentation_ce(C_Z, C_Y).item())
    with pytest.raises(IfssError, match="params.loss_cil"):
        EntropyWeightedDistillation.Params(loss_cil=-1.0)


def test_registry_lines():
    for name, cls in (("LWF-MC", MultiClassLearningWithoutForgetting),
                      ("CIL", EntropyWeightedDistillation)):
        info = method_info(name)
        assert (info.base, info.classifier, info.step0) == ("FT", "linear", False)
        assert info.params is cls.Params and cls.uses_old_model


# ------------------------------------------------------------------------------ continual chains

CONTINUAL = {"task": "15-5", "data.protocol": "disjoint"}


@pytest.fixture(scope="module")
def step0(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("css") / "step0"
    run_tiny(synth_root, out, method="FT", **CONTINUAL)
    return out


@pytest.mark.parametrize("method, terms", [
    ("LWF-MC", ("bce", "bce_kd")), ("CIL", ("ce", "cil")),
    # the existing methods in the continual setting
    ("FT", ("ce",)), ("LWF", ("ce", "kd")), ("ILT", ("ce", "kd", "de")), ("MIB", ("unce", "unkd")),
])
def test_continual_step1_trains_and_evaluates(method, terms, step0, synth_root, tmp_path):
    run_tiny(synth_root, tmp_path, method=method, step=1, previous=step0 / "model.pt", **CONTINUAL)
    log = (tmp_path / "log.txt").read_text()
    assert all(f"  {term} " in log for term in terms)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert (m["method"], m["base_method"], m["step"], m["task"]) == (method, "FT", 1, "15-5")
    assert m["config"]["data"]["protocol"] == "disjoint"
    assert len(m["iou"]) == 21 and m["miou_all"] is not None and m["miou_novel"] is not None
