"""Confusion matrix on the device, per-class IoU, and the base / novel / all / HM summary.

Rows of the matrix are ground truth, columns predictions. A class absent from both ground truth
and prediction has no IoU (None) and is left out of every mean; a class predicted but absent from
the ground truth has IoU 0 (its false positives count). Base classes are the step-0 classes with
background included (as in PIFS); novel classes are all classes added after step 0.
"""
from __future__ import annotations

import torch

IGNORE = 255


class ConfusionMatrix:
    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        n = self.num_classes
        valid = target != IGNORE
        index = target[valid].long() * n + pred[valid].long()
        self.mat += torch.bincount(index, minlength=n * n).view(n, n)

    def all_reduce(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)


def iou_per_class(mat: torch.Tensor) -> list[float | None]:
    mat = mat.double().cpu()
    tp = mat.diag()
    union = mat.sum(0) + mat.sum(1) - tp
    return [None if u == 0 else float(t / u) for t, u in zip(tp, union)]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def summarize(mat: torch.Tensor, num_base: int) -> dict:
    """IoU per class and the means; `num_base` = step-0 classes including background."""
    iou = iou_per_class(mat)
    base = _mean(iou[:num_base])
    novel = _mean(iou[num_base:]) if len(iou) > num_base else None
    total = mat.sum().item()
    return {
        "iou": iou,
        "miou_base": base,
        "miou_novel": novel,
        "miou_all": _mean(iou),
        "hm": harmonic_mean(base, novel),
        "pixel_accuracy": mat.diag().sum().item() / total if total else None,
    }
