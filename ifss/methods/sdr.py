"""SDR (Michieli & Zanuttigh, CVPR 2021, "Continual Semantic Segmentation via Repulsion-Attraction
of Sparse and Disentangled Latent Representations"; seed 004, research wilson_sdr_gfss_simformer.md
§B.1-B.3).

MiB (UNCE + UNKD and MiB's classifier init, ifss.methods.mib) plus four terms on the body output
f = out["body"], with the labels nearest-downsampled to its size (ifss.losses, SDR section):

    step k >= 1:  UNCE + loss_kd·UNKD + loss_de_prototypes·proto_match + loss_fc·attraction
                  + lfc_sep_clust·repulsion + loss_featspars·sparsity
    step 0:       CE + loss_featspars·sparsity, and the prototype update (the original ran its
                  step 0 with `--unce --loss_de_prototypes 1`, i.e. plain CE and the update, so
                  that prototypes exist for step 1)

    proto_match  the old classes' pixels (GT labels 1..C_old-1 where old labels are kept:
                 sequential, few-shot; otherwise the previous model's argmax at GT-background
                 pixels) against their prototypes; `sumafter`: MSE of each class's batch mean
                 to p_c, averaged over the old classes present
    attraction   mean over the GT classes present (background included, void not) of the
                 mean over the class's pixels of MSE(f_i, p_c)
    repulsion    mean of 1 / ||mean_c - mean_k|| over pairs of GT classes of the batch, c != k
    sparsity     features over the class-conditional max, sum exp / sum, averaged over pixels

Prototypes p_c are running means of each class's features over the whole training set, carried
from step to step in model.pt (new classes get zero rows, count 0). Every batch updates them from
the detached features, in one index_add over the classes:

    p_c <- (S_c + n_c p_c) / (n_c + m_c),  n_c <- n_c + m_c

(S_c, m_c: sum and count of class c's pixels in the batch, summed over processes under DDP; void
excluded; background excluded under `overlap`, where it may hold future classes, and under
`disjoint` at steps >= 1, where it holds the old ones). As in the original, the update comes
before the losses of the batch, which see the updated prototypes; `loss` stages it and
`after_step` commits it, so a resume.pt (written after `after_step`) holds exactly the
prototypes of the iterations it has.

Read in the original (LTTM/SDR utils/loss.py, train.py, argparser.py) and not reproduced:
- the class statistics reshape masked N x D x h x w selections with `.view(D, -1)` (running
  update, attraction, repulsion) or `.view(-1, D)` (prototype matching), which mixes channels and
  pixels (the first for batches of more than one image, the second always); here every statistic
  is per class and channel;
- the attraction divides the running sum by the number of classes inside the class loop (earlier
  classes are divided again at every later one); here the plain mean over classes;
- the running update drops the first class present when background is to be excluded, whichever
  it is (a batch without background loses its smallest class); here background by its label;
- the repulsion drops the inverse distances that are infinite, which holds the diagonal only
  while torch.cdist computes exactly (at most 25 classes present); here the diagonal always;
- under DDP each process updated its own prototypes from its own batch; here the batch
  statistics are summed over processes, so every process keeps the same prototypes.
The original's SDR preset does not set MiB's classifier init (`init_balanced`); `init_classifier`
(default True, as MiB) follows the paper's MiB base here. Its CE divided by every pixel of the
batch, void included; ifss's (U)CE averages over the labelled pixels, as for MIB.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ifss.data.build import StepData
from ifss.errors import IfssError
from ifss.losses import (IGNORE, class_mean_repulsion, class_sums, feature_sparsity,
                         prototype_attraction, prototype_matching, segmentation_ce,
                         unbiased_cross_entropy, unbiased_distillation)
from ifss.memory import at_size, labels_at
from ifss.methods.base import Method
from ifss.methods.mib import initialise_new_classifier
from ifss.methods.params import SDRParams
from ifss.metrics import predicted_classes

log = logging.getLogger("ifss")


def background_excluded(protocol: str, step: int) -> bool:
    """Whether background pixels stay out of the prototype update: under `overlap` background may
    hold future classes, under `disjoint` at steps >= 1 the old ones. (`sequential` and the
    few-shot protocol keep old labels and ignore future classes: their background is background.)"""
    return protocol == "overlap" or (protocol == "disjoint" and step > 0)


def old_labels_kept(protocol: str) -> bool:
    """Whether a step's ground truth keeps the old classes' labels."""
    return protocol in ("sequential", "fewshot")


def old_class_labels(labels: torch.Tensor, old_logits: torch.Tensor, num_old: int,
                     from_labels: bool) -> torch.Tensor:
    """The old classes' pixels at the feature size (labels N x h x w): their class 1..num_old-1,
    every other pixel IGNORE. From the labels where they keep old classes, otherwise the
    previous model's argmax (read at the nearest pixels) at background pixels."""
    labels = labels.long()
    if from_labels:
        old = labels
    else:
        predicted = predicted_classes(at_size(old_logits, labels.shape[-2:]))
        old = torch.where(labels == 0, predicted, IGNORE)
    return torch.where((old >= 1) & (old < num_old), old, IGNORE)


