"""SimFormer (Chen et al., NeurIPS 2022, "Weak-shot Semantic Segmentation via Dual Similarity
Transfer"; research/wilson_sdr_gfss_simformer.md §D, §G): a MaskFormer (model.arch=maskformer)
trained in one weak-shot step from ImageNet weights. Base classes (positions < task.num_base,
background included) have pixel labels; novel classes have image-level labels only, their pixels
void. No previous model, no step 0.

Targets per image (`image_targets`): each class present in the label map, with its binary mask;
each novel class of the image labels absent from the label map, without a mask (it is matched
on its class cost only and feeds the complementary loss). Outside retraining, label values of
novel positions are voided first: the loss never reads a novel pixel, even if the data left one.
Retraining (params.retrain, data.train_labels = pseudo labels): every class present in the label
map is a target with a mask, the image labels are not read for targets.

Terms (summed by the engine): loss_cls, loss_mask_focal, loss_mask_dice and, with comp_weight >
0, loss_comp (ifss.simformer.mask_losses.simformer_losses, on the final output and, with
deep_supervision, on every auxiliary output, each matched on its own). With params.crosim the
batch is image pairs (0, 1), (2, 3), ... (`PairedBatches`), and, on the final output only:

    sim_base     SimNet's balanced BCE on grid pairs of base points of the two images
                 (sample_base_points), their mask-feature embeddings detached: SimNet learns on
                 the features, it does not shape them (the original's BASE_DETACH, default True;
                 research §G is silent on it)
    sim_distill  distill_ce / distill_cce of the student similarity (relu cos of the novel
                 scores Σ_q softmax(cls)_{q,novel}·σ(mask_q) at void points of a and b) to the
                 teacher SimNet(E_a, E_b), detached; only for pairs whose image labels share a
                 novel class (the original's condition)

Padding: the complementary target and the distillation region leave out padded pixels when the
batch carries a "padding" map (N x H x W, 1 = padded); ifss's crops mark padding as void only,
so without it padded pixels count as void.
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from ifss.config import RunConfig
from ifss.data.batches import PairedBatches, ResumableBatches, check_pair_batch_size, sample_seed
from ifss.data.incremental import IGNORE
from ifss.distributed import Runtime
from ifss.errors import IfssError
from ifss.methods.base import Method
from ifss.methods.params import SimFormerParams
from ifss.simformer.mask_losses import count_masks, deep_supervision, simformer_losses
from ifss.simformer.similarity import (BalancedBCE, SimNet, distill_cce, distill_ce,
                                       novel_scores, same_probability, sample_at,
                                       sample_base_points, sample_distill_points,
                                       student_similarity)
from ifss.tasks import get_task

DISTILL = {"ce": distill_ce, "cce": distill_cce}


def image_targets(label: torch.Tensor, image_labels: torch.Tensor | None, num_base: int,
                  retrain: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's targets from its H x W label map (void 255) and multi-hot image labels (C):
    (classes T long, masks T x H x W bool, has_mask T bool). Targets with a mask come first.

    Not retraining: the label map's classes < num_base with their masks, then the novel classes
    (>= num_base) of the image labels, without a mask (their mask rows are empty and never
    read). Retraining: every class of the label map, with its mask."""
    if not retrain:
        label = base_only(label, num_base)
    present = label.unique()
    present = present[present != IGNORE]
    classes = [present]
    if not retrain and image_labels is not None:
        listed = image_labels.nonzero().squeeze(1).to(label.device)
        classes.append(listed[listed >= num_base])
    classes = torch.cat(classes).long()
    has_mask = torch.zeros(classes.numel(), dtype=torch.bool, device=label.device)
    has_mask[:present.numel()] = True
    masks = label[None] == classes[:, None, None]
    return classes, masks, has_mask


def base_only(labels: torch.Tensor, num_base: int) -> torch.Tensor:
    """Labels with every novel position (num_base .. 254) made void."""
    return labels.masked_fill((labels >= num_base) & (labels != IGNORE), IGNORE)


