"""Normalisation layers as "norm + activation" modules (the InPlace-ABN convention).

Every norm layer the models build carries its own activation, so a fused implementation
(InPlace-ABN) or a variant with its own statistics (batch renormalisation) can replace plain
BatchNorm2d without touching the networks, and its checkpoints load with the same keys.
A kind is one entry of ``NORMS``: a function that returns a constructor ``(channels, activation)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifss.errors import IfssError

ACTIVATIONS = ("relu", "leaky_relu", "identity")
LEAKY_SLOPE = 0.01

NormBuilder = Callable[[int, str], nn.Module]


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise IfssError(
            f"model.activation={name!r} is not known; valid values: {', '.join(ACTIVATIONS)}"
        )
    return name


def activate(x: torch.Tensor, name: str, inplace: bool = False) -> torch.Tensor:
    """Apply activation `name`; `inplace` only on a fresh tensor nothing else saved for backward
    (never on an InPlace-ABN output, which that layer keeps for its backward)."""
    if name == "relu":
        return F.relu(x, inplace=inplace)
    if name == "leaky_relu":
        return F.leaky_relu(x, LEAKY_SLOPE, inplace=inplace)
    return x


def init_gain(name: str) -> float:
    """Gain for Xavier/Kaiming init of a layer followed by activation `name`."""
    check_activation(name)
    if name == "identity":
        return nn.init.calculate_gain("linear")
    return nn.init.calculate_gain(name, LEAKY_SLOPE)


class _ActivationAfterNorm:
    """Mixin for a BatchNorm class: activation after the norm, tolerant state-dict loading."""

    activation: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(super().forward(x), self.activation, inplace=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Files from InPlace-ABN (and old torch) have no num_batches_tracked: keep ours.
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state_dict:
            state_dict[key] = self.num_batches_tracked
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class NormAct(_ActivationAfterNorm, nn.BatchNorm2d):
    """BatchNorm2d followed by an activation; its state-dict keys are BatchNorm2d's."""

    def __init__(self, num_features: int, activation: str = "relu", eps: float = 1e-5,
                 momentum: float | None = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.activation = check_activation(activation)


class SyncNormAct(_ActivationAfterNorm, nn.SyncBatchNorm):
    """NormAct with statistics synchronised across DDP processes (see convert_sync_norm)."""

    def __init__(self, num_features: int, activation: str = "relu", eps: float = 1e-5,
                 momentum: float | None = 0.1, process_group=None):
        super().__init__(num_features, eps=eps, momentum=momentum, process_group=process_group)
        self.activation = check_activation(activation)


def convert_sync_norm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every NormAct in `module` by a SyncNormAct holding the same tensors.

    Use this for DDP, not nn.SyncBatchNorm.convert_sync_batchnorm: that one would turn a NormAct
    into a plain SyncBatchNorm and silently drop its activation.
    """
    if isinstance(module, NormAct):
        sync = SyncNormAct(module.num_features, module.activation, module.eps, module.momentum,
                           process_group)
        with torch.no_grad():
            sync.weight, sync.bias = module.weight, module.bias
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_sync_norm(child, process_group))
    return module


def _batchnorm() -> NormBuilder:
    return lambda channels, activation: NormAct(channels, activation)


def _inplace_abn() -> NormBuilder:
    try:
        from inplace_abn import InPlaceABN
    except ImportError:
        raise IfssError(
            "model.norm=iabn needs the inplace-abn package: pip install 'ifss[iabn]' "
            "(see README), or use model.norm=bn"
        ) from None

    def build(channels: int, activation: str) -> nn.Module:
        return InPlaceABN(channels, activation=activation, activation_param=LEAKY_SLOPE)

    return build


# kind -> function returning the constructor; it may raise IfssError when the kind is unusable.
NORMS: dict[str, Callable[[], NormBuilder]] = {
    "bn": _batchnorm,
    "iabn": _inplace_abn,
}


@dataclass(frozen=True)
class NormFactory:
    """`factory(channels)` builds a norm with the default activation; `factory(c, "identity")`
    overrides it (the last norm of a residual branch, projection shortcuts)."""

    kind: str
    activation: str
    build: NormBuilder

    def __call__(self, channels: int, activation: str | None = None) -> nn.Module:
        return self.build(channels, check_activation(activation or self.activation))


def norm_factory(kind: str = "bn", activation: str = "relu") -> NormFactory:
    if kind not in NORMS:
        raise IfssError(f"model.norm={kind!r} is not known; valid values: {', '.join(NORMS)}")
    return NormFactory(kind, check_activation(activation), NORMS[kind]())

