"""LWF, ILT, MIB and RT: each loss is the right combination of the ifss.losses functions, MiB's
init copies the LOADED background classifier, RT trains nothing but its new classifier, and one
synthetic chain (FT step 0 -> step 1) per method writes its metrics."""
import json
import math

import pytest
import torch

from conftest import tiny_overrides
from ifss import losses
from ifss.config import ModelConfig, RunConfig, build_config
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.distillation import IncrementalLearningTechniques, LearningWithoutForgetting
from ifss.methods.mib import ModelingTheBackground, initialise_new_classifier
from ifss.methods.retrain import Retraining
from ifss.models import LinearClassifier, build_model
from ifss.run import train_run

CPU = Runtime(torch.device("cpu"))
OLD_C, NEW_C = 3, 5  # background + 2 old classes; + 2 new classes
# few-shot labels: background, old classes, new classes, void
LABELS = torch.tensor([[0, 1, 2, 3], [4, 255, 0, 3], [1, 1, 4, 255], [0, 2, 3, 3]]).repeat(2, 1, 1)


def make(cls, step=1, **params):
    return cls(cls.Params(**params), RunConfig(step=step), CPU)


def outputs(seed: int, channels: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"logits": 2 * torch.randn(2, channels, 4, 4, generator=g),
            "features": torch.randn(2, 6, 2, 2, generator=g),
            "body": torch.randn(2, 8, 1, 1, generator=g)}


NEW, OLD = outputs(0, NEW_C), outputs(1, OLD_C)
BATCH = {"label": LABELS}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ loss composition

def test_lwf_is_ce_plus_weighted_kd():
    terms = make(LearningWithoutForgetting, loss_kd=3.0, kd_temperature=2.0).loss(BATCH, NEW, OLD)
    assert set(terms) == {"ce", "kd"}
    assert close(terms["ce"], losses.segmentation_ce(NEW["logits"], LABELS))
    assert close(terms["kd"], 3.0 * losses.knowledge_distillation(NEW["logits"], OLD["logits"], 2.0))
    # the defaults are the PIFS few-shot preset
    assert LearningWithoutForgetting.Params() == LearningWithoutForgetting.Params(10.0, 1.0)


def test_kd_by_hand_on_one_pixel():
    """The KD term on one pixel, from its formula: -(1/C_old) sum_c q_c log p_c, times the weight."""
    new = {"logits": torch.tensor([1.0, 2.0, 0.5, -1.0]).view(1, 4, 1, 1)}
    old = {"logits": torch.tensor([0.5, 1.5, 0.0]).view(1, 3, 1, 1)}
    batch = {"label": torch.tensor([[[3]]])}
    q = torch.softmax(torch.tensor([0.5, 1.5, 0.0]), 0)
    log_p = torch.log_softmax(torch.tensor([1.0, 2.0, 0.5]), 0)  # narrowed to the old channels
    expected = 10 * float(-(q * log_p).sum() / 3)
    ce = -math.log(math.exp(-1.0) / sum(math.exp(v) for v in (1.0, 2.0, 0.5, -1.0)))
    terms = make(LearningWithoutForgetting).loss(batch, new, old)
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)


@pytest.mark.parametrize("feature, key", [("head", "features"), ("body", "body")])
def test_ilt_adds_weighted_feature_mse(feature, key):
    method = make(IncrementalLearningTechniques, loss_kd=2.0, loss_de=5.0, feature=feature)
    terms = method.loss(BATCH, NEW, OLD)
    assert set(terms) == {"ce", "kd", "de"}
    assert close(terms["kd"], 2.0 * losses.knowledge_distillation(NEW["logits"], OLD["logits"]))
    assert close(terms["de"], 5.0 * ((NEW[key] - OLD[key]) ** 2).mean())
    assert IncrementalLearningTechniques.Params().feature == "head"


def test_ilt_rejects_an_unknown_feature():
    with pytest.raises(IfssError, match="params.feature='neck'.*head, body"):
        make(IncrementalLearningTechniques, feature="neck")


def test_mib_is_unce_plus_weighted_unkd():
    terms = make(ModelingTheBackground, loss_kd=7.0).loss(BATCH, NEW, OLD)
    assert set(terms) == {"unce", "unkd"}
    assert close(terms["unce"], losses.unbiased_cross_entropy(NEW["logits"], LABELS, OLD_C))
    assert close(terms["unkd"],
                 7.0 * losses.unbiased_distillation(NEW["logits"], OLD["logits"]))
    # old-class pixels are "old or background" targets: same loss as if they were background
    as_bkg = torch.where((LABELS > 0) & (LABELS < OLD_C), torch.zeros_like(LABELS), LABELS)
    assert close(terms["unce"], losses.unbiased_cross_entropy(NEW["logits"], as_bkg, OLD_C))


def test_mib_init_copies_background_row():
    torch.manual_seed(0)
    cls = LinearClassifier(4, [3, 2])
    w0, b0 = cls.convs[0].weight.detach().clone(), cls.convs[0].bias.detach().clone()
    initialise_new_classifier(cls, 1)
    value = b0[0] - math.log(2 + 1)
    for row in range(2):
        assert torch.equal(cls.convs[1].weight[row], w0[0])
        assert cls.convs[1].bias[row].item() == pytest.approx(value.item())
    assert cls.convs[0].bias[0].item() == pytest.approx(value.item())
    assert torch.equal(cls.convs[0].weight, w0) and torch.equal(cls.convs[0].bias[1:], b0[1:])
    # predictions unchanged: background's probability is shared by background and new classes
    x = torch.randn(1, 4, 2, 2)
    before = torch.softmax(torch.nn.functional.conv2d(x, w0, b0), 1)
    after = torch.softmax(cls(x), 1)
    assert torch.allclose(after[:, 1:3], before[:, 1:3], atol=1e-6)
    assert torch.allclose(after[:, [0, 3, 4]].sum(1), before[:, 0], atol=1e-6)


