"""SDR: each feature term against a hand computation on a 2 x 2 map of 2 channels, the running
prototypes after two batches under each protocol's background rule, the old classes' pixels, and
a synthetic chain (SDR step 0 -> step 1, 15-5 disjoint): prototypes carried in model.pt, every
term logged, a killed step resumed to the same prototypes and weights."""
import math

import pytest
import torch

from conftest import run_tiny
from ifss import losses
from ifss.builder import model_from_checkpoint
from ifss.config import DataConfig, RunConfig
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.params import SDRParams
from ifss.methods.sdr import SDR, old_class_labels

CPU = Runtime(torch.device("cpu"))

# One image, 2 channels, 2 x 2 pixels: a = [1, 2] (background), b = [3, 0] and c = [1, 0]
# (class 1), d = [4, 4] (void).
FEATURES = torch.tensor([[[1.0, 3.0], [1.0, 4.0]],
                         [[2.0, 0.0], [0.0, 4.0]]]).unsqueeze(0)
LABELS = torch.tensor([[[0, 1], [1, 255]]])
# class 0 -> [0, 2], class 1 -> [1, 1]; a third class, absent from the labels, must not count
PROTOTYPES = torch.tensor([[0.0, 2.0], [1.0, 1.0], [9.0, 9.0]])


def test_prototype_matching_sumafter_by_hand():
    # batch means: class 0 [1, 2], class 1 [(3+1)/2, 0] = [2, 0]
    # MSE to the prototypes: ((1-0)^2 + 0^2)/2 = 0.5 and ((2-1)^2 + (0-1)^2)/2 = 1
    got = losses.prototype_matching(FEATURES, LABELS, PROTOTYPES, sumafter=True)
    assert got.item() == pytest.approx((0.5 + 1.0) / 2)  # over the 2 classes present
    # per pixel: class 0: 0.5; class 1: mean(((3-1)^2 + 1)/2, (0 + 1)/2) = mean(2.5, 0.5) = 1.5
    got = losses.prototype_matching(FEATURES, LABELS, PROTOTYPES, sumafter=False)
    assert got.item() == pytest.approx(0.5 + 1.5)  # summed over classes, as the original
    void = torch.full_like(LABELS, 255)
    assert losses.prototype_matching(FEATURES, void, PROTOTYPES).item() == 0.0


def test_attraction_by_hand():
    # per class, the mean over its pixels of ||f - p||^2 / D: class 0 0.5, class 1 1.5
    got = losses.prototype_attraction(FEATURES, LABELS, PROTOTYPES)
    assert got.item() == pytest.approx((0.5 + 1.5) / 2)


def test_repulsion_by_hand_without_the_diagonal():
    # class means [1, 2] and [2, 0]: distance sqrt(1 + 4); the two ordered pairs, no diagonal
    features = FEATURES.clone().requires_grad_(True)
    got = losses.class_mean_repulsion(features, LABELS, 3)
    assert got.item() == pytest.approx(1 / math.sqrt(5))  # with the diagonal as 0: half of it
    got.backward()
    assert torch.isfinite(features.grad).all()
    one = torch.tensor([[[1, 1], [1, 255]]])  # one class, no pair: 0 (original: nan -> 0)
    features.grad = None
    single = losses.class_mean_repulsion(features, one, 3)
    single.backward()
    assert single.item() == 0.0 and torch.isfinite(features.grad).all()


def test_sparsity_by_hand_with_class_max_normalisation():
    # maxima per label: background 2 (pixel a), class 1 3 (b, c), void 4 (d)
    a, b, c, d = [0.5, 1.0], [1.0, 0.0], [1 / 3, 0.0], [1.0, 1.0]

    def ratio(f):
        return sum(math.exp(v) for v in f) / sum(f)

    want = (ratio(a) + ratio(b) + ratio(c) + ratio(d)) / 4
    assert losses.feature_sparsity(FEATURES, LABELS).item() == pytest.approx(want, rel=1e-6)
    # one global max (4) instead would give another value
    glob = sum(ratio([v / 4 for v in f]) for f in ([1, 2], [3, 0], [1, 0], [4, 4])) / 4
    assert abs(want - glob) > 0.5
    background = torch.zeros_like(LABELS)
    assert losses.feature_sparsity(FEATURES, background).item() == 0.0


