"""LWF-MC and CIL: output distillation from the frozen previous-step model, as run by the MiB and
SDR code for the continual protocols (research/wilson_sdr_gfss_simformer.md §B.2-B.4). Both start
from FT's step-0 model with a linear classifier; z are the new model's logits (C channels), z_old
the previous model's (its C_old channels are the first C_old of the new model).

- LWF-MC (iCaRL's multi-class loss; the originals' `--icarl`, `icarl_importance` 10):

      L = sum_c BCE(sigmoid(z_c), [y = c])                    over all C classes, void excluded
        + loss_kd * sum_{c < C_old} BCE(sigmoid(z_c), sigmoid(z_old_c))   on every pixel

  The originals wrote the second term as importance * C_old * mean over (pixels x old classes),
  i.e. a sum over the old classes; `ifss.losses.sigmoid_distillation` sums directly.

- CIL (Klingner et al. 2020, "Class-Incremental Learning for Semantic Segmentation Re-Using
  Neither Old Data Nor Old Labels"):

      L = CE(z, y) + loss_cil * mean_{i: y_i in {0, void}} w_i CE(q_i, p_i),
      w_i = 1 + entropy_scale * H(q_i) / ln 2   (the teacher's entropy in bits)

  with q = softmax(z_old), p = softmax(z) (`ifss.losses.entropy_weighted_distillation`).

Where this departs from the SDR code (S:train.py, S:utils/loss.py), on purpose:
- CIL switches on by default (loss_cil = 1). SDR's `--method CIL` preset line is
  `opts.loss_CIL == 1`, a comparison that sets nothing, so its "CIL" runs were plain FT unless
  `--loss_CIL` was passed by hand; there the value also served as the entropy scale `gs` and the
  term had no weight of its own. Here they are two params; both at 1 are `--loss_CIL 1`.
- CIL's term is the cross-entropy -sum_c q_c log p_c. The SDR loss class computes
  +sum_c q_c p_c (softmax of the student, no logarithm, no minus sign), which, minimised, pushes
  the student's probabilities AWAY from the teacher's.
- CIL's teacher distribution is the previous model's softmax over its own C_old classes. SDR pads
  z_old with logits 0 for the new classes before the softmax, so the teacher's target (and its
  entropy) for those classes depends on the scale of the old logits.
- The BCE and CE terms average over the non-void pixels (as `segmentation_ce`); the originals
  divided by every pixel, void ones counting as zero.

As in the originals, step 0 (no previous model) is the classification term alone; the step-0
model these runs start from is FT's (the originals trained LWF-MC's step 0 with the BCE).
"""
from __future__ import annotations

import torch

from ifss.losses import (entropy_weighted_distillation, multilabel_bce, segmentation_ce,
                         sigmoid_distillation)
from ifss.methods.base import Method
from ifss.methods.params import CILParams, LwFMCParams


class MultiClassLearningWithoutForgetting(Method):
    """LWF-MC: multi-class BCE on the labels + BCE distillation of the old sigmoids."""

    Params = LwFMCParams
    uses_old_model = True

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        terms = {"bce": multilabel_bce(out["logits"], batch["label"])}
        if old_out is not None:
            terms["bce_kd"] = self.params.loss_kd * sigmoid_distillation(
                out["logits"], old_out["logits"])
        return terms


class EntropyWeightedDistillation(Method):
    """CIL: CE on the labels + entropy-weighted KD-CE on the background and void pixels."""

    Params = CILParams
    uses_old_model = True

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        terms = {"ce": segmentation_ce(out["logits"], batch["label"])}
        if old_out is not None:
            p = self.params
            terms["cil"] = p.loss_cil * entropy_weighted_distillation(
                out["logits"], old_out["logits"], batch["label"], p.entropy_scale)
        return terms
