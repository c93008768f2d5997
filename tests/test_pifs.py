"""Batch renormalisation with frozen statistics against its formula; PIFS; wrong step-0 base."""
import copy

import pytest
import torch

from conftest import run_tiny
from ifss.config import ModelConfig, build_config
from ifss.errors import IfssError
from ifss.models import build_model
from ifss.models.norm import (NORMS, BatchRenormAct, NormAct, batch_renorm, convert_batch_renorm,
                              norm_factory)


def renorm_by_hand(x, mean, var, weight, bias, eps):
    """y = w * ((x - mu_B)/sigma_B * r + d) + b, r and d constants, written out per channel."""
    mu_b = x.mean(dim=(0, 2, 3))
    var_b = ((x - mu_b.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
    sigma_b = (var_b + eps).sqrt()
    sigma = (var + eps).sqrt()
    r = (sigma_b / sigma).detach()
    d = ((mu_b - mean) / sigma).detach()
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return v(weight) * ((x - v(mu_b)) / v(sigma_b) * v(r) + v(d)) + v(bias)


def layer():
    torch.manual_seed(0)
    bn = BatchRenormAct(3, "identity", eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return bn


def test_batch_renorm_train_mode_formula_frozen_stats_and_gradients():
    bn = layer().train()
    x = (torch.randn(4, 3, 5, 5) * 3 + 1).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    y = bn(x)
    expected = renorm_by_hand(x_ref, stats[0], stats[1], bn.weight, bn.bias, 1e-3)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # the running statistics never move
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    # without clipping the value equals the running-statistics normalisation...
    eval_value = bn.weight.view(1, -1, 1, 1) * (x_ref - stats[0].view(1, -1, 1, 1)) / \
        (stats[1].view(1, -1, 1, 1) + 1e-3).sqrt() + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, eval_value, rtol=1e-5, atol=1e-5)
    # ...but the gradient goes through the batch statistics (r, d constant), as by hand
    g = torch.randn_like(y)
    (y * g).sum().backward()
    layer_grads = bn.weight.grad.clone(), bn.bias.grad.clone()
    (expected * g).sum().backward()  # (also adds into bn.weight.grad: compared from the copy)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    eval_grad = torch.autograd.grad((eval_value * g).sum(), x_ref)[0]
    assert not torch.allclose(x.grad, eval_grad, atol=1e-3)
    # weight and bias gradients as autograd gives them on the written-out formula
    w, b = bn.weight.detach().clone().requires_grad_(True), bn.bias.detach().clone().requires_grad_(True)
    by_hand = renorm_by_hand(x_ref.detach(), stats[0], stats[1], w, b, 1e-3)
    gw, gb = torch.autograd.grad((by_hand * g).sum(), (w, b))
    torch.testing.assert_close(layer_grads[0], gw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer_grads[1], gb, rtol=1e-4, atol=1e-5)


def test_batch_renorm_without_affine_and_channels_last_matches_the_formula():
    torch.manual_seed(1)
    mean, var = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([4.0, 0.25, 1.0])
    x = (torch.randn(3, 3, 4, 6) * 2 - 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    x_ref = x.detach().contiguous().requires_grad_(True)
    y = batch_renorm(x, mean, var, None, None, 1e-3)
    ones, zeros = torch.ones(3), torch.zeros(3)
    expected = renorm_by_hand(x_ref, mean, var, ones, zeros, 1e-3)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn(3, 3, 4, 6)
    (y * g).sum().backward()
    (expected * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


def test_batch_renorm_eval_uses_running_stats():
    bn = layer().eval()
    x = torch.randn(2, 3, 4, 4)
    expected = torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                              bn.bias, False, 0.0, 1e-3)
    torch.testing.assert_close(bn(x), expected)
    relu = BatchRenormAct(3, "relu").eval()
    assert (relu(torch.randn(2, 3, 4, 4)) >= 0).all()


def test_brn_kind_and_conversion_keep_weights_stats_and_activation():
    assert "brn" in NORMS
    assert isinstance(norm_factory("brn", "leaky_relu")(4), BatchRenormAct)
    cfg = ModelConfig(activation="leaky_relu", pooling_size=2, head_channels=8)
    torch.manual_seed(0)
    model = build_model(cfg, [3, 2], "cosine")
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, NormAct):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)["logits"]
    convert_batch_renorm(model)
    assert not any(type(m) is NormAct for m in model.modules())
    renorms = [m for m in model.modules() if isinstance(m, BatchRenormAct)]
    assert renorms and {m.activation for m in renorms} == {"leaky_relu", "identity"}
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        torch.testing.assert_close(model(x)["logits"], before)
    # a batch-norm checkpoint loads into a model built with norm=brn
    brn_model = build_model(ModelConfig(activation="leaky_relu", pooling_size=2, head_channels=8,
                                        norm="brn"), [3, 2], "cosine")
    brn_model.load_state_dict(state)
    with pytest.raises(IfssError, match="model.norm=bn"):
        convert_batch_renorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))


