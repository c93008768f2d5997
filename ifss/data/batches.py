"""Which samples each training iteration sees, computable from the iteration number alone.

Epoch e shuffles the dataset with a generator seeded by (seed, e); rank r of w takes every w-th
index of that order; batches drop the last incomplete one. Every index carries its own
augmentation seed. So a run resumed at iteration i sees exactly the batches an uninterrupted run
sees from i on, on any number of workers.

`PairedBatches` keeps that contract for SimFormer's training pairs: epoch e draws one partner per
image (ifss.simformer.pairs.epoch_pairs) and shuffles the pairs, both from a generator seeded by
(seed, e); rank r of w takes every w-th pair; a batch is batch_size / 2 whole pairs, flattened
[a1, b1, a2, b2, ...].
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ifss.errors import IfssError
from ifss.simformer.pairs import epoch_pairs


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


class ResumableBatches:
    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if num_samples == 0:
            raise IfssError("this step has no training images; check nshot, ishot and the "
                            "dataset's train id list")
        per_rank = num_samples // world
        if per_rank == 0:
            raise IfssError(f"{num_samples} training images cannot be split over {world} "
                            "processes; start fewer processes (torchrun --nproc_per_node) or "
                            "train on more images")
        self.num_samples, self.seed, self.rank, self.world = num_samples, seed, rank, world
        self.batch_size = min(batch_size, per_rank)  # few-shot sets can be smaller than a batch
        self.per_epoch = per_rank // self.batch_size
        self.start, self.stop = 0, 0

    def span(self, start: int, stop: int) -> "ResumableBatches":
        self.start, self.stop = start, stop
        return self

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.num_samples, generator=g)[self.rank :: self.world].tolist()

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        epoch, order = None, None
        for it in range(self.start, self.stop):
            if it // self.per_epoch != epoch:
                epoch = it // self.per_epoch
                order = self._order(epoch)
            j = (it % self.per_epoch) * self.batch_size
            yield [(i, sample_seed(self.seed, epoch, i)) for i in order[j : j + self.batch_size]]


def check_pair_batch_size(batch_size: int) -> None:
    """Pair batches hold two images per pair."""
    if batch_size < 2 or batch_size % 2:
        raise IfssError(f"pair batches hold whole image pairs, so data.batch_size={batch_size} "
                        "must be even (2 images per pair); set data.batch_size=2, 4, ...")


class PairedBatches(ResumableBatches):
    """Batches of SimFormer's image pairs, computable from the iteration number alone.

    `sample_classes[i]`: the classes (positions) sample i holds, from its image-level labels;
    `base` and `novel`: the positions `epoch_pairs` pairs on (others are ignored). Every image
    of an epoch leads one pair, so an epoch has len(sample_classes) pairs; a batch is
    batch_size / 2 of them, fewer when a rank holds fewer pairs. An image can occur in several
    pairs of one epoch: each occurrence gets its own augmentation seed (from its place in the
    epoch's order), so repeats are augmented differently.
    """

    def __init__(self, sample_classes: Sequence[Iterable[int]], base: Iterable[int],
                 novel: Iterable[int], batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, rare_prob: float = 0.01):
        check_pair_batch_size(batch_size)
        self.sample_classes = {i: tuple(c) for i, c in enumerate(sample_classes)}
        self.base, self.novel, self.rare_prob = tuple(base), tuple(novel), rare_prob
        # one pair per image: pairs split over ranks as samples do
        super().__init__(len(self.sample_classes), batch_size // 2, seed, rank, world)
        self.pairs_per_batch = self.batch_size
        self.batch_size = 2 * self.pairs_per_batch
        self._epoch: tuple[int, list[tuple[int, int]]] | None = None

    def _order(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's (sample index, augmentation seed) of epoch `epoch`, pair by pair."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        rng = np.random.default_rng([self.seed, epoch])
        pairs = epoch_pairs(self.sample_classes, self.base, self.novel, rng, self.rare_prob)
        pairs = [pairs[k] for k in rng.permutation(len(pairs))]
        flat = [(index, sample_seed(self.seed, epoch, place))
                for place, index in enumerate(i for pair in pairs for i in pair)]
        mine = [flat[2 * k: 2 * k + 2] for k in range(self.rank, len(pairs), self.world)]
        self._epoch = (epoch, [item for pair in mine for item in pair])
        return self._epoch[1]

    def __iter__(self):
        for it in range(self.start, self.stop):
            epoch = it // self.per_epoch
            j = (it % self.per_epoch) * self.batch_size
            yield self._order(epoch)[j: j + self.batch_size]
