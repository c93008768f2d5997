"""Which samples each training iteration sees, computable from the iteration number alone.

Epoch e shuffles the dataset with a generator seeded by (seed, e); rank r of w takes every w-th
index of that order; batches drop the last incomplete one. Every index carries its own
augmentation seed. So a run resumed at iteration i sees exactly the batches an uninterrupted run
sees from i on, on any number of workers.
"""
from __future__ import annotations

import torch

from ifss.errors import IfssError


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
