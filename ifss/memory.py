"""Pixel and region memory banks: per class, a fixed number of L2-normalised embeddings, FIFO.

`ClassQueue` is one bank (C classes x S slots x D). Pushing M entries at once is one batched
write: entries are ranked within their class, entry r of class c goes to slot (ptr_c + r) mod S,
ptr_c advances by the number pushed (mod S), and when more than S entries of one class come at
once only the newest S are kept. (The reference code advanced the pointer by 1 instead of K, or
cut the write at the end of the bank; here the write wraps.) Slots are filled from 0 upwards, so
`count_c` filled slots are exactly slots [0, count_c): a fresh bank is empty (zeros, count 0) and
the empty slots are masked out of every use, unlike the reference, whose banks started as
random-normal vectors that were contrasted against as if they were features.

No update reads a value back to the host: masked-out entries are written to one spare row at
the end of the storage that is never read, so the shapes never depend on the data.

`ContrastMemory` holds the pixel bank and, optionally, the region bank, and turns a batch of
features and labels into bank entries: per image and class present, the region entry is the
normalised mean of the class's normalised pixel embeddings, and the pixel entries are K of its
pixel embeddings drawn uniformly without replacement (all of them if it has fewer than K), with
torch's RNG (so a resumed run draws the same pixels).

The banks are buffers: `state_dict()` saves them; a method carries them to the next step, where
`grow()` adds empty rows for the new classes and keeps the old entries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ifss.errors import IfssError

IGNORE = 255


class ClassQueue(nn.Module):
    """A per-class FIFO bank of `size` entries of dimension `dim` for each of `num_classes`."""

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if num_classes < 1 or size < 1 or dim < 1:
            raise IfssError(f"a memory bank needs at least one class, slot and dimension, got "
                            f"{num_classes} x {size} x {dim}")
        self.size, self.dim = size, dim
        # rows [0, C*S) are the bank; the last row takes the writes of masked-out entries
        self.register_buffer("storage", torch.zeros(num_classes * size + 1, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return self.ptr.shape[0]

    @property
    def entries(self) -> torch.Tensor:
        """C x S x D view of the bank (empty slots hold zeros)."""
        return self.storage[:-1].view(self.num_classes, self.size, self.dim)

    def filled(self) -> torch.Tensor:
        """C x S bool: which slots hold an entry."""
        return torch.arange(self.size, device=self.count.device) < self.count.unsqueeze(1)

    @torch.no_grad()
    def grow(self, num_classes: int) -> None:
        """Add empty classes at the end; the entries of the existing ones are kept."""
        old = self.num_classes
        if num_classes < old:
            raise IfssError(f"a memory bank of {old} classes cannot shrink to {num_classes}")
        if num_classes == old:
            return
        storage = self.storage.new_zeros(num_classes * self.size + 1, self.dim)
        storage[: old * self.size] = self.storage[:-1]
        extra = num_classes - old
        self.storage = storage
        self.ptr = torch.cat([self.ptr, self.ptr.new_zeros(extra)])
        self.count = torch.cat([self.count, self.count.new_zeros(extra)])

    @torch.no_grad()
    def push(self, entries: torch.Tensor, classes: torch.Tensor,
             valid: torch.Tensor | None = None) -> None:
        """Enqueue M entries (M x D) of classes (M) at once; `valid` (M, bool) masks entries out.

        Entries of one class are written in their given order; if more than S of a class come,
        only its last S are kept. Classes outside [0, C) are an error only through `valid`
        (give valid=False for them)."""
        c, s = self.num_classes, self.size
        classes = classes.reshape(-1).long()
        entries = entries.reshape(-1, self.dim)
        if valid is None:
            valid = torch.ones_like(classes, dtype=torch.bool)
        cls = torch.where(valid.reshape(-1), classes, c)  # masked-out entries -> sentinel class c
        order = torch.argsort(cls, stable=True)
        cls = cls[order]
        per_class = torch.bincount(cls, minlength=c + 1)
        first = torch.cumsum(per_class, 0) - per_class
        rank = torch.arange(cls.shape[0], device=cls.device) - first[cls]
        real = cls < c
        safe = cls.clamp(max=c - 1)
        keep = real & (rank >= per_class[cls] - s)  # only the newest S of a class
        slot = (self.ptr[safe] + rank) % s
        target = torch.where(keep, safe * s + slot, c * s)
        self.storage[target] = entries[order].to(self.storage.dtype)
        pushed = per_class[:c]
        self.ptr.copy_((self.ptr + pushed) % s)
        self.count.copy_((self.count + pushed).clamp(max=s))

    def candidates(self, per_class: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entries to contrast with: (K x D entries, K classes, K valid).

        per_class=0: every slot (empty ones invalid), without a copy. per_class=m>0: for each
        class, min(m, S) slots drawn uniformly without replacement among its filled ones (fewer
        filled: all of them, the rest invalid)."""
        c, s = self.num_classes, self.size
        labels = torch.arange(c, device=self.count.device)
        filled = self.filled()
        if per_class <= 0 or per_class >= s:
            return (self.entries.reshape(c * s, self.dim),
                    labels.repeat_interleave(s), filled.reshape(-1))
        keys = torch.rand(c, s, device=filled.device).masked_fill(~filled, 2.0)
        picked = keys.topk(per_class, dim=1, largest=False)
        slots = picked.indices
        rows = (labels.unsqueeze(1) * s + slots).reshape(-1)
        return (self.storage[rows], labels.repeat_interleave(per_class),
                (picked.values < 1.0).reshape(-1))


