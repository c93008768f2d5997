"""Architectures by name (model.arch) behind one model contract: DeepLab-v3 unchanged, PSPNet's
head, ImageNet bodies, previous-step loading, classifier growth."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ifss.config import ModelConfig
from ifss.errors import IfssError
from ifss.models import (ARCHITECTURES, ASPP, LinearClassifier, PSPHead, build_body, build_model,
                         norm_factory)
from ifss.models.norm import fix_norm_statistics


def _psp(**kw) -> ModelConfig:
    return ModelConfig(arch="pspnet", **kw)


def _key_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def test_registry_names():
    assert set(ARCHITECTURES) == {"deeplabv3", "pspnet", "maskformer"}
    assert ModelConfig().arch == "deeplabv3"


def test_deeplabv3_builds_exactly_as_before():
    """Same modules, names, init order and RNG draws as the hard-wired body -> ASPP -> classifier
    (seeded runs stay bit-identical, old checkpoints load)."""
    cfg = ModelConfig()
    torch.manual_seed(0)
    model = build_model(cfg, [3, 2])
    after_model = torch.rand(4)

    torch.manual_seed(0)
    norm = norm_factory(cfg.norm, cfg.activation)
    body = build_body(cfg.backbone, cfg.output_stride, norm, cfg.dilate_first_block)
    head = ASPP(body.out_channels, cfg.head_channels, cfg.head_channels, cfg.output_stride, norm,
                pooling=cfg.pooling, pooling_size=cfg.pooling_size)
    cls = LinearClassifier(cfg.head_channels, [3, 2])
    after_direct = torch.rand(4)

    direct = {**{f"body.{k}": v for k, v in body.state_dict().items()},
              **{f"head.{k}": v for k, v in head.state_dict().items()},
              **{f"classifier.{k}": v for k, v in cls.state_dict().items()}}
    state = model.state_dict()
    assert list(state) == list(direct)
    for key, value in state.items():
        assert torch.equal(value, direct[key]), key
    assert torch.equal(after_model, after_direct)
    # names, shapes and dtypes as recorded before architectures became a registry
    assert _key_fingerprint(model) == "98d45819666fa12a"


def test_unknown_arch_names_the_option():
    with pytest.raises(IfssError) as err:
        build_model(ModelConfig(arch="psp"), [2])
    assert str(err.value) == ("unknown architecture 'psp' in model.arch (did you mean pspnet?); "
                              "valid architectures: deeplabv3, pspnet, maskformer")


@pytest.mark.parametrize("output_stride", [8, 16])
def test_pspnet_shapes(output_stride):
    torch.manual_seed(0)
    model = build_model(_psp(output_stride=output_stride, head_channels=24), [3, 2])
    assert isinstance(model.head, PSPHead) and model.head.out_channels == 24
    assert len(model.head.features) == 4
    assert model.head.features[0][1].out_channels == model.body.out_channels // 4
    out = model(torch.randn(2, 3, 64, 48))
    h, w = 64 // output_stride, 48 // output_stride
    assert out["logits"].shape == (2, 5, 64, 48)
    assert out["features"].shape == (2, 24, h, w)
    assert out["body"].shape == (2, model.body.out_channels, h, w)


def test_pspnet_trains_on_one_image():
    """Bin 1 of one image has one value per channel: that norm uses its running statistics."""
    torch.manual_seed(0)
    model = build_model(_psp(), [2]).train()
    bin1, bin2 = model.head.features[0][2], model.head.features[1][2]
    before1, before2 = bin1.running_mean.clone(), bin2.running_mean.clone()
    out = model(torch.randn(1, 3, 64, 64))
    out["logits"].sum().backward()
    assert bin1.training and torch.equal(bin1.running_mean, before1)
    assert not torch.equal(bin2.running_mean, before2)
    assert model.head.features[0][1].weight.grad is not None


def test_one_value_norm_keeps_fixed_statistics():
    """train.fix_bn puts norms in eval mode inside a training model; a one-image batch must not
    switch them back to training."""
    head = PSPHead(8, 4, bins=[1, 2]).train()
    fix_norm_statistics(head)
    head(torch.randn(1, 8, 5, 5))
    assert not head.features[0][2].training and not head.features[1][2].training
    aspp = ASPP(8, 4).train()
    fix_norm_statistics(aspp)
    aspp(torch.randn(1, 8, 5, 5))
    assert not aspp.global_pooling_bn.training


def test_psp_head_computes_the_pyramid():
    """Eval-mode output against the formula written out with functional ops."""
    torch.manual_seed(0)
    head = PSPHead(8, 6, bins=[1, 2, 3], dropout=0.5)
    for m in head.modules():  # non-trivial statistics so a wrong order would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    head.eval()
    x = torch.randn(2, 8, 7, 5)

    def bn_relu(y, bn):
        return F.relu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                   False, 0.0, bn.eps))

    parts = [x]
    for b, (_, conv, bn) in zip([1, 2, 3], head.features):
        y = bn_relu(F.conv2d(F.adaptive_avg_pool2d(x, b), conv.weight), bn)
        parts.append(F.interpolate(y, size=(7, 5), mode="bilinear", align_corners=True))
    conv, bn = head.bottleneck[0], head.bottleneck[1]
    expected = bn_relu(F.conv2d(torch.cat(parts, 1), conv.weight, padding=1), bn)
    assert conv.in_channels == 8 + 3 * (8 // 3)
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)
    assert head.bottleneck[2].p == 0.5  # Dropout2d: active in training only
    head.train()
    fix_norm_statistics(head)
    with torch.no_grad():
        assert not torch.equal(head(x), expected)


def test_psp_head_rejects_bad_settings():
    with pytest.raises(IfssError, match=r"model\.psp_bins"):
        PSPHead(8, 4, bins=[])
    with pytest.raises(IfssError, match=r"model\.psp_bins"):
        PSPHead(8, 4, bins=[1, 0])
    with pytest.raises(IfssError, match=r"model\.dropout"):
        PSPHead(8, 4, dropout=1.0)
    with pytest.raises(IfssError, match="fewer bins"):
        PSPHead(2, 4, bins=[1, 2, 3])


def test_pspnet_resnet50_loads_torchvision_weights(tmp_path):
    """The GFSS backbone: PSPNet, ResNet-50 at output stride 8, bottleneck 512; the body loads a
    torchvision-named ImageNet file through the usual loader."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50-test.pth"
    torch.save(tv, path)
    cfg = _psp(backbone="resnet50", output_stride=8, head_channels=512, pretrained=str(path))
    model = build_model(cfg, [16, 1])
    assert torch.equal(model.body.layer4[2].conv3.weight, tv["layer4.2.conv3.weight"])
    assert torch.equal(model.body.conv1.weight, tv["conv1.weight"])
    assert model.head.features[0][1].in_channels == 2048
    assert model.head.bottleneck[0].in_channels == 4096
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out["features"].shape == (1, 512, 4, 4) and out["logits"].shape == (1, 17, 32, 32)