class SimFormer(Method):
    Params = SimFormerParams
    needs = frozenset({"label", "image_labels"})
    upsample_logits = False  # the losses upsample the mask logits themselves

    def __init__(self, params: SimFormerParams, cfg: RunConfig, runtime: Runtime):
        super().__init__(params, cfg, runtime)
        if cfg.model.arch != "maskformer":
            raise IfssError(f"SimFormer trains a mask transformer, not model.arch="
                            f"{cfg.model.arch!r}; set model.arch=maskformer")
        if params.retrain and not cfg.data.train_labels:
            raise IfssError("retraining reads pseudo labels: set data.train_labels to the folder "
                            "`ifss pseudo-labels` wrote")
        if params.crosim:
            check_pair_batch_size(cfg.data.batch_size)
        task = get_task(cfg.dataset, cfg.task)
        self.num_base = task.num_base
        self.num_classes = len(task.order(cfg.step))
        self.simnet: SimNet | None = None
        self.balanced_bce = BalancedBCE(params.sim_window)
        self.points = torch.Generator()
        self.before_step(0, 0)

    # -- what the method owns -------------------------------------------------------------------

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if not self.params.crosim:
            return {}
        self.simnet = SimNet(self.cfg.model.head_channels)  # the mask features' width
        return {"simnet": self.simnet}

    def batch_source(self, dataset, cfg: RunConfig, runtime: Runtime) -> ResumableBatches:
        """Without crosim the default; with it, SimFormer's pairs (`PairedBatches`) over the
        image labels, on the novel classes and the base classes other than background (0):
        background is in nearly every synthetic image and in no COCO-Stuff-10K one, so sharing
        it says nothing about a partner (and would make every image a fallback partner)."""
        if not self.params.crosim:
            return super().batch_source(dataset, cfg, runtime)
        if dataset.image_labels is None:
            raise IfssError("SimFormer's pairs read the training images' image-level labels, "
                            "which this training set does not carry; build it with the "
                            "method's data needs")
        classes = [dataset.image_labels[image_id] for image_id, *_ in dataset.samples]
        return PairedBatches(classes, range(1, self.num_base),
                             range(self.num_base, self.num_classes), cfg.data.batch_size,
                             cfg.seed, runtime.rank, runtime.world, self.params.pair_rare_prob)

    # -- per iteration --------------------------------------------------------------------------

    def before_step(self, iteration: int, total: int) -> None:
        # the point sampler's seed from (seed, iteration, rank) alone: a resumed run draws the
        # same points, and no generator state needs saving
        self.points.manual_seed(sample_seed(self.cfg.seed, iteration, self.runtime.rank))

    def loss(self, batch: dict, out: dict, old_out: dict | None) -> dict[str, torch.Tensor]:
        p = self.params
        labels = batch["label"]
        if not p.retrain:
            labels = base_only(labels, self.num_base)
        image_labels = batch.get("image_labels")
        padding = batch.get("padding")
        targets = [image_targets(labels[i], None if image_labels is None else image_labels[i],
                                 self.num_base, p.retrain) for i in range(labels.shape[0])]
        classes, masks, has_mask = (list(t) for t in zip(*targets))
        loss_fn = functools.partial(
            simformer_losses, target_classes=classes, target_masks=masks, has_mask=has_mask,
            padding=padding, cls_weight=p.cls_weight, focal_weight=p.focal_weight,
            dice_weight=p.dice_weight, comp_weight=p.comp_weight,
            no_object_weight=p.no_object_weight, num_masks=self._num_masks(has_mask))
        outputs = [(out["pred_logits"], out["pred_masks"])]
        if p.deep_supervision:
            outputs += [(aux["pred_logits"], aux["pred_masks"]) for aux in out["aux"]]
        terms = deep_supervision(outputs, loss_fn)
        if p.crosim:
            terms.update(self._similarity_terms(labels, image_labels, padding, out))
        return terms

    def _num_masks(self, has_mask: list[torch.Tensor]) -> float:
        """Targets with a mask in the batch; under DDP the mean over processes (MaskFormer's
        normaliser), at least 1."""
        count = count_masks(has_mask)
        if self.runtime.distributed and dist.is_initialized():
            total = torch.tensor(count, device=self.runtime.device)
            dist.all_reduce(total)
            count = max(float(total) / self.runtime.world, 1.0)
        return count

    def _similarity_terms(self, labels: torch.Tensor, image_labels: torch.Tensor | None,
                          padding: torch.Tensor | None, out: dict) -> dict[str, torch.Tensor]:
        p, g = self.params, self.points
        features = out["features"]
        size = tuple(labels.shape[-2:])
        pairs = [(a, a + 1) for a in range(0, labels.shape[0] - 1, 2)]
        zero = features.sum() * 0.0

        grids, same = [], []
        for a, b in pairs:
            points_a, points_b, targets = sample_base_points(
                labels[a], labels[b], range(self.num_base), p.sim_points,
                p.sim_common_fraction, g)
            if targets.numel():
                grids.append(self._embeddings(features, a, b, points_a, points_b, size))
                same.append(targets.reshape(-1))
        sim_base = zero
        if grids:
            logits = self.simnet.grids(grids)
            sim_base = self.balanced_bce(logits, torch.cat(same).to(logits.device))

        novel = range(self.num_base, self.num_classes)
        students, teachers = [], []
        if len(novel) and image_labels is not None:
            scores = None
            region = labels == IGNORE
            if padding is not None:
                region &= ~padding.bool().to(region.device)
            shared = (image_labels[:, self.num_base:] > 0)
            for a, b in pairs:
                if not bool((shared[a] & shared[b]).any()):
                    continue  # no novel class in common: nothing to learn from their similarity
                points_a, points_b = sample_distill_points(region[a], region[b], p.sim_points, g)
                if not (points_a.numel() and points_b.numel()):
                    continue
                if scores is None:
                    scores = novel_scores(out["pred_logits"].float(), out["pred_masks"].float(),
                                          novel)
                students.append(student_similarity(sample_at(scores[a], points_a, size),
                                                   sample_at(scores[b], points_b, size)))
                with torch.no_grad():
                    teachers.append(same_probability(self.simnet.grids(
                        [self._embeddings(features, a, b, points_a, points_b, size)])))
        sim_distill = zero
        if students:
            sim_distill = DISTILL[p.distill](torch.cat([s.reshape(-1) for s in students]),
                                             torch.cat([t.reshape(-1) for t in teachers]))
        return {"sim_base": p.sim_base_weight * sim_base,
                "sim_distill": p.distill_weight * sim_distill}

    @staticmethod
    def _embeddings(features: torch.Tensor, a: int, b: int, points_a: torch.Tensor,
                    points_b: torch.Tensor, size: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached embeddings of a's points and of b's (n_a x D, n_b x D): SimNet's grid pairs
        (`SimNet.grids`)."""
        return (sample_at(features[a].detach().float(), points_a, size),
                sample_at(features[b].detach().float(), points_b, size))

    # -- resume ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The balanced BCE's running counts (resume.pt); nothing travels to another step."""
        return {"balanced_bce": self.balanced_bce.state_dict()} if self.params.crosim else {}

    def load_state_dict(self, state: dict) -> None:
        if self.params.crosim and "balanced_bce" in state:
            self.balanced_bce.load_state_dict(state["balanced_bce"])
