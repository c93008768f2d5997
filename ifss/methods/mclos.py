"""MCLOS (Zhang, Shi, Su, Wang, ISCAS'24, "Memory-Based Contrastive Learning with Optimized
Sampling for Incremental Few-Shot Semantic Segmentation"; seed 000, research §7).

MCLOS = PIFS + a pixel-to-memory contrastive term. Step 0 trains the cosine base as COS does
(cross-entropy) plus the contrastive term, so the memory exists; steps >= 1 are PIFS (imprinting,
batch renormalisation, KD from the imprinted teacher) plus the contrastive term:

    L = L_PIFS (or CE at step 0) + contrast_weight * InfoNCE   (after `warmup` of the iterations)

Per iteration, on the head features (the classifier's input, L2-normalised per pixel):
  1. anchors (`sample_anchors`): for every (image, class) of the ground truth with at least
     `anchor_min_pixels` pixels, n_view = min(anchors_per_class, max_anchors // #(image, class))
     pixels; "hard" sampling takes half mis-predicted (label c, prediction != c) and half
     correctly predicted ones (if one kind runs short the other fills in), "random" takes
     n_view pixels of the class regardless of the prediction;
  2. examples (`select_examples`), per anchor of class c, among the memory entries (region and
     pixel banks) or, with memory "none", the other anchors of the batch (mini-batch contrast):
     positives are entries of class c, negatives entries of other classes;
       hard       the num_pos positives of LOWEST similarity, the num_neg negatives of HIGHEST;
       semi-hard  num_pos (num_neg) drawn uniformly without replacement from the anchor's
                  positives (negatives) among its hardest max(num, ceil(semi_hard_ratio * K))
                  candidates, K = the slots searched: for positives the class's slots in the
                  banks, for negatives every slot (so with a full memory: the hardest 10% of
                  them, or `hard` when that is fewer than num);
       random     num_pos (num_neg) drawn uniformly without replacement;
  3. ifss.losses.info_nce on the cosines (temperature, base_temperature);
  4. the batch's entries are computed (`ContrastMemory.stage`; K = pixels_per_class_step0 at
     step 0, pixels_per_class later) and written after this batch's backward (the
     `after_backward` hook): an anchor never meets its own copy, and the loss may contrast with
     views of the banks without copying them.

Choices (research §7 describes the reference; what differs and why):
- Labels and predictions are resized (nearest) to the feature map instead of upsampling the
  features to the label size: (output stride)^2 fewer pixels to sample from and the same
  region means up to boundary pixels. `anchor_min_pixels` counts feature-map pixels.
- Empty memory slots are masked out (the reference contrasted against random-normal slots).
- Warm-up is a fraction of the step's iterations (the reference: 10 epochs out of 50 at VOC-SS
  1-shot, 0.2); the engine tells the iteration and the step's length (`before_step`).
- `memory_candidates` > 0 contrasts with that many random filled entries per class and bank,
  drawn each iteration, instead of the whole memory (the reference); a cost knob, off by default.
- Shapes never depend on the data (no host synchronisation on accelerators): anchors fill a
  fixed number of slots, invalid ones masked; on CPU, where reading a count is free, the unused
  anchor slots are cut off before the similarities are computed.
- With DDP every process enqueues every process's entries, so the banks stay identical.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ifss.errors import IfssError
from ifss.losses import info_nce
from ifss.memory import ContrastMemory, at_size, group_runs, labels_at
from ifss.methods.base import Method
from ifss.methods.params import MCLOS_EXAMPLE_SAMPLING, MCLOSParams
from ifss.methods.pifs import PIFS
from ifss.metrics import predicted_classes

EXAMPLE_SAMPLING = MCLOS_EXAMPLE_SAMPLING


# --- anchors ----------------------------------------------------------------------------------

def sample_anchors(labels: torch.Tensor, preds: torch.Tensor | None, num_classes: int,
                   per_class: int = 50, max_anchors: int = 1024, min_pixels: int = 1,
                   hard: bool = True):
    """Anchor pixels of a batch. labels, preds: N x P (flattened feature map; void 255).

    Returns (index, classes, valid, is_hard), each of T = min(max_anchors, N*C*per_class, N*P)
    entries: index into the N*P flattened pixels, its class, whether the slot holds an anchor,
    and whether it was mis-predicted. Valid slots come first. Uses torch's RNG."""
    n, p = labels.shape
    c = num_classes
    lab = labels.long()
    lab = torch.where((lab < 0) | (lab >= c), c, lab)
    labelled = lab < c
    easy = (preds.long() == lab) if (hard and preds is not None) else torch.zeros_like(labelled)
    group = torch.where(labelled, 2 * lab + easy.long(), 2 * c)  # 2c: hard, 2c+1: easy
    order, first, count = group_runs(group, 2 * c)
    first_h, first_e = first[:, 0::2], first[:, 1::2]
    n_h, n_e = count[:, 0::2], count[:, 1::2]
    present = (n_h + n_e) >= max(min_pixels, 1)
    groups = present.sum()
    n_view = torch.clamp(max_anchors // groups.clamp_min(1), max=per_class)
    if hard:
        take_h = torch.minimum(n_h, torch.clamp(n_view - n_e, min=n_view // 2))
        take_e = torch.minimum(n_e, n_view - take_h)
    else:
        take_h, take_e = torch.minimum(n_h, n_view), torch.zeros_like(n_e)
    j = torch.arange(per_class, device=lab.device)
    take_h, take_e = take_h.unsqueeze(-1), take_e.unsqueeze(-1)
    is_hard = j < take_h
    valid = ((j < take_h + take_e) & present.unsqueeze(-1))
    pos = torch.where(is_hard, first_h.unsqueeze(-1) + j, first_e.unsqueeze(-1) + j - take_h)
    pixel = order.gather(1, pos.clamp(0, p - 1).reshape(n, -1)).reshape(n, c, per_class)
    index = pixel + (torch.arange(n, device=lab.device) * p).view(n, 1, 1)
    classes = torch.arange(c, device=lab.device).view(1, c, 1).expand(n, c, per_class)
    total = min(max_anchors, n * c * per_class, n * p)
    keep = torch.argsort((~valid).reshape(-1).to(torch.uint8), stable=True)[:total]
    return (index.reshape(-1)[keep], classes.reshape(-1)[keep], valid.reshape(-1)[keep],
            (is_hard & valid).reshape(-1)[keep])


# --- examples ---------------------------------------------------------------------------------

def _pick(ranked: torch.Tensor, num: int, mode: str, ratio: float):
    """Per row, `num` columns by `mode` among the finite entries of `ranked` (A x K; higher =
    harder, -inf = not eligible). Returns (A x k indices, A x k valid), k = min(num, K), in no
    particular order within a row."""
    k = min(num, ranked.shape[1])
    eligible = ranked > -math.inf
    if k == ranked.shape[1]:  # every column is wanted: nothing to choose, in any mode
        return torch.arange(k, device=ranked.device).expand_as(ranked), eligible
    if mode == "random":
        keys = torch.where(eligible, torch.rand(ranked.shape, device=ranked.device), -1.0)
        values, index = keys.topk(k, dim=1, sorted=False)
        return index, values >= 0
    # semi-hard: a random k of the hardest max(k, ceil(ratio * K)) columns that are eligible
    width = k if mode == "hard" else min(ranked.shape[1],
                                         max(k, math.ceil(ratio * ranked.shape[1])))
    values, index = ranked.topk(width, dim=1, sorted=False)
    if width == k:
        return index, values > -math.inf
    keys = torch.where(values > -math.inf, torch.rand(values.shape, device=values.device), -1.0)
    drawn, j = keys.topk(k, dim=1, sorted=False)
    return index.gather(1, j), drawn >= 0


def select_examples(sims: torch.Tensor, anchor_classes: torch.Tensor, key_classes: torch.Tensor,
                    key_valid: torch.Tensor, num_pos: int, num_neg: int, mode: str = "semi-hard",
                    semi_hard_ratio: float = 0.1, exclude: torch.Tensor | None = None,
                    by_class: torch.Tensor | None = None):
    """Positives and negatives of each anchor among K keys. sims: A x K cosines (no gradient
    needed). Returns (pos_index, pos_valid, neg_index, neg_valid): A x min(num, K) columns of
    `sims` and their validity. `exclude` (A x K bool) removes pairs (the anchor itself in
    mini-batch contrast). `by_class` (C x L), when the keys come in class blocks (a memory): the
    columns of each class's keys, so positives are searched among L columns instead of K."""
    if mode not in EXAMPLE_SAMPLING:
        raise IfssError(f"example sampling {mode!r} is not known; valid: "
                        f"{', '.join(EXAMPLE_SAMPLING)}")
    inf = -math.inf
    sims = sims.detach().float()
    unusable = ~key_valid.unsqueeze(0)
    if exclude is not None:
        unusable = unusable | exclude
    if by_class is None:
        same = anchor_classes.unsqueeze(1) == key_classes.unsqueeze(0)
        pos_index, pos_valid = _pick((-sims).masked_fill_(~same | unusable, inf), num_pos, mode,
                                     semi_hard_ratio)
        negatives = sims.masked_fill(same | unusable, inf)
    else:
        cols = by_class[anchor_classes]  # A x L: the anchor's own class
        off = unusable.expand_as(sims).gather(1, cols) if exclude is not None \
            else unusable[0][cols]
        j, pos_valid = _pick((-sims.gather(1, cols)).masked_fill_(off, inf), num_pos, mode,
                             semi_hard_ratio)
        pos_index = cols.gather(1, j)
        negatives = sims.masked_fill(unusable, inf).scatter_(1, cols, inf)
    neg_index, neg_valid = _pick(negatives, num_neg, mode, semi_hard_ratio)
    return pos_index, pos_valid, neg_index, neg_valid


class _ChosenCosines(torch.autograd.Function):
    """Cosines of anchors (A x D) with chosen keys (K x D, no gradient): index A x J, `values`
    their precomputed cosines. The gradient reaches the anchors as a weighted sum over the
    chosen keys only (an embedding bag): A x J x D work instead of the A x K x D of
    differentiating the whole similarity matrix."""

    @staticmethod
    def forward(ctx, anchors, keys, index, values):
        ctx.save_for_backward(keys, index)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        keys, index = ctx.saved_tensors
        return (torch.nn.functional.embedding_bag(index, keys, mode="sum",
                                                  per_sample_weights=grad.to(keys.dtype)),
                None, None, None)


def contrastive_loss(anchors: torch.Tensor, anchor_classes: torch.Tensor,
                     anchor_valid: torch.Tensor, keys: torch.Tensor, key_classes: torch.Tensor,
                     key_valid: torch.Tensor,
                     num_pos: int, num_neg: int, mode: str, semi_hard_ratio: float,
                     temperature: float, base_temperature: float,
                     exclude: torch.Tensor | None = None,
                     by_class: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of normalised anchors (A x D) against normalised keys (K x D). Keys that need no
    gradient (memory entries) are contrasted through `_ChosenCosines`; keys with a gradient
    (the anchors themselves, mini-batch contrast) through the plain similarity matrix."""
    keys = keys.to(anchors.dtype)
    if keys.requires_grad:
        sims = anchors @ keys.T
        pi, pv, ni, nv = select_examples(sims, anchor_classes, key_classes, key_valid, num_pos,
                                         num_neg, mode, semi_hard_ratio, exclude, by_class)
        pos, neg = sims.gather(1, pi), sims.gather(1, ni)
    else:
        with torch.no_grad():
            sims = anchors @ keys.T
            pi, pv, ni, nv = select_examples(sims, anchor_classes, key_classes, key_valid,
                                             num_pos, num_neg, mode, semi_hard_ratio, exclude,
                                             by_class)
            index = torch.cat([pi, ni], 1)
            values = sims.gather(1, index)
        chosen = _ChosenCosines.apply(anchors, keys, index, values)
        pos, neg = chosen[:, :pi.shape[1]], chosen[:, pi.shape[1]:]
    return info_nce(pos, neg, pv, nv, temperature, base_temperature, anchor_valid)


# --- the method -------------------------------------------------------------------------------

class MCLOS(PIFS):
    Params = MCLOSParams

    def __init__(self, params: MCLOSParams, cfg, runtime):
        super().__init__(params, cfg, runtime)
        self.memory: ContrastMemory | None = None
        self.iteration = 0  # iterations of this step so far, this one included
        self.warmup_iterations = 0

    @property
    def pixels_per_image_class(self) -> int:
        p = self.params
        return p.pixels_per_class_step0 if self.step == 0 else p.pixels_per_class

    def prepare(self, model, old_model, data) -> None:
        if self.step == 0:
            Method.prepare(self, model, old_model, data)  # COS training: no imprinting, no teacher
        else:
            super().prepare(model, old_model, data)
        if self.params.memory != "none":
            self.memory = ContrastMemory(data.num_classes, self.params.memory_size,
                                         model.classifier.in_channels,
                                         region=self.params.memory == "pixel+region")
            self.memory.to(self.runtime.device)
        self.load_state_dict(self.carried)  # the previous step's memory, grown to this step

    def before_step(self, iteration: int, total: int) -> None:
        self.iteration = iteration + 1
        self.warmup_iterations = round(self.params.warmup * total)

    def after_backward(self, iteration: int) -> None:
        if self.memory is not None:
            self.memory.commit()  # this batch's entries, now that its backward has run

    def loss(self, batch, out, old_out) -> dict[str, torch.Tensor]:
        terms = super().loss(batch, out, old_out)
        features = out["features"]
        labels = labels_at(batch["label"], features.shape[-2:])
        p = self.params
        if self.iteration > self.warmup_iterations and p.contrast_weight > 0:
            terms["contrast"] = p.contrast_weight * self.contrast(features, labels, out["logits"])
        else:
            terms["contrast"] = features.new_zeros((), dtype=torch.float32)
        if self.memory is not None:  # written after the backward (`after_backward`)
            self.memory.stage(features, labels, self.pixels_per_image_class)
        return terms

    def contrast(self, features: torch.Tensor, labels: torch.Tensor,
                 logits: torch.Tensor) -> torch.Tensor:
        """The InfoNCE term of a batch (labels at the feature size), before the weight."""
        p = self.params
        n, c = logits.shape[:2]
        preds = None
        if p.anchor_sampling == "hard":
            with torch.no_grad():
                preds = predicted_classes(at_size(logits.detach(), features.shape[-2:])).reshape(n, -1)
        index, classes, valid, _ = sample_anchors(
            labels.reshape(n, -1), preds, c, p.anchors_per_class, p.max_anchors,
            p.anchor_min_pixels, hard=p.anchor_sampling == "hard")
        if index.device.type == "cpu":  # free to read here: drop the empty slots
            used = int(valid.sum())
            index, classes, valid = index[:used], classes[:used], valid[:used]
        d = features.shape[1]
        anchors = F.normalize(features.flatten(2).transpose(1, 2).reshape(-1, d)[index].float(),
                              dim=1)
        if self.memory is None:  # mini-batch contrast: the anchors against each other
            keys, key_classes, key_valid = anchors, classes, valid
            exclude, by_class = torch.eye(len(index), dtype=torch.bool, device=index.device), None
        else:
            keys, key_classes, key_valid, by_class = self.memory.candidates(p.memory_candidates)
            exclude = None
        with torch.autocast(features.device.type, enabled=False):  # cosines in float32
            return contrastive_loss(anchors, classes, valid, keys, key_classes, key_valid,
                                    p.num_pos, p.num_neg, p.example_sampling, p.semi_hard_ratio,
                                    p.temperature, p.base_temperature, exclude, by_class)

    def state_dict(self) -> dict:
        state = {"step": self.step}
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """The memory of the previous step (from `prepare`) or of this step (resume)."""
        if self.memory is not None and state.get("memory"):
            self.memory.load_carried(state["memory"])
