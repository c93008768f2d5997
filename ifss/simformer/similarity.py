"""SimFormer's pixel-pixel similarity transfer (Chen et al., NeurIPS 2022), written from the
formulas of research/wilson_sdr_gfss_simformer.md §D.1-D.2 and the SimFormer bullet of §G.

A training pair is two images, a and b. E: per-pixel embeddings (the model's mask features,
N x D x h x w); S: per-pixel novel-class scores S = Σ_q softmax(class)_{q, novel}·σ(mask_q)
(N x K_novel x h x w, `novel_scores`).

Teacher (trained on base classes, which have pixel labels):
    sample_base_points   n points per image, round(n·common_fraction) of them from one base class
                         present in both images, the rest from the image's other base pixels
    grid_pairs           every point of a against every point of b (n_a x n_b pairs)
    SimNet               concatenated embedding pair (2D) -> logits (different, same)
    BalancedBCE          class-balanced BCE of the same/different decision, weights from the
                         positive and negative pair counts of the last `window` batches
Student (on the novel + ignored regions, where novel classes hide):
    sample_distill_points  n points per image from the novel + ignored region
    student_similarity   relu(cos) between the novel score vectors of the paired points
    distill_ce / distill_cce  the student s against the detached SimNet probability t

Points are (row, col) long coordinates in the labels' grid; `sample_at` reads a map of another
size at those points (bilinear, corners aligned, so a map of the labels' size is read exactly).

Where the original differs: its student similarity compares points of one image while its
teacher compares the image with its partner (§G); here both compare the points of a with the
points of b, as the paper's cross-image similarity does. Its sampler filled a region with fewer
pixels than points with pixels outside it; here points repeat instead (drawn with replacement).
"""
from __future__ import annotations

from collections import deque
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifss.errors import IfssError

Points = torch.Tensor  # P x 2 long, (row, col)


