"""RT: classifier retraining on a frozen feature extractor (research §1.1, §2.2).

Step 0 starts from the FT step-0 model (`previous`, registry: step0_from="FT") and trains the
classifier again with body and head frozen, for the step-0 schedule the config gives (the PIFS
scripts: 60 epochs on VOC, 40 on COCO, lr 0.01). Step k trains only the new step's classifier
conv (lr · lr_cls); body, head and the old classes' convs are frozen.

Choices where the original was ambiguous:

- Step 0 continues from the loaded FT classifier (`reinit_classifier=False`). The PIFS scripts
  pass `--born_again`, but that flag is read nowhere in the code, so the published RT_0 is FT_0
  with its classifier trained further on frozen features; `reinit_classifier=True` starts the
  classifier from a fresh PyTorch init instead ("born again" taken literally).
- Frozen means frozen, batch-norm statistics included (`update_bn=False`): body and head run
  in eval mode during training, so the classifier learns on exactly the features it is tested
  on, and base-class features are not shifted towards the few-shot images. In the original the
  BN layers stayed in train mode (batch statistics in the forward pass, running statistics
  updated on the few-shot batches); `update_bn=True` reproduces that.
"""
from __future__ import annotations

from torch import nn

from ifss.config import TrainConfig
from ifss.data.build import StepData
from ifss.methods.base import Method
from ifss.methods.params import RTParams


class Retraining(Method):
    Params = RTParams

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data: StepData) -> None:
        super().prepare(model, old_model, data)
        if self.step == 0 and self.params.reinit_classifier:
            for conv in model.classifier.convs:
                conv.reset_parameters()

    def train_mode(self, model: nn.Module) -> None:
        super().train_mode(model)
        if not self.params.update_bn:  # frozen parts stay in eval mode, statistics included
            model.body.eval()
            model.head.eval()

    def param_groups(self, model: nn.Module, train: TrainConfig) -> list[dict]:
        convs = model.classifier.convs
        new = list(convs[self.step].parameters())
        ids = {id(p) for p in new}
        old = [p for p in model.classifier.parameters() if id(p) not in ids]
        return [
            {"name": "body", "params": list(model.body.parameters()), "lr_mult": 0.0},
            {"name": "head", "params": list(model.head.parameters()), "lr_mult": 0.0},
            {"name": "classifier_old", "params": old, "lr_mult": 0.0},
            {"name": "classifier_new", "params": new, "lr_mult": train.lr_cls},
        ]
