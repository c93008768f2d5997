"""Body -> head -> incremental classifier, logits upsampled to the input size."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SegmentationModel(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module, classifier: nn.Module):
        super().__init__()
        self.body = body
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`body`: last body feature map; `features`: head output (classifier input);
        `logits`: classifier output, bilinearly upsampled to x's H x W."""
        body = self.body(x)
        features = self.head(body)
        logits = self.classifier(features)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "features": features, "body": body}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "body": list(self.body.parameters()),
            "head": list(self.head.parameters()),
            "classifier": list(self.classifier.parameters()),
        }
