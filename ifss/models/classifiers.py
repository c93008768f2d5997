"""Incremental classifiers: one group of output channels per learning step, concatenated.

Step k owns channels `step_slice(k)` of the logits. A subclass says how one step turns features
into logits (`step_logits`) and how a step's parameters are made (`make_step`); a classifier
without trainable parameters (fixed embeddings) makes steps that hold a `weight` buffer instead.
"""
from __future__ import annotations

import abc
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifss.errors import IfssError


class IncrementalClassifier(nn.Module, metaclass=abc.ABCMeta):
    def __init__(self, in_channels: int, classes_per_step: Sequence[int]):
        super().__init__()
        self.in_channels = in_channels
        self.classes_per_step: list[int] = []
        self.convs = nn.ModuleList()
        if not classes_per_step:
            raise IfssError("a classifier needs at least one step of classes")
        for n in classes_per_step:
            self.add_step(n)

    @property
    def num_classes(self) -> int:
        return sum(self.classes_per_step)

    @property
    def num_steps(self) -> int:
        return len(self.classes_per_step)

    def step_slice(self, step: int) -> slice:
        step = range(self.num_steps)[step]  # accepts -1; IndexError past the end
        start = sum(self.classes_per_step[:step])
        return slice(start, start + self.classes_per_step[step])

    @abc.abstractmethod
    def make_step(self, n: int) -> nn.Module:
        """The module that scores `n` new classes (each subclass says how)."""

    def add_step(self, n: int) -> nn.Module:
        """Append a step of `n` classes (on the device and dtype of the existing ones)."""
        if n < 1:
            raise IfssError(f"a classifier step needs at least one class, got {n}")
        conv = self.make_step(n)
        if len(self.convs):
            ref = self.convs[0].weight
            conv = conv.to(device=ref.device, dtype=ref.dtype)
        self.convs.append(conv)
        self.classes_per_step.append(n)
        return conv

    def step_logits(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return self.convs[step](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.step_logits(k, x) for k in range(self.num_steps)], dim=1)


class LinearClassifier(IncrementalClassifier):
    """1x1 convolutions with bias (PyTorch's default init)."""

    def make_step(self, n: int) -> nn.Module:
        return nn.Conv2d(self.in_channels, n, 1, bias=True)


class CosineClassifier(IncrementalClassifier):
    """logits = scale * <x / |x|, w / |w|> per pixel; no bias."""

    def __init__(self, in_channels: int, classes_per_step: Sequence[int], scale: float = 10.0):
        super().__init__(in_channels, classes_per_step)
        self.scale = scale

    def make_step(self, n: int) -> nn.Module:
        return nn.Conv2d(self.in_channels, n, 1, bias=False)

    def step_logits(self, step: int, x: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.convs[step].weight, dim=1)
        return self.scale * F.conv2d(F.normalize(x, dim=1), weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)  # once for all steps
        weight = torch.cat([F.normalize(conv.weight, dim=1) for conv in self.convs])
        return self.scale * F.conv2d(x, weight)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class FixedEmbeddings(nn.Module):
    """One step of an EmbeddingClassifier: `n` fixed class vectors, an (n x D) buffer (saved
    with the model, never trained). Rows are L2-normalised when set; zeros until then."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(n, dim))

    @torch.no_grad()
    def set(self, vectors: torch.Tensor) -> None:
        vectors = torch.as_tensor(vectors, dtype=self.weight.dtype)
        if vectors.shape != self.weight.shape:
            raise IfssError(f"class embeddings of shape {tuple(vectors.shape)} do not fit a "
                            f"classifier step of shape {tuple(self.weight.shape)}")
        self.weight.copy_(F.normalize(vectors.to(self.weight.device), dim=1))

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}"


class EmbeddingClassifier(IncrementalClassifier):
    """SPNet's classifier: logits = <x, e_c> per pixel, with e_c the fixed, L2-normalised
    embedding (word vectors, attributes) of class c and x the unnormalised feature; the input
    has as many channels as the embeddings. No trainable parameters: only the features learn.
    Each step's embeddings are set with `set_embeddings(step, vectors)`."""

    def make_step(self, n: int) -> nn.Module:
        return FixedEmbeddings(n, self.in_channels)

    def set_embeddings(self, step: int, vectors: torch.Tensor) -> None:
        self.convs[step].set(vectors)

    @property
    def embeddings(self) -> torch.Tensor:
        """(C x D) fixed class vectors of every step, in logit order."""
        return torch.cat([step.weight for step in self.convs])

    def step_logits(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.convs[step].weight[:, :, None, None].to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.embeddings[:, :, None, None].to(x.dtype))


CLASSIFIERS: dict[str, type[IncrementalClassifier]] = {
    "linear": LinearClassifier,
    "cosine": CosineClassifier,
    "embedding": EmbeddingClassifier,
}
