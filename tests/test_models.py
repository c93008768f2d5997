"""Models: shapes, torchvision / InPlace-ABN weight loading, classifiers, ASPP pooling."""
from __future__ import annotations

import hashlib
import re
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ifss.config import ModelConfig
from ifss.errors import IfssError
from ifss.models import (ASPP, CosineClassifier, LinearClassifier, build_body, build_model,
                         load_imagenet, norm_factory)
from ifss.models import pretrained
from ifss.models.norm import NormAct


def _cfg(**kw) -> ModelConfig:
    kw.setdefault("pooling_size", 4)
    return ModelConfig(**kw)


@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet18", "resnet34"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_shapes(backbone, output_stride):  # resnet50: see the torchvision test below
    torch.manual_seed(0)
    model = build_model(_cfg(backbone=backbone, output_stride=output_stride), [3, 2])
    out = model(torch.randn(2, 3, 64, 64))
    side = 64 // output_stride
    assert out["logits"].shape == (2, 5, 64, 64)
    assert out["features"].shape == (2, 64, side, side)
    assert out["body"].shape == (2, model.body.out_channels, side, side)


def test_resnet101_shape():
    body = build_body("resnet101", 16)
    with torch.no_grad():
        assert body(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 2, 2)


def test_unknown_names_list_valid_values():
    with pytest.raises(IfssError, match="resnet50"):
        build_model(_cfg(backbone="resnet12"), [2])
    with pytest.raises(IfssError, match="16"):
        build_model(_cfg(output_stride=32), [2])
    with pytest.raises(IfssError, match="bn"):
        build_model(_cfg(norm="gn"), [2])
    with pytest.raises(IfssError, match="leaky_relu"):
        build_model(_cfg(activation="gelu"), [2])
    with pytest.raises(IfssError, match="cosine"):
        build_model(_cfg(), [2], classifier="mlp")


def test_resnet50_keys_match_torchvision():
    ours = build_body("resnet50").state_dict()
    theirs = torchvision.models.resnet50(weights=None).state_dict()
    assert set(ours) == {k for k in theirs if not k.startswith("fc.")}
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("output_stride,dilate", [(16, [False, False, True]),
                                                  (8, [False, True, True])])
