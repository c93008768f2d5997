"""Confusion matrix on the device, per-class IoU, and the base / novel / all / HM summary.

Rows of the matrix are ground truth, columns predictions. A class absent from both ground truth
and prediction has no IoU (None) and is left out of every mean; a class predicted but absent from
the ground truth has IoU 0 (its false positives count). Base classes are the step-0 classes with
background included (as in PIFS); novel classes are all classes added after step 0.

`weakshot_summary` gives SimFormer's weak-shot numbers (mIoU, fwIoU, mACC, pACC, base / novel
IoU and ACC) over given base and novel classes; pixels whose ground truth is neither are ignored.
`weakshot_classes` says which classes those are for a weak-shot run (metrics.json's "weakshot").
"""
from __future__ import annotations

from typing import Sequence

import torch

IGNORE = 255


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """N x C x H x W scores -> N x H x W class indices: `logits.argmax(1)` (the first maximum on
    ties, the first NaN where there is one), exactly.

    On CPU torch reduces an NCHW tensor over its channel dimension one pixel at a time, while
    `amax(1)` runs vectorised across pixels (measured on one thread: 8 x 21 x 64 x 64, argmax
    5.6 ms, max(1).indices 2.8 ms, amax 0.05 ms). So the CPU path takes the maximum with amax and
    finds its first channel from one more amax over `(logits == max) * rank`, with rank
    C-1 .. 0 along the channels: 0.64 ms there, 21 -> 6.4 ms at 1 x 21 x 512 x 512. A pixel
    whose maximum is NaN matches no channel, so then torch's own reduction decides. Elsewhere
    (CUDA) torch's argmax is already vectorised."""
    if logits.device.type != "cpu" or not logits.is_floating_point():
        return logits.argmax(1)
    top = logits.amax(1, keepdim=True)
    if top.isnan().any():
        return logits.argmax(1)
    channels = logits.shape[1]
    rank_type = torch.uint8 if channels <= 256 else torch.int32
    rank = torch.arange(channels - 1, -1, -1, dtype=rank_type).view(1, channels, 1, 1)
    return (channels - 1) - ((logits == top) * rank).amax(1).long()


class ConfusionMatrix:
    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count (target, pred) pairs; void pixels go to an extra bin that is dropped (no boolean
        indexing: a quarter of its CPU time, and no host sync on CUDA)."""
        n = self.num_classes
        index = torch.where(target != IGNORE, target.long() * n + pred.long(), n * n)
        self.mat += torch.bincount(index.reshape(-1), minlength=n * n + 1)[:n * n].view(n, n)

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


def percent_text(value: float | None) -> str:
    """"61.3" for 0.613, "-" for a value that is not there (log lines)."""
    return "-" if value is None else f"{100 * value:.1f}"


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


def accuracy_per_class(mat: torch.Tensor) -> list[float | None]:
    """Per class, the share of its ground-truth pixels predicted as it (None: no such pixel)."""
    mat = mat.double().cpu()
    return [None if g == 0 else float(t / g) for t, g in zip(mat.diag(), mat.sum(1))]


def weakshot_classes(task) -> tuple[list[int], list[int]]:
    """(base, novel) class positions of step 1 of weak-shot `task` (an ifss.tasks.Task) for
    `weakshot_summary`: base = the step-0 positions, background 0 left out where the label
    space's record says so (`weakshot_background`: COCO-Stuff-10K, ADE20K, SimFormer's
    convention) and kept elsewhere (the synthetic benchmark, VOC); novel = the step-1 positions."""
    from ifss.data.records import get_dataset

    first = 0 if get_dataset(task.label_space).weakshot_background else 1
    return list(range(first, task.num_base)), list(range(task.num_base, len(task.order(1))))


def weakshot_summary(mat: torch.Tensor, base: Sequence[int], novel: Sequence[int]) -> dict:
    """SimFormer's metrics from a confusion matrix, over the classes `base` + `novel` (indices).

    Pixels whose ground truth is in neither are ignored (their rows dropped); a prediction of any
    other index (background 0, say) on a kept pixel counts as an error. Per kept class c, with
    tp = mat[c, c], gt = its kept row's sum, pred = its column's sum over kept rows:

        iou[c] = tp / (gt + pred - tp), None when gt + pred = 0
        acc[c] = tp / gt, None when gt = 0
        miou_all, macc: means over the classes whose value is not None
        fwiou = sum_c gt_c / sum(gt) * iou[c];  pacc = sum(tp) / sum(gt)
        miou_base / miou_novel, macc_base / macc_novel: the same means over base or novel only
        hm: harmonic mean of miou_base and miou_novel

    Classes absent from the ground truth are handled as `summarize` does: absent from both ground
    truth and prediction, no IoU (left out of the means); predicted but absent, IoU 0 (counted).
    Their accuracy is None. SimFormer (prop_former/evaluation.py, detectron2's SemSegEvaluator)
    gives the same mIoU, fwIoU, mACC and pACC, but its BaseIoU / NovelIoU skip a class that is
    predicted and absent from the ground truth, which counts as 0 here.

    For ifss's weak-shot tasks (`ws*`), after step 1 with task t: base = range(1, t.num_base),
    novel = range(t.num_base, len(t.order(1))), background 0 left out (COCO-Stuff-10K has none;
    SimFormer makes ADE20K's "other" void). `iou` and `acc` are indexed like the matrix, None
    for indices in neither list. Values are fractions, not percentages.
    """
    n = mat.shape[0]
    base, novel = [int(c) for c in base], [int(c) for c in novel]
    kept = base + novel
    if len(set(kept)) != len(kept) or not all(0 <= c < n for c in kept):
        raise ValueError(f"base {base} and novel {novel} must be distinct indices in 0..{n - 1}")
    rows = torch.zeros(n, dtype=torch.bool)
    rows[kept] = True
    mat = mat.double().cpu() * rows[:, None]  # ignored pixels: rows outside base + novel
    tp, gt, pred = mat.diag(), mat.sum(1), mat.sum(0)
    iou: list[float | None] = [None] * n
    acc: list[float | None] = [None] * n
    for c in kept:
        union = gt[c] + pred[c] - tp[c]
        iou[c] = None if union == 0 else float(tp[c] / union)
        acc[c] = None if gt[c] == 0 else float(tp[c] / gt[c])
    total = float(gt.sum())
    base_iou, novel_iou = _mean([iou[c] for c in base]), _mean([iou[c] for c in novel])
    return {
        "iou": iou,
        "acc": acc,
        "miou_all": _mean([iou[c] for c in kept]),
        "fwiou": (sum(float(gt[c]) / total * iou[c] for c in kept if gt[c] > 0)
                  if total else None),
        "macc": _mean([acc[c] for c in kept]),
        "pacc": float(tp.sum()) / total if total else None,
        "miou_base": base_iou,
        "miou_novel": novel_iou,
        "macc_base": _mean([acc[c] for c in base]),
        "macc_novel": _mean([acc[c] for c in novel]),
        "hm": harmonic_mean(base_iou, novel_iou),
    }
