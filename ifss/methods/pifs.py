"""PIFS (Cermelli et al. 2021, "Prototype-based Incremental Few-Shot Segmentation"; research §2.2).

Starts from the COS step-0 model (cosine classifier). `prepare`:
  1. imprints the new classes' cosine weights as WI does (`imprint_new_classes`);
  2. with `batch_renorm`, turns every batch-norm layer into batch renormalisation with frozen
     running statistics (`convert_batch_renorm`; the originals' "iabr" norm);
  3. the teacher (`old_model`) becomes a frozen, eval-mode copy of this imprinted model, with the
     old AND the new classes (the originals' dist_warm_start).
Training then updates body, head and every classifier step with

    L = CE(few-shot labels) + loss_kd * KD(z, z_teacher; temperature kd_temperature)

KD as in ifss.losses.knowledge_distillation (mean over the classes, times T^2). The originals drop
the weighted KD term of a batch when it exceeds 10 (`kd_clip`; 0 never drops it).

Papers' schedule (configs, not code): lr 1e-3, batch 10 (at most the number of images), VOC-SS
1000 iterations, VOC-MS 200 per step at lr 1e-4, COCO-SS 2000, COCO-MS 1000 at lr 1e-3.
"""
from __future__ import annotations

import copy
import torch

from ifss.losses import knowledge_distillation, segmentation_ce
from ifss.methods.base import Method
from ifss.methods.imprinting import imprint_new_classes
from ifss.methods.params import PIFSParams
from ifss.models.norm import convert_batch_renorm


class PIFS(Method):
    Params = PIFSParams
    # The teacher is the imprinted model made in `prepare`, not the previous step's model, so the
    # run need not build the latter.
    uses_old_model = False

    def prepare(self, model, old_model, data) -> None:
        imprint_new_classes(model, data, self.step, self.runtime.device)
        if self.params.batch_renorm:
            convert_batch_renorm(model)
        if self.params.loss_kd > 0:
            teacher = copy.deepcopy(model)
            self.old_model = teacher.eval().requires_grad_(False)

    def loss(self, batch, out, old_out) -> dict[str, torch.Tensor]:
        terms = {"ce": segmentation_ce(out["logits"], batch["label"])}
        if old_out is not None:
            kd = self.params.loss_kd * knowledge_distillation(
                out["logits"], old_out["logits"], self.params.kd_temperature
            )
            if self.params.kd_clip:
                kd = torch.where(kd.detach() > self.params.kd_clip, kd * 0.0, kd)
            terms["kd"] = kd
        return terms