# --- runs on the synthetic benchmark ---------------------------------------------------------

def test_pifs_step1_distils_from_the_imprinted_model_with_batch_renorm(synth_root, cos_step0, tmp_path,
                                                                       monkeypatch):
    from ifss.methods.pifs import PIFS

    seen = {}
    original = PIFS.prepare

    def spy(self, model, old_model, data):
        original(self, model, old_model, data)
        seen["teacher"] = self.old_model
        seen["new_weights"] = model.classifier.convs[1].weight.detach().clone()
        seen["renorm"] = sum(isinstance(m, BatchRenormAct) for m in model.modules())
        seen["plain"] = sum(type(m) is NormAct for m in model.modules())

    monkeypatch.setattr(PIFS, "prepare", spy)
    out = tmp_path / "pifs"
    m = run_tiny(synth_root, out, method="PIFS", step=1, nshot=1, previous=cos_step0,
            **{"train.iterations": 4, "train.lr": 0.001, "data.batch_size": 5})
    assert m["config"]["params"] == {"loss_kd": 10.0, "kd_temperature": 1.0, "kd_clip": 10.0,
                                     "batch_renorm": True}
    teacher = seen["teacher"]
    assert teacher.classifier.num_classes == 21 and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    # the teacher holds the imprinted weights; the student moved away from them
    torch.testing.assert_close(teacher.classifier.convs[1].weight, seen["new_weights"])
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    assert not torch.equal(saved["classifier.convs.1.weight"], seen["new_weights"])
    assert seen["renorm"] > 0 and seen["plain"] == 0
    # batch renorm froze the running statistics: they are the step-0 ones
    old = torch.load(cos_step0, weights_only=True)["model"]
    assert torch.equal(saved["body.bn1.running_mean"], old["body.bn1.running_mean"])
    assert torch.equal(saved["head.map_bn.running_var"], old["head.map_bn.running_var"])
    assert not torch.equal(saved["body.conv1.weight"], old["body.conv1.weight"])
    log = (out / "log.txt").read_text()
    assert " kd " in log and " ce " in log


def test_pifs_loss_terms_by_hand():
    from ifss.losses import knowledge_distillation, segmentation_ce
    from ifss.methods.pifs import PIFS, PIFSParams

    method = PIFS(PIFSParams(), build_config(None, []), None)
    torch.manual_seed(0)
    new, old = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    label = torch.randint(0, 4, (2, 3, 3))
    terms = method.loss({"label": label}, {"logits": new}, {"logits": old})
    torch.testing.assert_close(terms["ce"], segmentation_ce(new, label))
    torch.testing.assert_close(terms["kd"], 10 * knowledge_distillation(new, old, 1.0))
    big = method.loss({"label": label}, {"logits": -1000 * old}, {"logits": 1000 * old})
    assert big["kd"].item() == 0.0  # above kd_clip: dropped for this batch


@pytest.mark.parametrize("method,base", [("PIFS", "COS"), ("WI", "COS"), ("AMP", "FT")])
def test_wrong_step0_base_names_the_right_one(synth_root, cos_step0, tmp_path, method, base):
    ckpt = torch.load(cos_step0, weights_only=True)
    wrong = "FT" if base == "COS" else "COS"
    ckpt["meta"]["method"] = wrong
    path = tmp_path / "other.pt"
    torch.save(ckpt, path)
    msg = (f"method {method} starts from the step-0 model of {base}, but {path} was trained by "
           f"{wrong}; give the {base} step-0 model.pt")
    with pytest.raises(IfssError) as err:
        run_tiny(synth_root, tmp_path / "x", method=method, step=1, nshot=1, previous=path,
            **{"train.iterations": 0, "train.epochs": 0})
    assert str(err.value) == msg


def test_dwi_step1_needs_the_dwi_step0_model(synth_root, cos_step0, tmp_path):
    with pytest.raises(IfssError, match="step-0 model of DWI, but .* was trained by COS"):
        run_tiny(synth_root, tmp_path / "x", method="DWI", step=1, nshot=1, previous=cos_step0,
            **{"train.iterations": 0, "train.epochs": 0})
