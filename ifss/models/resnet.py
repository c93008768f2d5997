"""ResNet bodies with torchvision's parameter names, built from norm+activation layers.

Why not torchvision's ResNet: its BasicBlock cannot dilate (no output stride 8/16 for
ResNet-18/34) and its ReLU is a separate module after a plain BatchNorm2d, so InPlace-ABN or
batch renormalisation (which fuse or own the activation) cannot be swapped in. The names
(conv1, bn1, layer1..4, layerN.i.conv1/bn1/..., layerN.i.downsample.0/1) are torchvision's,
so its ImageNet files load directly (see pretrained.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ifss.config import OUTPUT_STRIDES
from ifss.errors import IfssError
from ifss.models.norm import NormFactory, activate, norm_factory



def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _downsample(cin: int, cout: int, stride: int, norm: NormFactory) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout, "identity"))


class BasicBlock(nn.Module):
    """Two 3x3 convs (both dilated); activation after the residual add."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, norm: NormFactory):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, cout, 1, dilation)
        self.bn2 = norm(cout, "identity")
        needs_projection = stride != 1 or cin != cout
        self.downsample = _downsample(cin, cout, stride, norm) if needs_projection else None
        self.activation = norm.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return activate(out + shortcut, self.activation, inplace=True)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride and dilation here, as torchvision's v1.5) -> 1x1 (x4 channels)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, norm: NormFactory):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = norm(cout, "identity")
        needs_projection = stride != 1 or cin != cout
        self.downsample = _downsample(cin, cout, stride, norm) if needs_projection else None
        self.activation = norm.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        return activate(out + shortcut, self.activation, inplace=True)


def layer_dilations(output_stride: int) -> list[bool]:
    """Which of layer2..layer4 trade their stride 2 for dilation (torchvision's
    replace_stride_with_dilation)."""
    if output_stride == 16:
        return [False, False, True]
    if output_stride == 8:
        return [False, True, True]
    raise IfssError(
        f"model.output_stride={output_stride!r} is not supported; valid values: "
        f"{', '.join(map(str, OUTPUT_STRIDES))}"
    )


class ResNetBody(nn.Module):
    """Stem + layer1..layer4; `forward` returns the last feature map (stride `output_stride`).

    With `dilate_first_block=False` (torchvision) the first block of a dilated layer keeps the
    previous layer's dilation; True gives every block of the layer its own dilation, as the
    InPlace-ABN ResNets used by PIFS/MiB do. Both have the same parameters.
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64,
                 output_stride: int = 16, norm: NormFactory | None = None,
                 dilate_first_block: bool = False, name: str = "resnet"):
        super().__init__()
        norm = norm or norm_factory("bn", "relu")
        self.name = name
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(stem_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        dilate = [False] + layer_dilations(output_stride)
        cin, dilation = stem_width, 1
        for i, (n_blocks, planes) in enumerate(zip(layers, widths)):
            stride, previous = (1 if i == 0 else 2), dilation
            if dilate[i]:
                dilation, stride = dilation * stride, 1
            first = dilation if dilate_first_block else previous
            blocks = [block(cin, planes, stride, first, norm)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, dilation, norm) for _ in range(1, n_blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (for methods that distil intermediate features)."""
        x = self.maxpool(self.bn1(self.conv1(x)))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


def _spec(block, layers, widths=(64, 128, 256, 512), stem_width=64):
    return dict(block=block, layers=layers, widths=widths, stem_width=stem_width)


BACKBONES: dict[str, dict] = {
    "resnet_tiny": _spec(BasicBlock, [1, 1, 1, 1], (16, 32, 64, 128), 16),  # CPU demos, tests
    "resnet18": _spec(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _spec(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _spec(Bottleneck, [3, 4, 6, 3]),
    "resnet101": _spec(Bottleneck, [3, 4, 23, 3]),
}


def build_body(name: str, output_stride: int = 16, norm: NormFactory | None = None,
               dilate_first_block: bool = False) -> ResNetBody:
    if name not in BACKBONES:
        raise IfssError(
            f"model.backbone={name!r} is not known; valid values: {', '.join(BACKBONES)}"
        )
    return ResNetBody(**BACKBONES[name], output_stride=output_stride, norm=norm,
                      dilate_first_block=dilate_first_block, name=name)