class SimNet(nn.Module):
    """Same-class classifier of a pixel pair: a concatenated embedding pair (..., 2D) -> two
    logits (..., 2), index 0 "different", index 1 "same".

    A fully connected branch of three layers, each Linear -> BatchNorm1d -> ReLU:

        h1 = relu(bn1(fc1(x)))         2D -> D   (no residual: the shapes differ)
        h2 = h1 + relu(bn2(fc2(h1)))   D -> D    (residual: identity path + branch)
        h3 = h2 + relu(bn3(fc3(h2)))   D -> D    (residual)
        logits = head(h3)              D -> 2

    Leading dimensions are flattened for BatchNorm1d and restored, so an n_a x n_b x 2D grid
    gives n_a x n_b x 2 logits; an empty grid gives empty logits without running the layers.
    """

    def __init__(self, dim: int = 256):
        super().__init__()
        self.dim = dim
        self.fc1, self.bn1 = nn.Linear(2 * dim, dim), nn.BatchNorm1d(dim)
        self.fc2, self.bn2 = nn.Linear(dim, dim), nn.BatchNorm1d(dim)
        self.fc3, self.bn3 = nn.Linear(dim, dim), nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        if pairs.shape[-1] != 2 * self.dim:
            raise IfssError(f"SimNet(dim={self.dim}) takes concatenated pairs of {2 * self.dim} "
                            f"channels, got {pairs.shape[-1]}; set its dim to the mask "
                            "features' channels")
        lead = pairs.shape[:-1]
        x = pairs.reshape(-1, pairs.shape[-1])
        if x.shape[0] == 0:  # an image without points: no pairs (BatchNorm1d needs rows)
            return pairs.new_zeros(*lead, 2)
        return self._after_fc1(self.fc1(x)).reshape(*lead, 2)

    def grids(self, embeddings: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The logits of every grid pair of each (a, b) in `embeddings` (n_a x D, n_b x D), as
        `forward(cat of grid_pairs(a, b) rows)` gives them (one BatchNorm batch), in that order:
        (Σ n_a·n_b) x 2. The grid is never built: fc1 of [a_i, b_j] is W_a·a_i + W_b·b_j + bias,
        so fc1 runs on n_a + n_b rows instead of n_a·n_b."""
        w_a, w_b = self.fc1.weight[:, :self.dim], self.fc1.weight[:, self.dim:]
        rows = []
        for a, b in embeddings:
            if a.shape[-1] != self.dim or b.shape[-1] != self.dim:
                raise IfssError(f"SimNet(dim={self.dim}) takes embeddings of {self.dim} "
                                f"channels, got {a.shape[-1]} and {b.shape[-1]}; set its dim to "
                                "the mask features' channels")
            pre = (a @ w_a.t())[:, None] + (b @ w_b.t() + self.fc1.bias)[None]
            rows.append(pre.reshape(-1, self.dim))
        pre = torch.cat(rows) if rows else self.fc1.weight.new_zeros(0, self.dim)
        if pre.shape[0] == 0:
            return pre.new_zeros(0, 2)
        return self._after_fc1(pre)

    def _after_fc1(self, pre: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(pre))
        h = h + F.relu(self.bn2(self.fc2(h)))
        h = h + F.relu(self.bn3(self.fc3(h)))
        return self.head(h)


def same_probability(logits: torch.Tensor) -> torch.Tensor:
    """SimNet's probability that a pair shares a class: softmax over the 2 logits, index 1."""
    return logits.softmax(-1)[..., 1]


def grid_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every row of a (n_a x D) next to every row of b (n_b x D): n_a x n_b x 2D, [a_i, b_j]."""
    return torch.cat([a[:, None].expand(-1, b.shape[0], -1),
                      b[None].expand(a.shape[0], -1, -1)], dim=-1)


def sample_at(maps: torch.Tensor, points: Points, size: tuple[int, int]) -> torch.Tensor:
    """The values of one image's maps (C x h x w) at points given in an H x W grid (`size`):
    P x C. Same size: plain indexing; otherwise bilinear with corners aligned (pixel (r, c) of
    H x W sits at r·(h-1)/(H-1), c·(w-1)/(W-1))."""
    if points.numel() == 0:
        return maps.new_zeros(0, maps.shape[0])
    points = points.to(maps.device)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps[:, points[:, 0], points[:, 1]].t()
    height, width = size
    ys = points[:, 0].to(maps.dtype) * 2 / max(height - 1, 1) - 1
    xs = points[:, 1].to(maps.dtype) * 2 / max(width - 1, 1) - 1
    grid = torch.stack([xs, ys], -1).view(1, -1, 1, 2)
    return F.grid_sample(maps[None], grid, mode="bilinear", align_corners=True)[0, :, :, 0].t()


def novel_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                 novel_classes: Iterable[int]) -> torch.Tensor:
    """S = Σ_q softmax(class_logits)_{q, c}·σ(mask_logits_q) for the novel classes c:
    class_logits N x Q x (C+1) (no-object last), mask_logits N x Q x h x w -> N x K x h x w,
    the novel classes in the given order."""
    index = torch.as_tensor(list(novel_classes), dtype=torch.long, device=class_logits.device)
    probs = class_logits.softmax(-1).index_select(-1, index)
    return torch.einsum("nqk,nqhw->nkhw", probs, mask_logits.sigmoid())


def _sample_pixels(mask: torch.Tensor, k: int, generator: torch.Generator | None) -> Points:
    """k (row, col) points drawn uniformly from the True pixels of an h x w mask: without
    replacement when it has at least k pixels, with replacement otherwise; none when empty."""
    width = mask.shape[-1]
    index = mask.reshape(-1).nonzero().squeeze(1)
    if k <= 0 or index.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=mask.device)
    device = generator.device if generator is not None else torch.device("cpu")
    if index.numel() >= k:
        pick = torch.randperm(index.numel(), generator=generator, device=device)[:k]
    else:
        pick = torch.randint(index.numel(), (k,), generator=generator, device=device)
    flat = index[pick.to(index.device)]
    return torch.stack([flat // width, flat % width], 1)


def sample_base_points(labels_a: torch.Tensor, labels_b: torch.Tensor,
                       base_classes: Iterable[int], n: int = 100, common_fraction: float = 0.8,
                       generator: torch.Generator | None = None
                       ) -> tuple[Points, Points, torch.Tensor]:
    """SimNet's training points for a pair of h x w label maps (void 255; novel pixels are void
    already, and any label outside `base_classes` is never sampled).

    One base class present in both images is drawn uniformly; round(n·common_fraction) points
    of each image come from it, the other points from the image's remaining base pixels (from
    all its base pixels when the common class is its only one). Without a common class, all n
    points come from the base pixels. Returns points_a (n x 2), points_b (n x 2) and the n x n
    targets of the grid pairs (`grid_pairs`): 1.0 where label_a(point i) == label_b(point j).
    An image without base pixels gets no points (and the targets are empty)."""
    if not 0.0 <= common_fraction <= 1.0:
        raise IfssError(f"common_fraction must lie in [0, 1], got {common_fraction}")
    base = torch.as_tensor(sorted(set(base_classes)), dtype=labels_a.dtype, device=labels_a.device)
    valid_a, valid_b = torch.isin(labels_a, base), torch.isin(labels_b, base.to(labels_b.device))
    common = sorted(set(labels_a[valid_a].unique().tolist())
                    & set(labels_b[valid_b].unique().tolist()))
    points = []
    if common:
        pick = torch.randint(len(common), (1,), generator=generator,
                             device=generator.device if generator is not None else "cpu")
        chosen = common[int(pick)]
        n_common = int(round(n * common_fraction))
    else:
        chosen, n_common = None, 0
    for labels, valid in ((labels_a, valid_a), (labels_b, valid_b)):
        if chosen is None:
            points.append(_sample_pixels(valid, n, generator))
            continue
        rest = valid & (labels != chosen)
        if not bool(rest.any()):
            rest = valid
        points.append(torch.cat([_sample_pixels(labels == chosen, n_common, generator),
                                 _sample_pixels(rest, n - n_common, generator)]))
    points_a, points_b = points
    class_a = labels_a[points_a[:, 0], points_a[:, 1]]
    class_b = labels_b[points_b[:, 0], points_b[:, 1]]
    targets = (class_a[:, None] == class_b[None, :].to(class_a.device)).float()
    return points_a, points_b, targets


def sample_distill_points(novel_or_void_mask_a: torch.Tensor, novel_or_void_mask_b: torch.Tensor,
                          n: int = 100, generator: torch.Generator | None = None
                          ) -> tuple[Points, Points]:
    """The distillation points: n (row, col) points drawn uniformly from each image's novel +
    ignored region (h x w bool masks; leave padding out of them). Without replacement when the
    region has at least n pixels, with replacement otherwise; none for an empty region."""
    return (_sample_pixels(novel_or_void_mask_a.bool(), n, generator),
            _sample_pixels(novel_or_void_mask_b.bool(), n, generator))


class BalancedBCE:
    """Class-balanced BCE of SimNet's same/different decision, balanced over a running window.

    Each call first records the batch's counts (n_pos = pairs with target 1, n_neg = the
    others) and keeps the last `window` batches (batches without pairs are not recorded).
    With P and N the sums of those counts over the window, this batch included:

        w_pos = N / (P + N),   w_neg = P / (P + N)     (both 1/2 before any pair is seen)
        loss  = mean over the batch's pairs of
                -(w_pos·t·log p_same + w_neg·(1 - t)·log p_diff),

    p = softmax of the 2 logits (index 1 = same). A window holding only positives (or only
    negatives) gives them weight 0. The counts are the state: `state_dict` / `load_state_dict`
    save and restore them (oldest batch first)."""

    def __init__(self, window: int = 25):
        if int(window) < 1:
            raise IfssError(f"the BalancedBCE window must be at least 1 batch, got {window}")
        self.window = int(window)
        self.counts: deque[tuple[int, int]] = deque(maxlen=self.window)

    def weights(self) -> tuple[float, float]:
        """(w_pos, w_neg) from the counts of the window."""
        pos = sum(p for p, _ in self.counts)
        neg = sum(q for _, q in self.counts)
        if pos + neg == 0:
            return 0.5, 0.5
        return neg / (pos + neg), pos / (pos + neg)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits (..., 2) and targets (...) of 0/1 -> the scalar loss of this batch."""
        if logits.shape[:-1] != targets.shape or logits.shape[-1] != 2:
            raise IfssError(f"BalancedBCE takes logits (..., 2) and targets (...) of the same "
                            f"pairs, got {tuple(logits.shape)} and {tuple(targets.shape)}")
        if targets.numel() == 0:
            return logits.sum() * 0.0
        targets = targets.to(torch.float32)
        n_pos = int(targets.sum().item())
        self.counts.append((n_pos, targets.numel() - n_pos))
        w_pos, w_neg = self.weights()
        log_p = logits.float().log_softmax(-1)
        per_pair = -(w_pos * targets * log_p[..., 1] + w_neg * (1 - targets) * log_p[..., 0])
        return per_pair.mean()

    def state_dict(self) -> dict:
        return {"window": self.window,
                "counts": torch.tensor(list(self.counts), dtype=torch.long).reshape(-1, 2)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["window"]) != self.window:
            raise IfssError(f"the saved BalancedBCE state has a window of {int(state['window'])} "
                            f"batches, this one {self.window}; resume with the same window")
        rows = torch.as_tensor(state["counts"]).reshape(-1, 2).tolist()
        self.counts = deque(((int(p), int(q)) for p, q in rows), maxlen=self.window)


