"""Body -> head -> incremental classifier, logits upsampled to the input size.

The contract every architecture keeps: `forward` returns {"logits", "features", "body"};
`load_previous_step` loads step k-1's weights into step k's model; `add_classifier_step` grows
the classifier; `param_groups` names the parts the optimiser treats apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.models.state_fit import state_misfit


class SegmentationModel(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module, classifier: nn.Module):
        super().__init__()
        self.body = body
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor, upsample: bool = True) -> dict[str, torch.Tensor]:
        """`body`: last body feature map; `features`: head output (classifier input);
        `logits`: classifier output, bilinearly upsampled to x's H x W (`upsample`; False: at
        the features' size, where WILSON's pseudo-labels live)."""
        body = self.body(x)
        features = self.head(body)
        logits = self.classifier(features)
        if upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return {"logits": logits, "features": features, "body": body}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "body": list(self.body.parameters()),
            "head": list(self.head.parameters()),
            "classifier": list(self.classifier.parameters()),
        }

    def add_classifier_step(self, n: int) -> nn.Module:
        """Append a classifier step of `n` classes; returns its module."""
        return self.classifier.add_step(n)

    def load_previous_step(self, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
        """Load the previous step's model state (`source` names its file in errors).

        Every key must be there except those of the newest classifier step, which the previous
        step did not have (they keep their fresh init); num_batches_tracked may be missing, as
        for ImageNet files. Checked before anything is copied, so a misfit leaves the model as
        it was.
        """
        own = self.state_dict()
        newest = f"classifier.convs.{len(self.classifier.convs) - 1}."
        misfit = state_misfit(own, state, lambda k: k.startswith(newest)
                              or k.endswith("num_batches_tracked"))
        if misfit:
            raise IfssError(
                f"checkpoint {source} does not fit this model ({misfit}); was it trained with "
                "another backbone or model.arch (or another model.head_channels)?"
            )
        self.load_state_dict(state, strict=False)
