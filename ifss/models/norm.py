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

from ifss.config import ACTIVATION_NAMES
from ifss.errors import IfssError

ACTIVATIONS = ACTIVATION_NAMES  # the config checks names from the same tuple
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


def batch_renorm(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                 weight: torch.Tensor | None, bias: torch.Tensor | None,
                 eps: float = 1e-5) -> torch.Tensor:
    """Batch renormalisation (Ioffe 2017) against fixed running statistics, no r/d clipping:

        y = weight * ((x - mu_B) / sigma_B * r + d) + bias,
        r = sigma_B / sigma,  d = (mu_B - mu) / sigma   (constants: no gradient through r, d)

    with sigma_B = sqrt(var_B + eps) (biased batch variance over N, H, W) and
    sigma = sqrt(running_var + eps). Without clipping the value equals the eval-mode
    weight * (x - mu) / sigma + bias; what changes is the backward pass, which goes through the
    batch statistics as in batch norm (scaled by r). The running statistics are not touched.

    Costs what plain batch norm costs (`_BatchRenorm`): the training-mode kernel gives x_hat and
    the batch statistics, one in-place affine pass turns x_hat into the value, and the backward is
    the training-mode kernel's with the weight scaled by r (the weight and bias gradients by the
    chain rule, below).
    """
    return _BatchRenorm.apply(x, running_mean, running_var, weight, bias, eps)


class _BatchRenorm(torch.autograd.Function):
    """y = x_hat * (weight * r) + (weight * d + bias), x_hat from the training-mode kernel;
    dL/dx = the training-mode batch-norm backward at the batch statistics with weight * r;
    dL/dweight = r * sum(dy * x_hat) + d * sum(dy); dL/dbias = sum(dy)."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps):
        x_hat, mean_b, invstd_b = torch.native_batch_norm(x, None, None, None, None, True, 0.0,
                                                          eps)
        inv_sigma = (running_var.float() + eps).rsqrt()
        r = inv_sigma / invstd_b  # sigma_B / sigma
        d = (mean_b - running_mean.float()) * inv_sigma
        scale, shift = r, d
        if weight is not None:
            scale, shift = weight.float() * r, weight.float() * d
        if bias is not None:
            shift = shift + bias.float()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        ctx.save_for_backward(x, scale, mean_b, invstd_b, r, d)
        ctx.eps = eps
        ctx.dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return x_hat.mul_(scale.view(shape)).add_(shift.view(shape))

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, mean_b, invstd_b, r, d = ctx.saved_tensors
        need_x, need_w, need_b = (ctx.needs_input_grad[i] for i in (0, 3, 4))
        grad_x, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, scale, None, None, mean_b, invstd_b, True, ctx.eps,
            [need_x, need_w, need_w or need_b])
        grad_w = (r * sum_dy_xhat + d * sum_dy).to(ctx.dtypes[0]) if need_w else None
        grad_b = sum_dy.to(ctx.dtypes[1]) if need_b else None
        return grad_x if need_x else None, None, None, grad_w, grad_b, None


class BatchRenormAct(_ActivationAfterNorm, nn.BatchNorm2d):
    """Batch renormalisation with frozen running statistics, then an activation (PIFS's "iabr").

    Training mode: `batch_renorm` (batch statistics in the backward pass, running statistics never
    updated: momentum 0); eval mode: plain normalisation with the running statistics. State-dict
    keys are BatchNorm2d's, so a checkpoint trained with NormAct loads unchanged. Meant for
    fine-tuning a model whose statistics were learned with batch norm (see convert_batch_renorm);
    a model trained from scratch with it would keep its initial statistics (0 mean, unit variance).
    Batch statistics are those of the local process (no synchronisation under DDP).
    """

    def __init__(self, num_features: int, activation: str = "relu", eps: float = 1e-5):
        super().__init__(num_features, eps=eps, momentum=0.0)
        self.activation = check_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = batch_renorm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             self.eps)
        else:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps)
        return activate(y, self.activation, inplace=True)


def fix_norm_statistics(model: nn.Module) -> None:
    """Put every normalisation layer with running statistics (BN, SyncBN, batch renorm,
    InPlace-ABN) in eval mode inside a model in train mode: it normalises with its running
    statistics and no longer updates them (PIFS's --fix_bn)."""
    for module in model.modules():
        if getattr(module, "running_mean", None) is not None:
            module.eval()


def convert_batch_renorm(module: nn.Module) -> nn.Module:
    """Replace, in place, every NormAct / SyncNormAct in `module` by a BatchRenormAct holding the
    same tensors (affine weights, running statistics) and activation; returns `module` (or the new
    layer when `module` itself is one). Other normalisation layers are an error, not skipped."""
    if isinstance(module, BatchRenormAct):
        return module
    if isinstance(module, _ActivationAfterNorm):
        renorm = BatchRenormAct(module.num_features, module.activation, module.eps)
        renorm.weight, renorm.bias = module.weight, module.bias
        renorm.running_mean, renorm.running_var = module.running_mean, module.running_var
        renorm.num_batches_tracked = module.num_batches_tracked
        renorm.train(module.training)
        return renorm
    if isinstance(module, nn.modules.batchnorm._NormBase) or "ABN" in type(module).__name__:
        raise IfssError(
            f"batch renormalisation replaces model.norm=bn layers, but the model holds a "
            f"{type(module).__name__}; use model.norm=bn, or turn the method's batch_renorm off"
        )
    for name, child in module.named_children():
        module.add_module(name, convert_batch_renorm(child))
    return module


def _batchnorm() -> NormBuilder:
    return lambda channels, activation: NormAct(channels, activation)


def _batch_renorm() -> NormBuilder:
    return lambda channels, activation: BatchRenormAct(channels, activation)


def _inplace_abn() -> NormBuilder:
    try:
        from inplace_abn import InPlaceABN
    except ImportError as err:  # not installed, or built against another torch
        raise IfssError(
            f"model.norm=iabn needs the inplace-abn package ({err}; `make install` builds it: "
            f"the iabn extra, see README), or use model.norm=bn"
        ) from None

    def build(channels: int, activation: str) -> nn.Module:
        if activation == "relu":  # InPlace-ABN inverts its activation in backward: relu cannot be
            raise IfssError("model.norm=iabn cannot use relu (InPlace-ABN has leaky_relu and "
                            "identity); set model.activation=leaky_relu, or use model.norm=bn")
        return InPlaceABN(channels, activation=activation, activation_param=LEAKY_SLOPE)

    return build


# kind -> function returning the constructor; it may raise IfssError when the kind is unusable.
NORMS: dict[str, Callable[[], NormBuilder]] = {
    "bn": _batchnorm,
    "iabn": _inplace_abn,
    "brn": _batch_renorm,  # frozen-statistics batch renorm: for fine-tuning from a bn checkpoint
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

