"""Segmentation heads over the body's last feature map."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.models.norm import NormFactory, init_gain, norm_factory

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def norm_few_values(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)`, except that a training batch with one value per channel (a pooled 1x1 map of
    one image) has no batch statistics (BatchNorm raises): that batch uses the running ones.
    A norm already in eval mode (train.fix_bn) stays so."""
    if not (norm.training and x.shape[0] * x.shape[2] * x.shape[3] == 1):
        return norm(x)
    norm.eval()
    try:
        return norm(x)
    finally:
        norm.train()


class ASPP(nn.Module):
    """DeepLab-v3 ASPP as in PIFS/MiB.

    out = red_conv(norm([1x1, 3x3 r1, 3x3 r2, 3x3 r3](x))) + pool_red_conv(norm(conv(pool(x))))
    with no activation at the end. pool(x) is the global mean in training (and at eval when
    `pooling_size` is 0); at eval with `pooling_size > 0` it is a sliding mean over a
    pooling_size window (clipped to the map), stride 1, replicate-padded back to H x W.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None,
                 output_stride: int = 16, norm: NormFactory | None = None, pooling: bool = True,
                 pooling_size: int = 0):
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise IfssError(
                f"model.output_stride={output_stride!r} is not supported; valid values: "
                f"{', '.join(map(str, ASPP_RATES))}"
            )
        norm = norm or norm_factory("bn", "relu")
        hidden = hidden_channels or out_channels
        self.pooling_size = pooling_size
        self.out_channels = out_channels

        self.map_convs = nn.ModuleList(
            [nn.Conv2d(in_channels, hidden, 1, bias=False)]
            + [nn.Conv2d(in_channels, hidden, 3, padding=r, dilation=r, bias=False)
               for r in ASPP_RATES[output_stride]]
        )
        self.map_bn = norm(hidden * 4)
        self.red_conv = nn.Conv2d(hidden * 4, out_channels, 1, bias=False)
        if pooling:
            self.global_pooling_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.global_pooling_bn = norm(hidden)
            self.pool_red_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.pooling = pooling

        gain = init_gain(norm.activation)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the pooling branch: (B,C,1,1) global mean, or (B,C,H,W) local means at eval."""
        if self.training or self.pooling_size <= 0:
            return x.mean(dim=(2, 3), keepdim=True)
        h, w = x.shape[-2:]
        kh, kw = min(self.pooling_size, h), min(self.pooling_size, w)
        pool = F.avg_pool2d(x, (kh, kw), stride=1)
        # (k - 1) rows/columns are lost; put the extra one after for even windows.
        pad = ((kw - 1) // 2, kw - 1 - (kw - 1) // 2, (kh - 1) // 2, kh - 1 - (kh - 1) // 2)
        return F.pad(pool, pad, mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.map_convs], dim=1)
        out = self.red_conv(self.map_bn(out))
        if self.pooling:
            pool = self._pool_norm(self.global_pooling_conv(self.pooled(x)))
            pool = self.pool_red_conv(pool)
            out = out + pool  # broadcasts the (B,C,1,1) global branch over H x W
        return out

    def _pool_norm(self, pool: torch.Tensor) -> torch.Tensor:
        return norm_few_values(self.global_pooling_bn, pool)


class PSPHead(nn.Module):
    """PSPNet's pyramid pooling module and bottleneck, as in semseg / PFENet / CWT (the GFSS
    backbone: bins 1, 2, 3, 6, bottleneck 512, dropout 0.1).

    Per bin b: adaptive mean pool to b x b -> 1x1 conv to in_channels // len(bins) -> norm+act ->
    bilinear upsampling back (align_corners=True, as those codebases); the input and every
    branch are concatenated, then 3x3 conv to `out_channels` -> norm+act -> Dropout2d.
    Parameter names follow theirs (`features.i.1` conv, `features.i.2` norm, `bottleneck.0/1`)
    so their `ppm.*` / `bottleneck.*` weights map by a prefix.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 norm: NormFactory | None = None, dropout: float = 0.1):
        super().__init__()
        bins = list(bins)
        if not bins or not all(isinstance(b, int) and b >= 1 for b in bins):
            raise IfssError(f"model.psp_bins={bins!r} is not valid; give positive integers, "
                            "such as [1, 2, 3, 6]")
        if not 0.0 <= dropout < 1.0:
            raise IfssError(f"model.dropout={dropout!r} is not valid; give a value in [0, 1)")
        reduced = in_channels // len(bins)
        if reduced < 1:
            raise IfssError(f"model.psp_bins has {len(bins)} bins, more than the body's "
                            f"{in_channels} channels; use fewer bins")
        norm = norm or norm_factory("bn", "relu")
        self.bins = bins
        self.out_channels = out_channels
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduced, 1, bias=False),
                          norm(reduced))
            for b in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + reduced * len(bins), out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.Dropout2d(dropout),
        )
        gain = init_gain(norm.activation)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain)  # as ASPP; the references keep torch's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = [x]
        for pool, conv, norm in self.features:
            y = norm_few_values(norm, conv(pool(x)))  # bin 1 of one image: one value/channel
            out.append(F.interpolate(y, size=size, mode="bilinear", align_corners=True))
        return self.bottleneck(torch.cat(out, dim=1))
