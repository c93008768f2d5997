"""InPlace-ABN (model.norm=iabn) for real: `make install` builds the iabn extra, so these tests
need it and fail, not skip, without it. The layer against BatchNorm2d + leaky_relu, a training
run with it, the InPlace-ABN ImageNet checkpoint layout loading into it, and its memory figure in
the bench beside plain BN."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import run_tiny
from ifss.bench import resources, sizes_for
from ifss.bench.carried import run_config
from ifss.bench.context import Context
from ifss.bench.harness import build_setup, synthetic_root
from ifss.builder import model_from_checkpoint
from ifss.config import ModelConfig
from ifss.distributed import Runtime
from ifss.models import build_body, build_model, norm_factory
from test_models import _to_iabn_key

SLOPE = 0.01  # InPlace-ABN's leaky_relu slope, the one its ImageNet checkpoints were trained with
# Devices of the layer and training tests: the CPU here and in CI; the GPU check
# (.ci/device-check.sh) adds cuda, where InPlace-ABN's CUDA kernels are built and run
DEVICES = os.environ.get("IFSS_TEST_DEVICES", "cpu").split(",")


@pytest.fixture(scope="module")
def InPlaceABN():
    try:
        from inplace_abn import InPlaceABN
    except ImportError as err:
        reason = str(err)
    else:
        return InPlaceABN
    pytest.fail(f"inplace-abn is not importable ({reason}); `make install` builds it (the iabn "
                f"extra, see README)", pytrace=False)


def _norm_layers(module: torch.nn.Module, kind) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in module.named_modules() if isinstance(m, kind)}


def _same_state(layer: torch.nn.Module, bn: torch.nn.BatchNorm2d, channels: int) -> None:
    """Non-trivial parameters and statistics, the same in both. InPlace-ABN scales by
    |weight| + eps, so the weights are positive: there both compute the same function."""
    state = {"weight": torch.rand(channels) + 0.5, "bias": torch.randn(channels),
             "running_mean": torch.randn(channels) * 0.3, "running_var": torch.rand(channels) + 0.5,
             "num_batches_tracked": torch.tensor(3)}
    layer.load_state_dict(state)
    bn.load_state_dict(state)


def test_project_builder_makes_inplace_abn_with_leaky_relu_001(InPlaceABN):
    layer = norm_factory("iabn", "leaky_relu")(8)
    assert isinstance(layer, InPlaceABN)
    assert layer.activation == "leaky_relu" and layer.activation_param == SLOPE
    assert norm_factory("iabn", "leaky_relu")(8, "identity").activation == "identity"


@pytest.mark.parametrize("device", DEVICES)
def test_eval_mode_equals_batchnorm_then_leaky_relu(InPlaceABN, device):
    torch.manual_seed(0)
    layer, bn = norm_factory("iabn", "leaky_relu")(6).eval(), torch.nn.BatchNorm2d(6).eval()
    _same_state(layer, bn, 6)
    layer, bn = layer.to(device), bn.to(device)
    x = (torch.randn(3, 6, 5, 7) * 2 + 0.5).to(device)
    with torch.no_grad():
        expected = F.leaky_relu(bn(x), SLOPE)
        out = layer(x.clone())  # in place: it overwrites its input
    assert (expected < 0).any() and (expected > 0).any()  # both sides of the activation
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(layer.running_mean, bn.running_mean)  # eval: statistics untouched


@pytest.mark.parametrize("device", DEVICES)
def test_train_mode_output_statistics_and_gradients_equal_batchnorm(InPlaceABN, device):
    torch.manual_seed(0)
    layer, bn = norm_factory("iabn", "leaky_relu")(6).train(), torch.nn.BatchNorm2d(6).train()
    _same_state(layer, bn, 6)
    layer, bn = layer.to(device), bn.to(device)
    x = (torch.randn(4, 6, 5, 7) * 2 + 0.5).to(device)
    grad_out = torch.randn(4, 6, 5, 7).to(device)

    x_bn = x.clone().requires_grad_()
    expected = F.leaky_relu(bn(x_bn), SLOPE)
    expected.backward(grad_out)
    x_iabn = x.clone().requires_grad_()
    out = layer(x_iabn * 1.0)  # a non-leaf copy: the layer writes into its input
    out.backward(grad_out)

    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # running statistics: the same momentum update with the unbiased batch variance
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert int(layer.num_batches_tracked) == int(bn.num_batches_tracked) == 4
    # its backward (recomputed from the output it kept) gives batch norm's gradients
    torch.testing.assert_close(x_iabn.grad, x_bn.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, bn.bias.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_training_run_with_iabn(InPlaceABN, synth_root, tmp_path, device):
    """On CUDA under bf16 autocast (the papers' runs: InPlace-ABN with mixed precision)."""
    iterations = 3
    out = tmp_path / "run"
    metrics = run_tiny(synth_root, out, method="FT", **{
        "model.backbone": "resnet_tiny", "model.norm": "iabn", "model.activation": "leaky_relu",
        "train.iterations": iterations, "train.log_every": 1, "train.device": device,
        "train.amp": "bf16" if device == "cuda" else "none"})

    losses = [float(re.search(r" total (\S+)", line)[1])
              for line in (out / "log.txt").read_text().splitlines() if " iter " in line]
    assert len(losses) == iterations and all(math.isfinite(v) and v > 0 for v in losses), losses
    assert metrics["miou_base"] is not None and math.isfinite(metrics["miou_base"])
    assert metrics["config"]["model"]["norm"] == "iabn"

    # model.pt holds the state of InPlace-ABN layers that trained, and the project rebuilds the
    # model from it (as `ifss eval` does) with those layers, loading it strictly
    _, model, ckpt = model_from_checkpoint(out / "model.pt")
    layers = _norm_layers(model, InPlaceABN)
    assert "body.bn1" in layers and len(layers) > 10
    assert not _norm_layers(model, torch.nn.BatchNorm2d)
    state = ckpt["model"]
    for name in layers:
        assert int(state[f"{name}.num_batches_tracked"]) == iterations, name
    assert not torch.equal(state["body.bn1.running_mean"], torch.zeros(16))  # batch statistics
    assert not torch.equal(state["body.bn1.weight"], torch.ones(16))  # a gradient step
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, 48, 48))["logits"]
    assert logits.shape == (2, 16, 48, 48) and torch.isfinite(logits).all()


