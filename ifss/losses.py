"""Losses shared by several methods. Each takes tensors and returns a scalar tensor."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def segmentation_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the pixels whose label is not void (zero if there are none)."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)