@torch.no_grad()
def running_prototypes(prototypes: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
                       batch_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The running means after a batch: p_c <- (S_c + n_c p_c) / (n_c + m_c), n_c <- n_c + m_c;
    a class without pixels in the batch keeps its prototype exactly. Computed in float64."""
    total = counts + batch_counts
    updated = (sums.double() + counts.unsqueeze(1).double() * prototypes.double()) \
        / total.clamp_min(1).unsqueeze(1).double()
    seen = (batch_counts > 0).unsqueeze(1)
    return torch.where(seen, updated.to(prototypes.dtype), prototypes), total


def _sum_over_processes(sums: torch.Tensor, counts: torch.Tensor):
    """Per-class sums and counts of every process's batch (one all_reduce; identity without
    DDP). Counts of one batch travel exactly as floats."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sums, counts
    packed = torch.cat([sums, counts.unsqueeze(1).to(sums.dtype)], 1)
    dist.all_reduce(packed)
    return packed[:, :-1], packed[:, -1].round().long()


class SDR(Method):
    Params = SDRParams
    uses_old_model = True

    def __init__(self, params: SDRParams, cfg, runtime):
        super().__init__(params, cfg, runtime)
        self.prototypes: torch.Tensor | None = None  # C x D running means
        self.counts: torch.Tensor | None = None  # C pixels each mean has seen
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # staged by `loss`

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data: StepData) -> None:
        super().prepare(model, old_model, data)  # the previous model (none at step 0)
        if self.step > 0 and self.params.init_classifier:
            initialise_new_classifier(model.classifier, self.step)
        device = self.runtime.device
        self.prototypes = torch.zeros(data.num_classes, model.body.out_channels, device=device)
        self.counts = torch.zeros(data.num_classes, dtype=torch.long, device=device)
        if self.carried.get("prototypes") is not None:
            self.load_state_dict(self.carried)
        elif self.step > 0:
            log.warning("SDR step %d starts without prototypes (the previous checkpoint carries "
                        "none): the old classes are matched to zero vectors; start from an SDR "
                        "step-%d model.pt", self.step, self.step - 1)

    # -- per iteration --------------------------------------------------------------------------

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        p = self.params
        if self.step == 0:
            terms = {"ce": segmentation_ce(out["logits"], batch["label"])}
        else:
            if old_out is None:
                raise IfssError("SDR needs the previous step's model at steps >= 1; give "
                                "`previous` (the SDR model.pt of the step before)")
            num_old = old_out["logits"].shape[1]
            log_p = F.log_softmax(out["logits"], dim=1)  # one for both terms
            terms = {
                "unce": unbiased_cross_entropy(out["logits"], batch["label"], num_old, log_p),
                "unkd": p.loss_kd * unbiased_distillation(out["logits"], old_out["logits"],
                                                          log_p=log_p),
            }
        body = out["body"]
        labels = labels_at(batch["label"], body.shape[-2:]).long()
        with torch.autocast(body.device.type, enabled=False):  # feature terms in float32
            features = body.float()
            prototypes = self._stage(features.detach(), labels)
            zero = features.new_zeros(())
            if self.step > 0:
                protocol = self.cfg.data.protocol
                old = old_class_labels(labels, old_out["logits"], num_old,
                                       old_labels_kept(protocol))
                terms["proto_match"] = p.loss_de_prototypes * prototype_matching(
                    features, old, prototypes[:num_old], p.loss_de_prototypes_sumafter) \
                    if p.loss_de_prototypes > 0 else zero
                terms["attraction"] = p.loss_fc * prototype_attraction(
                    features, labels, prototypes) if p.loss_fc > 0 else zero
                terms["repulsion"] = p.lfc_sep_clust * class_mean_repulsion(
                    features, labels, prototypes.shape[0]) if p.lfc_sep_clust > 0 else zero
            terms["sparsity"] = p.loss_featspars * feature_sparsity(features, labels) \
                if p.loss_featspars > 0 else zero
        return terms

    @torch.no_grad()
    def _stage(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The prototypes updated with this batch (the losses use them); committed by
        `after_step`."""
        if self.prototypes is None:
            raise IfssError("SDR's loss ran before `prepare` made its prototypes")
        if background_excluded(self.cfg.data.protocol, self.step):
            labels = torch.where(labels == 0, IGNORE, labels)
        sums, counts = _sum_over_processes(*class_sums(features, labels, len(self.prototypes)))
        self._pending = running_prototypes(self.prototypes, self.counts, sums, counts)
        return self._pending[0]

    def after_step(self, iteration: int) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.prototypes.copy_(pending[0])
            self.counts.copy_(pending[1])

    # -- what travels -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        if self.prototypes is None:
            return {}
        return {"prototypes": self.prototypes.clone(), "counts": self.counts.clone()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """The previous step's prototypes (from `prepare`, grown by zero rows for the new
        classes) or this step's (resume)."""
        if state.get("prototypes") is None:
            return
        protos, counts = state["prototypes"], state.get("counts")
        rows, dim = self.prototypes.shape
        if not (isinstance(protos, torch.Tensor) and protos.dim() == 2
                and isinstance(counts, torch.Tensor) and counts.shape == protos.shape[:1]):
            raise IfssError("the carried SDR state is not prototypes (C x D) with their counts "
                            "(C); give a model.pt written by SDR")
        if protos.shape[1] != dim or protos.shape[0] > rows:
            raise IfssError(f"the carried SDR prototypes are {protos.shape[0]} x "
                            f"{protos.shape[1]}, but this step has {rows} classes and a body of "
                            f"{dim} channels; keep model.backbone of the step they come from")
        self.prototypes.zero_()
        self.counts.zero_()
        self.prototypes[:protos.shape[0]] = protos.to(self.prototypes)
        self.counts[:counts.shape[0]] = counts.to(self.counts)