# ------------------------------------------------------------------------------ RT's frozen parts

@pytest.mark.parametrize("update_bn", [False, True])
def test_rt_train_mode_freezes_batch_norm_statistics(update_bn):
    """RT's train_mode hook: body and head stay in eval mode (statistics kept) unless update_bn."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(head_channels=8, pooling_size=2), [3, 2])
    method = make(Retraining, update_bn=update_bn)
    method.prepare(model, None, None)
    before = model.body.bn1.running_mean.clone()
    method.train_mode(model)
    model(torch.randn(2, 3, 32, 32))
    assert model.body.training is update_bn and model.head.training is update_bn
    assert model.classifier.training
    assert torch.equal(model.body.bn1.running_mean, before) is not update_bn


def test_rt_param_groups_train_only_the_new_conv():
    model = build_model(ModelConfig(head_channels=8, pooling_size=2), [3, 2])
    groups = {g["name"]: g for g in make(Retraining).param_groups(model, RunConfig().train)}
    assert [id(p) for p in groups["classifier_new"]["params"]] == \
        [id(p) for p in model.classifier.convs[1].parameters()]
    assert groups["classifier_new"]["lr_mult"] == 1.0
    assert all(groups[n]["lr_mult"] == 0 for n in ("body", "head", "classifier_old"))
    ids = sorted(id(p) for g in groups.values() for p in g["params"])
    assert ids == sorted(id(p) for p in model.parameters())


# ------------------------------------------------------------------------------ synthetic chains

NO_TRAINING = {"train.iterations": 0, "train.epochs": 0}

@pytest.fixture(scope="module")
def ft0(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft0")
    train_run(build_config(None, tiny_overrides(synth_root, method="FT")), out)
    return out


def step1(root, out, method, previous, **extra):
    cfg = build_config(None, tiny_overrides(root, method=method, step=1, nshot=1,
                                            previous=str(previous / "model.pt"), **extra))
    train_run(cfg, out)
    return torch.load(out / "model.pt", weights_only=True)["model"]


@pytest.mark.parametrize("method", ["LWF", "ILT", "MIB"])
def test_chain_writes_metrics(method, ft0, synth_root, tmp_path):
    step1(synth_root, tmp_path, method, ft0)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["method"] == method and m["base_method"] == "FT" and m["step"] == 1
    assert m["miou_base"] is not None and m["miou_novel"] is not None and len(m["iou"]) == 21
    saved = m["config"]["params"]
    assert saved["loss_kd"] == 10.0 and (method != "ILT" or saved["loss_de"] == 10.0)


def test_mib_init_runs_after_the_previous_weights_are_loaded(ft0, synth_root, tmp_path):
    """No training step: the new classifier is exactly MiB's init of the LOADED background."""
    state = step1(synth_root, tmp_path, "MIB", ft0, **NO_TRAINING)
    old = torch.load(ft0 / "model.pt", weights_only=True)["model"]
    w_bkg, b_bkg = old["classifier.convs.0.weight"][0], old["classifier.convs.0.bias"][0]
    value = b_bkg - math.log(5 + 1)  # five new classes
    assert all(torch.equal(row, w_bkg) for row in state["classifier.convs.1.weight"])
    assert torch.allclose(state["classifier.convs.1.bias"], value.expand(5))
    assert torch.allclose(state["classifier.convs.0.bias"][0], value)


def test_rt_chain_trains_only_its_classifier(ft0, synth_root, tmp_path):
    def frozen(state, extra=()):
        return {k: v for k, v in state.items()
                if k.startswith(("body.", "head.")) or k.startswith(extra)}

    ft = torch.load(ft0 / "model.pt", weights_only=True)["model"]
    cfg = build_config(None, tiny_overrides(synth_root, method="RT",
                                            previous=str(ft0 / "model.pt")))
    train_run(cfg, tmp_path / "rt0")
    rt0 = torch.load(tmp_path / "rt0" / "model.pt", weights_only=True)["model"]
    # step 0: FT's body and head (BN statistics included) untouched, its classifier retrained
    assert all(torch.equal(v, rt0[k]) for k, v in frozen(ft).items())
    assert not torch.equal(ft["classifier.convs.0.weight"], rt0["classifier.convs.0.weight"])

    rt1 = step1(synth_root, tmp_path / "rt1", "RT", tmp_path / "rt0")
    untrained = step1(synth_root, tmp_path / "rt1-0", "RT", tmp_path / "rt0", **NO_TRAINING)
    assert all(torch.equal(v, rt1[k]) for k, v in frozen(rt0, ("classifier.convs.0.",)).items())
    assert not torch.equal(untrained["classifier.convs.1.weight"], rt1["classifier.convs.1.weight"])
    assert json.loads((tmp_path / "rt1" / "metrics.json").read_text())["miou_novel"] is not None


def test_rt_step0_needs_the_ft_model(synth_root, tmp_path):
    with pytest.raises(IfssError, match="starts from the step-0 model of FT"):
        train_run(build_config(None, tiny_overrides(synth_root, method="RT")), tmp_path)
