"""MaskFormer (SimFormer's model): shapes, deep supervision, semantic fusion by hand, gradients,
parameter groups, determinism, the stride-32 body."""
from __future__ import annotations

import math

import pytest
import dataclasses

import torch
import torch.nn.functional as F

from ifss.models import build_body
from ifss.models.maskformer import (MaskFormer, build_stride32_body, semantic_fusion,
                                    sine_position_encoding)

NUM_CLASSES = 5
TINY = dict(hidden_dim=32, num_queries=8, dec_layers=2, mask_dim=32, conv_dim=32,
            dim_feedforward=64, dropout=0.0)


def _model(seed: int = 0, **kw) -> MaskFormer:
    torch.manual_seed(seed)
    return MaskFormer(build_stride32_body("resnet_tiny"), NUM_CLASSES, **{**TINY, **kw})


def _image(n: int = 2, side: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_output_shapes():
    model = _model()
    out = model(_image())
    assert out["pred_logits"].shape == (2, 8, NUM_CLASSES + 1)
    assert out["pred_masks"].shape == (2, 8, 16, 16)
    assert out["logits"].shape == (2, NUM_CLASSES, 64, 64)
    assert out["features"].shape == (2, 32, 16, 16)
    assert out["body"].shape == (2, 128, 2, 2)  # resnet_tiny's C5 at stride 32
    assert len(out["aux"]) == 1
    for aux in out["aux"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    assert model(_image(), upsample=False)["logits"].shape == (2, NUM_CLASSES, 16, 16)


@pytest.mark.parametrize("dec_layers", [1, 3])
def test_aux_has_one_entry_per_earlier_layer(dec_layers):
    out = _model(dec_layers=dec_layers)(_image(1))
    assert len(out["aux"]) == dec_layers - 1


def test_semantic_fusion_by_hand():
    cls = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]]  # 2 queries x (2 classes + no object)
    masks = [[0.0, 1.0], [-2.0, 3.0]]  # 2 queries x (1 x 2 pixels)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = torch.zeros(1, 2, 1, 2)
    for q in range(2):
        total = sum(math.exp(v) for v in cls[q])
        for c in range(2):  # the no-object class (index 2) is dropped
            for p in range(2):
                expected[0, c, 0, p] += math.exp(cls[q][c]) / total * sigmoid(masks[q][p])
    got = semantic_fusion(torch.tensor([cls]), torch.tensor(masks).view(1, 2, 1, 2))
    assert got.shape == (1, 2, 1, 2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_logits_fuse_the_upsampled_last_layer():
    model = _model().eval()
    with torch.no_grad():
        out = model(_image())
    masks = F.interpolate(out["pred_masks"], size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(out["logits"], semantic_fusion(out["pred_logits"], masks), atol=1e-6)
    assert out["logits"].min() >= 0 and out["logits"].sum(1).max() <= 8 + 1e-4


def test_gradients_reach_body_queries_and_both_heads():
    model = _model()
    out = model(_image())
    loss = out["logits"].mean() + out["pred_logits"].square().mean()
    loss = loss + sum(a["pred_masks"].square().mean() for a in out["aux"])
    loss.backward()
    for name, param in [("body", model.body.conv1.weight),
                        ("queries", model.head.query_embed.weight),
                        ("class head", model.classifier.weight),
                        ("mask embedding", model.head.mask_embed[0].weight),
                        ("pixel decoder", model.head.pixel_decoder.lateral[-1][0].weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_param_groups_cover_every_parameter_once():
    model = _model()
    groups = model.param_groups()
    assert set(groups) == {"body", "head", "classifier"}
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["classifier"]} == {id(p) for p in model.classifier.parameters()}
    assert id(model.head.query_embed.weight) in {id(p) for p in groups["head"]}


def test_deterministic_under_a_seed():
    outs = []
    for _ in range(2):
        model = _model(seed=3, dropout=0.1)
        torch.manual_seed(4)  # dropout draws
        outs.append(model(_image()))
    for key in ("pred_logits", "pred_masks", "logits"):
        assert torch.equal(outs[0][key], outs[1][key]), key
    other = _model(seed=5)(_image())
    assert not torch.equal(outs[0]["pred_logits"], other["pred_logits"])


def test_eval_mode_repeats():
    model = _model(dropout=0.1).eval()
    with torch.no_grad():
        a, b = model(_image()), model(_image())
    for key in ("pred_logits", "pred_masks", "logits", "features"):
        assert torch.equal(a[key], b[key]), key


def test_stride32_body_keeps_parameters_and_leaves_build_body_alone():
    body32, body16 = build_stride32_body("resnet18"), build_body("resnet18", 16)
    assert body32.output_stride == 32
    assert {k: v.shape for k, v in body32.state_dict().items()} == \
        {k: v.shape for k, v in body16.state_dict().items()}
    x = _image(1)
    assert [s.shape[-1] for s in body32.forward_stages(x)] == [16, 8, 4, 2]
    assert body16(x).shape[-1] == 4  # other callers' bodies keep their stride


def test_dilated_body_also_works():
    torch.manual_seed(0)
    model = MaskFormer(build_body("resnet_tiny", 16), NUM_CLASSES, **TINY)
    out = model(_image(1))
    assert out["body"].shape[-1] == 4 and out["logits"].shape == (1, NUM_CLASSES, 64, 64)


def test_sine_position_encoding():
    pos = sine_position_encoding(3, 4, 8)
    assert pos.shape == (12, 8)
    # Pixel (row 1, col 2): y = 2/3 * 2π, x = 3/4 * 2π; frequencies 1, 1, 100, 100 per half.
    y, x = 2 / 3 * 2 * math.pi, 3 / 4 * 2 * math.pi
    want = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
            math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(pos[1 * 4 + 2], torch.tensor(want), atol=1e-6)


# -- model.arch=maskformer through build_model --------------------------------------------------

def _arch_cfg(**kw):
    from ifss.config import ModelConfig

    tiny = dict(arch="maskformer", head_channels=32, num_queries=8, decoder_layers=2,
                attention_heads=4, ffn_channels=64, dropout=0.0)
    return ModelConfig(**{**tiny, **kw})


def test_build_model_by_name():
    from ifss.models import build_model

    torch.manual_seed(0)
    model = build_model(_arch_cfg(), [16, 5])
    assert isinstance(model, MaskFormer) and model.num_classes == 21
    assert model.body.output_stride == 8  # model.output_stride's default: a dilated body
    plain = build_model(dataclasses.replace(_arch_cfg(), output_stride=32), [16, 5])
    assert plain.body.output_stride == 32  # MaskFormer's own, undilated
    assert plain.body.layer4[0].downsample[0].stride == (2, 2)
    assert model.head.query_embed.weight.shape == (8, 32)
    assert len(model.head.layers) == 2 and model.head.layers[0].self_attn.num_heads == 4
    assert model.head.layers[0].ffn[0].out_features == 64
    assert model.head.pixel_decoder.mask_features.out_channels == 32
    assert model.classifier.out_features == 22  # + no object
    names = {name.split(".")[0] for name in model.state_dict()}
    assert names == {"body", "head", "classifier"}
    out = model(_image())
    assert out["pred_logits"].shape == (2, 8, 22) and out["pred_masks"].shape == (2, 8, 16, 16)
    assert out["logits"].shape == (2, 21, 64, 64) and out["features"].shape == (2, 32, 16, 16)
    assert model(_image(), upsample=False)["logits"].shape == (2, 21, 16, 16)


def test_build_model_takes_dropout_and_imagenet_weights(tmp_path):
    import torchvision

    from ifss.models import build_model

    tv = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-test.pth"
    torch.save(tv, path)
    model = build_model(_arch_cfg(backbone="resnet18", pretrained=str(path), dropout=0.2), [3])
    assert torch.equal(model.body.layer4[1].conv2.weight, tv["layer4.1.conv2.weight"])
    assert model.head.layers[0].dropouts[0].p == 0.2
    assert model.head.layers[0].self_attn.dropout == 0.2


def test_maskformer_refuses_incremental_use():
    from ifss.errors import IfssError
    from ifss.models import build_model

    with pytest.raises(IfssError, match="own linear class head.*'cosine'"):
        build_model(_arch_cfg(), [3], classifier="cosine")
    model = build_model(_arch_cfg(), [3, 2])
    with pytest.raises(IfssError, match="loads no previous step.*prev/model.pt.*previous"):
        model.load_previous_step(model.state_dict(), "prev/model.pt")
    with pytest.raises(IfssError, match="not incremental"):
        model.add_classifier_step(2)