def test_torchvision_file_loads_and_computes_the_same(tmp_path, output_stride, dilate):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate).eval()
    for m in tv.modules():  # non-trivial statistics so a wrong mapping would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50-test.pth"
    torch.save(tv.state_dict(), path)
    body = build_body("resnet50", output_stride).eval()
    load_imagenet(body, path)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(y))))
        out = body(x)
    assert out.shape == (1, 2048, 48 // output_stride, 48 // output_stride)
    torch.testing.assert_close(out, expected)


def _to_iabn_key(key: str) -> str:
    """The inverse of the loader's mapping, written independently for the test."""
    if key.startswith(("conv1.", "bn1.")):
        return "module.mod1." + key
    m = re.match(r"layer(\d)\.(\d+)\.(.+)$", key)
    layer, block, rest = int(m[1]), int(m[2]), m[3]
    rest = rest.replace("downsample.0.", "proj_conv.").replace("downsample.1.", "proj_bn.")
    if not rest.startswith("proj_"):
        rest = "convs." + rest
    return f"module.mod{layer + 1}.block{block + 1}.{rest}"


def test_inplace_abn_checkpoint_maps_to_torchvision_names(tmp_path):
    torch.manual_seed(0)
    source = build_body("resnet50")
    for p in source.state_dict().values():
        if p.is_floating_point():
            p.normal_()
    state = {_to_iabn_key(k): v for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert "module.mod5.block1.proj_conv.weight" in state
    assert "module.mod3.block4.convs.bn3.running_var" in state
    state["classifier.fc.weight"] = torch.zeros(1000, 2048)
    state["classifier.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet50_iabn.pth.tar"
    torch.save({"state_dict": state}, path)

    target = build_body("resnet50", norm=norm_factory("bn", "leaky_relu"))
    load_imagenet(target, path)
    loaded = target.state_dict()
    norm_scales = {f"{n}.weight" for n, m in target.named_modules()
                   if isinstance(m, torch.nn.BatchNorm2d)}
    assert "layer3.1.bn2.weight" in norm_scales and "layer2.0.downsample.1.weight" in norm_scales
    for key, value in source.state_dict().items():
        if key in norm_scales:  # InPlace-ABN's effective scale |w| + eps
            assert torch.equal(loaded[key], value.abs() + 1e-5), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key
    # a torchvision-layout file keeps its scales as they are
    plain = tmp_path / "resnet50_tv.pth"
    torch.save(source.state_dict(), plain)
    load_imagenet(target, plain)
    assert torch.equal(target.state_dict()["bn1.weight"], source.state_dict()["bn1.weight"])


def test_wrong_file_names_the_file(tmp_path):
    path = tmp_path / "not_resnet.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 7, 7), "head.weight": torch.zeros(1)}, path)
    with pytest.raises(IfssError, match=r"not_resnet\.pth.*resnet_tiny"):
        load_imagenet(build_body("resnet_tiny"), path)
    # right keys, wrong backbone: shapes differ
    r18 = tmp_path / "r18.pth"
    torch.save(build_body("resnet18").state_dict(), r18)
    with pytest.raises(IfssError, match=r"r18\.pth.*shape"):
        load_imagenet(build_body("resnet_tiny"), r18)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(IfssError, match="garbage.pth"):
        load_imagenet(build_body("resnet_tiny"), garbage)
    with pytest.raises(IfssError, match=r"resnet101-63fe2227\.pth.*download\.pytorch\.org"):
        load_imagenet(build_body("resnet_tiny"), tmp_path / "resnet101-63fe2227.pth")


def test_build_model_loads_pretrained(tmp_path):
    body = build_body("resnet_tiny")
    path = tmp_path / "tiny.pth"
    torch.save(body.state_dict(), path)
    model = build_model(_cfg(pretrained=str(path)), [2])
    assert torch.equal(model.body.conv1.weight, body.conv1.weight)


def test_cosine_classifier_formula():
    torch.manual_seed(0)
    cls = CosineClassifier(4, [2, 1], scale=10.0)
    x = torch.randn(2, 4, 3, 3)
    w = torch.cat([c.weight[:, :, 0, 0] for c in cls.convs])  # (3, 4)
    xn = x / x.norm(dim=1, keepdim=True)
    wn = w / w.norm(dim=1, keepdim=True)
    expected = 10.0 * torch.einsum("bchw,kc->bkhw", xn, wn)
    torch.testing.assert_close(cls(x), expected)
    torch.testing.assert_close(cls.step_logits(1, x), expected[:, 2:3])
    assert cls.step_slice(1) == slice(2, 3) and cls.step_slice(-1) == slice(2, 3)


def test_linear_classifier_add_step_keeps_old_weights():
    cls = LinearClassifier(8, [3])
    old_w, old_b = cls.convs[0].weight.detach().clone(), cls.convs[0].bias.detach().clone()
    x = torch.randn(1, 8, 2, 2)
    before = cls(x)
    cls.add_step(2)
    assert cls.num_classes == 5 and cls.classes_per_step == [3, 2] and len(cls.convs) == 2
    assert cls.step_slice(1) == slice(3, 5)
    after = cls(x)
    assert after.shape == (1, 5, 2, 2)
    assert torch.equal(cls.convs[0].weight, old_w) and torch.equal(cls.convs[0].bias, old_b)
    torch.testing.assert_close(after[:, :3], before)


def test_aspp_pooling_train_global_eval_local():
    torch.manual_seed(0)
    head = ASPP(4, 6, output_stride=16, pooling_size=3)
    x = torch.randn(2, 4, 8, 8)
    head.train()
    torch.testing.assert_close(head.pooled(x), x.mean(dim=(2, 3), keepdim=True))
    head.eval()
    local = head.pooled(x)
    assert local.shape == x.shape
    assert not torch.allclose(local, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    torch.testing.assert_close(local[:, :, 4, 4], x[:, :, 3:6, 3:6].mean(dim=(2, 3)))
    assert head(x).shape == (2, 6, 8, 8)
    # a window as large as the map is the global mean again
    head.pooling_size = 16
    torch.testing.assert_close(head.pooled(x), x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    # even window: replicate padding still keeps H x W
    head.pooling_size = 4
    assert head.pooled(torch.randn(1, 4, 7, 5)).shape == (1, 4, 7, 5)


def test_training_batch_of_one_image():
    model = build_model(_cfg(), [2]).train()
    bn = model.head.global_pooling_bn
    before = bn.running_mean.clone()
    out = model(torch.randn(1, 3, 64, 64))
    out["logits"].sum().backward()
    assert bn.training and torch.equal(bn.running_mean, before)
    assert not torch.equal(model.body.bn1.running_mean, torch.zeros(16))


def test_aspp_without_pooling_branch():
    head = ASPP(4, 6, pooling=False)
    assert not any("pool" in k for k in head.state_dict())
    assert head(torch.randn(2, 4, 5, 5)).shape == (2, 6, 5, 5)


def test_param_groups_cover_all_parameters():
    model = build_model(_cfg(), [2, 1], classifier="cosine")
    groups = model.param_groups()
    assert set(groups) == {"body", "head", "classifier"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(c.bias is None for c in model.classifier.convs)


def test_model_state_dict_loads_weights_only(tmp_path):
    model = build_model(_cfg(), [2, 1])
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "classes_per_step": [2, 1]}, path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    again = build_model(_cfg(), data["classes_per_step"])
    again.load_state_dict(data["model"])
    x = torch.randn(2, 3, 32, 32)
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)["logits"], again(x)["logits"])


def test_norm_act_loads_without_num_batches_tracked():
    bn = NormAct(4, "leaky_relu")
    state = {k: v for k, v in NormAct(4).state_dict().items() if k != "num_batches_tracked"}
    bn.load_state_dict(state)  # strict
    x = torch.randn(2, 4, 3, 3)
    bn.eval()
    torch.testing.assert_close(bn(x), F.leaky_relu(x / (1 + 1e-5) ** 0.5, 0.01))


def test_iabn_norm_builds_inplace_abn_layers():
    """`make install` builds inplace-abn (the iabn extra); without it this fails saying so."""
    model = build_model(_cfg(norm="iabn", activation="leaky_relu"), [2])
    norms = [m for m in model.modules() if getattr(m, "running_mean", None) is not None]
    assert norms and {type(m).__name__ for m in norms} == {"InPlaceABN"}
    assert model.body.bn1.activation == "leaky_relu"
    assert model.body.layer1[0].bn2.activation == "identity"  # before the residual sum


def test_iabn_norm_refuses_relu_and_says_how_to_install(monkeypatch):
    # at config load, and where a norm is built from explicit names
    with pytest.raises(IfssError, match=r"model\.norm=iabn cannot use model\.activation=relu.*"
                                        r"set model\.activation=leaky_relu"):
        _cfg(norm="iabn")
    with pytest.raises(IfssError, match=r"model\.norm=iabn cannot use relu.*"
                                        r"model\.activation=leaky_relu"):
        norm_factory("iabn", "relu")(4)
    monkeypatch.setitem(sys.modules, "inplace_abn", None)  # as if it were not installed
    with pytest.raises(IfssError, match=r"inplace-abn package.*make install.*model\.norm=bn"):
        build_model(_cfg(norm="iabn", activation="leaky_relu"), [2])


def test_weights_table_matches_torchvision():
    for name in ["resnet18", "resnet34", "resnet50", "resnet101"]:
        url = getattr(torchvision.models, f"ResNet{name[6:]}_Weights").IMAGENET1K_V1.url
        entry = pretrained.IMAGENET_WEIGHTS[name]
        assert entry.url == url and entry.filename == url.rsplit("/", 1)[1]
        assert entry.sha256_prefix in entry.filename
    assert pretrained.IMAGENET_WEIGHTS["resnet101_iabn"].manual


def test_fetch_weights(tmp_path, monkeypatch):
    # manual file missing: the error says where to put it and where to get it
    with pytest.raises(IfssError, match=r"resnet101_iabn_sync\.pth\.tar.*drive\.google\.com"):
        pretrained.fetch_weights("resnet101_iabn", tmp_path)
    with pytest.raises(IfssError, match="resnet101_iabn"):
        pretrained.fetch_weights("resnet_tiny", tmp_path)

    # a present file with the right hash is returned as is; otherwise download_file is called
    content = b"weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    entry = pretrained.WeightsFile("https://example.org/models/w.pth", "w.pth", "resnet_tiny",
                                   sha256_prefix=prefix)
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "fake", entry)
    calls = []

    def download_file(*, url, dest, md5=None, sha256_prefix=None):
        calls.append((url, dest, md5, sha256_prefix))
        dest.write_bytes(content)

    import ifss.download

    monkeypatch.setattr(ifss.download, "download_file", download_file)
    path = pretrained.fetch_weights("fake", tmp_path, mirror="http://127.0.0.1:9")
    assert path == tmp_path / "w.pth" and path.read_bytes() == content
    assert calls == [("http://127.0.0.1:9/models/w.pth", path, None, prefix)]
    assert pretrained.fetch_weights("fake", tmp_path) == path and len(calls) == 1

    # manual file present with the wrong md5
    (tmp_path / "resnet101_iabn_sync.pth.tar").write_bytes(b"bad")
    with pytest.raises(IfssError, match="md5"):
        pretrained.fetch_weights("resnet101_iabn", tmp_path)


def test_dilate_first_block_changes_only_dilation():
    tv_style = build_body("resnet18", 8)
    iabn_style = build_body("resnet18", 8, dilate_first_block=True)
    first = [(b.layer3[0].conv1.dilation[0], b.layer4[0].conv1.dilation[0])
             for b in (tv_style, iabn_style)]
    assert first == [(1, 2), (2, 4)]
    assert tv_style.layer4[1].conv1.dilation == iabn_style.layer4[1].conv1.dilation == (4, 4)
    iabn_style.load_state_dict(tv_style.state_dict())


def test_convert_sync_norm_keeps_activation_and_tensors():
    from ifss.models import SyncNormAct, convert_sync_norm

    torch.manual_seed(0)
    model = build_model(_cfg(activation="leaky_relu"), [2]).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)["logits"]
        synced = convert_sync_norm(model)
        assert isinstance(synced.body.layer1[0].bn1, SyncNormAct)
        assert synced.body.layer1[0].bn1.activation == "leaky_relu"
        assert not any(type(m) is NormAct for m in synced.modules())
        torch.testing.assert_close(synced(x)["logits"], before)