# --- batch -> bank entries --------------------------------------------------------------------

def labels_at(labels: torch.Tensor, size) -> torch.Tensor:
    """N x H x W labels resized (nearest) to `size` = (h, w) of the feature map."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels.unsqueeze(1).float(), size=tuple(size), mode="nearest") \
        .squeeze(1).to(labels.dtype)


def pixel_embeddings(features: torch.Tensor) -> torch.Tensor:
    """N x D x h x w -> N x (h*w) x D, each pixel L2-normalised."""
    return F.normalize(features.flatten(2).transpose(1, 2), dim=2)


def group_runs(keys: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def take_from_runs(order: torch.Tensor, first: torch.Tensor, count: torch.Tensor, k: int,
                   offset: torch.Tensor | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k pixels (from `offset` on) of every group: (N x G x k pixel indices, valid)."""
    n, g = first.shape
    j = torch.arange(k, device=order.device) + (offset.unsqueeze(-1) if torch.is_tensor(offset)
                                                   else offset)
    valid = j < count.unsqueeze(-1)
    pos = (first.unsqueeze(-1) + j).clamp(max=order.shape[1] - 1)
    return order.gather(1, pos.reshape(n, -1)).reshape(n, g, -1), valid


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
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


class ContrastMemory(nn.Module):
    """The pixel bank and, with `region=True`, the region bank, of `size` entries per class."""

    def __init__(self, num_classes: int, size: int, dim: int, region: bool = True):
        super().__init__()
        self.pixel = ClassQueue(num_classes, size, dim)
        self.region = ClassQueue(num_classes, size, dim) if region else None

    @property
    def num_classes(self) -> int:
        return self.pixel.num_classes

    def banks(self) -> list[ClassQueue]:
        return [b for b in (self.region, self.pixel) if b is not None]

    def grow(self, num_classes: int) -> None:
        for bank in self.banks():
            bank.grow(num_classes)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, pixels_per_class: int) -> None:
        """Enqueue a batch (labels at the feature size); with DDP every process enqueues the
        entries of every process, so the banks stay identical."""
        c = self.num_classes
        region, present, pixels, pvalid = batch_entries(features, labels, c, pixels_per_class)
        region, present, pixels, pvalid = all_gather_cat(region, present, pixels, pvalid)
        classes = torch.arange(c, device=region.device)
        if self.region is not None:
            self.region.push(region.reshape(-1, region.shape[-1]),
                             classes.repeat(region.shape[0]), present.reshape(-1))
        self.pixel.push(pixels.reshape(-1, pixels.shape[-1]),
                        classes.repeat_interleave(pixels_per_class).repeat(pixels.shape[0]),
                        pvalid.reshape(-1))

    def candidates(self, per_class: int = 0):
        """(K x D entries, K classes, K valid) of every bank, region bank first."""
        parts = [bank.candidates(per_class) for bank in self.banks()]
        return tuple(torch.cat(x) for x in zip(*parts)) if len(parts) > 1 else parts[0]

    @classmethod
    def from_state(cls, state: dict) -> "ContrastMemory":
        """A memory shaped like a saved `state_dict()` (then loaded into it)."""
        store = state["pixel.storage"]
        num_classes = state["pixel.ptr"].shape[0]
        size = (store.shape[0] - 1) // num_classes
        memory = cls(num_classes, size, store.shape[1], region="region.storage" in state)
        memory.load_state_dict(state)
        return memory
