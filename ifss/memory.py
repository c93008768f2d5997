"""Pixel and region memory banks: per class, a fixed number of L2-normalised embeddings, FIFO.

`ClassQueue` holds B banks x C classes x S slots of dimension D: one FIFO queue per (bank,
class). Pushing M entries at once is one batched write: entries are ranked within their queue,
entry r of queue q goes to slot (ptr_q + r) mod S, ptr_q advances by the number pushed (mod S),
and when more than S entries of one queue come at once only the newest S are kept. (The
reference code advanced the pointer by 1 instead of K, or cut the write at the end of the bank;
here the write wraps.) Slots are filled from 0 upwards, so `count_q` filled slots are exactly
slots [0, count_q): a fresh bank is empty (zeros, count 0) and the empty slots are masked out of
every use, unlike the reference, whose banks started as random-normal vectors that were
contrasted against as if they were features.

No update reads a value back to the host: masked-out entries are written to one spare row at
the end of the storage that is never read, so the shapes never depend on the data.

`ContrastMemory` holds the region bank (optional) and the pixel bank in one ClassQueue, and turns
a batch of features and labels into entries: per image and class present, the region entry is
the normalised mean of the class's normalised pixel embeddings, and the pixel entries are K of
its pixel embeddings drawn uniformly without replacement (all of them if it has fewer than K),
with torch's RNG (so a resumed run draws the same pixels).

The banks are buffers: `state_dict()` saves them; a method carries them to the next step, where
`grow()` adds empty queues for the new classes and keeps the old entries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ifss.errors import IfssError

IGNORE = 255


class ClassQueue(nn.Module):
    """`banks` x `num_classes` FIFO queues of `size` entries of dimension `dim`."""

    def __init__(self, num_classes: int, size: int, dim: int, banks: int = 1):
        super().__init__()
        if min(num_classes, size, dim, banks) < 1:
            raise IfssError(f"a memory needs at least one bank, class, slot and dimension, got "
                            f"{banks} x {num_classes} x {size} x {dim}")
        self.size, self.dim = size, dim
        # rows [0, B*C*S) are the banks; the last row takes the writes of masked-out entries
        self.register_buffer("storage", torch.zeros(banks * num_classes * size + 1, dim))
        self.register_buffer("ptr", torch.zeros(banks, num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(banks, num_classes, dtype=torch.long))

    @property
    def num_banks(self) -> int:
        return self.ptr.shape[0]

    @property
    def num_classes(self) -> int:
        return self.ptr.shape[1]

    @property
    def entries(self) -> torch.Tensor:
        """B x C x S x D view of the banks (empty slots hold zeros)."""
        return self.storage[:-1].view(self.num_banks, self.num_classes, self.size, self.dim)

    def filled(self) -> torch.Tensor:
        """B x C x S bool: which slots hold an entry."""
        return torch.arange(self.size, device=self.count.device) < self.count.unsqueeze(-1)

    @torch.no_grad()
    def grow(self, num_classes: int) -> None:
        """Add empty classes at the end of every bank; existing entries are kept."""
        b, old = self.num_banks, self.num_classes
        if num_classes < old:
            raise IfssError(f"a memory of {old} classes cannot shrink to {num_classes}")
        if num_classes == old:
            return
        storage = self.storage.new_zeros(b * num_classes * self.size + 1, self.dim)
        storage[:-1].view(b, num_classes, self.size, self.dim)[:, :old] = self.entries
        pad = self.ptr.new_zeros(b, num_classes - old)
        self.storage = storage
        self.ptr = torch.cat([self.ptr, pad], 1)
        self.count = torch.cat([self.count, pad], 1)

    @torch.no_grad()
    def push(self, entries: torch.Tensor, classes: torch.Tensor,
             valid: torch.Tensor | None = None, bank: torch.Tensor | int = 0) -> None:
        """Enqueue M entries (M x D) of classes (M) into bank(s) `bank` (an int or M) at once;
        `valid` (M, bool) masks entries out. Entries of one queue are written in their given
        order; if more than S of a queue come, only its last S are kept."""
        q_all, s = self.num_banks * self.num_classes, self.size
        queue = (bank * self.num_classes + classes).reshape(-1).long()
        entries = entries.reshape(-1, self.dim)
        if valid is not None:
            queue = torch.where(valid.reshape(-1), queue, q_all)  # masked out -> sentinel queue
        order = torch.argsort(queue, stable=True)
        queue = queue[order]
        per_queue = torch.bincount(queue, minlength=q_all + 1)
        first = torch.cumsum(per_queue, 0) - per_queue
        rank = torch.arange(queue.shape[0], device=queue.device) - first[queue]
        ptr, count = self.ptr.view(-1), self.count.view(-1)
        safe = queue.clamp(max=q_all - 1)
        keep = (queue < q_all) & (rank >= per_queue[queue] - s)  # only the newest S of a queue
        target = torch.where(keep, safe * s + (ptr[safe] + rank) % s, q_all * s)
        self.storage[target] = entries[order].to(self.storage.dtype)
        pushed = per_queue[:q_all]
        ptr.copy_((ptr + pushed) % s)
        count.copy_((count + pushed).clamp(max=s))

    def candidates(self, per_class: int = 0):
        """Entries to contrast with: (K x D entries, K classes, K valid, C x L by_class), with
        by_class[c] the L = B*M positions of class c's entries among the K.

        per_class=0: every slot (empty ones invalid), without a copy (M = S). per_class=m>0:
        for each bank and class, min(m, S) slots drawn uniformly without replacement among its
        filled ones (fewer filled: all of them, the rest invalid)."""
        b, c, s = self.num_banks, self.num_classes, self.size
        device = self.count.device
        filled = self.filled()
        if per_class <= 0 or per_class >= s:
            m, entries, valid = s, self.storage[:-1], filled.reshape(-1)
        else:
            m = per_class
            keys = torch.where(filled, torch.rand(b, c, s, device=device), 2.0)
            picked = keys.topk(m, dim=-1, largest=False, sorted=False)
            queue = torch.arange(b * c, device=device).view(b, c, 1)
            entries = self.storage[(queue * s + picked.indices).reshape(-1)]
            valid = (picked.values < 1.0).reshape(-1)
        classes = torch.arange(c, device=device).view(1, c, 1).expand(b, c, m).reshape(-1)
        by_class = (torch.arange(b, device=device).view(1, b, 1) * (c * m)
                    + torch.arange(c, device=device).view(c, 1, 1) * m
                    + torch.arange(m, device=device).view(1, 1, m)).reshape(c, b * m)
        return entries, classes, valid, by_class


# --- batch -> bank entries --------------------------------------------------------------------

def nearest_indices(size_in: int, size_out: int, device=None) -> torch.Tensor:
    """The source rows (or columns) F.interpolate(mode="nearest") reads: floor(i * in / out)."""
    scale = size_in / size_out
    index = torch.floor(torch.arange(size_out, device=device, dtype=torch.float64) * scale)
    return index.long().clamp_(max=size_in - 1)


def at_size(maps: torch.Tensor, size) -> torch.Tensor:
    """N x ... x H x W maps (labels, logits) read at `size` = (h, w) as nearest resizing reads
    them, by indexing (no copy of the full maps)."""
    h_in, w_in = maps.shape[-2:]
    h, w = size
    if (h_in, w_in) == (h, w):
        return maps
    rows = nearest_indices(h_in, h, maps.device)
    cols = nearest_indices(w_in, w, maps.device)
    return maps.index_select(-2, rows).index_select(-1, cols)


def labels_at(labels: torch.Tensor, size) -> torch.Tensor:
    """N x H x W labels resized (nearest) to `size` = (h, w) of the feature map."""
    return at_size(labels, size)


def pixel_embeddings(features: torch.Tensor) -> torch.Tensor:
    """N x D x h x w -> N x (h*w) x D, each pixel L2-normalised."""
    return F.normalize(features.flatten(2).transpose(1, 2), dim=2)


def group_runs(keys: torch.Tensor, num_groups: int):
    """Pixels of each image grouped by an integer key in [0, num_groups] (num_groups = none), in
    random order inside a group. keys: N x P. Returns (order N x P: pixel indices sorted by
    group, random within a group; first N x G: position in `order` where group g starts;
    count N x G: its size). Uses torch's RNG."""
    n, p = keys.shape
    noise = torch.rand(n, p, device=keys.device)
    order = torch.argsort(keys.to(noise.dtype) + noise * 0.5, dim=1)  # groups 1 apart, noise < 1
    count = torch.zeros(n, num_groups + 1, dtype=torch.long, device=keys.device)
    count.scatter_add_(1, keys.long(), torch.ones_like(keys, dtype=torch.long))
    first = torch.cumsum(count, 1) - count
    return order, first[:, :num_groups], count[:, :num_groups]