def test_inplace_abn_imagenet_layout_loads_into_an_iabn_model(InPlaceABN, tmp_path):
    """The PIFS/MiB backbone's file layout ({"state_dict": module.mod*.block*.convs.*, proj_*,
    classifier.fc}) through model.pretrained into model.norm=iabn; the same file into
    model.norm=bn computes the same network."""
    torch.manual_seed(0)
    source = build_body("resnet50", norm=norm_factory("bn", "leaky_relu"))
    for name, tensor in source.state_dict().items():
        if name.endswith((".weight", ".bias")) and tensor.dim() > 1:  # convolutions
            tensor.normal_(0, (2.0 / tensor[0].numel()) ** 0.5)
        elif name.endswith(".weight"):  # norm scales of both signs: InPlace-ABN scales by
            tensor.uniform_(0.2, 0.6).mul_(torch.randint(0, 2, tensor.shape) * 2 - 1)  # |w|+eps
        elif name.endswith(".bias"):
            tensor.uniform_(-0.1, 0.1)
        elif name.endswith("running_mean"):
            tensor.uniform_(-0.1, 0.1)
        elif name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5)
    reference = {k: v for k, v in source.state_dict().items()
                 if not k.endswith("num_batches_tracked")}
    state = {_to_iabn_key(k): v for k, v in reference.items()}
    state["classifier.fc.weight"] = torch.zeros(1000, 2048)
    state["classifier.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet50_iabn.pth.tar"
    torch.save({"state_dict": state}, path)

    def build(norm: str):
        cfg = ModelConfig(backbone="resnet50", output_stride=16, dilate_first_block=True,
                          norm=norm, activation="leaky_relu", pretrained=str(path),
                          pooling_size=3)
        return build_model(cfg, [2]).eval()

    iabn = build("iabn")
    layers = _norm_layers(iabn.body, InPlaceABN)
    assert len(layers) == 53  # stem + 16 blocks x 3 + 4 projections
    assert "layer3.0.downsample.1" in layers and "layer4.2.bn3" in layers
    for name, layer in layers.items():
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(layer, key), reference[f"{name}.{key}"]), (name, key)
    for name in ("conv1.weight", "layer1.0.conv2.weight", "layer4.0.downsample.0.weight"):
        assert torch.equal(iabn.body.state_dict()[name], reference[name]), name

    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(iabn.body(x.clone()), build("bn").body(x),
                                   atol=1e-3, rtol=1e-3)
    plain = build("bn").body.bn1
    assert (reference["bn1.weight"] < 0).any()
    torch.testing.assert_close(plain.weight, reference["bn1.weight"].abs() + 1e-5)


def test_bench_memory_section_measures_iabn_beside_bn(InPlaceABN, tmp_path, monkeypatch):
    sizes = sizes_for("cpu", True)
    runtime = Runtime(torch.device("cpu"))
    root = synthetic_root(tmp_path / "cache", sizes)
    iabn_sizes = dataclasses.replace(sizes, **resources.IABN)
    assert run_config("FT", iabn_sizes, runtime, root).model.norm == "iabn"  # what the probe trains
    ft = build_setup("FT", sizes, runtime, root, tmp_path / "FT", iterations=sizes.iterations)
    ctx = Context(device="cpu", quick=True, sizes=sizes, runtime=runtime, root=root,
                  work=tmp_path, ft=ft, log=lambda _: None)

    got = resources.memory(ctx)
    bn, iabn = got["memory.train_step"], got["memory.train_step_iabn"]
    assert iabn["unit"] == bn["unit"] == "MiB" and iabn["note"] is None
    assert iabn["value"] > 0 and iabn["details"]["step_increase_mib"] > 0
    assert iabn["sizes"] == {**bn["sizes"], "norm": "iabn", "activation": "leaky_relu"}
    assert iabn["details"]["bn_mib"] == bn["value"]
    assert iabn["details"]["bn_step_increase_mib"] == bn["details"]["step_increase_mib"]

    # where the model cannot be built with iabn, the figure is a note, not a failure
    monkeypatch.setitem(sys.modules, "inplace_abn", None)
    missing = resources.memory_iabn(ctx, bn)
    assert missing["value"] is None and "inplace-abn" in missing["note"]
