"""LwF and ILT: fine-tuning with distillation from the frozen previous-step model.

Research/pifs_mclos_mib.md §2.2 (PIFS code, [FSS]) and §2.3 (MiB code, [MiB]):

- LWF:  L = CE + loss_kd · KD_T(z_new[:, :C_old], z_old), the KD of `ifss.losses`
        (softmax over the old channels only, mean over classes, times T²).
- ILT:  L = LWF's loss + loss_de · MSE(f_new, f_old), f = the HEAD output (`out["features"]`),
        as in the PIFS code; MiB's ILT distils the body output instead (`feature="body"`).

Defaults are the few-shot ones of the PIFS code (loss_kd = loss_de = 10, T = 1). MiB's
class-incremental experiments used 100 for both; set them in the run's params to reproduce those.
The PIFS trainer also dropped the whole regulariser for a batch where it exceeded 10; we do not:
a weight should not switch itself off.
"""
from __future__ import annotations

import torch

from ifss.losses import feature_distillation, knowledge_distillation, segmentation_ce
from ifss.methods.base import Method
from ifss.methods.params import ILTParams, LwFParams


class LearningWithoutForgetting(Method):
    """Fine-tuning + KD of the old classes' probabilities against the previous-step model."""

    Params = LwFParams
    uses_old_model = True

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        terms = {"ce": segmentation_ce(out["logits"], batch["label"])}
        if old_out is not None:  # step 0 has no previous model
            p = self.params
            terms["kd"] = p.loss_kd * knowledge_distillation(
                out["logits"], old_out["logits"], p.kd_temperature)
        return terms


class IncrementalLearningTechniques(LearningWithoutForgetting):
    """LwF + MSE between the new and the old model's features (head output by default)."""

    Params = ILTParams
    FEATURES = {"head": "features", "body": "body"}

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        terms = super().loss(batch, out, old_out)
        if old_out is not None:
            key = self.FEATURES[self.params.feature]
            terms["de"] = self.params.loss_de * feature_distillation(out[key], old_out[key])
        return terms
