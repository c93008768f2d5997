"""MaskFormer: a mask-transformer segmenter (SimFormer's model), in plain PyTorch.

Architecture of MaskFormer (Cheng, Schwing, Kirillov, "Per-Pixel Classification is Not All You
Need for Semantic Segmentation", NeurIPS 2021), as SimFormer (Chen et al., NeurIPS 2022; research
notes §D.1) configures it: ResNet body -> FPN pixel decoder with GroupNorm (strides 32 .. 4) ->
DETR-style transformer decoder (learned queries; self-attention, cross-attention to the projected
C5 map with 2-D sine positions on the keys, FFN; post-norm; every layer's output supervised) ->
per query a class ("no object" last) and a mask embedding whose dot product with the per-pixel
mask features gives the query's mask logits. Semantic scores are
Σ_q softmax(class)_q[:C] · sigmoid(mask_q), the "no object" mass dropped (`semantic_fusion`).

`MaskFormer.forward` keeps ifss's model contract (dense "logits", "features", "body") beside
the set predictions ("pred_logits", "pred_masks", "aux") that SimFormer's losses use. The "logits"
are scores in [0, 1] for argmax, not log-probabilities. It has no incremental steps: loading a
previous step's model and growing the classifier are refused.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.models.norm import NormFactory
from ifss.models.resnet import ResNetBody, build_body


def undilate(body: ResNetBody) -> ResNetBody:
    """Turn a dilated ResNet body (output stride 8 or 16) into the plain stride-32 one, in place:
    layer2..layer4 stride 2 in their first block, no dilation. Parameters and their names are
    unchanged, so ImageNet weights load as before."""
    for name in ("layer2", "layer3", "layer4"):
        layer = getattr(body, name)
        first_3x3 = True
        for i, block in enumerate(layer):
            for conv in block.modules():
                if not isinstance(conv, nn.Conv2d):
                    continue
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (1, 1), (1, 1)
                    if i == 0 and first_3x3:
                        conv.stride, first_3x3 = (2, 2), False
            if i == 0 and block.downsample is not None:
                block.downsample[0].stride = (2, 2)
    body.output_stride = 32
    return body


def build_stride32_body(name: str, norm: NormFactory | None = None) -> ResNetBody:
    """`build_body(name)` at output stride 32 (MaskFormer's C2..C5 at strides 4, 8, 16, 32)."""
    return undilate(build_body(name, 16, norm))


def stage_channels(body: nn.Module) -> list[int]:
    """Widths of layer1..layer4 of a ResNet body (the last conv of each layer sets it)."""
    widths = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        convs = [m for m in getattr(body, name).modules() if isinstance(m, nn.Conv2d)]
        widths.append(convs[-1].out_channels)
    return widths


def semantic_fusion(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """N x Q x (C+1) class logits, N x Q x h x w mask logits -> N x C x h x w semantic scores
    Σ_q softmax(class_q)[:C] · sigmoid(mask_q) (MaskFormer's semantic inference)."""
    probs = pred_logits.softmax(-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", probs, pred_masks.sigmoid())


def sine_position_encoding(h: int, w: int, dim: int, temperature: float = 10000.0,
                           device=None, dtype=torch.float32) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of an h x w grid: (h*w) x dim, row-major. The first
    half encodes y, the second x, each as interleaved sin/cos of
    (position / length)·2π / temperature^(2i/half) (positions 1..length)."""
    half = dim // 2
    freq = temperature ** (2 * (torch.arange(half, device=device) // 2) / half)

    def encode(n: int) -> torch.Tensor:
        pos = torch.arange(1, n + 1, device=device, dtype=torch.float32) / n * 2 * math.pi
        angles = pos[:, None] / freq
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    y = encode(h)[:, None, :].expand(h, w, half)
    x = encode(w)[None, :, :].expand(h, w, half)
    return torch.cat((y, x), dim=-1).reshape(h * w, dim).to(dtype)


def _conv_gn(cin: int, cout: int, kernel: int, relu: bool) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # detectron2's c2_xavier_fill
    layers = [conv, nn.GroupNorm(32, cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class PixelDecoder(nn.Module):
    """FPN over C2..C5 (MaskFormer's BasePixelDecoder): C5 -> 3x3 conv; below, a 1x1 lateral
    plus the nearest-upsampled coarser map, then a 3x3 conv (GroupNorm 32, ReLU); a 3x3
    `mask_features` conv at stride 4. Also projects C5 to `hidden_dim` (the decoder's memory)."""

    def __init__(self, in_channels: Sequence[int], conv_dim: int = 256, mask_dim: int = 256,
                 hidden_dim: int = 256):
        super().__init__()
        *fine, top = in_channels
        self.top = _conv_gn(top, conv_dim, 3, relu=True)
        # Coarse to fine: C4, C3, C2.
        self.lateral = nn.ModuleList(_conv_gn(c, conv_dim, 1, relu=False) for c in fine[::-1])
        self.output = nn.ModuleList(_conv_gn(conv_dim, conv_dim, 3, relu=True) for _ in fine)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        self.memory_proj = nn.Conv2d(top, hidden_dim, 1)
        for conv in (self.mask_features, self.memory_proj):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, stages: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """C2..C5 -> (mask features N x mask_dim x H2 x W2, memory N x hidden x H5 x W5)."""
        *fine, c5 = stages
        y = self.top(c5)
        for lateral, output, x in zip(self.lateral, self.output, fine[::-1]):
            y = output(lateral(x) + F.interpolate(y, size=x.shape[-2:], mode="nearest"))
        return self.mask_features(y), self.memory_proj(c5)


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention among queries, cross-attention to the
    memory (positions added to queries and keys, not values), FFN; each followed by add & norm."""

    def __init__(self, dim: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(dim_feedforward, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(3))

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norms[0](tgt + self.dropouts[0](self.self_attn(q, q, tgt,
                                                                  need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norms[1](tgt + self.dropouts[1](attended))
        return self.norms[2](tgt + self.dropouts[2](self.ffn(tgt)))


class MaskTransformerHead(nn.Module):
    """Pixel decoder + learned queries + transformer decoder + mask-embedding MLP: everything
    between the body and the class head (the "head" parameter group)."""

    def __init__(self, in_channels: Sequence[int], hidden_dim: int = 256, num_queries: int = 100,
                 dec_layers: int = 6, mask_dim: int = 256, conv_dim: int = 256, nheads: int = 8,
                 dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.pixel_decoder = PixelDecoder(in_channels, conv_dim, mask_dim, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout)
                                    for _ in range(dec_layers))
        for p in self.layers.parameters():  # DETR's Transformer._reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        # MLP of 3 linear layers: hidden -> hidden -> hidden -> mask_dim.
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, mask_dim))

    def forward(self, stages: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """C2..C5 -> (query outputs of every layer, decoder-normed: L x N x Q x hidden;
        mask features N x mask_dim x H/4 x W/4)."""
        mask_features, memory = self.pixel_decoder(stages)
        n, dim, h, w = memory.shape
        memory = memory.flatten(2).transpose(1, 2)  # N x HW x hidden
        pos = sine_position_encoding(h, w, dim, device=memory.device, dtype=memory.dtype)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(n, -1, -1)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, pos)
            outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs), mask_features


class MaskFormer(nn.Module):
    """ResNet body (any output stride; MaskFormer's is 32, see `build_stride32_body`) ->
    `MaskTransformerHead` -> class head Linear(hidden, num_classes + 1), "no object" last.

    `body` must offer `forward_stages(x) -> [C2, C3, C4, C5]` (ifss's ResNetBody does).
    """

    def __init__(self, body: nn.Module, num_classes: int, hidden_dim: int = 256,
                 num_queries: int = 100, dec_layers: int = 6, mask_dim: int = 256,
                 conv_dim: int = 256, nheads: int = 8, dim_feedforward: int = 2048,
                 dropout: float = 0.1):
        super().__init__()
        self.body = body
        self.num_classes = num_classes
        # Order matters: body, head, classifier draw from the global RNG in this order.
        self.head = MaskTransformerHead(stage_channels(body), hidden_dim, num_queries,
                                        dec_layers, mask_dim, conv_dim, nheads,
                                        dim_feedforward, dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes + 1)

    def forward(self, x: torch.Tensor, upsample: bool = True) -> dict:
        """{"pred_logits": N x Q x (C+1), "pred_masks": N x Q x H/4 x W/4 (mask logits) of the
        last layer; "aux": the same pair for each earlier layer; "logits": semantic scores
        N x C x H x W (`upsample`; False: at the masks' size); "features": mask features;
        "body": C5}."""
        stages = self.body.forward_stages(x)
        queries, mask_features = self.head(stages)
        class_logits = self.classifier(queries)  # L x N x Q x (C+1)
        masks = torch.einsum("lnqc,nchw->lnqhw", self.head.mask_embed(queries), mask_features)
        pred_logits, pred_masks = class_logits[-1], masks[-1]
        aux = [{"pred_logits": c, "pred_masks": m}
               for c, m in zip(class_logits[:-1], masks[:-1])]
        dense = pred_masks
        if upsample:  # MaskFormer upsamples the mask logits, then fuses
            dense = F.interpolate(pred_masks, size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
        return {"pred_logits": pred_logits, "pred_masks": pred_masks, "aux": aux,
                "logits": semantic_fusion(pred_logits, dense), "features": mask_features,
                "body": stages[-1]}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The optimiser's groups: body (SimFormer trains it at 0.1x lr), head (pixel decoder,
        queries, transformer, mask embedding) and classifier (the class head)."""
        return {
            "body": list(self.body.parameters()),
            "head": list(self.head.parameters()),
            "classifier": list(self.classifier.parameters()),
        }

    def load_previous_step(self, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
        raise IfssError(f"model.arch=maskformer trains a weak-shot step from ImageNet weights "
                        f"and loads no previous step ({source}); leave `previous` empty")

    def add_classifier_step(self, n: int) -> nn.Module:
        raise IfssError("model.arch=maskformer is not incremental: its class head covers every "
                        "class of the task from the start; use deeplabv3 or pspnet for "
                        "incremental steps")
