"""PSP and PSP-CTR: the GFSS capstone's pre-training of the segmentation backbone on the base
classes of a fold (seed 003 §3.3 Eq. 1-3 and §4.2; research/wilson_sdr_gfss_simformer.md §C.2).
A step-0 method only (registry: step0_only; ifss.builder refuses its step 1): the pre-trained
model is then evaluated episodically by another method.

    L = CE_ε(logits, labels) + contrast_weight * L_ctr(projection(features))       (Eq. 3)

- CE_ε: per-pixel cross-entropy with label smoothing ε (`label_smoothing`, torch's
  F.cross_entropy definition: target (1 - ε)·onehot + ε/C), averaged over the non-void pixels.
- L_ctr: the supervised pixel-to-pixel contrast of ifss/pixel_contrast.py on the projection of
  the head features (the classifier's input), anchors sampled hard/easy against the model's own
  predictions. The projection head is a method-owned module (saved in model.pt "modules"),
  built only when contrast_weight > 0, with its own lr multiplier (`projection_lr_mult`; the
  original's 2.0 for ppm / bottleneck / classifier / projection is train.lr_head, train.lr_cls
  and this).

Terms: "ce", and "contrast" (already weighted) when contrast_weight > 0. The registry's PSP
(contrast_weight 0) and PSP-CTR (0.1) are two presets of this class, each a step-0 run of its own.
"""
from __future__ import annotations

import torch
from torch import nn

from ifss.config import RunConfig
from ifss.losses import segmentation_ce
from ifss.methods.base import Method
from ifss.methods.params import PretrainParams
from ifss.pixel_contrast import ProjectionHead, pixel_contrast


class Pretraining(Method):
    Params = PretrainParams

    def __init__(self, params: PretrainParams, cfg: RunConfig, runtime):
        super().__init__(params, cfg, runtime)
        self.projection: ProjectionHead | None = None

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.params.contrast_weight <= 0:
            return {}  # CE only: a projection nothing trains would only weigh on model.pt
        self.projection = ProjectionHead(model.classifier.in_channels, self.params.projection_dim)
        return {"projection": self.projection}

    def module_lr_mult(self, name: str, train) -> float:
        return self.params.projection_lr_mult

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        p = self.params
        terms = {"ce": segmentation_ce(out["logits"], batch["label"], p.label_smoothing)}
        if self.projection is not None:
            embeddings = self.projection(out["features"])
            terms["contrast"] = p.contrast_weight * pixel_contrast(
                embeddings, batch["label"], out["logits"], p.max_samples, p.max_views,
                p.background_anchors, p.temperature, p.base_temperature)
        return terms