def take_from_runs(order: torch.Tensor, first: torch.Tensor, count: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k pixels of every group: (N x G x k pixel indices, N x G x k valid)."""
    n, g = first.shape
    j = torch.arange(k, device=order.device)
    valid = j < count.unsqueeze(-1)
    pos = (first.unsqueeze(-1) + j).clamp(max=order.shape[1] - 1)
    return order.gather(1, pos.reshape(n, -1)).reshape(n, g, k), valid


def batch_entries(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int):
    """Bank entries of a batch. features N x D x h x w, labels N x h x w (already at the feature
    size, void 255). Returns

        region  N x C x D   normalised mean of the class's normalised pixel embeddings
        present N x C       the class has pixels in the image
        pixels  N x C x k x D  k random normalised pixel embeddings of the class
        pvalid  N x C x k      (fewer than k pixels: the rest invalid)
    """
    n, d = features.shape[:2]
    emb = pixel_embeddings(features.detach().float())  # N x P x D
    lab = labels.reshape(n, -1).long()
    lab = torch.where((lab < 0) | (lab >= num_classes), num_classes, lab)  # void -> group C
    sums = emb.new_zeros(n, num_classes + 1, d).scatter_add_(
        1, lab.unsqueeze(-1).expand(-1, -1, d), emb)
    region = F.normalize(sums[:, :num_classes], dim=2)
    order, first, count = group_runs(lab, num_classes)
    idx, pvalid = take_from_runs(order, first, count, k)
    pixels = emb.gather(1, idx.reshape(n, -1, 1).expand(-1, -1, d)).reshape(n, num_classes, k, d)
    return region, count > 0, pixels, pvalid


def all_gather_cat(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate equal-shaped tensors of every process along dim 0 (identity without DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    out = []
    for t in tensors:
        sent = t.to(torch.uint8) if t.dtype == torch.bool else t.contiguous()  # gloo: no bool
        parts = [torch.empty_like(sent) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, sent)
        out.append(torch.cat(parts).to(t.dtype))
    return tuple(out)


class ContrastMemory(nn.Module):
    """The region bank (with `region=True`) and the pixel bank, `size` entries per class each."""

    def __init__(self, num_classes: int, size: int, dim: int, region: bool = True):
        super().__init__()
        self.queue = ClassQueue(num_classes, size, dim, banks=2 if region else 1)
        self._pending = None  # entries staged by `stage`, written by `commit`

    @property
    def bank_names(self) -> tuple[str, ...]:
        return ("region", "pixel") if self.queue.num_banks == 2 else ("pixel",)

    @property
    def num_classes(self) -> int:
        return self.queue.num_classes

    def bank(self, name: str) -> torch.Tensor:
        """C x S x D entries of bank `name`."""
        return self.queue.entries[self.bank_names.index(name)]

    def count(self, name: str) -> torch.Tensor:
        return self.queue.count[self.bank_names.index(name)]

    def grow(self, num_classes: int) -> None:
        self.queue.grow(num_classes)

    @torch.no_grad()
    def stage(self, features: torch.Tensor, labels: torch.Tensor, pixels_per_class: int) -> None:
        """Compute a batch's entries now (labels at the feature size; torch's RNG is drawn
        here) and keep them until `commit()`. Writing later lets the loss of this batch keep
        views of the banks in its autograd graph until its backward has run. With DDP every
        process stages the entries of every process, so the banks stay identical."""
        c, k = self.num_classes, pixels_per_class
        region, present, pixels, pvalid = batch_entries(features, labels, c, k)
        region, present, pixels, pvalid = all_gather_cat(region, present, pixels, pvalid)
        n, d = region.shape[0], region.shape[-1]
        classes = torch.arange(c, device=region.device)
        pixel_classes = classes.repeat_interleave(k).repeat(n)
        if self.queue.num_banks == 1:
            self._pending = (pixels.reshape(-1, d), pixel_classes, pvalid.reshape(-1), 0)
            return
        self._pending = (torch.cat([region.reshape(-1, d), pixels.reshape(-1, d)]),
                         torch.cat([classes.repeat(n), pixel_classes]),
                         torch.cat([present.reshape(-1), pvalid.reshape(-1)]),
                         torch.cat([classes.new_zeros(n * c), classes.new_ones(n * c * k)]))

    def commit(self) -> None:
        """Write the staged entries (if any) into the banks."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.queue.push(*pending)

    def update(self, features: torch.Tensor, labels: torch.Tensor, pixels_per_class: int) -> None:
        """Stage and commit a batch at once."""
        self.stage(features, labels, pixels_per_class)
        self.commit()

    def state_dict(self, *args, **kwargs):
        self.commit()
        return super().state_dict(*args, **kwargs)

    def candidates(self, per_class: int = 0):
        """(K x D entries, K classes, K valid, C x L by_class) of every bank (ClassQueue)."""
        return self.queue.candidates(per_class)

    @classmethod
    def from_state(cls, state: dict) -> "ContrastMemory":
        """A memory shaped like a saved `state_dict()`, loaded from it."""
        try:
            store, (banks, num_classes) = state["queue.storage"], state["queue.ptr"].shape
        except (KeyError, AttributeError, ValueError):
            raise IfssError("the saved memory is not a ContrastMemory state (no queue.storage / "
                            "queue.ptr of B x C)") from None
        if banks not in (1, 2):
            raise IfssError(f"the saved memory has {banks} banks; a ContrastMemory has 1 or 2")
        size = (store.shape[0] - 1) // (banks * num_classes)
        memory = cls(num_classes, size, store.shape[1], region=banks == 2)
        memory.load_state_dict(state)
        return memory

    @torch.no_grad()
    def load_carried(self, state: dict) -> None:
        """Load a saved memory of at most as many classes (the previous step's, or this step's
        on resume): its classes keep their entries and pointers, new classes start empty. A bank
        this memory has and the state lacks stays empty; one it lacks is dropped."""
        saved = ContrastMemory.from_state(state)
        mine, theirs = self.queue, saved.queue
        if (theirs.size, theirs.dim) != (mine.size, mine.dim):
            raise IfssError(
                f"the carried memory has {theirs.size} slots of dimension {theirs.dim} per class, "
                f"this run {mine.size} of dimension {mine.dim}; keep params.memory_size and "
                "model.head_channels of the step the memory comes from")
        if saved.num_classes > self.num_classes:
            raise IfssError(f"the carried memory has {saved.num_classes} classes, more than the "
                            f"{self.num_classes} of this step")
        saved.grow(self.num_classes)
        for b, name in enumerate(self.bank_names):
            if name in saved.bank_names:
                j = saved.bank_names.index(name)
                mine.entries[b] = theirs.entries[j]
                mine.ptr[b] = theirs.ptr[j]
                mine.count[b] = theirs.count[j]
