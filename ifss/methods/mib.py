"""MiB (Cermelli et al. 2020, "Modeling the Background") at the few-shot steps, as in PIFS.

Research/pifs_mclos_mib.md §2.2-2.3:

    L = UNCE(z, y; old classes incl. background absorbed into class 0) + loss_kd · UNKD(z, z_old)

plus MiB's classifier initialisation before training: every new class copies the background
weight w_0, and the new biases and the background bias become b_0 − log(|C_new| + 1), so the
background's probability is shared evenly between background and the new classes and the
model's predictions are unchanged at iteration 0.

The init runs in `prepare`, i.e. AFTER the run has loaded the previous step's weights: it copies
the trained background classifier. (The PIFS code called it inside the trainer's constructor,
before the checkpoint load, so it copied a freshly initialised background row, and the load then
overwrote only the old rows; MiB's own run.py had the right order.)

Few-shot images keep their old-class labels (only other novel and future classes are void), so
under UNCE those pixels, like background, are targets of the "old or background" class 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ifss.data.build import StepData
from ifss.errors import IfssError
from ifss.losses import mib_initialise, unbiased_cross_entropy, unbiased_distillation
from ifss.methods.base import Method
from ifss.methods.params import MiBParams


class ModelingTheBackground(Method):
    Params = MiBParams
    uses_old_model = True

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data: StepData) -> None:
        super().prepare(model, old_model, data)
        if self.step > 0 and self.params.init_classifier:
            initialise_new_classifier(model.classifier, self.step)

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        if old_out is None:
            raise IfssError("MIB needs the previous step's model; it has no step-0 training")
        num_old = old_out["logits"].shape[1]
        log_p = F.log_softmax(out["logits"], dim=1)  # one for both terms
        return {
            "unce": unbiased_cross_entropy(out["logits"], batch["label"], num_old, log_p),
            "unkd": self.params.loss_kd * unbiased_distillation(
                out["logits"], old_out["logits"], log_p=log_p),
        }


@torch.no_grad()
def initialise_new_classifier(classifier: nn.Module, step: int) -> None:
    """MiB's init of step `step`'s classes from the (loaded) background row of a linear classifier
    (`classifier.convs[k]`: 1x1 convs with bias, step 0's first row being background)."""
    convs = classifier.convs
    if any(conv.bias is None for conv in convs):
        raise IfssError("MiB's classifier init needs a linear classifier with biases")
    weight = torch.cat([conv.weight for conv in convs])
    bias = torch.cat([conv.bias for conv in convs])
    mib_initialise(weight, bias, classifier.step_slice(step))
    for k, conv in enumerate(convs):
        conv.weight.copy_(weight[classifier.step_slice(k)])
        conv.bias.copy_(bias[classifier.step_slice(k)])