def student_similarity(S_a_points: torch.Tensor, S_b_points: torch.Tensor) -> torch.Tensor:
    """relu(cos) between the novel score vectors of the points of a (n_a x K) and of b
    (n_b x K): n_a x n_b, entry (i, j) for the grid pair (a_i, b_j). A zero vector has
    cosine 0 with everything."""
    a = F.normalize(S_a_points.float(), dim=-1)
    b = F.normalize(S_b_points.float(), dim=-1)
    return F.relu(a @ b.t())


def distill_ce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """BCE of the student similarity s against the teacher probability t (detached here),
    mean over the pairs: -(t·log s + (1 - t)·log(1 - s)), s clamped to [0, 1] and each log
    floored at -100 (as torch's BCE does). Written out rather than F.binary_cross_entropy,
    which autocast refuses."""
    s, t = s.float().clamp(0.0, 1.0), t.detach().float()
    log_s = torch.log(s).clamp_min(-100.0)
    log_not_s = torch.log(1 - s).clamp_min(-100.0)
    return -(t * log_s + (1 - t) * log_not_s).mean()


def distill_cce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SimFormer's `cce`: mean over the pairs of
    -relu(t - 0.5)·log(s + 1) - relu(0.5 - t)·log(2 - s), t detached here.

    For s in [0, 1] both logs are >= 0, so the loss is <= 0 (at best -0.5·log 2 per pair, with
    t = 1, s = 1 or t = 0, s = 0): it pulls s up where the teacher says "same" (t > 0.5) and down
    where it says "different", each pair by how sure the teacher is. A negative logged value is
    expected and kept as the original has it."""
    s, t = s.float(), t.detach().float()
    return (-F.relu(t - 0.5) * torch.log(s + 1) - F.relu(0.5 - t) * torch.log(2 - s)).mean()
