"""Scores of episodic few-shot segmentation: class mIoU and FB-IoU over many episodes, and the
summary over repeated runs.

GFSS capstone (research/wilson_sdr_gfss_simformer.md §C.3 and the GFSS bullet of §G): every
prediction is binary (1 = the episode's class). Per class id, the foreground intersections and
unions of all its episodes are summed, and the class IoU is sum I / sum U; mIoU is the mean over
the classes seen. FB-IoU is the mean over {background, foreground} of sum I / sum U, with the sums
over all episodes taken BEFORE dividing (not a mean of per-episode IoUs). Void (255) pixels are
left out of both.

Runs are summarised as the original reports them: "max" (the run with the largest value of the
chosen key), "mean" (the mean over runs) and "smoothed" (the best mean over a sliding window of
`group` consecutive runs; 4 in the original).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ifss.errors import IfssError
from ifss.losses import IGNORE


class EpisodeScores:
    """Intersections and unions summed over episodes, per class and for background/foreground."""

    def __init__(self):
        self.intersection: dict[int, int] = {}  # class id -> summed foreground intersection
        self.union: dict[int, int] = {}
        self.fb_intersection = [0, 0]  # background, foreground: summed over every episode
        self.fb_union = [0, 0]
        self.episodes = 0

    def add(self, pred: Tensor, label: Tensor, class_ids) -> None:
        """pred and label E x N x H x W (pred in {0, 1}; label in {0, 1, 255}), class_ids the
        E episodes' class ids (a tensor or a sequence of ints)."""
        if pred.dim() != 4 or pred.shape != label.shape:
            raise IfssError(f"predictions and labels must both be E x N x H x W, not of shapes "
                            f"{tuple(pred.shape)} and {tuple(label.shape)}")
        ids = [int(c) for c in (class_ids.tolist() if isinstance(class_ids, Tensor)
                                else class_ids)]
        if len(ids) != pred.shape[0]:
            raise IfssError(f"need one class id per episode ({pred.shape[0]}), got {len(ids)}")
        valid = label != IGNORE
        fg_pred, fg_label = (pred == 1) & valid, label == 1
        bg_pred, bg_label = (pred == 0) & valid, label == 0
        if bool((valid & ~fg_label & ~bg_label).any()) or bool((valid & ~fg_pred & ~bg_pred).any()):
            raise IfssError(f"episode predictions must be 0 or 1 and labels 0, 1 or {IGNORE}")
        counts = torch.stack([(bg_pred & bg_label).flatten(1).sum(1),
                              (bg_pred | bg_label).flatten(1).sum(1),
                              (fg_pred & fg_label).flatten(1).sum(1),
                              (fg_pred | fg_label).flatten(1).sum(1)], dim=1).tolist()
        for cls, (i_bg, u_bg, i_fg, u_fg) in zip(ids, counts):
            self.intersection[cls] = self.intersection.get(cls, 0) + i_fg
            self.union[cls] = self.union.get(cls, 0) + u_fg
            self.fb_intersection[0] += i_bg
            self.fb_union[0] += u_bg
            self.fb_intersection[1] += i_fg
            self.fb_union[1] += u_fg
        self.episodes += len(ids)

    def per_class(self) -> dict[int, float]:
        """class id -> sum I / sum U over its episodes (nan when its union is empty: the class was
        neither labelled nor predicted in any of them)."""
        return {c: _divide(self.intersection[c], self.union[c]) for c in sorted(self.intersection)}

    def miou(self) -> float:
        """Mean class IoU over the classes seen (nan before any episode)."""
        return _mean(self.per_class().values())

    def fb_iou(self) -> float:
        """Mean of background's and foreground's sum I / sum U over every episode."""
        return _mean(_divide(i, u) for i, u in zip(self.fb_intersection, self.fb_union))


def _divide(intersection: int, union: int) -> float:
    return intersection / union if union else math.nan


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def over_runs(values: list[dict], key: str, group: int = 4) -> dict:
    """Summary of repeated runs, each a dict of numbers with the same keys:
    "max" (the values of the run with the largest `key`; the first on a tie), "mean" (each value
    averaged over the runs) and "smoothed" (each value averaged over the window of `group`
    consecutive runs whose mean of `key` is largest; the first on a tie; with fewer runs than
    `group`, the one window of all runs)."""
    if not values:
        raise IfssError("over_runs needs at least one run")
    if group < 1:
        raise IfssError(f"the smoothing group must be >= 1 run, not {group}")
    keys = list(values[0])
    if key not in keys:
        raise IfssError(f"unknown key {key!r}; the runs have {', '.join(map(str, keys))}")
    if any(set(v) != set(keys) for v in values):
        raise IfssError("every run must have the same keys")
    series = [v[key] for v in values]
    best = series.index(max(series))
    size = min(group, len(values))
    window_means = [sum(series[s:s + size]) / size for s in range(len(values) - size + 1)]
    start = window_means.index(max(window_means))
    window = values[start:start + size]
    return {
        "max": dict(values[best]),
        "mean": {k: sum(v[k] for v in values) / len(values) for k in keys},
        "smoothed": {k: sum(v[k] for v in window) / size for k in keys},
    }
