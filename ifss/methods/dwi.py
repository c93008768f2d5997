"""DWI: dynamic weight imprinting (Gidaris & Komodakis 2018, "pixel-wise" as in PIFS; research
§2.2), without the attention branch (the originals' `use_attention=False`).

Weight generator: w_c = a ⊙ mean_k(proto_k), with proto_k = mean of the L2-normalised pixel
features of class c in support image k (head features upsampled bilinearly to the label size), and
`a` a D-vector initialised to normalize(ones).

Step 0 ("cool-down", an engine phase after the main one, which trains nothing): the run loads
the COS step-0 model (`previous`), then meta-trains the generator and the base cosine weights
with plain SGD (lr `dyn_lr`, no momentum, no weight decay) for `dyn_iter` iterations. Each
iteration sums the losses of `episodes` episodes: draw a base class c (not background) and K from
`shots`; imprint c's weight from K support images of c (unaugmented, full size); replace c's row of the normalised base weights by it; cross-entropy of the scaled cosine
logits on a query batch of `random_images` random and `class_images` other images of c (augmented
training crops), with body and head frozen in eval mode. Support and query images of c are
disjoint when the class has enough images (the originals drew them independently).

Step k >= 1: the novel weights are generator-made from the few-shot images of each class; no
gradient step. The generator is a module the method owns: model.pt carries it from step to step.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ifss.data.segmentation import pad_collate
from ifss.engine import Phase
from ifss.errors import IfssError
from ifss.losses import segmentation_ce
from ifss.methods.base import Method
from ifss.methods.params import DWIParams
from ifss.methods.imprinting import (check_new_classes_present, class_feature_sums,
                                     class_statistics, features_at, set_step_weights)

class WeightGenerator(nn.Module):
    """w = a ⊙ mean_k(proto_k) over K prototypes (K x D -> D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.a = nn.Parameter(F.normalize(torch.ones(dim), dim=0))

    def forward(self, prototypes: torch.Tensor) -> torch.Tensor:
        return self.a * prototypes.mean(dim=0)


def dwi_image_prototypes(features: torch.Tensor, labels: torch.Tensor,
                         num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """proto[n, c] = mean over the pixels of c in image n of normalize(f); zero where c is absent.
    Returns (N x C x D, N x C bool presence)."""
    sums, counts = class_feature_sums(features, labels, num_classes, normalize_pixels=True)
    return sums / counts.clamp_min(1.0).unsqueeze(-1), counts > 0


def episode_logits(features: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled cosine logits of features N x D x h x w against the rows of weights C x D."""
    w = F.normalize(weights, dim=1)[:, :, None, None]
    return scale * F.conv2d(F.normalize(features, dim=1), w)


class DynamicWeightImprinting(Method):
    Params = DWIParams
    trains = False  # step 0's cool-down is an extra phase; steps >= 1 only imprint

    def build_modules(self, model) -> dict[str, nn.Module]:
        self.generator = WeightGenerator(model.classifier.in_channels)
        return {"generator": self.generator}

    def load_modules(self, states: dict, source: str) -> set[str]:
        loaded = super().load_modules(states, source)
        self.generator_source = source if "generator" in loaded else None
        return loaded

    def prepare(self, model, old_model, data) -> None:
        super().prepare(model, old_model, data)
        if self.step == 0:
            return
        if getattr(self, "generator_source", None) is None:
            source = self.cfg.previous or "the model it starts from (no previous model.pt)"
            raise IfssError(
                f"DWI step {self.step} needs the weight generator meta-trained at DWI step 0, and "
                f"{source} holds none; give the model.pt of the DWI step-{self.step - 1} run"
            )
        total, images = class_statistics(model, data.train_plain, dwi_image_prototypes,
                                          self.runtime.device)
        check_new_classes_present(images, data, self.step)
        sl = model.classifier.step_slice(self.step)
        mean_proto = total[sl] / images[sl].unsqueeze(-1)  # mean over the images of each class
        with torch.no_grad():
            weights = self.generator.a * mean_proto
        set_step_weights(model.classifier, self.step, weights)

    def extra_phases(self, model, data) -> list[Phase]:
        return [self.cool_down(model, data)] if self.step == 0 else []

    # -- step-0 meta-training ---------------------------------------------------------------

    def cool_down(self, model, data) -> Phase:
        """The generator and the base cosine weights trained on episodes (engine phase)."""
        p = self.params
        classifier = model.classifier
        if classifier.num_steps != 1 or not hasattr(classifier, "scale"):
            raise IfssError("DWI's cool-down needs the cosine step-0 model of COS")
        by_class = images_by_class(data)
        classes = [c for c in range(1, classifier.num_classes) if by_class.get(c)]
        if not classes:
            raise IfssError("DWI's cool-down found no training image of any base class")
        rng = torch.Generator().manual_seed(self.cfg.seed)
        n_train = len(data.train)

        def episodes(start: int):
            # every draw of an iteration happens here, so resume.pt's copy of `rng` is exact
            for _ in range(start, p.dyn_iter):
                batch = []
                for _ in range(p.episodes):
                    c = classes[_randint(rng, len(classes))]
                    k = p.shots[_randint(rng, len(p.shots))]
                    pool = by_class[c]
                    order = [pool[i] for i in torch.randperm(len(pool), generator=rng).tolist()]
                    support = order[:k]
                    rest = order[k:] or order  # disjoint from the support when possible
                    query = [rest[i % len(rest)] for i in range(p.class_images)]
                    query += torch.randint(n_train, (p.random_images,), generator=rng).tolist()
                    seeds = torch.randint(2**62, (len(query),), generator=rng).tolist()
                    batch.append((c, support, list(zip(query, seeds))))
                yield {"episodes": batch}

        def loss(batch: dict, net) -> dict[str, torch.Tensor]:
            # one backward of the sum = one backward per episode (gradients add up)
            losses = [self._episode(model, data, c, support, query)
                      for c, support, query in batch["episodes"]]
            losses = [l for l in losses if l is not None]
            if not losses:  # no episode found a prototype: a zero gradient, no change
                return {"ce": classifier.convs[0].weight.sum() * 0.0}
            total = losses[0]
            for episode in losses[1:]:
                total = total + episode
            return {"ce": total}

        train = dataclasses.replace(
            self.cfg.train, optimizer="sgd", lr=p.dyn_lr, momentum=0.0, nesterov=False,
            weight_decay=0.0, schedule="constant", clip_grad_norm=0.0, lr_mult={})
        groups = [{"name": "classifier", "params": [classifier.convs[0].weight], "lr_mult": 1.0},
                  {"name": "generator", "params": [self.generator.a], "lr_mult": 1.0}]
        # body and head frozen in eval mode: their features are computed without gradient
        return Phase("cool-down", p.dyn_iter, groups, train, episodes, loss, model.eval,
                     rng=rng, autocast=False)

    def _episode(self, model, data, c: int, support: list[int], query: list[tuple[int, int]]):
        device = self.runtime.device
        classifier = model.classifier
        with torch.no_grad():
            protos = []
            for index in support:
                sample = data.train_plain[index]
                image = sample["image"].unsqueeze(0).to(device)
                label = sample["label"].unsqueeze(0).to(device)
                feats = features_at(model.head(model.body(image)), label.shape[-2:])
                proto, present = dwi_image_prototypes(feats, label, classifier.num_classes)
                if present[0, c]:
                    protos.append(proto[0, c])
            if not protos:
                return None
            batch = pad_collate([data.train[key] for key in query])
            images, labels = batch["image"].to(device), batch["label"].to(device)
            with self.runtime.autocast():
                features = model.head(model.body(images)).float()
        base = classifier.convs[0].weight.flatten(1)
        generated = self.generator(torch.stack(protos))
        rows = F.normalize(base, dim=1)
        weights = torch.cat([rows[:c], F.normalize(generated, dim=0)[None], rows[c + 1:]])
        logits = episode_logits(features, weights, classifier.scale)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return segmentation_ce(logits, labels.long())


def images_by_class(data) -> dict[int, list[int]]:
    """Remapped class -> indices of data.train (== data.train_plain) whose image holds it."""
    order = data.task.order(data.step)
    position = {cid: i for i, cid in enumerate(order)}
    out: dict[int, list[int]] = {}
    for index, (image_id, _lut) in enumerate(data.train.samples):
        for cid in data.image_classes.get(image_id, ()):
            if cid in position:
                out.setdefault(position[cid], []).append(index)
    return out


def _randint(rng: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=rng))