def test_params_domain():
    assert SDRParams() == SDRParams(100.0, 0.01, True, 1e-3, 1e-3, 1e-3, True)
    with pytest.raises(IfssError, match=r"need params.loss_fc >= 0"):
        SDRParams(loss_fc=-1.0)


# ------------------------------------------------------------------------ running prototypes

def method(step: int, protocol: str, prototypes: torch.Tensor, counts: torch.Tensor) -> SDR:
    cfg = RunConfig(step=step, method="SDR", data=DataConfig(protocol=protocol))
    m = SDR(SDRParams(), cfg, CPU)
    m.prototypes, m.counts = prototypes.clone(), counts.clone()
    return m


def train_batch(m: SDR, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """One iteration as the engine runs it: the loss, then `after_step` (C = 2: background and
    one class; at step 1 the previous model knew background only)."""
    out = {"logits": torch.zeros(1, 2, 2, 2), "body": features}
    old = {"logits": torch.zeros(1, 1, 2, 2)} if m.step > 0 else None
    terms = m.loss({"label": labels}, out, old)
    m.after_step(0)
    return terms


@pytest.mark.parametrize("protocol, step, background", [
    ("disjoint", 0, True), ("disjoint", 1, False), ("overlap", 0, False), ("overlap", 1, False),
    ("sequential", 1, True), ("fewshot", 1, True)])
def test_running_mean_after_two_batches(protocol, step, background):
    m = method(step, protocol, torch.tensor([[2.0, 2.0], [1.0, 1.0]]), torch.tensor([1, 2]))
    # batch 1: background sum [1, 2] over 1 pixel; class 1 sum [4, 0] over 2 (void d left out)
    train_batch(m, FEATURES, LABELS)
    # batch 2: background [3, 4]; class 1 [5, 2]; two void pixels
    second = torch.tensor([[[3.0, 5.0], [7.0, 7.0]], [[4.0, 2.0], [7.0, 7.0]]]).unsqueeze(0)
    train_batch(m, second, torch.tensor([[[0, 1], [255, 255]]]))
    # class 1: ([4, 0] + 2 [1, 1]) / 4 = [1.5, 0.5], n = 4; ([5, 2] + 4 [1.5, .5]) / 5, n = 5
    assert m.prototypes[1].tolist() == pytest.approx([11 / 5, 4 / 5])
    assert m.counts[1].item() == 5
    if background:  # ([1, 2] + [2, 2]) / 2 = [1.5, 2], n = 2; ([3, 4] + 2 [1.5, 2]) / 3, n = 3
        assert m.prototypes[0].tolist() == pytest.approx([2.0, 8 / 3])
        assert m.counts[0].item() == 3
    else:
        assert m.prototypes[0].tolist() == [2.0, 2.0] and m.counts[0].item() == 1


def test_losses_see_the_updated_prototypes_and_state_waits_for_the_step():
    m = method(1, "disjoint", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    out = {"logits": torch.zeros(1, 2, 2, 2), "body": FEATURES}
    terms = m.loss({"label": LABELS}, out, {"logits": torch.zeros(1, 1, 2, 2)})
    assert set(terms) == {"unce", "unkd", "proto_match", "attraction", "repulsion", "sparsity"}
    # class 1's prototype is already its batch mean [2, 0]; background is not updated: [0, 0]
    # attraction = (MSE(a, [0, 0]) + mean(MSE(b, [2, 0]), MSE(c, [2, 0]))) / 2
    want = ((1 + 4) / 2 + ((1 + 0) / 2 + (1 + 0) / 2) / 2) / 2
    assert terms["attraction"].item() == pytest.approx(1e-3 * want)
    assert m.state_dict()["counts"].tolist() == [0, 0]  # committed by after_step only
    m.after_step(0)
    assert m.state_dict()["counts"].tolist() == [0, 2]


def test_old_class_pixels_from_labels_or_previous_model():
    labels = torch.tensor([[[0, 0], [2, 255]]])  # at the feature size
    # previous model (3 classes: bkg, 1, 2) on a 4 x 4 input: argmax 1 | 0 on the top row's
    # nearest pixels, 2 below
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, 0, 0] = 5.0  # pixel (0, 0) at the feature size reads input pixel (0, 0)
    logits[0, 2, 2:, :] = 5.0
    pseudo = old_class_labels(labels, logits, 3, from_labels=False)
    assert pseudo.tolist() == [[[1, 255], [255, 255]]]  # GT-background pixels only
    seq = old_class_labels(labels, logits, 3, from_labels=True)
    assert seq.tolist() == [[[255, 255], [2, 255]]]  # the GT's old classes, background out


def test_carried_prototypes_that_do_not_fit_are_one_sentence():
    m = method(1, "disjoint", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(IfssError, match=r"prototypes are 2 x 5, but this step has 3 classes and "
                                        r"a body of 2 channels"):
        m.load_state_dict({"prototypes": torch.zeros(2, 5), "counts": torch.zeros(2).long()})


# ---------------------------------------------------------------------------------------- runs

CHAIN = {"method": "SDR", "task": "15-5", "data.protocol": "disjoint"}
TERMS = ("unce", "unkd", "proto_match", "attraction", "repulsion", "sparsity")


@pytest.fixture(scope="module")
def step0(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdr") / "step0"
    run_tiny(synth_root, out, **CHAIN)
    return out


def test_step0_to_step1_carries_prototypes_and_logs_every_term(step0, synth_root, tmp_path):
    ckpt0 = torch.load(step0 / "model.pt", weights_only=True)
    _, model, _ = model_from_checkpoint(step0 / "model.pt")
    channels = model.body.out_channels
    p0, n0 = ckpt0["method"]["prototypes"], ckpt0["method"]["counts"]
    assert p0.shape == (16, channels) and n0.shape == (16,)
    assert n0[0] > 0 and (n0[1:] > 0).any()  # disjoint step 0: background counts too
    assert torch.equal(p0[n0 == 0], torch.zeros_like(p0[n0 == 0]))
    log0 = (step0 / "log.txt").read_text()
    assert " ce " in log0 and " sparsity " in log0

    step1 = tmp_path / "step1"
    run_tiny(synth_root, step1, **CHAIN, step=1, previous=step0 / "model.pt")
    state = torch.load(step1 / "model.pt", weights_only=True)["method"]
    p1, n1 = state["prototypes"], state["counts"]
    assert p1.shape == (21, channels) and n1.shape == (21,)
    # disjoint step 1: old classes are background, which is left out: old rows as carried
    assert torch.equal(p1[:16], p0) and torch.equal(n1[:16], n0)
    assert (n1[16:] > 0).any()
    lines = [line for line in (step1 / "log.txt").read_text().splitlines() if " iter " in line]
    assert lines and all(f" {t} " in lines[-1] for t in TERMS)


def test_resume_mid_step_gives_identical_prototypes_and_weights(step0, synth_root, tmp_path,
                                                                 monkeypatch):
    extra = {**CHAIN, "step": 1, "previous": step0 / "model.pt", "train.iterations": 4,
             "train.checkpoint_every": 2}
    run_tiny(synth_root, tmp_path / "whole", **extra)

    def crash_at_3(self, iteration, total):
        if iteration == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(SDR, "before_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(synth_root, tmp_path / "killed", **extra)
    resume = torch.load(tmp_path / "killed" / "resume.pt", weights_only=True)
    assert resume["iteration"] == 2 and resume["method"]["prototypes"].shape[0] == 21
    monkeypatch.undo()
    run_tiny(synth_root, tmp_path / "killed", **extra)
    assert "resumed from" in (tmp_path / "killed" / "log.txt").read_text()
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    for key in ("prototypes", "counts"):
        assert torch.equal(a["method"][key], b["method"][key])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not torch.equal(a["method"]["prototypes"][16:], resume["method"]["prototypes"][16:])