def test_pspnet_with_embedding_classifier():
    model = build_model(_psp(), [2, 1], classifier="embedding", embedding_dim=10)
    assert model.head.out_channels == 10
    assert model(torch.randn(2, 3, 32, 32))["features"].shape[1] == 10


@pytest.mark.parametrize("arch", ["deeplabv3", "pspnet"])
def test_load_previous_step_leaves_the_new_step_fresh(arch):
    torch.manual_seed(0)
    previous = build_model(ModelConfig(arch=arch), [3])
    for p in previous.parameters():
        p.data.normal_()
    state = {k: v for k, v in previous.state_dict().items()
             if k != "body.bn1.num_batches_tracked"}  # as in files from other norm layers
    model = build_model(ModelConfig(arch=arch), [3, 2])
    fresh = {k: v.clone() for k, v in model.state_dict().items()
             if k.startswith("classifier.convs.1.")}
    model.load_previous_step(state, "prev/model.pt")
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert fresh and all(torch.equal(loaded[k], v) for k, v in fresh.items())


def test_load_previous_step_rejects_other_models():
    deeplab = build_model(ModelConfig(), [3]).state_dict()
    model = build_model(_psp(), [3, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IfssError, match=r"checkpoint prev/model\.pt does not fit.*"
                                        r"missing keys head\.features\.0\.1\.weight.*"
                                        r"unexpected keys head\.map_convs.*model\.arch"):
        model.load_previous_step(deeplab, "prev/model.pt")
    after = model.state_dict()  # checked before copying: nothing changed
    assert all(torch.equal(after[k], v) for k, v in before.items())

    wider = build_model(_psp(head_channels=32), [3]).state_dict()
    with pytest.raises(IfssError, match=r"head\.bottleneck\.0\.weight has shape"):
        model.load_previous_step(wider, "wide.pt")
    # a state with the new step too loads; one with a step more than the model does not
    model.load_previous_step(build_model(_psp(), [3, 2]).state_dict(), "same.pt")
    with pytest.raises(IfssError, match=r"unexpected keys classifier\.convs\.2\.weight"):
        model.load_previous_step(build_model(_psp(), [3, 2, 1]).state_dict(), "more.pt")
    # only the newest step may be missing
    older = {k: v for k, v in build_model(_psp(), [3]).state_dict().items()
             if not k.startswith("classifier.convs.0.")}
    with pytest.raises(IfssError, match=r"missing keys classifier\.convs\.0\.weight"):
        model.load_previous_step(older, "older.pt")


@pytest.mark.parametrize("arch", ["deeplabv3", "pspnet"])
def test_add_classifier_step_and_param_groups(arch):
    model = build_model(ModelConfig(arch=arch), [2], classifier="cosine")
    conv = model.add_classifier_step(3)
    assert model.classifier.classes_per_step == [2, 3] and conv is model.classifier.convs[1]
    assert model(torch.randn(2, 3, 32, 32))["logits"].shape == (2, 5, 32, 32)
    groups = model.param_groups()
    assert set(groups) == {"body", "head", "classifier"}
    ids = sorted(id(p) for ps in groups.values() for p in ps)
    assert ids == sorted(id(p) for p in model.parameters())
